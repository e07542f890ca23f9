"""A study under `accelerate launch` (2 CPU processes, gloo): the processes train together and evaluate their
shares of the items; one result directory comes out, written once, with the same per-item predictions a single
process gives."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from studykit import distributed
from studykit.config import CONF_DIR


def test_shards_are_contiguous_and_cover_every_item_once(monkeypatch):
    items = list(range(7))
    shares = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        shares.append(distributed.shard(items))
    assert shares == [[0, 1], [2, 3], [4, 5, 6]] and sum(shares, []) == items
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert distributed.shard(items) == items and distributed.is_main()


def _run(cmd: list[str], env: dict) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """quickstart on the smoke profile, once in one process and once under a 2-process launch (own caches)."""
    root = tmp_path_factory.mktemp("launch")
    out = {}
    for name, prefix in (("one", [sys.executable, "-m", "studykit.cli"]),
                         ("two", [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
                                  str(CONF_DIR / "accelerate" / "cpu_2proc.yaml"), "-m", "studykit.cli"])):
        env = {**os.environ, "STUDYKIT_RESULTS": str(root / name / "results"), "STUDYKIT_CACHE": str(root / name / "cache"),
               "STUDYKIT_RUNS": str(root / name / "runs")}
        _run([*prefix, "run", "quickstart", "profile=smoke", "--allow-dirty"], env)
        out[name] = root / name / "results"
    return out


def test_a_launched_study_writes_one_result_directory_once(launched):
    results = launched["two"]
    study = results / "quickstart" / "smoke"
    manifest = json.loads((study / "manifest.json").read_text())
    assert manifest["processes"] == 2
    assert (study / "run.log").is_file() and (study / "run.rank1.log").is_file()
    assert [p.name for p in study.parent.iterdir() if p.name.startswith(".tmp-")] == []   # nothing left behind
    assert (results / "README.md").is_file() and (study / "claims.csv").is_file()
    assert len((study / "progress.log").read_text().splitlines()) == len(pd.read_csv(study / "runs.csv"))


def test_a_launched_study_evaluates_every_item_once_and_as_one_process_does(launched):
    """Each process evaluates its share; the gathered predictions cover every eval item once per model.  Greedy
    replies of the trained models match one process's only up to the order of float sums in the DDP all-reduce, so
    the untrained base model's replies are compared exactly and the trained ones by their item sets."""
    def predictions(results: Path) -> pd.DataFrame:
        files = sorted((results / "quickstart" / "smoke" / "predictions").glob("*.csv"))
        return pd.concat([pd.read_csv(f, keep_default_na=False) for f in files], ignore_index=True)

    one, two = predictions(launched["one"]), predictions(launched["two"])
    assert not two.duplicated(["condition", "seed", "id"]).any()
    assert sorted(map(tuple, two[["condition", "seed", "id"]].values)) == sorted(map(tuple, one[["condition", "seed", "id"]].values))
    base = [frame[frame["condition"] == "base"].sort_values("id")["reply"].tolist() for frame in (one, two)]
    assert base[0] == base[1]


def test_a_paper_twin_under_launch_shares_model_caches_and_judges_every_prompt_once(tmp_path):
    """The paper path under 2 processes: LoRA training, the reward-model judge built into the model cache once
    (transformers saves on rank 0 only: the other process waits for it) and every eval prompt judged once."""
    env = {**os.environ, "STUDYKIT_RESULTS": str(tmp_path / "results"), "STUDYKIT_CACHE": str(tmp_path / "cache"),
           "STUDYKIT_RUNS": str(tmp_path / "runs")}
    _run([str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
          str(CONF_DIR / "accelerate" / "cpu_2proc.yaml"), "-m", "studykit.cli", "run", "nuggets",
          "profile=paper_nuggets_smoke", "--allow-dirty"], env)
    study = tmp_path / "results" / "nuggets" / "paper_nuggets_smoke"
    assert (tmp_path / "cache" / "models" / "tiny-random-reward" / "config.json").is_file()
    files = sorted((study / "predictions").glob("*.csv"))
    predictions = pd.concat([pd.read_csv(f, keep_default_na=False) for f in files], ignore_index=True)
    assert not predictions.duplicated(["condition", "seed", "id"]).any()
    assert predictions.groupby(["condition", "seed"])["id"].nunique().nunique() == 1
    assert predictions["win"].isin([0.0, 0.5, 1.0]).all()


def test_vllm_evaluation_under_a_launch_is_refused_before_any_work(monkeypatch):
    from studykit.config import compose
    from studykit.errors import ConfigError
    from studykit.runner import preflight

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="eval.backend=vllm is not allowed under accelerate launch"):
        preflight(compose(["profile=smoke", "eval.backend=vllm"]))


def test_dpo_with_precomputed_reference_log_probs_under_a_launch_holds_no_reference(tmp_path):
    """dpo.precompute_ref_log_probs under 2 processes: each rank's trainer holds no reference model, and the
    reference log-probs TRL stored are the start model's summed completion log-probs (checked on each rank by
    tests/launch_dpo_precompute.py against the kit's scorer; the first loss is log 2)."""
    script = Path(__file__).with_name("launch_dpo_precompute.py")
    _run([str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
          str(CONF_DIR / "accelerate" / "cpu_2proc.yaml"), str(script), str(tmp_path)], dict(os.environ))
    stored = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert stored[0] == stored[1] and len(stored[0]["chosen"]) == len(stored[0]["rejected"]) == 4


@pytest.mark.parametrize("loss", ["selm", "dft"])
def test_a_loss_needing_its_reference_every_step_refuses_precomputed_log_probs(tiny, smoke_cfg, tmp_path, loss):
    from omegaconf import OmegaConf

    from studykit.preference import train_preference
    from studykit.testbed import build_testbed

    model, tokenizer = tiny
    pairs = [{**p, "reference_response": p["rejected"]} for p in build_testbed(smoke_cfg.data)["preference"][:2]]
    cfg = OmegaConf.merge(smoke_cfg, {"dpo": {"precompute_ref_log_probs": True}})
    with pytest.raises(ValueError, match=r"in every step: dpo\.precompute_ref_log_probs=true .* is not supported"):
        train_preference(model, model, tokenizer, pairs, cfg, tmp_path, loss=loss)


def test_simpo_ignores_precomputed_log_probs_it_has_no_reference_for(tiny, smoke_cfg, tmp_path):
    from omegaconf import OmegaConf

    from studykit.models import copy_model
    from studykit.preference import train_preference
    from studykit.testbed import build_testbed

    model, tokenizer = tiny
    cfg = OmegaConf.merge(smoke_cfg, {"dpo": {"precompute_ref_log_probs": True}})
    trainer = train_preference(copy_model(model), None, tokenizer, build_testbed(smoke_cfg.data)["preference"][:2], cfg,
                               tmp_path, loss="simpo", max_steps=1)
    assert trainer.state.global_step == 1
