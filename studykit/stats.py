"""The statistics layer: intervals, paired comparisons, power, multiplicity, and the one verdict rule.

Built on ``scipy.stats``, ``statsmodels`` and ``scikit-learn``; this module only arranges their calls around the
kit's data: per-item scores of two conditions on the same eval items, over one or more training seeds.

* :func:`wilson_interval` – an accuracy's 95% interval (statsmodels ``proportion_confint``, Wilson).
* :func:`paired_difference` – treatment − control on the same items: a t interval with seeds and items both
  random (:func:`seed_item_variance`, Satterthwaite degrees of freedom), its p-value, the per-seed differences and
  the MDE under the alternative.  Valid with 3–5 seeds (a simulation test bounds its false-positive rate).
* :func:`mcnemar_test` – exact McNemar test for one-seed paired comparisons (statsmodels).
* :func:`rank_correlation` – Spearman ρ / Kendall τ with a permutation p-value (scipy ``permutation_test``).
* :func:`auroc` – AUROC (scikit-learn) with a stratified bootstrap CI; :func:`auroc_difference` – two scores'
  AUROCs on the same items (or one against chance), paired bootstrap CI and p-value.
* :func:`minimum_detectable_effect` – the smallest true difference detected with 80% power at α = 0.05.
* :func:`holm`, :func:`benjamini_hochberg` – adjusted p-values (statsmodels ``multipletests``).
* :func:`verdict` – supported / contradicted / not resolved, from the adjusted p-value and the claimed direction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats
from sklearn.metrics import roc_auc_score
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower, TTestPower
from statsmodels.stats.proportion import proportion_confint

ALPHA, POWER, N_BOOTSTRAP = 0.05, 0.8, 10_000
DIRECTIONS = ("greater", "less")


def wilson_interval(successes: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Wilson score interval of an accuracy ``successes / n`` (statsmodels), made to contain the accuracy itself:
    at 0 or n successes statsmodels' floating-point bound can land a hair inside (1e-17 above 0)."""
    if n <= 0:
        raise ValueError(f"wilson_interval needs n > 0 items, got {n}")
    low, high = proportion_confint(int(successes), int(n), alpha=alpha, method="wilson")
    share = successes / n
    return min(float(low), share), max(float(high), share)


def minimum_detectable_effect(standard_error: float, alpha: float = ALPHA, power: float = POWER,
                              df: float = float("inf")) -> float:
    """Smallest true difference detected with ``power`` by a two-sided level-``alpha`` test of an estimate with
    this standard error and ``df`` degrees of freedom, computed under the alternative: statsmodels ``TTestPower``
    (non-central t) for a one-sample test with df + 1 observations, its effect size times the SD (SE·√(df+1));
    for df = ∞ the normal power equation (≈ 2.80·SE at 80%, 5%)."""
    if standard_error <= 0:
        return 0.0
    if not math.isfinite(df):
        d = NormalIndPower().solve_power(effect_size=None, nobs1=1, alpha=alpha, power=power, ratio=0,
                                         alternative="two-sided")
        return float(d * standard_error)
    nobs = df + 1
    d = TTestPower().solve_power(effect_size=None, nobs=nobs, alpha=alpha, power=power, alternative="two-sided")
    return float(np.squeeze(d)) * standard_error * math.sqrt(nobs)


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
    standard_error: float
    mde: float               # minimum detectable effect at 80% power, α = 0.05 (t-type, floored at the cells' resolution)
    n_items: int
    n_seeds: int
    mcnemar_p: float | None  # one seed only: exact McNemar p-value
    p_value: float = float("nan")   # two-sided, from the same t statistic as the interval
    df: float = float("nan")        # its degrees of freedom (Satterthwaite)
    per_seed: tuple = ()            # mean difference of each seed (one value for a one-seed comparison)


def _satterthwaite(terms: list[tuple[float, float, float]]) -> tuple[float, float]:
    """Σ c·MS and its Satterthwaite (1946) degrees of freedom, for ``(c, MS, df)`` terms."""
    total = sum(c * ms for c, ms, _ in terms)
    denominator = sum((c * ms) ** 2 / df for c, ms, df in terms)
    return total, (total ** 2 / denominator if denominator > 0 else float("inf"))


def seed_item_variance(diff: np.ndarray) -> tuple[float, float]:
    """Variance of the grand mean of a (seeds × items) table of paired differences, and its degrees of freedom,
    with seeds and items both random (two-way crossed ANOVA without replication; the mean squares are those of
    statsmodels' ``anova_lm`` for ``diff ~ C(seed) + C(item)``, a test checks it).

    The variance is (MS_seed + MS_item − MS_resid) / (S·N), which estimates σ²_seed/S + σ²_item/N + σ²_e/(S·N);
    where it falls below one of its mean squares (a negative variance component) the largest mean square alone is
    used.  Degrees of freedom: Satterthwaite's, except that whenever the seed mean square is above its median
    under no seed variance (F = MS_seed/MS_resid above the F median), the seeds' own S − 1.  Satterthwaite alone
    is anti-conservative with 3–5 seeds: a small MS_seed (2 degrees of freedom) draws large degrees of freedom
    exactly when the variance is underestimated; this rule keeps the false-positive rate at ≤ 6% across the
    seed/item mixes the studies have (``tests/test_stats.py`` simulates them) for a 2–20% wider interval."""
    n_seeds, n_items = diff.shape
    if n_seeds == 1:
        return (float(np.var(diff[0], ddof=1)) / n_items if n_items > 1 else 0.0), float(max(n_items - 1, 1))
    if n_items == 1:   # one item (a family of one prompt): its seeds are the only replicates
        return float(np.var(diff[:, 0], ddof=1)) / n_seeds, float(n_seeds - 1)
    seed_means, item_means, grand = diff.mean(axis=1), diff.mean(axis=0), diff.mean()
    ms_seed = n_items * float(np.var(seed_means, ddof=1))
    ms_item = n_seeds * float(np.var(item_means, ddof=1))
    residual = diff - seed_means[:, None] - item_means[None, :] + grand
    df_resid = (n_seeds - 1) * (n_items - 1)
    ms_resid = float((residual ** 2).sum()) / df_resid
    candidates = [_satterthwaite([(1, ms_seed, n_seeds - 1), (1, ms_item, n_items - 1), (-1, ms_resid, df_resid)]),
                  (ms_seed, n_seeds - 1), (ms_item, n_items - 1), (ms_resid, df_resid)]
    total, df = max(candidates, key=lambda c: c[0])
    seed_present = ms_resid == 0 or ms_seed / ms_resid > scipy_stats.f.median(n_seeds - 1, df_resid)
    if seed_present and ms_seed > 0:
        df = n_seeds - 1
    return total / (n_seeds * n_items), float(df)


# An exact two-sided sign test on k discordant cells that all favour one side rejects at α only from this k on
# (2·0.5^k < 0.05 ⇔ k ≥ 6): no difference smaller than k / cells can be shown by 0/1 outcomes.
SMALLEST_SIGNIFICANT_CELLS = next(k for k in range(1, 64) if scipy_stats.binomtest(k, k).pvalue < ALPHA)


def paired_difference(treatment, control, *, alpha: float = ALPHA) -> PairedDifference:
    """Treatment − control on the same eval items, over training seeds: a t interval whose variance counts seeds and
    items as random (:func:`seed_item_variance`), so it stays honest with 3 or 5 seeds (a simulation test checks
    its false-positive rate under no effect).

    ``treatment`` and ``control`` are per-item scores (0/1 correctness, or any per-item number) of shape
    ``(items,)`` or ``(seeds, items)``, aligned on items; a one-seed condition (e.g. the untrained model) is
    compared with every seed of the other.  The MDE is computed under the alternative (statsmodels
    ``TTestPower``, non-central t at the same degrees of freedom), and for 0/1 outcomes never below the smallest
    difference the paired cells can show (:data:`SMALLEST_SIGNIFICANT_CELLS` of them).
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
    estimate = float(diff.mean())
    variance, df = seed_item_variance(diff)
    se = math.sqrt(max(variance, 0.0))
    if se > 0:
        half = float(scipy_stats.t.ppf(1 - alpha / 2, df)) * se
        p = float(2 * scipy_stats.t.sf(abs(estimate) / se, df))
    else:
        half, p = 0.0, (1.0 if estimate == 0 else 0.0)
    floor = SMALLEST_SIGNIFICANT_CELLS / diff.size if _binary(t) and _binary(c) else 0.0
    mcnemar_p = mcnemar_test(t[0], c[0]) if n_seeds == 1 and _binary(t) and _binary(c) else None
    return PairedDifference(estimate=estimate, ci_low=estimate - half, ci_high=estimate + half, standard_error=se,
                            mde=max(minimum_detectable_effect(se, alpha, df=df), floor), n_items=n_items,
                            n_seeds=n_seeds, mcnemar_p=mcnemar_p, p_value=p, df=df,
                            per_seed=tuple(float(v) for v in diff.mean(axis=1)))


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
    # the percentile-bootstrap test that matches the percentile interval: the CI excludes 0 ⇔ p < α
    p = float(min(1.0, 2 * min((boot <= 0).mean(), (boot >= 0).mean()))) if se > 0 else float(estimate == 0)
    return PairedDifference(estimate=float(estimate), ci_low=float(low), ci_high=float(high), standard_error=se,
                            mde=minimum_detectable_effect(se, alpha), n_items=len(labels), n_seeds=1, mcnemar_p=None,
                            p_value=p, df=float("inf"), per_seed=(float(estimate),))


def verdict(estimate: float, p_adjusted: float, direction: str, mde: float | None = None, *,
            kind: str = "paper") -> str:
    """The kit's one verdict rule: *supported* when the difference lies in the claimed direction with a
    multiplicity-adjusted p < α (Holm within the study, :func:`holm`), *contradicted* when it lies against it
    with adjusted p < α, otherwise *not resolved* (with the MDE).  A ``kind: kit`` question (no paper asks it)
    never contradicts a paper: its resolved outcomes read *kit: treatment higher* / *lower*."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if p_adjusted < ALPHA and estimate != 0:
        if kind == "kit":
            return "kit: treatment higher" if estimate > 0 else "kit: treatment lower"
        return "supported" if (estimate > 0) == (direction == "greater") else "contradicted"
    return "not resolved" + (f" (MDE = {mde:.3f})" if mde is not None else "")


def holm(p_values) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels ``multipletests``), NaN where a p-value is NaN (an untested claim)."""
    return _adjusted(p_values, "holm")


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini–Hochberg q-values (statsmodels ``multipletests``), NaN where a p-value is NaN."""
    return _adjusted(p_values, "fdr_bh")


def _adjusted(p_values, method: str) -> np.ndarray:
    p = np.asarray(p_values, float)
    out = np.full(p.shape, np.nan)
    tested = np.isfinite(p)
    if tested.any():
        out[tested] = multipletests(p[tested], alpha=ALPHA, method=method)[1]
    return out
