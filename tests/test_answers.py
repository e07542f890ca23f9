"""The one answer extractor, on replies of the kind the embedded model writes, for every testbed family."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from studykit.answers import FAMILY_FORMATS, extract_answer, first_line, judge, judge_math, math_entry
from studykit.evaluate import accuracy_by_family, answer_baselines, judge_replies
from studykit.testbed import _generate


def item(family: str, answer: str, **params) -> dict:
    """A real reasoning-gym item of ``family`` whose gold answer is ``answer``."""
    for entry in _generate(family, params, 60, seed=7):
        if str(entry["answer"]) == answer:
            return {"id": "x", "family": family, "answer": answer, "entry": json.dumps(entry)}
    raise LookupError(answer)


@pytest.fixture(scope="module")
def items():
    return {"chain_sum": item("chain_sum", "7", min_terms=2, max_terms=2, min_digits=1, max_digits=1),
            "letter_counting": item("letter_counting", "1"),
            "syllogism": item("syllogism", "Yes"),
            "syllogism_no": item("syllogism", "No")}


@pytest.mark.parametrize("reply, strict, lenient", [
    ("7", True, True),
    ("7.", True, True),                      # the verifier itself accepts a trailing period for chain_sum
    ("The answer is 7.", False, True),
    ("3 + 4 = 7", False, True),              # several numbers: the last one is the answer
    ("The answer is 7, not 3.", False, True),  # after the marker: the first number
    ("8", False, False),
    ("I think it is 7 or 8", False, False),  # the last number is 8
    ("", False, False),
])
def test_number_replies(items, reply, strict, lenient):
    verdict = judge(items["chain_sum"], reply)
    assert (verdict.strict, verdict.lenient) == (strict, lenient)


def test_a_trailing_period_fails_strict_but_not_lenient_accuracy(items):
    assert judge(items["letter_counting"], "1.") == judge(items["letter_counting"], "1.").__class__(
        first_line="1.", extracted="1", strict=False, lenient=True)
    assert judge(items["letter_counting"], "The letter appears 1 time.").lenient
    assert not judge(items["letter_counting"], "The letter appears 2 times.").lenient


@pytest.mark.parametrize("reply, lenient", [
    ("Yes", True), ("Yes.", True), ("yes", True), ("**Yes**", True),
    ("Yes, it logically follows.", True), ("The answer is Yes.", True),
    ("No", False), ("No, it does not follow.", False), ("Maybe", False),
])
def test_yes_no_replies(items, reply, lenient):
    assert judge(items["syllogism"], reply).lenient is lenient
    assert judge(items["syllogism"], reply).strict is (reply == "Yes")


def test_yes_no_reads_the_final_answer_after_the_marker(items):
    assert extract_answer("syllogism", "No doubt about it. The answer is: yes") == "Yes"
    assert judge(items["syllogism_no"], "Not obviously. The answer is No.").lenient


@pytest.mark.parametrize("family, reply, expected", [
    ("spell_backward", "nus", "nus"),
    ("spell_backward", "The word spelled backward is 'nus'.", "nus"),
    ("spell_backward", 'Backward: "nus"', "nus"),
    ("spell_backward", "**nus**", "nus"),
    ("family_relationships", "Sarah is Elizabeth's mother-in-law.", "mother-in-law"),
    ("family_relationships", "The answer is: Husband.", "Husband"),
    ("word_sequence_reversal", "acute, go, hundred.", "acute, go, hundred"),
    ("word_sequence_reversal", "Here you go:\nacute, go, hundred", "acute, go, hundred"),
    ("word_sequence_reversal", "The reversed list is: acute, go, hundred", "acute, go, hundred"),
    ("knights_knaves", "Amelia is a hero, and Elizabeth is a villain.", "Amelia is a hero, and Elizabeth is a villain."),
    ("an_unregistered_family", '"blue".', "blue"),
])
def test_word_answers(family, reply, expected):
    assert extract_answer(family, reply) == expected


def test_word_answers_are_verified_after_extraction():
    entry = _generate("spell_backward", {"min_word_len": 3, "max_word_len": 6}, 5, seed=3)[0]
    record = {"id": "x", "family": "spell_backward", "answer": entry["answer"], "entry": json.dumps(entry)}
    gold = entry["answer"]
    assert judge(record, f"The word spelled backward is '{gold}'.").lenient
    assert not judge(record, f"The word spelled backward is '{gold}'.").strict
    assert not judge(record, f"The word spelled backward is '{gold[::-1]}x'.").lenient


def test_first_line_skips_blank_lines():
    assert first_line("\n\n  42 \nmore") == "42"
    assert first_line("   ") == ""


def test_every_testbed_family_has_an_answer_format(smoke_cfg, embedded_cfg):
    for cfg in (smoke_cfg, embedded_cfg):
        assert set(cfg.data.families) <= set(FAMILY_FORMATS)


def test_predictions_and_accuracy_from_the_same_judgement(items):
    records = [items["syllogism"], items["syllogism_no"], items["chain_sum"]]
    frame = judge_replies(records, ["Yes.", "No", "The answer is 7."])
    assert frame["strict"].tolist() == [False, True, False]
    assert frame["lenient"].tolist() == [True, True, True]
    assert accuracy_by_family(frame, "strict")["mean"] == pytest.approx((0.5 + 0.0) / 2)
    assert accuracy_by_family(frame, "lenient")["mean"] == 1.0
    with pytest.raises(ValueError, match="metric must be one of"):
        accuracy_by_family(frame, "exact")


def test_answer_baselines_chance_majority_and_the_skew_flag():
    records = ([{"family": "syllogism", "answer": "Yes"}] * 3 + [{"family": "syllogism", "answer": "No"}]
               + [{"family": "chain_sum", "answer": str(i)} for i in range(4)])
    table = answer_baselines(records).set_index("family")
    assert table.loc["syllogism", "chance"] == 0.5 and table.loc["syllogism", "majority"] == 0.75
    assert bool(table.loc["syllogism", "skewed"]) and not bool(table.loc["chain_sum", "skewed"])
    assert table.loc["chain_sum", "chance"] == 0.25 and table.loc["chain_sum", "majority"] == 0.25
    assert table.loc["mean", "majority"] == pytest.approx(0.5)


def test_accuracy_table_shows_what_a_constant_answer_scores_beside_each_model():
    from studykit.evaluate import accuracy_table

    # gold "1" on half the items: a model answering "1" everywhere scores the majority share and nothing else
    records = [{"family": "lc", "answer": a} for a in ["1", "2", "1", "3"]]
    constant = pd.DataFrame({"id": range(4), "family": "lc", "gold": ["1", "2", "1", "3"], "extracted": "1",
                             "strict": [True, False, True, False], "lenient": [True, False, True, False]})
    table = accuracy_table({"sft": constant}, records).set_index("family")
    assert table.loc["lc", "majority"] == 0.5 and table.loc["lc", "sft lenient"] == 0.5
    assert table.loc["lc", "sft modal share"] == 1.0 and table.loc["lc", "sft lenient off-majority"] == 0.0


# --- math records: Math-Verify against the gold final answer ------------------------------------------------------
def math_record(answer: str) -> dict:
    return {"id": "m", "family": "Algebra", "answer": answer, "entry": math_entry(answer)}


@pytest.mark.parametrize("gold, reply, strict, lenient", [
    ("0.5", "\\boxed{1/2}", True, True),                                  # equal values in another form
    ("0.5", "$\\boxed{\\frac{1}{2}}$.", True, True),
    ("4", "\\boxed{3}", False, False),
    ("0.5", "$\\frac{1}{2}$", False, True),                              # right, but not the boxed answer asked for
    ("0.5", "The answer is \\boxed{0.5}", False, True),                 # the first line is not the answer alone
    ("0.5", "We halve 1.\nSo the answer is $\\boxed{\\frac{1}{2}}$.", False, True),   # reasoning, then the answer
    ("0.5", "We get 1/2 first.\nThen \\boxed{3}.", False, False),        # the final answer, not an earlier number
    ("0.5", "\\boxed{0.5} or \\boxed{3}", False, False),                 # two answers: neither alone nor final
    ("(1,3)", "$\\boxed{(1, 3)}$", True, True),                           # a tuple, parsed whole
    ("5\\sqrt{2}", "\\boxed{\\sqrt{50}}", True, True),
    ("0.5", "", False, False),
])
def test_math_records_are_judged_by_math_verify(gold, reply, strict, lenient):
    verdict = judge(math_record(gold), reply)
    assert (verdict.strict, verdict.lenient) == (strict, lenient)


def test_a_math_verdict_says_what_math_verify_extracted_and_predictions_carry_it():
    assert judge_math("0.5", "So \\boxed{3}").extracted == "3" and judge_math("0.5", "no answer").extracted == ""
    table = judge_replies([math_record("4"), math_record("4")], ["\\boxed{4}", "\\boxed{3}"])
    assert table[["gold", "extracted", "strict", "lenient"]].values.tolist() == [["4", "4", True, True],
                                                                                 ["4", "3", False, False]]
