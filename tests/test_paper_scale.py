"""The paper-scale plumbing that runs without a GPU: real data through `data.source`, the judge through `eval.judge`,
the guards on judged replies, and the paper profiles' configs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from studykit import guards
from studykit.answers import judge
from studykit.config import compose
from studykit.data import is_local, load_splits, source_path
from studykit.errors import ConfigError, DataError

TWIN = ["study=nuggets", "profile=paper_nuggets_smoke"]


def test_real_data_splits_hold_out_dev_from_the_pool_and_take_families_from_a_column():
    cfg = compose(TWIN)
    splits = load_splits(cfg.data)
    pool_ids, dev_ids = {r["id"] for r in splits["pool"]}, {r["id"] for r in splits["dev"]}
    assert len(splits["dev"]) == cfg.data.dev_size and not pool_ids & dev_ids
    assert len(splits["pool"]) + len(splits["dev"]) == 24                 # the fixture's pool
    assert {r["family"] for r in splits["eval"]} == {"helpful_base", "selfinstruct"}   # AlpacaEval's `dataset`
    assert all(r["id"].startswith("eval/") for r in splits["eval"])
    assert load_splits(cfg.data) == splits                               # drawn by data.seed, the same each time


def test_pool_and_eval_sizes_cut_the_splits_and_too_few_items_is_one_error():
    cfg = compose([*TWIN, "data.pool_size=5", "data.eval_size=3"])
    splits = load_splits(cfg.data)
    assert (len(splits["pool"]), len(splits["eval"])) == (5, 3)
    with pytest.raises(DataError, match=r"alpaca_pool.json: 24 items, expected at least data.dev_size \+ data.pool_size = 104"):
        load_splits(compose([*TWIN, "data.pool_size=100"]).data)


def test_a_missing_family_column_names_the_file_the_item_and_the_key():
    cfg = compose([*TWIN, "data.source.eval.family_field=source"])
    with pytest.raises(DataError, match=r"alpaca_eval.json: item 1 has no column 'source' \(data.source.eval.family_field\)"):
        load_splits(cfg.data)


def test_source_paths_local_files_against_the_repository_hub_ids_and_remote_files_as_given():
    assert is_local("tests/fixtures/paper/alpaca_pool.json")
    assert source_path("tests/fixtures/paper/alpaca_pool.json").startswith("/")
    assert not is_local("tatsu-lab/alpaca") and source_path("tatsu-lab/alpaca") == "tatsu-lab/alpaca"
    remote = "hf://datasets/tatsu-lab/alpaca_eval/alpaca_eval.json"
    assert not is_local(remote) and source_path(remote) == remote


def test_a_remote_json_file_is_read_through_datasets_json_builder(monkeypatch, tmp_path):
    import datasets

    from studykit.data import load_records

    calls = []

    def fake(builder, data_files, split):
        calls.append((builder, data_files, split))
        return [{"instruction": "Say hi.", "output": "Hi.", "dataset": "vicuna"}]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    records = load_records("alpaca", "hf://datasets/tatsu-lab/alpaca_eval/alpaca_eval.json")
    assert calls == [("json", "hf://datasets/tatsu-lab/alpaca_eval/alpaca_eval.json", "train")]
    assert records[0]["response"] == "Hi." and records[0]["dataset"] == "vicuna"   # extra columns are kept


@pytest.mark.parametrize("override, message", [
    ("data.source.pool.format=csv", r"^data.source=.* is not allowed"),
    ("eval.judge=gpt4", r"^eval.judge='gpt4' is not allowed: expected verifier or a judge"),
    ("eval.judge=verifier", r"eval.judge=verifier is not allowed with real data"),
    ("data.pool_size=0", r"^data.pool_size=0 is not allowed"),
    ("eval.length_controlled=yes", r"^eval.length_controlled='yes' is not allowed: expected true or false"),
    ("eval.judge=llm_single eval.length_controlled=true",
     r"eval.length_controlled=true is not allowed with eval.judge=llm_single: expected a pairwise judge"),
])
def test_bad_paper_settings_are_one_clear_error(override, message):
    with pytest.raises(ConfigError, match=message):
        compose([*TWIN, *override.split()])


def test_a_model_judge_needs_a_judge_model():
    with pytest.raises(ConfigError, match=r"eval.judge_model=None is not allowed with eval.judge=reward_model"):
        compose(["profile=smoke", "eval.judge=reward_model"])


def test_the_paper_profile_is_the_papers_recipe_where_it_matters():
    cfg = compose(["study=nuggets", "profile=paper_nuggets"])
    assert (cfg.model.path, cfg.data.source.pool.path) == ("huggyllama/llama-7b", "tatsu-lab/alpaca")
    assert (cfg.study.nuggets.anchors.n, cfg.study.nuggets.anchors.method) == (100, "kmeans")
    assert cfg.train.num_train_epochs == 3 and cfg.train.warmup_steps == 0.03
    assert cfg.train.per_device_train_batch_size * cfg.train.gradient_accumulation_steps == 256
    assert cfg.study.notebook == "nuggets_paper.ipynb" and cfg.eval.judge == "reward_model"
    twin = compose(TWIN)
    assert twin.study.notebook == cfg.study.notebook and twin.eval.judge == cfg.eval.judge   # the same code path
    assert twin.peft.method == cfg.peft.method


def _judged(replies: dict[str, list[str]], wins: dict[str, list[float]]) -> pd.DataFrame:
    rows = [{"condition": c, "seed": 0, "id": f"eval/{i}", "family": "helpful_base" if i < 5 else "vicuna",
             "reply": reply, "win": wins[c][i]} for c in replies for i, reply in enumerate(replies[c])]
    return pd.DataFrame(rows)


def test_an_arm_that_gives_one_reply_to_a_family_is_degenerate_on_judged_replies():
    varied = [f"reply {i}" for i in range(10)]
    constant = ["Sure!"] * 5 + varied[5:]
    frame = _judged({"a": varied, "b": constant}, {"a": [1.0] * 10, "b": [0.5] * 10})
    profile = guards.family_profile(frame).set_index(["condition", "family"])
    assert profile.loc[("b", "helpful_base"), "degenerate_reason"] == "constant answers"
    assert not profile.loc[("b", "vicuna"), "degenerate"] and not profile.loc[("a", "helpful_base"), "degenerate"]
    assert np.isnan(profile.loc[("a", "vicuna"), "best_constant"])       # a constant's win rate is not known
    assert profile.loc[("a", "vicuna"), "accuracy"] == 1.0                # the mean of the judge's win


def test_a_win_claim_is_the_paired_difference_of_win_rates_on_the_same_prompts():
    from studykit.claims import Evidence, claims_table, load_claims

    rng = np.random.default_rng(0)
    frame = _judged({c: [f"{c} {i}" for i in range(10)] for c in ("gs_high", "full", "random_same_size", "placebo")},
                    {c: list(rng.choice([0.0, 0.5, 1.0], 10)) for c in ("gs_high", "full", "random_same_size", "placebo")})
    table = claims_table(load_claims("nuggets_paper"), frame, Evidence()).set_index("id")
    assert set(table["metric"]) == {"win rate vs reference"} and (table["items"] == 10).all()
    mean = frame.groupby("condition")["win"].mean()
    row = table.loc["nuggets_paper.high_gs_beats_full"]
    assert row["difference"] == pytest.approx(mean["gs_high"] - mean["full"])


def test_the_registrys_names_are_the_modules_own():
    """validate checks data.source and eval.judge by the names of studykit.registry, without importing the modules."""
    from studykit.data import LOADERS
    from studykit.judges import JUDGES
    from studykit.registry import DATA_FORMATS, EVAL_JUDGES, PAIRWISE_JUDGES

    assert set(DATA_FORMATS) == set(LOADERS) and set(EVAL_JUDGES) == {"verifier", *JUDGES}
    assert set(PAIRWISE_JUDGES) == {name for name, judge in JUDGES.items() if judge.pairwise}


# --- RL with verifiable rewards on real math: paper_math and its smoke twin ---------------------------------------
MATH_PAPER, MATH_TWIN = (["study=rl_post_training", f"profile={p}"] for p in ("paper_math", "paper_math_smoke"))


def test_the_math_profile_is_the_papers_recipe_where_it_matters():
    cfg = compose(MATH_PAPER)
    assert (cfg.model.path, cfg.data.source.pool.path, cfg.data.source.eval.path) == (
        "Qwen/Qwen2.5-Math-1.5B", "DigitalLearningGmbH/MATH-lighteval", "HuggingFaceH4/MATH-500")
    assert cfg.grpo.num_generations >= 8 and cfg.grpo.max_completion_length >= 1024 and cfg.grpo.temperature == 1.0
    assert cfg.grpo.learning_rate == 1e-6 and cfg.grpo.max_steps > 0
    assert cfg.eval.judge == "verifier" and cfg.eval.max_new_tokens >= 1024      # Math-Verify judges MATH-500
    assert dict(cfg.rl.rewards) == {"verifier": 1.0, "format": 0.0}
    twin = compose(MATH_TWIN)
    assert (twin.study.notebook, twin.eval.judge, twin.rl.rewards, twin.peft) == (
        "rl_math_paper.ipynb", cfg.eval.judge, cfg.rl.rewards, cfg.peft)           # the same code path
    assert twin.data.source.pool.format == twin.data.source.eval.format == "math"


def test_the_math_deviations_are_rendered_from_the_config():
    cfg = compose(MATH_PAPER)
    here = {row["what"]: row["here"] for row in OmegaConf.to_container(cfg.study.deviations, resolve=True)}
    g = cfg.grpo
    assert f"{g.max_steps} GRPO steps of {g.per_device_train_batch_size} x {g.gradient_accumulation_steps} rollouts " \
           f"(G = {g.num_generations} per prompt) at lr {g.learning_rate}" in here["RL scale"]
    assert cfg.data.source.eval.path in here["data"] and cfg.model.weights == here["model"]


def test_math_splits_are_verifiable_records_per_subject_with_the_prompt_suffix():
    cfg = compose(MATH_TWIN)
    splits = load_splits(cfg.data)
    assert (len(splits["pool"]), len(splits["dev"]), len(splits["eval"])) == (16, 0, 12)
    subjects = {"Algebra", "Number Theory", "Prealgebra"}
    assert {r["family"] for r in splits["pool"]} == {r["family"] for r in splits["eval"]} == subjects  # type, subject
    records = splits["pool"] + splits["eval"]
    assert all(r["prompt"].endswith("\n" + cfg.data.instruction_suffix) for r in records)
    assert all(judge(r, r["response"]).lenient for r in records)           # every worked solution verifies


def test_the_verifier_judges_real_data_only_of_a_verifiable_format():
    assert compose(MATH_TWIN).eval.judge == "verifier"
    with pytest.raises(ConfigError, match=r"^eval.judge=verifier is not allowed with real data of format alpaca"):
        compose([*MATH_TWIN, "data.source.eval.format=alpaca"])


@pytest.mark.parametrize("override", ["eval.backend=vllm", "+grpo.use_vllm=true"])
def test_vllm_without_cuda_is_one_clear_error_before_any_work(override):
    from studykit.errors import ModelSourceError
    from studykit.runner import preflight

    with pytest.raises(ModelSourceError, match=r"vLLM generation .* needs a CUDA device and the vllm package"):
        preflight(compose(["profile=smoke", override]))


def test_vllm_generation_serves_the_saved_model_greedily_with_the_hf_paths_prompts(tiny, monkeypatch):
    """The vLLM backend's plumbing, against a stand-in `vllm` module (vLLM itself needs a GPU): the model it serves
    is the one given (saved whole), the prompts are the ones transformers' generate would see, decoding is greedy
    and the replies come back in prompt order."""
    import sys
    import types
    from pathlib import Path

    from studykit.evaluate import vllm_generate
    from studykit.logprobs import format_prompt

    model, tokenizer = tiny
    seen = {}

    class LLM:
        def __init__(self, model, **kwargs):
            seen["files"] = sorted(p.name for p in Path(model).iterdir())
            seen["kwargs"] = kwargs

        def generate(self, texts, params):
            seen["texts"], seen["params"] = texts, params
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f"reply {i}")]) for i in range(len(texts))]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(
        LLM=LLM, SamplingParams=lambda **kwargs: kwargs))
    prompts = ["What is 2 + 2?", "Name a color."]
    assert vllm_generate(model, tokenizer, prompts, chat=True, max_new_tokens=7) == ["reply 0", "reply 1"]
    assert seen["texts"] == [format_prompt(tokenizer, p, True) for p in prompts]
    assert seen["params"] == {"temperature": 0.0, "max_tokens": 7}
    assert "config.json" in seen["files"] and "model.safetensors" in seen["files"] and "tokenizer.json" in seen["files"]


def test_the_judged_score_columns_are_named_alike_everywhere():
    """The guards, the claims tables and the judges name the same per-item judge scores."""
    from studykit.claims import JUDGED
    from studykit.judges import JUDGES

    assert set(guards.JUDGED) == set(JUDGED) == {judge.metric for judge in JUDGES.values()}
