"""Accuracy with CIs per condition, and predictions saved for re-analysis."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from studykit.report import condition_accuracy
from studykit.stats import wilson_interval


def long_predictions(condition: str, matrix: np.ndarray, families: list[str]) -> pd.DataFrame:
    rows = [{"condition": condition, "seed": s, "id": f"i{i}", "family": families[i], "lenient": bool(v),
             "strict": False} for s, row in enumerate(np.atleast_2d(matrix)) for i, v in enumerate(row)]
    return pd.DataFrame(rows)


def test_one_seed_gets_a_wilson_interval_several_seeds_a_t_interval():
    families = ["a"] * 10 + ["b"] * 10
    one = long_predictions("base", np.array([1] * 7 + [0] * 13), families).assign(seed=-1)
    many = long_predictions("sft", np.vstack([np.r_[np.ones(12), np.zeros(8)], np.r_[np.ones(8), np.zeros(12)]]),
                            families)
    table = condition_accuracy(pd.concat([one, many])).set_index("condition")
    assert table.loc["base", "lenient_accuracy"] == pytest.approx(0.35)
    assert (table.loc["base", "ci_low"], table.loc["base", "ci_high"]) == pytest.approx(wilson_interval(7, 20))
    assert table.loc["sft", "lenient_accuracy"] == pytest.approx(0.5) and table.loc["sft", "seeds"] == 2
    assert table.loc["sft", "ci_low"] < 0.5 < table.loc["sft", "ci_high"]


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
    claim = {"id": "c", "paper": "studykit", "kind": "kit", "source": "s", "claim": "SFT beats base",
             "test": {"treatment": "sft", "control": "base", "direction": "greater"}}
    assert claims_table([claim], loaded).iloc[0].to_dict() == claims_table([claim], frame).iloc[0].to_dict()


def test_movement_table_counts_replies_changed_from_the_start_of_the_same_seed():
    from studykit.report import movement_table

    rows = [{"condition": c, "seed": s, "id": i, "reply": r} for c, s, i, r in [
        ("sft", 0, "a", "x"), ("sft", 0, "b", "y"), ("sft", 1, "a", "x"), ("sft", 1, "b", "z"),
        ("dpo", 0, "a", "x"), ("dpo", 0, "b", "q"), ("dpo", 1, "a", "x"), ("dpo", 1, "b", "z")]]
    table = movement_table([{"run": "dpo", "seed": 0, "reward_acc": 1.0}, {"run": "dpo", "seed": 1, "reward_acc": 0.5}],
                           pd.DataFrame(rows), start="sft")
    assert table["changed replies vs sft"].tolist() == [0.5, 0.0] and table["reward_acc"].tolist() == [1.0, 0.5]


def test_movement_table_compares_every_seed_with_a_one_seed_start():
    from studykit.report import movement_table

    rows = [{"condition": c, "seed": s, "id": i, "reply": r} for c, s, i, r in [
        ("sft", 0, "a", "x"), ("sft", 0, "b", "y"),
        ("dpo", 0, "a", "x"), ("dpo", 0, "b", "q"), ("dpo", 1, "a", "w"), ("dpo", 1, "b", "q")]]
    table = movement_table([{"run": "dpo", "seed": 0}, {"run": "dpo", "seed": 1}], pd.DataFrame(rows), start="sft")
    assert table["changed replies vs sft"].tolist() == [0.5, 1.0]


def test_the_rl_run_summary_reads_each_runs_signal_and_its_first_and_last_quarter_of_reward():
    from studykit.report import rl_run_summary

    log = pd.DataFrame([{"run": "grpo", "seed": s, "step": k, "loss": 0.0, "reward": float(k >= 7)}
                        for s in (0, 1) for k in range(1, 9)] + [{"run": "sft", "seed": 0, "step": 4, "loss": 1.0}])
    signal = pd.DataFrame({"condition": ["grpo"] * 2, "seed": [0, 1], "step": [1, 1], "signal_share": [0.25, 0.75]})
    table = rl_run_summary(log, signal)
    assert table.to_dict("records") == [{"run": "grpo", "signal share": 0.5, "reward, first quarter": 0.0,
                                         "reward, last quarter": 1.0}]    # steps 1–2 and 7–8; no HPT column


def test_sample_replies_shows_every_condition_on_the_same_first_items_of_each_family():
    from studykit.report import sample_replies

    rows = [{"condition": c, "seed": s, "family": f, "id": f"{f}/{i}", "reply": f"{c}{s}{i}"}
            for c, s in (("base", -1), ("arm", 0), ("arm", 1)) for f in ("x", "y") for i in range(3)]
    table = sample_replies(pd.DataFrame(rows), 0)
    assert list(table.index) == [("x", "x/0"), ("x", "x/1"), ("y", "y/0"), ("y", "y/1")]
    assert table.loc[("y", "y/1")].to_dict() == {"arm": "arm01", "base": "base-11"}
