"""The statistics layer: intervals, paired comparisons, power, and the one verdict rule.

Built on ``scipy.stats``, ``statsmodels`` and ``scikit-learn``; this module only arranges their calls around the
kit's data: per-item correctness of two conditions on the same eval items, over one or more training seeds.

* :func:`wilson_interval` – an accuracy's 95% interval (statsmodels ``proportion_confint``, Wilson).
* :func:`paired_difference` – treatment − control on the same items, 95% percentile-bootstrap CI resampling eval
  items within each family (and training seeds, where there are several), with the minimum detectable effect.
* :func:`mcnemar_test` – exact McNemar test for one-seed paired comparisons (statsmodels).
* :func:`rank_correlation` – Spearman ρ / Kendall τ with a permutation p-value (scipy ``permutation_test``).
* :func:`auroc` – AUROC (scikit-learn) with a stratified bootstrap CI; :func:`auroc_difference` – two scores'
  AUROCs on the same items (or one against chance), paired bootstrap CI and MDE.
* :func:`minimum_detectable_effect` – the smallest true difference a comparison with this standard error detects
  with 80% power at α = 0.05 (statsmodels ``NormalIndPower``).
* :func:`verdict` – supported / contradicted / not resolved, from a CI and the claimed direction.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats
from sklearn.metrics import roc_auc_score
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_confint

ALPHA, POWER, N_BOOTSTRAP = 0.05, 0.8, 10_000
DIRECTIONS = ("greater", "less")


def wilson_interval(successes: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Wilson score interval of an accuracy ``successes / n``."""
    if n <= 0:
        raise ValueError(f"wilson_interval needs n > 0 items, got {n}")
    low, high = proportion_confint(int(successes), int(n), alpha=alpha, method="wilson")
    return float(low), float(high)


def minimum_detectable_effect(standard_error: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true difference detected with ``power`` by a two-sided level-``alpha`` test of an estimate with
    this standard error: d·SE, where d solves the normal power equation for one observation (≈ 2.80 at 80%, 5%)."""
    d = NormalIndPower().solve_power(effect_size=None, nobs1=1, alpha=alpha, power=power, ratio=0,
                                     alternative="two-sided")
    return float(d * standard_error)


def _stratified_indices(strata: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) indices resampling with replacement within each stratum (stratum sizes kept)."""
    out = np.empty((n_boot, len(strata)), dtype=np.int64)
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        out[:, members] = rng.choice(members, size=(n_boot, len(members)), replace=True)
    return out


@dataclass(frozen=True)
class PairedDifference:
    estimate: float          # mean over seeds and items of treatment − control
    ci_low: float
    ci_high: float
    standard_error: float    # bootstrap SD
    mde: float               # minimum detectable effect at 80% power, α = 0.05
    n_items: int
    n_seeds: int
    mcnemar_p: float | None  # one seed only: exact McNemar p-value


def paired_difference(treatment, control, strata=None, *, n_boot: int = N_BOOTSTRAP, alpha: float = ALPHA,
                      seed: int = 0) -> PairedDifference:
    """Treatment − control on the same eval items.

    ``treatment`` and ``control`` are per-item scores (0/1 correctness, or any per-item number) of shape
    ``(items,)`` or ``(seeds, items)``, aligned on items; a one-seed condition (e.g. the untrained model) is
    compared with every seed of the other.  ``strata`` (e.g. task family per item) keeps each stratum's size in
    every bootstrap sample.  Seeds are resampled too when there are several (a two-level bootstrap), so the CI
    covers training variation as well as item sampling.
    """
    t, c = np.atleast_2d(np.asarray(treatment, float)), np.atleast_2d(np.asarray(control, float))
    if t.shape[1] != c.shape[1]:
        raise ValueError(f"paired_difference: {t.shape[1]} treatment items vs {c.shape[1]} control items")
    if t.shape[0] != c.shape[0] and 1 not in (t.shape[0], c.shape[0]):
        raise ValueError(f"paired_difference: {t.shape[0]} treatment seeds vs {c.shape[0]} control seeds")
    if t.shape[1] == 0:
        raise ValueError("paired_difference: no eval items")
    diff = t - c  # broadcasts a one-seed condition over the other's seeds
    n_seeds, n_items = diff.shape
    strata = np.zeros(n_items) if strata is None else np.asarray(strata)
    rng = np.random.default_rng(seed)
    items = _stratified_indices(strata, n_boot, rng)
    item_counts = np.zeros((n_boot, n_items))
    np.add.at(item_counts, (np.arange(n_boot)[:, None], items), 1.0)
    seed_counts = np.ones((n_boot, n_seeds))
    if n_seeds > 1:
        seed_counts = np.zeros((n_boot, n_seeds))
        np.add.at(seed_counts, (np.arange(n_boot)[:, None], rng.integers(0, n_seeds, (n_boot, n_seeds))), 1.0)
    boot = np.einsum("bs,sn,bn->b", seed_counts, diff, item_counts) / (n_seeds * n_items)
    low, high = np.percentile(boot, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    se = float(boot.std(ddof=1))
    p = mcnemar_test(t[0], c[0]) if n_seeds == 1 and _binary(t) and _binary(c) else None
    return PairedDifference(estimate=float(diff.mean()), ci_low=float(low), ci_high=float(high), standard_error=se,
                            mde=minimum_detectable_effect(se, alpha), n_items=n_items, n_seeds=n_seeds, mcnemar_p=p)


def _binary(values: np.ndarray) -> bool:
    return bool(np.isin(values, (0.0, 1.0)).all())


def mcnemar_test(treatment, control) -> float:
    """Exact (binomial) McNemar p-value for paired 0/1 outcomes on the same items."""
    t, c = np.asarray(treatment, bool), np.asarray(control, bool)
    table = [[int((t & c).sum()), int((t & ~c).sum())], [int((~t & c).sum()), int((~t & ~c).sum())]]
    return float(mcnemar(table, exact=True).pvalue)


def rank_correlation(x, y, method: str = "spearman", *, n_resamples: int = 9_999, seed: int = 0) -> dict:
    """Spearman ρ or Kendall τ with a two-sided permutation p-value (exact when n! ≤ ``n_resamples``); NaN for
    fewer than 3 values or a constant series."""
    functions = {"spearman": lambda a, b: scipy_stats.spearmanr(a, b).statistic,
                 "kendall": lambda a, b: scipy_stats.kendalltau(a, b).statistic}
    if method not in functions:
        raise ValueError(f"rank_correlation: method must be one of {sorted(functions)}, got {method!r}")
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) != len(y):
        raise ValueError(f"rank_correlation needs two equal-length series, got {len(x)} and {len(y)} values")
    statistic = functions[method](x, y) if len(x) >= 3 else float("nan")
    if not np.isfinite(statistic):
        return {"statistic": float("nan"), "p_value": float("nan"), "n": len(x)}
    result = scipy_stats.permutation_test((x,), lambda a: functions[method](a, y), permutation_type="pairings",
                                          n_resamples=n_resamples, alternative="two-sided",
                                          random_state=np.random.default_rng(seed))
    return {"statistic": float(statistic), "p_value": float(result.pvalue), "n": len(x)}


def _auroc_replicates(labels: np.ndarray, scores: np.ndarray, index: np.ndarray) -> np.ndarray:
    """AUROC of each bootstrap replicate (rows of ``index``), in the rank form Mann–Whitney U / (n₊·n₋) with ties
    counted half, vectorized over replicates."""
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    ranks = scipy_stats.rankdata(scores[index], axis=1)  # average ranks: ties count half
    return (np.where(labels[index], ranks, 0.0).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _check_labels(labels: np.ndarray) -> None:
    if labels.all() or not labels.any():
        raise ValueError("auroc needs both positive and negative items")


def auroc(labels, scores, *, n_boot: int = 2_000, alpha: float = ALPHA, seed: int = 0) -> dict:
    """AUROC of ``scores`` for ``labels`` (True = positive; scikit-learn) with a percentile-bootstrap CI that
    resamples positives and negatives separately (class sizes kept)."""
    labels, scores = np.asarray(labels, bool), np.asarray(scores, float)
    _check_labels(labels)
    index = _stratified_indices(labels.astype(int), n_boot, np.random.default_rng(seed))
    low, high = np.percentile(_auroc_replicates(labels, scores, index), [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"auroc": float(roc_auc_score(labels, scores)), "ci_low": float(low), "ci_high": float(high),
            "n_positive": int(labels.sum()), "n_negative": int((~labels).sum())}


def auroc_difference(labels, treatment, control=None, *, n_boot: int = N_BOOTSTRAP, alpha: float = ALPHA,
                     seed: int = 0) -> PairedDifference:
    """AUROC(treatment) − AUROC(control) of two scores of the same items (``control=None``: − 0.5, chance), with
    a percentile-bootstrap CI that resamples the items once for both scores (positives and negatives separately),
    so the comparison is paired; the MDE from the bootstrap SE as in :func:`paired_difference`."""
    labels, treatment = np.asarray(labels, bool), np.asarray(treatment, float)
    _check_labels(labels)
    index = _stratified_indices(labels.astype(int), n_boot, np.random.default_rng(seed))
    boot = _auroc_replicates(labels, treatment, index)
    estimate = roc_auc_score(labels, treatment)
    if control is None:
        boot, estimate = boot - 0.5, estimate - 0.5
    else:
        control = np.asarray(control, float)
        boot = boot - _auroc_replicates(labels, control, index)
        estimate = estimate - roc_auc_score(labels, control)
    low, high = np.percentile(boot, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    se = float(boot.std(ddof=1))
    return PairedDifference(estimate=float(estimate), ci_low=float(low), ci_high=float(high), standard_error=se,
                            mde=minimum_detectable_effect(se, alpha), n_items=len(labels), n_seeds=1, mcnemar_p=None)


def verdict(ci_low: float, ci_high: float, direction: str, mde: float | None = None) -> str:
    """The kit's one verdict rule: *supported* when the 95% CI of the paired difference excludes 0 in the claimed
    direction, *contradicted* when it excludes 0 in the other, otherwise *not resolved* (with the MDE)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    sign = 1 if direction == "greater" else -1
    low, high = sorted((sign * ci_low, sign * ci_high))
    if low > 0:
        return "supported"
    if high < 0:
        return "contradicted"
    return "not resolved" + (f" (MDE = {mde:.3f})" if mde is not None else "")
