"""The claims YAML → verdict table."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from studykit.claims import CLAIMS_DIR, ClaimsError, claims_table, conclusions, load_claims


def predictions(conditions: dict[str, np.ndarray], families: list[str]) -> pd.DataFrame:
    """Long predictions table from {condition: (seeds, items) 0/1}."""
    rows = []
    for name, matrix in conditions.items():
        for seed, row in enumerate(np.atleast_2d(matrix)):
            for i, value in enumerate(row):
                rows.append({"condition": name, "seed": seed, "id": f"item{i}", "family": families[i],
                             "strict": bool(value), "lenient": bool(value)})
    return pd.DataFrame(rows)


CLAIMS = [
    {"id": "a.better", "paper": "studykit", "source": "s", "claim": "A beats B",
     "test": {"treatment": "a", "control": "b", "direction": "greater"}},
    {"id": "a.worse", "paper": "studykit", "source": "s", "claim": "A is worse than B",
     "test": {"treatment": "a", "control": "b", "direction": "less"}},
    {"id": "c.better", "paper": "studykit", "source": "s", "claim": "C beats B on family y",
     "test": {"treatment": "c", "control": "b", "direction": "greater", "families": "y_only"}},
    {"id": "d.same_as_a", "paper": "studykit", "source": "s", "claim": "D beats B",
     "test": {"treatment": "d", "control": "b", "direction": "greater"}},
    {"id": "later", "paper": "studykit", "source": "s", "claim": "needs RL", "not_tested": "no RL stage"},
]


def test_verdicts_from_paired_predictions():
    families = ["x"] * 60 + ["y"] * 60
    rng = np.random.default_rng(0)
    b = rng.integers(0, 2, (3, 120))
    a = np.maximum(b, rng.random((3, 120)) < 0.5)   # A fixes about half of B's errors: clearly better
    c = b.copy()
    c[:, 60] = 1 - c[:, 60]                          # C differs from B on one item: not resolved
    frame = predictions({"a": a, "b": b, "c": c}, families)
    table = claims_table(CLAIMS, frame, family_groups={"y_only": ["y"]}, aliases={"d": "a"}).set_index("id")
    assert table.loc["a.better = d.same_as_a", "verdict"] == "supported"   # D is A by construction: merged
    assert table.loc["a.worse", "verdict"] == "contradicted"
    assert table.loc["c.better", "verdict"].startswith("not resolved (MDE = ")
    assert table.loc["c.better", "items"] == 60 and table.loc["c.better", "seeds"] == 3
    assert table.loc["later", "verdict"] == "not tested: no RL stage"
    assert table.loc["a.worse", "difference"] == pytest.approx((a - b).mean())
    sentences = conclusions(table.reset_index())
    assert any("supported here" in s for s in sentences) and any("not resolved at this power" in s for s in sentences)


def test_conditions_right_on_the_same_items_are_not_separable_rather_than_given_an_mde():
    families = ["x"] * 40
    b = np.random.default_rng(1).integers(0, 2, (3, 40))
    row = claims_table(CLAIMS[:1], predictions({"a": b.copy(), "b": b}, families)).iloc[0]
    assert row["verdict"].startswith("not separable") and row["difference"] == 0.0
    assert "says nothing about the claim's effect" in conclusions(pd.DataFrame([row]))[0]


def test_a_condition_that_was_not_run_is_reported_not_tested():
    frame = predictions({"a": np.ones(4), "b": np.zeros(4)}, ["x"] * 4)
    claim = {**CLAIMS[0], "test": {"treatment": "e", "control": "b", "direction": "greater"}}
    assert claims_table([claim], frame)["verdict"].iloc[0] == "not tested: e: not run in this study"
    why = claims_table([claim], frame, not_run={"e": "fewer than 8 items"})["verdict"].iloc[0]
    assert why == "not tested: e: fewer than 8 items"


def test_every_committed_claims_file_is_valid():
    files = sorted(CLAIMS_DIR.glob("*.yaml"))
    assert files
    for path in files:
        assert load_claims(path)


@pytest.mark.parametrize("text, message", [
    ("- {id: x, paper: studykit, source: s}\n", r"missing \['claim'\]"),
    ("- {id: x, paper: nobody2020, source: s, claim: c, not_tested: t}\n", "not a key of references.bib"),
    ("- {id: x, paper: studykit, source: s, claim: c}\n", "exactly one of 'test' and 'not_tested'"),
    ("- {id: x, paper: studykit, source: s, claim: c, test: {treatment: a, control: b, direction: up}}\n",
     "direction 'up'"),
    ("- {id: x, paper: studykit, source: s, claim: c, test: {treatment: a, control: b, direction: less, "
     "metric: exact}}\n", "metric 'exact'"),
    ("- {id: x, paper: studykit, source: s, claim: c, not_tested: t}\n"
     "- {id: x, paper: studykit, source: s, claim: c, not_tested: t}\n", "duplicate id"),
    ("{}\n", "non-empty list"),
    ("- [unclosed\n", "not a readable YAML"),
])
def test_bad_claims_files_get_one_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ClaimsError, match=message):
        load_claims(path)


def test_an_untrained_condition_is_compared_with_every_seed_and_seeds_are_matched():
    families = ["x"] * 20
    frame = predictions({"a": np.ones((3, 20)), "b": np.zeros((2, 20))}, families)
    base = predictions({"base": np.zeros(20)}, families).assign(seed=-1)
    claim = {**CLAIMS[0], "test": {"treatment": "a", "control": "base", "direction": "greater"}}
    row = claims_table([claim, CLAIMS[0]], pd.concat([frame, base]))
    assert row["seeds"].tolist() == [3, 2]  # a vs base: all 3 seeds; a vs b: the 2 common seeds
    assert row["verdict"].tolist() == ["supported", "supported"]


def test_auroc_claims_compare_two_scores_on_the_same_items():
    from studykit.claims import auroc_claims_table

    labels = np.array([True] * 20 + [False] * 20)
    scores = {"good": np.r_[np.arange(20) + 20.0, np.arange(20)], "bad": np.r_[np.arange(20), np.arange(20) + 20.0]}
    claims = [{"id": "good.above_chance", "paper": "studykit", "source": "s", "claim": "c",
               "test": {"treatment": "good", "control": "chance", "metric": "auroc", "direction": "greater"}},
              {"id": "bad.beats_good", "paper": "studykit", "source": "s", "claim": "c",
               "test": {"treatment": "bad", "control": "good", "metric": "auroc", "direction": "greater"}},
              {"id": "x", "paper": "studykit", "source": "s", "claim": "c",
               "test": {"treatment": "missing", "control": "good", "metric": "auroc", "direction": "greater"}}]
    table = auroc_claims_table(claims, scores, labels).set_index("id")
    assert table.loc["good.above_chance", "difference"] == 0.5 and table.loc["good.above_chance", "verdict"] == "supported"
    assert table.loc["bad.beats_good", "difference"] == -1.0 and table.loc["bad.beats_good", "verdict"] == "contradicted"
    assert table.loc["x", "verdict"] == "not tested: ['missing'] not scored"
    with pytest.raises(ClaimsError, match="auroc_claims_table"):
        claims_table(claims[:1], predictions({"good": np.ones(4)}, ["x"] * 4))


def test_claims_on_a_per_prompt_measurement_use_its_values_and_name():
    """A diversity claim: the paired difference of a continuous per-prompt metric, named after it."""
    rows = []
    for condition, shift in (("base", 0.0), ("sft", -0.3)):
        for seed in ((-1,) if condition == "base" else (0, 1)):
            for i in range(40):
                rows.append({"condition": condition, "seed": seed, "id": f"p{i}", "family": "f" if i < 20 else "g",
                             "embedding_diversity": 0.6 + 0.01 * i + shift + 0.001 * seed})
    frame = pd.DataFrame(rows)
    entry = [{"id": "sft.collapses", "paper": "studykit", "source": "s", "claim": "SFT lowers diversity",
              "test": {"treatment": "sft", "control": "base", "metric": "embedding_diversity", "direction": "less"}}]
    row = claims_table(entry, frame).iloc[0]
    assert row["metric"] == "embedding diversity" and row["difference"] == pytest.approx(-0.3 + 0.0015)   # seeds 0, 1 vs −1
    assert row["verdict"] == "supported" and (row["items"], row["seeds"]) == (40, 2)


def test_a_per_prompt_metric_of_one_condition_gets_a_bootstrap_interval_not_a_wilson_one():
    from studykit.report import condition_accuracy, metric_summary

    frame = pd.DataFrame([{"condition": "base", "seed": -1, "id": f"p{i}", "family": "f" if i % 2 else "g",
                           "vendi": 2.0 + (i % 3), "quality": np.nan if i >= 10 else float(i % 2)}
                          for i in range(20)])
    table = condition_accuracy(frame, "vendi").iloc[0]
    assert table["vendi"] == pytest.approx(frame["vendi"].mean()) and table["ci_low"] > 2.0   # not a [0, 1] interval
    summary = metric_summary(frame, ["vendi", "quality"], {"all": ["f", "g"]})
    quality = summary[summary["metric"] == "quality"].iloc[0]
    assert quality["prompts"] == 10 and quality["mean"] == pytest.approx(0.5)   # the prompts without it left out
