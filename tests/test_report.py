"""Accuracy with CIs per condition, and the generated results index."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from studykit.provenance import write_results_index
from studykit.report import condition_accuracy
from studykit.stats import wilson_interval


def long_predictions(condition: str, matrix: np.ndarray, families: list[str]) -> pd.DataFrame:
    rows = [{"condition": condition, "seed": s, "id": f"i{i}", "family": families[i], "lenient": bool(v),
             "strict": False} for s, row in enumerate(np.atleast_2d(matrix)) for i, v in enumerate(row)]
    return pd.DataFrame(rows)


def test_one_seed_gets_a_wilson_interval_several_seeds_a_bootstrap():
    families = ["a"] * 10 + ["b"] * 10
    one = long_predictions("base", np.array([1] * 7 + [0] * 13), families).assign(seed=-1)
    many = long_predictions("sft", np.vstack([np.r_[np.ones(12), np.zeros(8)], np.r_[np.ones(8), np.zeros(12)]]),
                            families)
    table = condition_accuracy(pd.concat([one, many])).set_index("condition")
    assert table.loc["base", "lenient_accuracy"] == pytest.approx(0.35)
    assert (table.loc["base", "ci_low"], table.loc["base", "ci_high"]) == pytest.approx(wilson_interval(7, 20))
    assert table.loc["sft", "lenient_accuracy"] == pytest.approx(0.5) and table.loc["sft", "seeds"] == 2
    assert table.loc["sft", "ci_low"] < 0.5 < table.loc["sft", "ci_high"]


def test_the_results_index_lists_each_result_with_its_verdicts_and_whether_it_is_stale(tmp_path):
    out = tmp_path / "quickstart" / "embedded"
    out.mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps({"study": "quickstart", "profile": "embedded", "wall_time_s": 630,
                                                   "started_at": "2026-11-24T21:00:00+00:00",
                                                   "git": {"commit": "0" * 40, "dirty": False}}))
    pd.DataFrame([{"id": "quickstart.sft_raises_accuracy", "verdict": "supported", "difference": 0.18,
                   "ci_low": 0.13, "ci_high": 0.23},
                  {"id": "x.later", "verdict": "not tested: no RL stage", "difference": np.nan, "ci_low": np.nan,
                   "ci_high": np.nan}]).to_csv(out / "claims.csv", index=False)
    smoke = tmp_path / "quickstart" / "smoke"
    smoke.mkdir()
    (smoke / "manifest.json").write_text((out / "manifest.json").read_text())
    text = write_results_index(tmp_path).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| quickstart")]
    assert len(rows) == 1 and "| embedded" in rows[0] and "0000000 (clean)" in rows[0] and "10.5" in rows[0]
    assert "quickstart.sft_raises_accuracy: supported (+0.180 [+0.130, +0.230])" in rows[0]
    assert "x.later" not in rows[0]
    assert rows[0].rstrip(" |").endswith("unknown")  # a commit this repository does not have


def test_saved_predictions_load_back_for_paired_re_analysis(tmp_path):
    from studykit.claims import claims_table
    from studykit.results import load_predictions, save_predictions

    families = ["a"] * 6 + ["b"] * 6
    frame = pd.concat([long_predictions("sft", np.vstack([np.ones(12), np.r_[np.ones(6), np.zeros(6)]]), families),
                       long_predictions("base", np.zeros(12), families).assign(seed=-1)])
    frame["reply"], frame["extracted"] = "None", ""   # strings a CSV reader must not turn into NaN
    paths = save_predictions(tmp_path, frame)
    assert sorted(p.name for p in paths) == ["base-seed-1.csv", "sft-seed0.csv", "sft-seed1.csv"]
    loaded = load_predictions(tmp_path)
    assert (loaded["reply"] == "None").all() and len(loaded) == len(frame)
    claim = {"id": "c", "paper": "studykit", "source": "s", "claim": "SFT beats base",
             "test": {"treatment": "sft", "control": "base", "direction": "greater"}}
    assert claims_table([claim], loaded).iloc[0].to_dict() == claims_table([claim], frame).iloc[0].to_dict()
