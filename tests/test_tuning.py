"""Choosing a setting on the dev split: the largest gain of an arm over its own placebo, paired on items."""
from __future__ import annotations

import pandas as pd
import pytest

from studykit.tuning import chosen_setting, dev_choice


def _rows(condition: str, scores: list[int], seed: int = 0) -> list[dict]:
    return [{"condition": condition, "seed": seed, "id": f"d{i}", "lenient": float(s)} for i, s in enumerate(scores)]


def test_the_setting_that_beats_its_placebo_by_most_is_chosen_not_the_best_arm():
    # lr=high scores more on dev (0.75) but its placebo scores as much: it learned the format, not the answers
    frame = pd.DataFrame(_rows("dpo@low", [1, 1, 0, 0]) + _rows("placebo_dpo@low", [0, 0, 0, 0])
                         + _rows("dpo@high", [1, 1, 1, 0]) + _rows("placebo_dpo@high", [1, 1, 0, 1]))
    table = dev_choice(frame, {"low": ("dpo@low", "placebo_dpo@low"), "high": ("dpo@high", "placebo_dpo@high")})
    assert table["arm_accuracy"].tolist() == [0.5, 0.75]
    assert table["gain"].tolist() == [0.5, 0.0] and table["items"].tolist() == [4, 4]
    assert chosen_setting(table) == "low" and table["chosen"].tolist() == [True, False]
    assert table.loc[0, "ci_low"] < 0.5 < table.loc[0, "ci_high"]


def test_a_tie_goes_to_the_first_setting_and_only_shared_items_are_paired():
    frame = pd.DataFrame(_rows("a@1", [1, 0]) + _rows("placebo_a@1", [0, 0]) + _rows("a@2", [1, 0, 1])
                         + _rows("placebo_a@2", [0, 0]))   # a@2's third item has no placebo reply: left out
    table = dev_choice(frame, {"1": ("a@1", "placebo_a@1"), "2": ("a@2", "placebo_a@2")})
    assert table["gain"].tolist() == [0.5, 0.5] and table["items"].tolist() == [2, 2]
    assert chosen_setting(table) == "1"


def test_a_setting_without_dev_predictions_is_an_error():
    frame = pd.DataFrame(_rows("a@1", [1, 0]))
    with pytest.raises(ValueError, match="no dev predictions of 'placebo_a@1'"):
        dev_choice(frame, {"1": ("a@1", "placebo_a@1")})
