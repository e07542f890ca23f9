"""Every study notebook, executed by `studykit run` on the smoke profile, meets the evidence contract: per-item
predictions for every evaluated model, a claims table from the claims YAML with verdicts of the one rule, logs in a
file rather than in the notebook, and a manifest that says where the numbers came from; and every model call in it
runs on the configured device (``studykit.device_check``)."""
from __future__ import annotations

import json

import nbformat
import pandas as pd
import pytest

from studykit.claims import load_claims
from studykit.cli import main

PREDICTION_COLUMNS = {"condition", "seed", "id", "family", "reply", "extracted", "strict", "lenient"}
STUDY_FILES = {
    "quickstart": {"accuracy_by_family.csv", "accuracy.csv", "train_log.csv", "accuracy_before_after.png"},
    "sft_objectives": {"summary.csv", "accuracy.csv", "runs.csv", "transforms.csv", "sft_objectives.png"},
    "nuggets": {"item_scores.csv", "auroc.csv", "subsets.csv", "thresholds.csv", "summary.csv", "accuracy.png"},
    "nuggets_sensitivity": {"item_scores.csv", "sensitivity.csv", "sensitivity.png"},
    "rewardrank": {"checkpoints.csv", "dpo_runs.csv", "correlations.csv", "regret.csv", "choices.csv", "rewardrank.png"},
    "rl_post_training": {"summary.csv", "accuracy.csv", "runs.csv", "grpo_rewards.csv", "teacher.csv", "ranking.csv", "moved.csv",
                         "rl_post_training.png"},
    "rl_forgetting": {"summary.csv", "accuracy.csv", "runs.csv", "grpo_rewards.csv", "filter.csv", "rl_forgetting.png"},
    "rl_hybrids": {"summary.csv", "accuracy.csv", "runs.csv", "rl_rewards.csv", "moved.csv", "curves.csv", "dump_arms.csv",
                   "rl_hybrids.png", "rl_hybrids_curves.png"},
    "merging": {"accuracy.csv", "crc.csv", "crc_summary.csv", "soups.csv", "slr_sweep.csv", "runs.csv", "merging.png",
                "slr_sweep.png", "slr_sweep_dev_accuracy.png"},
    "preference_losses": {"accuracy.csv", "margins.csv", "train_log.csv", "runs.csv", "preference_losses.png"},
    "delta_learning": {"accuracy.csv", "delta_pairs.csv", "train_log.csv", "runs.csv", "delta_learning.png"},
    "self_contrast": {"accuracy.csv", "data.csv", "runs.csv", "self_contrast.png"},
    "preference_variants": {"accuracy.csv", "data.csv", "runs.csv", "preference_variants.png"},
    "prob_objectives": {"accuracy.csv", "runs.csv", "model_strong_choice.csv", "prob_objectives.png"},
    "budget": {"accuracy.csv", "runs.csv", "budget.png"},
    "diversity": {"summary.csv", "across_prompts.csv", "samples.csv", "runs.csv", "diversity.png"},
}
SCORING_STUDIES = {"nuggets_sensitivity"}
# sampling studies: the per-item data are per-prompt measurements over K samples (the samples in samples.csv)
DIVERSITY_COLUMNS = {"condition", "seed", "id", "family", "ead", "embedding_diversity", "vendi", "quality"}
# the smoke model is random: it solves no prompt, so the RL study's SFT data fall back to gold answers there
SMOKE_OVERRIDES = {"rl_post_training": ["study.gold_when_unsolved=true"],
                   "rl_hybrids": ["study.steps=3", "study.sft_steps=1", "study.curve_every=1"],
                   "rl_forgetting": ["study.first_steps=2", "study.second_steps=2"],
                   "merging": ["study.slr.block=1", "study.slr.samples=2", "study.slr.crc_dev=2", "study.slr.crc_eval=2"],
                   "preference_losses": ["study.heldout_pairs_per_family=1", "study.warmup_steps=1",
                                         "study.preference_steps=1"],
                   "delta_learning": ["study.warmup_steps=1", "study.preference_steps=1", "study.delta.chosen_steps=1"],
                   "self_contrast": ["study.warmup_steps=1", "study.preference_steps=1", "study.samples=3",
                                     "study.self_contrast.negatives=[1]"],
                   "preference_variants": ["study.warmup_steps=1", "study.preference_steps=1"],
                   "prob_objectives": ["study.warmup_steps=1", "study.objective_steps=1"],
                   "budget": ["study.budget=12"],
                   "diversity": ["study.samples=2", "study.open_ended=4", "study.stage_steps={sft:1,dpo:1,grpo:1}"]}


@pytest.mark.parametrize("study", sorted(STUDY_FILES))
def test_study_notebook_meets_the_evidence_contract(study, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDYKIT_RESULTS", str(tmp_path))
    monkeypatch.setenv("STUDYKIT_DEVICE_CHECK", "cpu")  # the kernel fails on any model call off the configured device
    assert main(["run", study, "profile=smoke", *SMOKE_OVERRIDES.get(study, []), "--allow-dirty"]) == 0
    out = tmp_path / study / "smoke"
    names = {p.name for p in out.iterdir()}
    assert STUDY_FILES[study] | {"claims.csv", "metrics.json", "timings.json", "manifest.json", "run.log",
                                 f"{study}.ipynb"} <= names

    if study in SCORING_STUDIES:  # nothing is trained: the per-item data are the item scores
        assert "predictions" not in names and {"id", "family", "noise_kind"} <= set(pd.read_csv(out / "item_scores.csv"))
    else:
        predictions = pd.concat([pd.read_csv(p) for p in (out / "predictions").glob("*.csv")])
        if "samples.csv" in STUDY_FILES[study]:
            assert DIVERSITY_COLUMNS <= set(predictions.columns)
            assert predictions[["ead", "embedding_diversity"]].stack().between(0, 1).all()
        else:
            assert PREDICTION_COLUMNS <= set(predictions.columns)
            assert not (predictions["strict"] & ~predictions["lenient"]).any()  # strict implies lenient
        # paired comparisons: every model evaluated on a family is scored on all of that family's eval items
        counts = predictions.groupby(["family", "condition", "seed"])["id"].nunique()
        assert (counts.groupby("family").nunique() == 1).all(), "every evaluated model is scored on the same eval items"

    claims = pd.read_csv(out / "claims.csv")
    assert set(claims["id"].str.split(" = ").explode()) == {c["id"] for c in load_claims(study)}
    assert claims["verdict"].str.match(r"^(supported|contradicted|not resolved|not separable|not tested)").all()

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["git"]["allow_dirty"] is True
    assert {"cpu_model", "cpu_flags", "torch_cpu_capability", "blas"} <= set(manifest["hardware"])

    executed = nbformat.read(out / f"{study}.ipynb", as_version=4)
    streams = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
                      if o.get("output_type") == "stream")
    displayed = "".join(str(o.get("data", {}).get("text/plain", "")) for c in executed.cells if c.cell_type == "code"
                        for o in c.get("outputs", []))
    for log_line in ("{'loss'", "train_runtime", "Tokenizing", "it/s]", "Loading weights"):
        assert log_line not in streams + displayed, f"training / progress log in the executed notebook: {log_line}"
    assert "PosixPath" not in displayed, "a file path returned by a save call is shown in the executed notebook"
    assert (out / "README.md").exists() is False and (tmp_path / "README.md").is_file()  # the generated index
