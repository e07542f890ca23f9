"""studykit.stats against hand-computable cases and the libraries' own documented values."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from studykit.stats import (SMALLEST_SIGNIFICANT_CELLS, auroc, auroc_difference, benjamini_hochberg, holm, mcnemar_test,
                            minimum_detectable_effect, paired_difference, rank_correlation, seed_item_variance, verdict,
                            wilson_interval)


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


def test_paired_difference_identical_conditions_give_a_zero_interval_and_the_cells_floor_as_mde():
    x = np.random.default_rng(0).integers(0, 2, size=(3, 40))
    result = paired_difference(x, x)
    assert (result.estimate, result.ci_low, result.ci_high, result.p_value) == (0.0, 0.0, 0.0, 1.0)
    # no interval can be narrower than what 3 × 40 paired 0/1 cells can show: 6 discordant cells of 120
    assert SMALLEST_SIGNIFICANT_CELLS == 6 and result.mde == pytest.approx(6 / 120)


def test_paired_difference_single_seed_is_the_paired_t_interval():
    rng = np.random.default_rng(1)
    control = rng.integers(0, 2, 400)
    treatment = np.where(rng.random(400) < 0.3, 1, control)  # treatment flips some wrong items to right
    result = paired_difference(treatment, control)
    reference = scipy_stats.ttest_rel(treatment, control)
    low, high = reference.confidence_interval()
    assert result.estimate == pytest.approx((treatment - control).mean())
    assert (result.ci_low, result.ci_high) == pytest.approx((low, high))
    assert result.p_value == pytest.approx(reference.pvalue) and result.df == 399
    assert result.mcnemar_p == pytest.approx(mcnemar_test(treatment, control))
    assert result.n_seeds == 1 and result.n_items == 400 and result.per_seed == (pytest.approx(result.estimate),)


def test_paired_difference_on_one_item_is_the_one_sample_t_interval_over_seeds():
    """A family of one prompt (an open-ended category) tested per family: its seeds are the only replicates."""
    t, c = np.array([[0.61], [0.55], [0.70]]), np.array([[0.40], [0.42], [0.38]])
    result = paired_difference(t, c)
    reference = scipy_stats.ttest_1samp((t - c)[:, 0], 0.0)
    assert result.df == 2 and result.p_value == pytest.approx(reference.pvalue)
    low, high = reference.confidence_interval(0.95)
    assert (result.ci_low, result.ci_high) == (pytest.approx(low), pytest.approx(high))


def test_seed_item_variance_uses_statsmodels_two_way_anova_mean_squares():
    import pandas as pd
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    rng = np.random.default_rng(4)
    diff = rng.normal(0, 1, (4, 30)) + rng.normal(0, 0.5, (4, 1)) + rng.normal(0, 0.7, (1, 30))
    frame = pd.DataFrame([(s, i, diff[s, i]) for s in range(4) for i in range(30)], columns=["seed", "item", "d"])
    table = anova_lm(smf.ols("d ~ C(seed) + C(item)", frame).fit())
    ms = table["mean_sq"]
    expected = (ms["C(seed)"] + ms["C(item)"] - ms["Residual"]) / diff.size
    variance, _ = seed_item_variance(diff)
    assert variance == pytest.approx(expected)


def test_a_seed_level_effect_gets_the_seeds_degrees_of_freedom():
    rng = np.random.default_rng(5)
    diff = rng.normal(0, 0.3, (3, 1)) + rng.normal(0, 0.05, (3, 200))  # the seeds disagree, the items do not
    result = paired_difference(diff, np.zeros_like(diff))
    assert result.df == 2
    assert result.ci_high - result.ci_low == pytest.approx(2 * scipy_stats.t.ppf(0.975, 2) * result.standard_error)


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_the_interval_keeps_its_false_positive_rate_with_few_seeds(n_seeds):
    """No true effect, a mix of seed, item and cell noise (0/1 outcomes on a probit scale, like the studies'
    accuracy tables; seed SD 0–1, item SD 0–0.5): the 95% interval excludes 0 in at most 6% of 600 replicates in
    every mix (deterministic: fixed seed)."""
    rng = np.random.default_rng(11)
    n_items, replicates = 192, 600
    for seed_sd, item_sd in [(0.0, 0.0), (0.15, 0.0), (0.3, 0.0), (0.0, 0.5), (0.3, 0.5), (0.1, 0.2), (1.0, 0.0)]:
        false_positives = 0
        for _ in range(replicates):
            difficulty = rng.normal(-0.5, 1, n_items)
            item_effect = rng.normal(0, item_sd, n_items)   # per item, the conditions differ; mean 0 over items
            shift_t, shift_c = (rng.normal(0, seed_sd, (n_seeds, 1)) for _ in range(2))
            t = rng.random((n_seeds, n_items)) < scipy_stats.norm.cdf(difficulty + item_effect / 2 + shift_t)
            c = rng.random((n_seeds, n_items)) < scipy_stats.norm.cdf(difficulty - item_effect / 2 + shift_c)
            result = paired_difference(t.astype(float), c.astype(float))
            false_positives += result.ci_low > 0 or result.ci_high < 0
        assert false_positives / replicates <= 0.06, (seed_sd, item_sd, false_positives / replicates)


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
    assert paired_difference(treatment, control).estimate == pytest.approx(0.4)
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


@pytest.mark.parametrize("estimate, p, direction, kind, expected", [
    (0.05, 0.01, "greater", "paper", "supported"),
    (-0.05, 0.01, "greater", "paper", "contradicted"),
    (-0.05, 0.01, "less", "paper", "supported"),
    (0.05, 0.01, "less", "paper", "contradicted"),
    (0.05, 0.2, "greater", "paper", "not resolved (MDE = 0.120)"),
    (0.05, 0.05, "greater", "paper", "not resolved (MDE = 0.120)"),  # adjusted p must be below α
    (-0.05, 0.01, "greater", "kit", "kit: treatment lower"),         # a kit question never contradicts a paper
    (0.05, 0.01, "greater", "kit", "kit: treatment higher"),
])
def test_the_verdict_rule(estimate, p, direction, kind, expected):
    assert verdict(estimate, p, direction, mde=0.12, kind=kind) == expected


def test_the_verdict_rule_rejects_an_unknown_direction():
    with pytest.raises(ValueError, match="direction must be one of"):
        verdict(0.1, 0.01, "bigger")


def test_holm_and_bh_on_a_textbook_example():
    # Holm (1979): sorted p 0.01, 0.02, 0.03, 0.04 → 4·0.01, 3·0.02, 2·0.03, 1·0.04, made monotone: 0.04, 0.06, 0.06, 0.06
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    # BH: p·m/rank with the running minimum from the largest: all 0.04
    assert benjamini_hochberg([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.04, 0.04, 0.04, 0.04])
    adjusted = holm([0.01, float("nan"), 0.02])   # untested claims stay out of the family
    assert math.isnan(adjusted[1]) and adjusted[[0, 2]] == pytest.approx([0.02, 0.02])


def test_the_mde_is_computed_under_the_alternative_with_t_degrees_of_freedom():
    from statsmodels.stats.power import TTestPower

    # with df = 2 (3 seeds) the MDE is far above the normal 2.80 SE
    expected = float(np.squeeze(TTestPower().solve_power(nobs=3, alpha=0.05, power=0.8))) * math.sqrt(3)
    assert minimum_detectable_effect(1.0, df=2) == pytest.approx(expected)
    assert minimum_detectable_effect(1.0, df=2) > 1.8 * minimum_detectable_effect(1.0)
    assert minimum_detectable_effect(1.0, df=10_000) == pytest.approx(minimum_detectable_effect(1.0), rel=1e-3)


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


@pytest.mark.parametrize("n", [7, 28, 281])
def test_wilson_interval_contains_an_accuracy_of_zero_or_one(n):
    assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
