"""studykit.stats against hand-computable cases and the libraries' own documented values."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from studykit.stats import (auroc, auroc_difference, mcnemar_test, minimum_detectable_effect, paired_difference, rank_correlation,
                            verdict, wilson_interval)


def test_wilson_interval_matches_the_closed_form():
    # Wilson (1927): centre (p + z²/2n)/(1 + z²/n), half-width z/(1 + z²/n)·sqrt(p(1−p)/n + z²/4n²)
    n, k, z = 20, 14, scipy_stats.norm.ppf(0.975)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson_interval(k, n) == pytest.approx((centre - half, centre + half), abs=1e-10)
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and 0.25 < high < 0.35  # never below 0, unlike the Wald interval
    with pytest.raises(ValueError, match="n > 0"):
        wilson_interval(0, 0)


def test_minimum_detectable_effect_is_2_80_standard_errors():
    assert minimum_detectable_effect(1.0) == pytest.approx(scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8),
                                                           abs=1e-4)  # a numeric root
    assert minimum_detectable_effect(0.05) == pytest.approx(0.1401, abs=1e-4)


def test_mcnemar_exact_is_the_binomial_test_on_discordant_pairs():
    # 1 item only the treatment gets right, 9 only the control: p = 2·P(X ≤ 1 | n=10, ½) = 22/1024
    treatment = np.array([1] + [0] * 9 + [1] * 5 + [0] * 5)
    control = np.array([0] + [1] * 9 + [1] * 5 + [0] * 5)
    assert mcnemar_test(treatment, control) == pytest.approx(22 / 1024)
    assert mcnemar_test(control, control) == pytest.approx(1.0)


def test_paired_difference_identical_conditions_give_a_zero_interval():
    x = np.random.default_rng(0).integers(0, 2, size=(3, 40))
    result = paired_difference(x, x, strata=np.repeat([0, 1], 20), n_boot=500)
    assert (result.estimate, result.ci_low, result.ci_high, result.mde) == (0.0, 0.0, 0.0, 0.0)


def test_paired_difference_single_seed_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    control = rng.integers(0, 2, 400)
    treatment = np.where(rng.random(400) < 0.3, 1, control)  # treatment flips some wrong items to right
    result = paired_difference(treatment, control, n_boot=20_000)
    d = treatment - control
    se = d.std(ddof=1) / math.sqrt(len(d))
    assert result.estimate == pytest.approx(d.mean())
    assert result.standard_error == pytest.approx(se, rel=0.05)
    assert result.ci_low == pytest.approx(d.mean() - 1.96 * se, abs=0.01)
    assert result.ci_high == pytest.approx(d.mean() + 1.96 * se, abs=0.01)
    assert result.mcnemar_p == pytest.approx(mcnemar_test(treatment, control))
    assert result.n_seeds == 1 and result.n_items == 400


def test_paired_difference_stratified_bootstrap_keeps_each_family_whole():
    # Family A: treatment always +1 better; family B: always equal.  With strata, every bootstrap sample holds
    # exactly half A items, so the difference is exactly 0.5 in every sample.
    treatment = np.array([1] * 10 + [0] * 10)
    control = np.zeros(20)
    result = paired_difference(treatment, control, strata=["A"] * 10 + ["B"] * 10, n_boot=300)
    assert result.ci_low == pytest.approx(0.5) and result.ci_high == pytest.approx(0.5)
    unstratified = paired_difference(treatment, control, n_boot=300)
    assert unstratified.ci_high - unstratified.ci_low > 0.2


def test_seed_variation_widens_the_interval():
    rng = np.random.default_rng(2)
    control = rng.integers(0, 2, (3, 200))
    same_shift = np.vstack([np.where(rng.random(200) < 0.2, 1, row) for row in control])
    # treatment seeds that disagree a lot: one much better, two no better
    noisy = np.vstack([np.ones(200), control[1], control[2]])
    assert (paired_difference(noisy, control).ci_high - paired_difference(noisy, control).ci_low
            > paired_difference(same_shift, control).ci_high - paired_difference(same_shift, control).ci_low)


def test_a_one_seed_control_is_compared_with_every_treatment_seed():
    control = np.zeros(10)
    treatment = np.array([[1] * 5 + [0] * 5, [1] * 3 + [0] * 7])
    assert paired_difference(treatment, control, n_boot=100).estimate == pytest.approx(0.4)
    with pytest.raises(ValueError, match="items"):
        paired_difference(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="seeds"):
        paired_difference(np.zeros((2, 3)), np.zeros((3, 3)))


def test_rank_correlation_exact_permutation_p_value():
    # n = 5, perfectly monotone: ρ = 1, and only 2 of the 5! = 120 pairings reach |ρ| = 1 → p = 2/120
    result = rank_correlation([1, 2, 3, 4, 5], [10, 20, 30, 40, 50])
    assert result["statistic"] == pytest.approx(1.0) and result["p_value"] == pytest.approx(2 / 120)
    result = rank_correlation([1, 2, 3, 4, 5], [50, 40, 30, 20, 10], "kendall")
    assert result["statistic"] == pytest.approx(-1.0) and result["p_value"] == pytest.approx(2 / 120)
    assert math.isnan(rank_correlation([1, 2, 3], [1, 1, 1])["statistic"])
    assert math.isnan(rank_correlation([1, 2], [1, 2])["statistic"])
    with pytest.raises(ValueError, match="equal-length"):
        rank_correlation([1, 2, 3], [1, 2])


def test_auroc_and_its_interval():
    perfect = auroc([1, 1, 1, 0, 0, 0], [0.9, 0.8, 0.7, 0.3, 0.2, 0.1], n_boot=200)
    assert perfect["auroc"] == 1.0 and perfect["ci_low"] == 1.0
    # one swapped pair out of 3×3: AUROC = 8/9
    assert auroc([1, 1, 1, 0, 0, 0], [0.9, 0.8, 0.25, 0.3, 0.2, 0.1], n_boot=200)["auroc"] == pytest.approx(8 / 9)
    rng = np.random.default_rng(3)
    chance = auroc(rng.integers(0, 2, 300).astype(bool), rng.random(300))
    assert chance["ci_low"] < 0.5 < chance["ci_high"]
    with pytest.raises(ValueError, match="both positive and negative"):
        auroc([1, 1], [0.1, 0.2])


@pytest.mark.parametrize("low, high, direction, expected", [
    (0.02, 0.10, "greater", "supported"),
    (-0.10, -0.02, "greater", "contradicted"),
    (-0.10, -0.02, "less", "supported"),
    (0.02, 0.10, "less", "contradicted"),
    (-0.05, 0.10, "greater", "not resolved (MDE = 0.120)"),
    (0.0, 0.10, "greater", "not resolved (MDE = 0.120)"),  # touching 0 is not excluding it
])
def test_the_verdict_rule(low, high, direction, expected):
    assert verdict(low, high, direction, mde=0.12) == expected


def test_the_verdict_rule_rejects_an_unknown_direction():
    with pytest.raises(ValueError, match="direction must be one of"):
        verdict(0.1, 0.2, "bigger")


def test_the_vectorized_bootstrap_auroc_is_scikit_learns_auroc_on_each_replicate():
    from sklearn.metrics import roc_auc_score

    from studykit.stats import _stratified_indices

    rng = np.random.default_rng(4)
    labels = rng.random(60) < 0.4
    scores = np.round(rng.random(60), 1)  # with ties
    ours = auroc(labels, scores, n_boot=50, seed=9)
    index = _stratified_indices(labels.astype(int), 50, np.random.default_rng(9))
    expected = np.percentile([roc_auc_score(labels[i], scores[i]) for i in index], [2.5, 97.5])
    assert (ours["ci_low"], ours["ci_high"]) == pytest.approx(tuple(expected))


def test_auroc_difference_known_values():
    labels = np.array([True, True, False, False])
    perfect, reversed_ = np.array([2.0, 1.0, 0.0, -1.0]), np.array([0.0, 1.0, 2.0, 3.0])
    versus_chance = auroc_difference(labels, perfect)
    assert versus_chance.estimate == 0.5 and versus_chance.ci_low == versus_chance.ci_high == 0.5
    assert auroc_difference(labels, perfect, reversed_).estimate == 1.0
    same = auroc_difference(labels, perfect, perfect + 1.0)        # a monotone shift ranks items identically
    assert same.estimate == same.ci_low == same.ci_high == 0.0 and same.mde == 0.0


def test_auroc_difference_is_paired():
    """Two noisy copies of one score: their AUROCs move together across bootstrap replicates, so the paired
    interval of the difference is narrower than either AUROC's own interval."""
    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.3
    base = labels + rng.normal(0, 1.0, 200)
    a, b = base + rng.normal(0, 0.2, 200), base + rng.normal(0, 0.2, 200)
    paired = auroc_difference(labels, a, b)
    alone = auroc(labels, a)
    assert paired.ci_high - paired.ci_low < (alone["ci_high"] - alone["ci_low"]) / 2
    assert paired.ci_low < 0 < paired.ci_high
