"""The claims YAML → guarded verdict table (studykit.claims, studykit.guards), on hand-built cases."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from studykit.claims import CLAIMS_DIR, ClaimsError, Evidence, claims_table, conclusions, load_claims
from studykit.stats import paired_difference

NO_TRAINING = Evidence(trained=[])   # cases about the statistics, not about placebos


def predictions(conditions: dict[str, np.ndarray], families: list[str], answers: dict | None = None,
                gold: list[str] | None = None) -> pd.DataFrame:
    """Long predictions table from {condition: (seeds, items) 0/1}; with ``answers`` ({condition: extracted answer
    per item}) and ``gold`` the degenerate-arm guard can read what each arm answers."""
    rows = []
    for name, matrix in conditions.items():
        for seed, row in enumerate(np.atleast_2d(matrix)):
            for i, value in enumerate(row):
                extra = {} if gold is None else {"gold": gold[i], "extracted": answers[name][i],
                                                 "reply": answers[name][i]}
                rows.append({"condition": name, "seed": seed, "id": f"item{i}", "family": families[i],
                             "strict": bool(value), "lenient": bool(value), **extra})
    return pd.DataFrame(rows)


CLAIMS = [
    {"id": "a.better", "paper": "studykit", "kind": "paper", "source": "s", "claim": "A beats B",
     "test": {"treatment": "a", "control": "b", "direction": "greater"}},
    {"id": "a.worse", "paper": "studykit", "kind": "paper", "source": "s", "claim": "A is worse than B",
     "test": {"treatment": "a", "control": "b", "direction": "less"}},
    {"id": "c.better", "paper": "studykit", "kind": "paper", "source": "s", "claim": "C beats B on family y",
     "test": {"treatment": "c", "control": "b", "direction": "greater", "families": "y_only"}},
    {"id": "d.same_as_a", "paper": "studykit", "kind": "paper", "source": "s", "claim": "D beats B",
     "test": {"treatment": "d", "control": "b", "direction": "greater"}},
    {"id": "later", "paper": "studykit", "kind": "paper", "source": "s", "claim": "needs RL",
     "not_tested": "no RL stage"},
]


def test_verdicts_from_paired_predictions():
    families = ["x"] * 60 + ["y"] * 60
    rng = np.random.default_rng(0)
    b = rng.integers(0, 2, (3, 120))
    a = np.maximum(b, rng.random((3, 120)) < 0.5)   # A fixes about half of B's errors: clearly better
    c = b.copy()
    c[:, 60] = 1 - c[:, 60]                          # C differs from B on one item: not resolved
    frame = predictions({"a": a, "b": b, "c": c}, families)
    evidence = Evidence(family_groups={"y_only": ["y"]}, aliases={"d": "a"}, trained=[])
    table = claims_table(CLAIMS, frame, evidence).set_index("id")
    assert table.loc["a.better = d.same_as_a", "verdict"] == "supported"   # D is A by construction: merged
    assert table.loc["a.worse", "verdict"] == "contradicted"
    assert table.loc["c.better", "verdict"].startswith("not resolved (MDE = ")
    assert table.loc["c.better", "items"] == 60 and table.loc["c.better", "seeds"] == 3
    assert table.loc["later", "verdict"] == "not tested: no RL stage"
    assert table.loc["a.worse", "difference"] == pytest.approx((a - b).mean())
    sentences = conclusions(table.reset_index())
    assert any(": supported — " in s for s in sentences) and any("not resolved at this power" in s for s in sentences)
    assert table.loc["a.worse", "p_holm"] >= table.loc["a.worse", "p"]   # Holm within the study


def test_conditions_right_on_the_same_items_are_not_separable_rather_than_given_an_mde():
    families = ["x"] * 40
    b = np.random.default_rng(1).integers(0, 2, (3, 40))
    row = claims_table(CLAIMS[:1], predictions({"a": b.copy(), "b": b}, families), NO_TRAINING).iloc[0]
    assert row["verdict"].startswith("not separable") and row["difference"] == 0.0
    assert "says nothing about the claim's effect" in conclusions(pd.DataFrame([row]))[0]


def test_a_condition_that_was_not_run_is_reported_not_tested():
    frame = predictions({"a": np.ones(4), "b": np.zeros(4)}, ["x"] * 4)
    claim = {**CLAIMS[0], "test": {"treatment": "e", "control": "b", "direction": "greater"}}
    assert claims_table([claim], frame)["verdict"].iloc[0] == "not tested: e: not run in this study"
    why = claims_table([claim], frame, Evidence(not_run={"e": "fewer than 8 items"}))["verdict"].iloc[0]
    assert why == "not tested: e: fewer than 8 items"


def test_every_committed_claims_file_is_valid():
    files = sorted(CLAIMS_DIR.glob("*.yaml"))
    assert files
    for path in files:
        assert load_claims(path)


@pytest.mark.parametrize("text, message", [
    ("- {id: x, paper: studykit, source: s, kind: kit}\n", r"missing \['claim'\]"),
    ("- {id: x, paper: studykit, source: s, claim: c, not_tested: t}\n", r"missing \['kind'\]"),
    ("- {id: x, paper: studykit, source: s, claim: c, kind: mine, not_tested: t}\n", "kind 'mine'"),
    ("- {id: x, paper: studykit, source: s, claim: c, kind: paper, not_tested: t}\n", "needs regime"),
    ("- {id: x, paper: studykit, source: s, claim: c, kind: kit, requires: {steps: 3}, not_tested: t}\n",
     "requires must map"),
    ("- {id: x, paper: nobody2020, source: s, claim: c, kind: kit, not_tested: t}\n", "not a key of references.bib"),
    ("- {id: x, paper: studykit, source: s, claim: c, kind: kit}\n", "exactly one of 'test' and 'not_tested'"),
    ("- {id: x, paper: studykit, source: s, claim: c, kind: kit, test: {treatment: a, control: b, direction: up}}\n",
     "direction 'up'"),
    ("- {id: x, paper: studykit, source: s, claim: c, kind: kit, test: {treatment: a, control: b, direction: less, "
     "metric: exact}}\n", "metric 'exact'"),
    ("- {id: x, paper: studykit, source: s, claim: c, kind: kit, not_tested: t}\n"
     "- {id: x, paper: studykit, source: s, claim: c, kind: kit, not_tested: t}\n", "duplicate id"),
    ("{}\n", "non-empty list"),
    ("- [unclosed\n", "not a readable YAML"),
])
def test_bad_claims_files_get_one_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ClaimsError, match=message):
        load_claims(path)


def test_an_untrained_condition_is_compared_with_every_seed_and_seeds_are_matched():
    families = ["x"] * 10 + ["y"] * 10
    frame = predictions({"a": np.ones((3, 20)), "b": np.zeros((2, 20))}, families)
    base = predictions({"base": np.zeros(20)}, families).assign(seed=-1)
    claim = {**CLAIMS[0], "test": {"treatment": "a", "control": "base", "direction": "greater"}}
    row = claims_table([claim, CLAIMS[0]], pd.concat([frame, base]), NO_TRAINING)
    assert row["seeds"].tolist() == [3, 2]  # a vs base: all 3 seeds; a vs b: the 2 common seeds
    assert row["verdict"].tolist() == ["supported", "supported"]


def test_a_shared_start_recorded_on_one_seed_is_compared_with_every_seed_of_its_arm():
    # The preference studies train every seed's arm from one SFT run, recorded on seed 0: the arm's five seeds are all
    # compared with it (as with an untrained base); a control that is not a declared start keeps seed matching.
    families = ["x"] * 10 + ["y"] * 10
    arm = np.tile(np.r_[np.ones(12), np.zeros(8)], (5, 1))
    start = np.r_[np.ones(4), np.zeros(16)]
    frame = predictions({"arm": arm, "sft": start}, families)
    claim = {**CLAIMS[0], "test": {"treatment": "arm", "control": "sft", "direction": "greater"}}
    shared = claims_table([claim], frame, Evidence(trained=[], starts={"arm": "sft"})).iloc[0]
    matched = claims_table([claim], frame, NO_TRAINING).iloc[0]
    assert (shared["seeds"], matched["seeds"]) == (5, 1)
    assert shared["difference"] == pytest.approx(0.4) == matched["difference"]
    assert paired_difference(arm, start).ci_low == pytest.approx(shared["ci_low"])


def test_auroc_claims_compare_two_scores_on_the_same_items():
    from studykit.claims import auroc_claims_table

    labels = np.array([True] * 20 + [False] * 20)
    scores = {"good": np.r_[np.arange(20) + 20.0, np.arange(20)], "bad": np.r_[np.arange(20), np.arange(20) + 20.0]}
    claims = [{"id": "good.above_chance", "paper": "studykit", "kind": "paper", "source": "s", "claim": "c",
               "test": {"treatment": "good", "control": "chance", "metric": "auroc", "direction": "greater"}},
              {"id": "bad.beats_good", "paper": "studykit", "kind": "paper", "source": "s", "claim": "c",
               "test": {"treatment": "bad", "control": "good", "metric": "auroc", "direction": "greater"}},
              {"id": "x", "paper": "studykit", "kind": "paper", "source": "s", "claim": "c",
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
    entry = [{"id": "sft.collapses", "paper": "studykit", "kind": "paper", "source": "s", "claim": "SFT lowers diversity",
              "test": {"treatment": "sft", "control": "base", "metric": "embedding_diversity", "direction": "less"}}]
    row = claims_table(entry, frame, NO_TRAINING).iloc[0]
    assert row["metric"] == "embedding diversity" and row["difference"] == pytest.approx(-0.3 + 0.0015)   # seeds 0, 1 vs −1
    assert row["verdict"] == "supported" and (row["items"], row["seeds"]) == (40, 2)


def test_items_where_a_per_prompt_metric_is_undefined_are_left_out_and_the_placebo_reads_the_arms_scored_items():
    """CRC diversity among valid samples is undefined on a prompt with none valid: such prompts are left out of the
    pairing (and counted in the flags), and an arm's placebo check reads its accuracy items, not its CRC prompts."""
    rng = np.random.default_rng(1)
    control = rng.integers(0, 2, (3, 60))
    frame = predictions({"slr": control, "post": np.maximum(control, rng.random((3, 60)) < 0.7),
                         "placebo": control}, ["x"] * 30 + ["y"] * 30)
    crc = []
    for condition, base in (("slr", 0.8), ("post", 0.5)):
        for seed in range(3):
            for i in range(20):
                value = np.nan if (condition == "post" and i < 4 and seed == 1) else base + 0.005 * i
                crc.append({"condition": condition, "seed": seed, "id": f"crc{i}", "family": "crc",
                            "crc_distinct_valid": value})
    frame = pd.concat([frame, pd.DataFrame(crc)], ignore_index=True)
    entry = [{"id": "slr.diverse", "paper": "studykit", "kind": "paper", "source": "s", "claim": "c",
              "test": {"treatment": "slr", "control": "post", "metric": "crc_distinct_valid", "direction": "greater",
                       "families": "crc"}}]
    evidence = Evidence(family_groups={"crc": ["crc"]}, trained=["post"], placebos={"post": "placebo"})
    row = claims_table(entry, frame, evidence).iloc[0]
    assert row["items"] == 16 and "4 item(s) left out: crc_distinct_valid undefined" in row["flags"]
    assert row["difference"] == pytest.approx(0.3)
    assert row["verdict"] == "fragile: carried by crc (the only family left)"   # resolved, one proxy task
    assert row["guards"].startswith("post − placebo +")    # paired on the 60 accuracy items, not the CRC prompts
    no_accuracy = frame[~((frame["condition"] == "post") & frame["id"].str.startswith("item"))]
    withheld = claims_table(entry, no_accuracy, evidence).iloc[0]
    assert withheld["verdict"] == "not tested: no accuracy, quality or judged items for the placebo check (post)"
    missing = claims_table(entry, frame.drop(columns="crc_distinct_valid"), evidence).iloc[0]
    assert missing["verdict"] == "not tested: crc_distinct_valid is not in this evidence"


def test_a_per_prompt_metric_of_one_condition_gets_a_t_interval_not_a_wilson_one():
    from studykit.report import condition_accuracy, metric_summary

    frame = pd.DataFrame([{"condition": "base", "seed": -1, "id": f"p{i}", "family": "f" if i % 2 else "g",
                           "vendi": 2.0 + (i % 3), "quality": np.nan if i >= 10 else float(i % 2)}
                          for i in range(20)])
    table = condition_accuracy(frame, "vendi").iloc[0]
    assert table["vendi"] == pytest.approx(frame["vendi"].mean()) and table["ci_low"] > 2.0   # not a [0, 1] interval
    summary = metric_summary(frame, ["vendi", "quality"], {"all": ["f", "g"]})
    quality = summary[summary["metric"] == "quality"].iloc[0]
    assert quality["prompts"] == 10 and quality["mean"] == pytest.approx(0.5)   # the prompts without it left out
    crc = pd.DataFrame([{"condition": c, "seed": seed, "id": f"p{i}", "family": "crc",
                         "crc_distinct_valid": np.nan if (c == "start" and i < 3) or (seed == 1 and i == 5) else 0.5}
                        for c, seeds in (("start", [-1]), ("post", [0, 1])) for seed in seeds for i in range(8)])
    by_condition = metric_summary(crc, ["crc_distinct_valid"], {"crc": ["crc"]}).set_index("condition")
    assert by_condition.loc["start", "prompts"] == 5 and by_condition.loc["post", "prompts"] == 7   # its own prompts
    assert by_condition.loc["post", "mean"] == pytest.approx(0.5)                      # no seed's NaN in the mean


def _claim(treatment, control, direction="greater", **extra):
    return {"id": f"{treatment}.vs.{control}", "paper": "studykit", "kind": "paper", "source": "s", "claim": "c",
            **extra, "test": {"treatment": treatment, "control": control, "direction": direction}}


def test_a_family_where_an_arm_answers_a_constant_is_left_out_and_with_none_left_not_tested():
    # family "lc": gold "1" on half the items; the trained arm answers "1" everywhere (the letter_counting case)
    families, gold = ["lc"] * 20 + ["w"] * 20, ["1", "2"] * 10 + [f"w{i}" for i in range(20)]
    rng = np.random.default_rng(0)
    base_w = rng.random(20) < 0.3
    sft_w = base_w | (rng.random(20) < 0.5)
    answers = {"sft": ["1"] * 20 + [g if ok else "x" for g, ok in zip(gold[20:], sft_w)],
               "base": [g if i % 3 == 0 else "7" for i, g in enumerate(gold[:20])]
               + [g if ok else f"y{i}" for i, (g, ok) in enumerate(zip(gold[20:], base_w))]}
    correct = {k: np.array([a == g for a, g in zip(v, gold)], float) for k, v in answers.items()}
    frame = predictions(correct, families, answers, gold)
    row = claims_table([_claim("sft", "base")], frame, NO_TRAINING).iloc[0]
    assert row["excluded_families"].startswith("lc (") and "sft constant answers" in row["excluded_families"]
    assert row["items"] == 20 and row["difference"] == pytest.approx(correct["sft"][20:].mean() - correct["base"][20:].mean())
    only_lc = claims_table([_claim("sft", "base")], frame[frame["family"] == "lc"], NO_TRAINING).iloc[0]
    assert only_lc["verdict"].startswith("not tested: degenerate arms on every family (lc: sft constant answers")
    from studykit.guards import family_profile

    profile = family_profile(frame).set_index(["condition", "family"])
    assert profile.loc[("sft", "lc"), "modal_share"] == 1.0 and profile.loc[("sft", "lc"), "best_constant"] == 0.5
    assert profile.loc[("sft", "lc"), "accuracy_off_majority"] == 0.0    # right only where gold is the constant


def test_a_verdict_one_family_carries_is_fragile():
    families = ["a"] * 40 + ["b"] * 40 + ["c"] * 40
    control = np.zeros((3, 120))
    treatment = control.copy()
    treatment[:, :30] = 1            # every gain is in family a
    treatment[0, 45] = treatment[1, 90] = 1
    row = claims_table([_claim("t", "c")], predictions({"t": treatment, "c": control}, families), NO_TRAINING).iloc[0]
    assert row["verdict"] == "fragile: carried by a"


def test_opposite_family_effects_are_not_pooled_but_reported_per_family():
    families = ["up"] * 40 + ["down"] * 40
    rng = np.random.default_rng(1)
    control = (rng.random((3, 80)) < 0.5).astype(float)
    treatment = control.copy()
    treatment[:, :40] = np.maximum(control[:, :40], rng.random((3, 40)) < 0.7)
    treatment[:, 40:] = np.minimum(control[:, 40:], rng.random((3, 40)) < 0.2)
    table = claims_table([_claim("t", "c")], predictions({"t": treatment, "c": control}, families), NO_TRAINING)
    assert table["verdict"].iloc[0].startswith("not pooled: opposite effects (up +")
    per_family = table.set_index("id")["verdict"]
    assert per_family["t.vs.c [up]"].startswith("fragile: carried by up")     # one family: never a verdict alone
    assert per_family["t.vs.c [down]"].startswith("fragile: carried by down")


def test_an_arm_no_better_than_its_placebo_is_not_tested_and_no_placebo_is_said():
    families = ["x"] * 40 + ["y"] * 40
    rng = np.random.default_rng(2)
    control = (rng.random((3, 80)) < 0.3).astype(float)
    placebo = np.maximum(control, rng.random((3, 80)) < 0.4)     # drift alone moves it as much as training
    trained = placebo.copy()
    frame = predictions({"t": trained, "c": control, "t_placebo": placebo}, families)
    claim = [_claim("t", "c")]
    missing = claims_table(claim, frame, Evidence(trained=["t"])).iloc[0]
    assert missing["verdict"] == "not tested: no placebo yet (t)"
    same = claims_table(claim, frame, Evidence(trained=["t"], placebos={"t": "t_placebo"})).iloc[0]
    assert same["verdict"].startswith("not tested: indistinguishable from placebo (t − t_placebo +0.000")
    learned = np.maximum(placebo, rng.random((3, 80)) < 0.6)
    frame = predictions({"t": learned, "c": control, "t_placebo": placebo}, families)
    beats = claims_table(claim, frame, Evidence(trained=["t"], placebos={"t": "t_placebo"})).iloc[0]
    assert beats["verdict"] == "supported" and beats["guards"].startswith("t − t_placebo +0.")


def test_a_judged_arm_is_checked_against_its_placebo_on_the_judges_score():
    """A paper profile scores replies by a judge only (a ``win`` column, no verifier): the placebo check reads it."""
    families = ["x"] * 40 + ["y"] * 40
    rng = np.random.default_rng(4)
    control = (rng.random((3, 80)) < 0.3).astype(float)
    placebo = np.maximum(control, rng.random((3, 80)) < 0.35)
    learned = np.maximum(placebo, rng.random((3, 80)) < 0.6)
    def judged(conditions):   # the verifier's columns replaced by a judge's win column
        frame = predictions(conditions, families)
        return frame.drop(columns=["strict", "lenient"]).assign(win=frame["lenient"].astype(float))

    claim = [{**_claim("t", "c"), "test": {"treatment": "t", "control": "c", "direction": "greater",
                                           "metric": "score"}}]
    row = claims_table(claim, judged({"t": learned, "c": control, "t_placebo": placebo}),
                       Evidence(trained=["t"], placebos={"t": "t_placebo"})).iloc[0]
    assert row["guards"].startswith("t − t_placebo +0.") and row["verdict"] == "supported"
    flat = judged({"t": placebo, "c": control, "t_placebo": placebo})
    assert claims_table(claim, flat, Evidence(trained=["t"], placebos={"t": "t_placebo"})).iloc[0][
        "verdict"].startswith("not tested: indistinguishable from placebo (t − t_placebo")


def test_an_unmet_rl_precondition_names_the_measured_value():
    families = ["x"] * 30 + ["y"] * 30
    rng = np.random.default_rng(3)
    control = (rng.random((2, 60)) < 0.3).astype(float)
    frame = predictions({"grpo": np.maximum(control, rng.random((2, 60)) < 0.5), "base": control}, families)
    signal = pd.DataFrame({"condition": "grpo", "seed": [0, 0, 1, 1], "step": [1, 2, 1, 2],
                           "signal_share": [0.0, 0.5, 0.0, 0.0]})
    claim = [_claim("grpo", "base", requires={"signal_share": 0.5})]
    row = claims_table(claim, frame, Evidence(trained=["grpo"], placebos={"grpo": "base"}, rl_signal=signal)).iloc[0]
    assert row["verdict"] == "not tested: signal_share = 0.12 < 0.5 (grpo)"


def test_an_arm_without_a_quality_gain_over_its_start_cannot_carry_a_verdict():
    """requires: {quality_gain: 0.0} — the lower 95% bound of the arm's paired quality gain over its start must be
    ≥ 0: an arm that only drifted (its interval across 0) is withheld, one that learned is not."""
    families = ["x"] * 30 + ["y"] * 30
    rng = np.random.default_rng(5)
    base = (rng.random((5, 60)) < 0.4).astype(float)
    learned = np.maximum(base, rng.random((5, 60)) < 0.6)
    drifted = np.where(rng.random((5, 60)) < 0.1, 1 - base, base)
    evidence = Evidence(trained=["rl"], placebos={"rl": "placebo"}, starts={"rl": "base"})
    claim = [_claim("rl", "base", requires={"quality_gain": 0.0})]
    for arm, carried in ((learned, True), (drifted, False)):
        frame = predictions({"rl": arm, "base": base, "placebo": base}, families)
        row = claims_table(claim, frame, evidence).iloc[0]
        expected = paired_difference(arm, base).ci_low
        assert f"quality_gain(rl) = {expected:.2f}" in row["guards"]
        assert (f"quality_gain = {expected:.2f} < 0.0 (rl)" in row["verdict"]) is not carried


def test_a_one_seed_untrained_control_equal_to_every_treatment_seed_is_not_separable_not_mde_zero():
    families = ["x"] * 20 + ["y"] * 20
    base = (np.random.default_rng(4).random(40) < 0.4).astype(float)
    frame = pd.concat([predictions({"t": np.tile(base, (3, 1))}, families),
                       predictions({"base": base}, families).assign(seed=-1)])
    row = claims_table([_claim("t", "base")], frame, NO_TRAINING).iloc[0]
    assert row["verdict"] == "not separable: the same score on every item and seed"
    assert "1-seed condition compared with each of 3 seeds" in row["flags"]


def test_numerically_identical_tests_are_merged_into_one_row():
    families = ["x"] * 30 + ["y"] * 30
    rng = np.random.default_rng(5)
    dpo = (rng.random((3, 60)) < 0.5).astype(float)
    ipo = np.maximum(dpo, rng.random((3, 60)) < 0.3)
    frame = predictions({"dpo": dpo, "ipo": ipo, "dpo_norm": ipo.copy()}, families)
    table = claims_table([_claim("ipo", "dpo"), _claim("dpo_norm", "dpo")], frame, NO_TRAINING)
    assert table["id"].tolist() == ["ipo.vs.dpo = dpo_norm.vs.dpo"]


def test_a_kit_question_is_never_reported_as_contradicting_a_paper():
    families = ["x"] * 30 + ["y"] * 30
    control = np.ones((3, 60))
    treatment = control.copy()
    treatment[:, ::2] = 0
    frame = predictions({"t": treatment, "c": control}, families)
    row = claims_table([{**_claim("t", "c"), "kind": "kit"}], frame, NO_TRAINING).iloc[0]
    assert row["verdict"] == "kit: treatment lower"


def test_inseparable_comparisons_that_are_the_same_test_are_one_row_too():
    families = ["x"] * 30 + ["y"] * 30
    dpo = (np.random.default_rng(6).random((3, 60)) < 0.5).astype(float)
    ipo = dpo.copy()
    ipo[0, 3] = 1 - ipo[0, 3]          # one item-seed apart: not separable
    frame = predictions({"dpo": dpo, "ipo": ipo, "dpo_norm": ipo.copy()}, families)
    table = claims_table([_claim("ipo", "dpo"), _claim("dpo_norm", "dpo")], frame, NO_TRAINING)
    assert table["id"].tolist() == ["ipo.vs.dpo = dpo_norm.vs.dpo"]
    assert table["verdict"].iloc[0] == "not separable: they differ on only 1 item-seed(s)"


def test_conditions_with_the_same_replies_everywhere_are_listed_as_identical_runs():
    from studykit.guards import identical_conditions

    families, gold = ["x"] * 4, ["a", "b", "c", "d"]
    answers = {"ipo": ["a", "b", "z", "d"], "dpo_norm": ["a", "b", "z", "d"], "dpo": ["a", "y", "z", "d"]}
    correct = {k: np.array([a == g for a, g in zip(v, gold)], float) for k, v in answers.items()}
    table = identical_conditions(predictions(correct, families, answers, gold))
    assert table.to_dict(orient="records") == [{"condition": "dpo_norm", "same_as": "ipo", "item_seeds": 4}]


def test_a_headline_claim_carries_a_verdict_only_from_five_seeds():
    families = ["x"] * 30 + ["y"] * 30
    rng = np.random.default_rng(7)
    control = (rng.random((5, 60)) < 0.3).astype(float)
    treatment = np.maximum(control, rng.random((5, 60)) < 0.6)
    frame = predictions({"t": treatment, "c": control}, families)
    claim = [{**_claim("t", "c"), "headline": True}]
    assert claims_table(claim, frame, NO_TRAINING)["verdict"].iloc[0] == "supported"
    three = claims_table(claim, frame[frame["seed"] < 3], NO_TRAINING).iloc[0]
    assert three["verdict"] == "not tested: headline claim on 3 seed(s), needs ≥ 5"


def test_a_paper_effect_below_the_mde_makes_an_unresolved_comparison_not_testable():
    families = ["x"] * 30 + ["y"] * 30
    rng = np.random.default_rng(8)
    control = (rng.random((3, 60)) < 0.5).astype(float)
    treatment = control.copy()
    treatment[0, :2] = 1 - treatment[0, :2]
    treatment[1, 30:33] = 1 - treatment[1, 30:33]
    frame = predictions({"t": treatment, "c": control}, families)
    plain = claims_table([_claim("t", "c")], frame, NO_TRAINING).iloc[0]
    assert plain["verdict"].startswith("not resolved")
    small = claims_table([{**_claim("t", "c"), "paper_effect": 0.01}], frame, NO_TRAINING).iloc[0]
    assert small["verdict"] == f"not testable at this scale (paper effect +0.010 vs MDE {plain['mde']:.3f})"
    assert "neither supports nor contradicts" in conclusions(pd.DataFrame([small]))[0]
    large = claims_table([{**_claim("t", "c"), "paper_effect": 5.0}], frame, NO_TRAINING).iloc[0]
    assert large["verdict"].startswith("not resolved")  # a detectable paper effect that did not show: not resolved


def test_paper_effect_must_be_a_number(tmp_path):
    from studykit.claims import _check_guards

    entry = {"id": "a", "kind": "kit", "paper_effect": "big"}
    with pytest.raises(ClaimsError, match="paper_effect must be a non-zero number"):
        _check_guards("x.yaml: claim 'a'", entry)


def test_an_arm_scored_only_teacher_forced_is_checked_on_that_metric_and_an_inert_arm_is_shown_not_required():
    """prob_objectives' model-weak arms have only teacher-forced scores: their placebo check reads the claim's
    metric, beside accuracy rows of other arms in the same table.  The arm the paper expects not to learn (−p on an
    unseen task) may stay at its placebo without withholding the verdict when its witness (−p where it should act)
    beats its own placebo; the other arm must still beat its placebo, and so must the witness."""
    rng = np.random.default_rng(5)
    strong = rng.random((3, 40)) < 0.3
    accuracy = predictions({"p_strong": np.maximum(strong, rng.random((3, 40)) < 0.4), "placebo_p_strong": strong},
                           ["x"] * 20 + ["y"] * 20)
    rows = []
    for condition, level in (("nll", 0.6), ("p", 0.1), ("placebo_nll", 0.1), ("placebo_p", 0.1)):
        for seed in range(3):
            for i in range(40):
                rows.append({"condition": condition, "seed": seed, "id": f"w{i}", "family": "fig" if i < 20 else "sb",
                             "gold_token_accuracy": float(np.clip(level + rng.normal(0, 0.1), 0, 1))})
    frame = pd.concat([accuracy, pd.DataFrame(rows)], ignore_index=True)
    entry = {"id": "weak", "paper": "studykit", "kind": "kit", "source": "s", "claim": "c",
             "test": {"treatment": "p", "control": "nll", "metric": "gold_token_accuracy", "direction": "less",
                      "families": "weak"}}
    placebos = {arm: f"placebo_{arm}" for arm in ("nll", "p", "p_strong")}
    evidence = Evidence(family_groups={"weak": ["fig", "sb"]}, trained=["nll", "p", "p_strong"], placebos=placebos)
    withheld = claims_table([entry], frame, evidence).iloc[0]
    assert withheld["verdict"].startswith("not tested: indistinguishable from placebo (p − placebo_p")
    inert = {**entry, "inert_arm": {"arm": "p", "witness": "p_strong"}}
    row = claims_table([inert], frame, evidence).iloc[0]
    assert re.search(r"p − placebo_p [+-]0\.0\d\d \[.*\] \(expected inert: not required\)", row["guards"])
    assert re.search(r"nll − placebo_nll \+0\.[45]\d\d \[", row["guards"])
    assert re.search(r"p_strong − placebo_p_strong \+0\.\d+ \[.*\] \(the inert arm's witness\)", row["guards"])
    assert row["metric"] == "gold token accuracy (teacher-forced)"
    assert row["difference"] == pytest.approx(-0.48, abs=0.03) and row["verdict"].startswith("kit: treatment lower")
    flat = frame.assign(gold_token_accuracy=np.where(frame["condition"] == "nll", frame["gold_token_accuracy"] - 0.5,
                                                     frame["gold_token_accuracy"]))
    assert claims_table([inert], flat, evidence).iloc[0]["verdict"].startswith(
        "not tested: indistinguishable from placebo (nll − placebo_nll")   # the winning arm must still have learned
    broken = frame.assign(lenient=np.where(frame["condition"] == "p_strong", frame["lenient"] * 0, frame["lenient"]))
    assert claims_table([inert], broken, evidence).iloc[0]["verdict"].startswith(
        "not tested: indistinguishable from placebo (p_strong − placebo_p_strong")   # a broken method is no inert arm
    from studykit.claims import _check_guards

    for wrong in ({"arm": "nll", "witness": "p_strong"}, {"arm": "p", "witness": "nll"}, "p"):
        with pytest.raises(ClaimsError, match=r"inert_arm must be \{arm: p \(the arm the test says is lower\)"):
            _check_guards("here", {**entry, "inert_arm": wrong})
