"""Guards that keep a verdict from resting on an artefact: what each arm of a comparison must show before the
comparison may carry a verdict (:mod:`studykit.claims` applies them to every claim).

* :func:`family_profile` – per condition × family: accuracy, the share of its most common answer, the accuracy
  that answer would score as a constant, the best constant's accuracy (the family's most common gold answer) and
  accuracy on the items whose gold is not that answer.  An arm is **degenerate** on a family when one answer
  covers ≥ :data:`CONSTANT_SHARE` of its items, or when it scores no better than the best constant (judged
  open-ended replies: the first only).
* :func:`identity` – conditions that cannot be told apart: the same on every item and seed, on some seeds, or
  different on ≤ :data:`FEW_CELLS` item-seeds; both all-zero or both constant.
* :func:`identical_conditions` – pairs of conditions with the same reply on every item and seed (identical runs).
* :func:`placebo_check` – a trained arm must beat its placebo (same budget, learning signal destroyed) beyond
  noise; otherwise its movement is optimizer drift, not learning.
* :func:`signal_share` / :func:`changed_replies` – the measured values of a claim's ``requires:`` preconditions.
* :func:`family_effects` – the difference per family, for the leave-one-family-out and opposite-strata checks.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .stats import ALPHA, paired_difference

CONSTANT_SHARE = 0.8   # one answer on this share of a family's items: the arm answers a constant there
FEW_CELLS = 2          # conditions that differ on at most this many item-seeds are not separable
UNTRAINED = -1         # the seed of a condition that involves no training (e.g. the base model)


def _answer_column(frame: pd.DataFrame) -> str | None:
    return next((c for c in ("extracted", "reply") if c in frame.columns), None)


JUDGED = ("win", "mt_bench_score")              # per-item scores of a judge (studykit.judges): no gold answer
SCORES = ("lenient", *JUDGED)                   # the per-item score a profile reads: the verifier's, else a judge's


def family_profile(predictions: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """One row per condition × family (values are means over seeds): ``accuracy`` (the mean of ``metric``, by
    default the first per-item score of :data:`SCORES` the predictions have), ``modal_answer`` and ``modal_share``
    (its most common extracted answer and the share of items it gives it), ``modal_as_constant`` (the accuracy that
    answer would score on the family's gold answers), ``best_constant`` (the share of the family's most common gold
    answer: what the best constant reply scores), ``accuracy_off_majority`` (accuracy on items whose gold is not
    that answer), and ``degenerate`` with its reason.  Judged open-ended replies (a :data:`JUDGED` metric) have no
    gold answer: there the constant's score is unknown (NaN) and only one reply on ≥ :data:`CONSTANT_SHARE` of a
    family's items makes an arm degenerate.  Empty for per-prompt metrics and for verifier scores without gold."""
    answer = _answer_column(predictions)
    metric = metric or next((m for m in SCORES if m in predictions.columns), "lenient")
    judged = metric in JUDGED
    if answer is None or metric not in predictions.columns or not (judged or "gold" in predictions.columns):
        return pd.DataFrame()
    predictions = predictions[predictions[answer].notna() & (True if judged else predictions["gold"].notna())]
    items = predictions.drop_duplicates("id").set_index("id")
    gold = items[["family"]].assign(gold=np.nan if judged else items["gold"].astype(str))
    rows = []
    for family, golds in gold.groupby("family")["gold"]:
        counts = golds.value_counts()
        best_constant, majority = (np.nan, None) if judged else (float(counts.iloc[0] / len(golds)), counts.index[0])
        off_majority = set(golds.index[golds != majority]) if not judged else set()
        part = predictions[predictions["family"] == family]
        for condition, frame in part.groupby("condition", sort=False):
            per_seed = []
            for _, seed_frame in frame.groupby("seed"):
                answers = seed_frame[answer].fillna("").astype(str).str.strip()
                modal = answers.value_counts()
                off = seed_frame[seed_frame["id"].isin(off_majority)]
                per_seed.append({"accuracy": float(seed_frame[metric].astype(float).mean()),
                                 "modal_answer": modal.index[0], "modal_share": float(modal.iloc[0] / len(answers)),
                                 "modal_as_constant": np.nan if judged else float((golds == modal.index[0]).mean()),
                                 "accuracy_off_majority": float(off[metric].astype(float).mean()) if len(off) else np.nan})
            seeds = pd.DataFrame(per_seed)
            accuracy, modal_share = float(seeds["accuracy"].mean()), float(seeds["modal_share"].mean())
            reason = ("constant answers" if modal_share >= CONSTANT_SHARE else
                      "no better than a constant" if accuracy <= best_constant else "")
            rows.append({"condition": condition, "family": family, "items": len(golds), "seeds": len(seeds),
                         "accuracy": accuracy, "modal_answer": seeds["modal_answer"].mode().iloc[0],
                         "modal_share": modal_share, "modal_as_constant": float(seeds["modal_as_constant"].mean()),
                         "best_constant": best_constant, "majority_answer": majority,
                         "accuracy_off_majority": float(seeds["accuracy_off_majority"].mean()),
                         "degenerate": bool(reason), "degenerate_reason": reason})
    return pd.DataFrame(rows)


def degenerate_families(profile: pd.DataFrame, arms: list[str], families: list[str]) -> dict[str, str]:
    """{family: why} for the families where any of ``arms`` is degenerate (from :func:`family_profile`)."""
    if profile.empty:
        return {}
    part = profile[profile["condition"].isin(arms) & profile["family"].isin(families) & profile["degenerate"]]
    out: dict[str, str] = {}
    for row in part.to_dict(orient="records"):
        why = f"{row['condition']} {row['degenerate_reason']}"
        out[row["family"]] = f"{out[row['family']]}, {why}" if row["family"] in out else why
    return out


def identity(t: np.ndarray, c: np.ndarray, t_replies: np.ndarray | None = None,
             c_replies: np.ndarray | None = None) -> tuple[str | None, list[str]]:
    """(why the two conditions cannot be separated, or None; flags) for (seeds × items) score tables, a one-seed
    table broadcast over the other's seeds (the shape mismatch is flagged, never mistaken for a difference)."""
    flags = []
    if t.shape[0] != c.shape[0]:
        flags.append(f"{min(t.shape[0], c.shape[0])}-seed condition compared with each of "
                     f"{max(t.shape[0], c.shape[0])} seeds")
    t, c = np.broadcast_arrays(t, c)
    differing = t != c
    if t_replies is not None and c_replies is not None:
        same = np.broadcast_arrays(t_replies, c_replies)
        if (same[0] == same[1]).all():
            return "not separable: identical replies on every item and seed", flags
    if not differing.any():
        if not t.any() and not c.any():
            return "not separable: both score 0 on every item", flags
        if np.unique(t).size == 1 and np.unique(c).size == 1:
            return "not separable: both score the same constant on every item", flags
        return "not separable: the same score on every item and seed", flags
    if int(differing.sum()) <= FEW_CELLS:
        return f"not separable: they differ on only {int(differing.sum())} item-seed(s)", flags
    same_seeds = [s for s in range(t.shape[0]) if not differing[s].any()]
    if same_seeds:
        flags.append(f"identical on {len(same_seeds)} of {t.shape[0]} seeds")
    return None, flags


def identical_conditions(predictions: pd.DataFrame) -> pd.DataFrame:
    """Pairs of conditions whose replies agree on every shared item and seed (e.g. two losses that trained the same
    model): one row per pair with the number of item-seeds compared, so identical runs are seen as one."""
    if "reply" not in predictions.columns:
        return pd.DataFrame(columns=["condition", "same_as", "item_seeds"])
    table = predictions.pivot_table(index="id", columns=["condition", "seed"], values="reply", aggfunc="first")
    conditions = list(dict.fromkeys(table.columns.get_level_values(0)))
    rows = []
    for i, a in enumerate(conditions):
        for b in conditions[i + 1:]:
            seeds = [s for s in table[a].columns if s in table[b].columns]
            if not seeds:
                continue
            left, right = table[a][seeds], table[b][seeds]
            shared = left.notna() & right.notna()
            if shared.to_numpy().any() and (left[shared] == right[shared]).to_numpy()[shared.to_numpy()].all():
                rows.append({"condition": a, "same_as": b, "item_seeds": int(shared.to_numpy().sum())})
    return pd.DataFrame(rows, columns=["condition", "same_as", "item_seeds"])


def placebo_check(arm: np.ndarray, placebo: np.ndarray) -> tuple[bool, str]:
    """Does the trained arm beat its placebo (one-sided, α = 0.05, seeds and items random)?  With the result text."""
    result = paired_difference(arm, placebo)
    beats = result.estimate > 0 and result.p_value / 2 < ALPHA
    return beats, f"{result.estimate:+.3f} [{result.ci_low:+.3f}, {result.ci_high:+.3f}]"


def signal_share(rl_signal: pd.DataFrame | None, condition: str) -> float:
    """Mean over logged RL steps and seeds of the share of prompt groups with reward variance (NaN if not logged)."""
    if rl_signal is None or rl_signal.empty:
        return float("nan")
    rows = rl_signal[rl_signal["condition"] == condition]
    return float(rows["signal_share"].mean()) if len(rows) else float("nan")


def changed_replies(predictions: pd.DataFrame, condition: str, start: str | None) -> float:
    """Share of eval item-seeds whose reply differs from the reply of the condition's start (NaN without one)."""
    if start is None or "reply" not in predictions.columns:
        return float("nan")
    pair = predictions[predictions["condition"].isin([condition, start])]
    replies = pair.pivot_table(index="id", columns=["condition", "seed"], values="reply", aggfunc="first")
    if condition not in replies.columns.get_level_values(0) or start not in replies.columns.get_level_values(0):
        return float("nan")
    arm, origin = replies[condition], replies[start]
    if origin.shape[1] == 1:
        return float((arm.to_numpy() != origin.to_numpy()).mean())
    common = [s for s in arm.columns if s in origin.columns]
    return float((arm[common].to_numpy() != origin[common].to_numpy()).mean()) if common else float("nan")


def family_effects(t: np.ndarray, c: np.ndarray, families: np.ndarray) -> pd.DataFrame:
    """Per family: the paired difference, its CI and p-value (seeds and items random)."""
    rows = []
    for family in dict.fromkeys(families):
        keep = families == family
        result = paired_difference(t[:, keep], c[:, keep])
        rows.append({"family": family, "difference": result.estimate, "ci_low": result.ci_low,
                     "ci_high": result.ci_high, "p": result.p_value, "items": int(keep.sum())})
    return pd.DataFrame(rows)
