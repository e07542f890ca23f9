"""Every study notebook, executed by `studykit run` on the smoke profile, meets the evidence contract: per-item
predictions for every evaluated model, a claims table from the claims YAML with verdicts of the one rule, logs in a
file rather than in the notebook, and a manifest that says where the numbers came from; and every model call in it
runs on the configured device (``studykit.device_check``)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from omegaconf import OmegaConf

from studykit.claims import load_claims
from studykit.cli import main
from studykit.config import CONF_DIR, compose, list_studies
from studykit.runner import target_directory

PREDICTION_COLUMNS = {"condition", "seed", "id", "family", "reply", "extracted", "strict", "lenient"}
SCORING_STUDIES = {"nuggets_sensitivity"}
# sampling studies: the per-item data are per-prompt measurements over K samples (the samples in samples.csv)
DIVERSITY_COLUMNS = {"condition", "seed", "id", "family", "ead", "embedding_diversity", "vendi", "quality"}
SMOKE_STUDIES = list_studies()   # every study has a smoke test


@pytest.fixture(scope="module")
def run_cache(tmp_path_factory):
    """One run cache for this module's notebooks: cold at the start of every test session (so every notebook's
    training code runs), shared between notebooks (identical runs, e.g. SFT starts, are trained once)."""
    return tmp_path_factory.mktemp("run-cache")


@pytest.mark.parametrize("study", SMOKE_STUDIES)
def test_study_notebook_meets_the_evidence_contract(study, tmp_path, monkeypatch, run_cache):
    # the study's own YAML says how to shrink it for this test (study.smoke) and which files it writes besides the
    # standard ones (study.outputs)
    own = OmegaConf.load(CONF_DIR / "study" / f"{study}.yaml").study  # its smoke overrides make it compose
    smoke, outputs = list(own.smoke), set(own.outputs)
    monkeypatch.setenv("STUDYKIT_RESULTS", str(tmp_path))
    monkeypatch.setenv("STUDYKIT_RUNS", str(tmp_path / "runs"))  # the smoke overrides make most of these sweeps
    monkeypatch.setenv("STUDYKIT_CACHE", str(run_cache))
    monkeypatch.setenv("STUDYKIT_DEVICE_CHECK", "cpu")  # the kernel fails on any model call off the configured device
    assert main(["run", study, "profile=smoke", *smoke, "--allow-dirty"]) == 0
    out, sweep = target_directory(study, ["profile=smoke", *smoke])
    names = {p.name for p in out.iterdir()}
    tests_claims = (CONF_DIR / "claims" / f"{study}.yaml").is_file()  # else a measurement study (calibration)
    assert outputs | {"metrics.json", "timings.json", "manifest.json", "run.log", f"{study}.ipynb"} <= names
    assert ("claims.csv" in names) == tests_claims

    if not tests_claims:  # the calibration: one row per (start, family, budget), one selection row per family
        table, selection = pd.read_csv(out / "calibration.csv"), pd.read_csv(out / "selection.csv")
        assert len(table) == table["start"].nunique() * table["family"].nunique() * table["budget"].nunique()
        assert sorted(selection["family"]) == sorted(table["family"].unique())
        assert table[["gold_modal_share", "greedy_lenient", "signal_share"]].stack().between(0, 1).all()
    elif study in SCORING_STUDIES:  # nothing is trained: the per-item data are the item scores
        assert "predictions" not in names and {"id", "family", "noise_kind"} <= set(pd.read_csv(out / "item_scores.csv"))
    else:
        predictions = pd.concat([pd.read_csv(p) for p in (out / "predictions").glob("*.csv")])
        if "samples.csv" in outputs:
            assert DIVERSITY_COLUMNS <= set(predictions.columns)
            assert predictions["ead"].between(0, 1).all()   # 1 − mean cosine: above 1 where replies point apart
            assert predictions["embedding_diversity"].between(-1e-6, 2 + 1e-6).all()
        else:
            assert PREDICTION_COLUMNS <= set(predictions.columns)
            judged = predictions.dropna(subset=["strict", "lenient"])   # a log-likelihood-only row has no reply
            assert not (judged["strict"].astype(bool) & ~judged["lenient"].astype(bool)).any()  # strict ⇒ lenient
        # paired comparisons: every model evaluated on a family is scored on all of that family's eval items
        counts = predictions.groupby(["family", "condition", "seed"])["id"].nunique()
        assert (counts.groupby("family").nunique() == 1).all(), "every evaluated model is scored on the same eval items"

    if tests_claims:
        claims = pd.read_csv(out / "claims.csv")
        assert set(claims["id"].str.split(" = ").explode()) == {c["id"] for c in load_claims(study)}
        assert claims["verdict"].str.match(r"^(supported|contradicted|not resolved|not separable|not tested|not testable|not pooled|fragile|kit:)").all()

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["git"]["allow_dirty"] is True and manifest["model"]["weights"]
    assert {"cpu_model", "cpu_flags", "torch_cpu_capability", "blas"} <= set(manifest["hardware"])

    executed = nbformat.read(out / f"{study}.ipynb", as_version=4)
    widgets = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets == [] and "widgets" not in executed.metadata  # no widget state in an executed notebook
    streams = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
                      if o.get("output_type") == "stream")
    displayed = "".join(str(o.get("data", {}).get("text/plain", "")) for c in executed.cells if c.cell_type == "code"
                        for o in c.get("outputs", []))
    for log_line in ("{'loss'", "train_runtime", "Tokenizing", "it/s]", "Loading weights"):
        assert log_line not in streams + displayed, f"training / progress log in the executed notebook: {log_line}"
    assert "PosixPath" not in displayed, "a file path returned by a save call is shown in the executed notebook"
    assert (out / "README.md").is_file() and (tmp_path / "README.md").is_file() is not sweep  # result page, index


# Each paper profile's smoke twin: the paper-scale code path (real-data loaders, LoRA or full fine-tuning as its paper
# profile, a judge or the verifier) on CPU with tiny models and local files.  study → (the twin profile, the claims
# file its notebook reads).
PAPER_TWINS = {"nuggets": ("paper_nuggets_smoke", "nuggets_paper"), "rewardrank": ("paper_zephyr_smoke", "rewardrank"),
               "rl_post_training": ("paper_math_smoke", "rl_math_paper")}


DF_GAMED = Path(__file__).parent / "fixtures" / "paper" / "alpaca_eval_df_gamed.csv"


def offline_hub_with_alpaca_eval_glm_data(root: Path) -> dict[str, str]:
    """An offline hub cache holding AlpacaEval's ``df_gamed.csv`` (a 10-row fixture in its format) where
    alpaca-eval's length-controlled GLM downloads it: the environment a notebook kernel needs to find it."""
    repo = root / "datasets--tatsu-lab--alpaca_eval"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    shutil.copy(DF_GAMED, snapshot / "df_gamed.csv")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return {"HF_HUB_CACHE": str(root), "HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize("study", sorted(PAPER_TWINS))
def test_paper_profile_smoke_twin_runs_the_paper_code_path(study, tmp_path, monkeypatch, run_cache):
    profile, claims_name = PAPER_TWINS[study]
    for name, value in offline_hub_with_alpaca_eval_glm_data(tmp_path / "hub").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("STUDYKIT_RESULTS", str(tmp_path))
    monkeypatch.setenv("STUDYKIT_CACHE", str(run_cache))
    monkeypatch.setenv("STUDYKIT_DEVICE_CHECK", "cpu")
    assert main(["run", study, f"profile={profile}", "--allow-dirty"]) == 0
    out, sweep = target_directory(study, [f"profile={profile}"])
    assert not sweep and out == tmp_path / study / profile
    manifest = json.loads((out / "manifest.json").read_text())
    paper = OmegaConf.load(CONF_DIR / "profile" / f"{profile}.yaml").defaults[0]   # the profile it is the twin of
    paper_peft = compose([f"study={study}", f"profile={paper}"]).peft
    assert (manifest["config"]["peft"] or {}).get("method") == (paper_peft or {}).get("method")   # LoRA or full
    assert manifest["config"]["data"]["source"]
    predictions = pd.concat([pd.read_csv(p) for p in (out / "predictions").glob("*.csv")])
    judged = manifest["config"]["eval"]["judge"] != "verifier"   # a judge's win rate, or the verifier's accuracy
    score, columns = (("win", {"reference_reply", "win"}) if judged else
                      ("lenient", {"gold", "extracted", "strict", "lenient"}))
    assert {"condition", "seed", "id", "family", "reply", *columns} <= set(predictions.columns)
    assert predictions[score].isin([0.0, 0.5, 1.0] if judged else [True, False]).all()
    assert predictions["family"].nunique() > 1          # the eval set's sources (subjects) are its families
    counts = predictions.groupby(["condition", "seed"])["id"].nunique()
    assert counts.nunique() == 1                        # every model judged on the same prompts
    claims = pd.read_csv(out / "claims.csv")
    assert set(claims["id"].str.split(" = ").explode()) == {c["id"] for c in load_claims(claims_name)}
    assert manifest["config"]["eval"]["length_controlled"] == (study == "rewardrank")   # the paper's metric: LC
    if manifest["config"]["eval"]["length_controlled"]:   # the length-controlled win rate, per model
        lc = pd.read_csv(out / "length_controlled.csv")
        assert len(lc) == len(counts) and lc["lc_win_rate"].between(0, 1).all()
        assert lc.set_index(["condition", "seed"])["win_rate"].to_dict() == pytest.approx(
            predictions.groupby(["condition", "seed"])["win"].mean().to_dict())
