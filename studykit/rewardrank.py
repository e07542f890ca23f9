"""RewardRank: training-free choice of the SFT checkpoint that DPO starts from (and uses as its reference).

Li et al., "Select Before Use: On the Importance of Reference Model Selection in Preference Alignment", ACL 2026,
pp. 17151–17171 [li2026selectbeforeuse].  In DPO the SFT checkpoint is both the initialization and the reference;
the paper argues that choosing it by minimum validation loss often fails (a checkpoint that imitates the SFT
targets best need not discriminate between responses best) and scores a checkpoint by RewardRank, the "initial
implicit alignment between reference model and preference objective".  Only the abstract was available when the
kit was written, so the formula is not known here; this module computes the plausible candidates side by side, each
from one batched pass of the checkpoint over preference pairs (y_w preferred to y_l):

  (A) ranking accuracy      mean 1[ log π_ckpt(y_w|x) > log π_ckpt(y_l|x) ]            raw and length-normalized
  (B) implicit-reward acc.  mean 1[ r(y_w) > r(y_l) ],  r(y) = log π_ckpt(y|x) − log π_base(y|x)
                            (DPO's implicit reward at initialization with the pre-SFT model as reference; β > 0
                            does not change the sign)
  (C) margins               the mean differences behind (A)

The mean implicit-reward margin is not a separate candidate: it equals the ranking margin minus the base model's
margin, a constant over checkpoints on the same pairs, so it ranks checkpoints exactly as the ranking margin does.

Two kinds of pairs (:data:`PAIR_KINDS`), each giving its own metric columns (``<metric>@<kind>``):

* ``gold_vs_wrong`` — the preference data's own pairs (testbed: the gold answer vs a verified-wrong answer;
  UltraFeedback: chosen vs rejected).  On the testbed the chosen reply IS the SFT target, so imitation and
  discrimination coincide there and the last checkpoint tends to win every candidate;
* ``own`` — each checkpoint's OWN samples ranked by the verifier (:func:`self_sampled_pairs` with
  ``model=checkpoint``: a correct and an incorrect sample of one prompt), pairs that differ from the SFT target.
  A checkpoint with fewer than ``min_pairs`` own pairs gets NaN metrics and a note (:func:`pair_metrics`).

The candidate under test (``study.rewardrank_metric`` on ``study.rewardrank_pairs``) is fixed in the config
before any result; the others are exploratory.  DPO trains on each checkpoint's own pairs on the DPO prompts
(:func:`dpo_training_pairs`), and every DPO run has a placebo of the same budget (chosen/rejected swapped by a fair
coin, :func:`studykit.placebo.placebo_preference_pairs`); whether DPO acted is the share of dev replies it changed
against its placebo's (:func:`placebo_change_test`, :func:`change_beyond_placebo`).

Inference treats the checkpoints of one SFT seed as dependent: correlations are within-seed Spearman ρ, tested
over seeds (:func:`seed_level_correlations`); rule regret is a paired difference over seeds × items with seeds
random (:func:`rule_regret`).  Baselines: minimum validation loss, the last checkpoint, the best pre-DPO accuracy
on the dev split, and the best post-DPO accuracy on the dev split (an achievable reference: never the eval items).
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pandas as pd
import torch
from scipy import stats as scipy_stats

from .answers import judge
from .data import load_records, source_path
from .evaluate import generate
from .logprobs import encode_pair, format_pair, pad_token_id, pair_logprobs, shared_prompt_logprobs
from .stats import ALPHA, holm, paired_difference
from .testbed import interleave_families

METRICS = ("rank_acc", "rank_acc_norm", "reward_acc", "rank_margin", "rank_margin_norm")
PAIR_KINDS = ("own", "gold_vs_wrong")
RULE_PREFIX = "rewardrank_"
MIN_SEEDS = 3  # the seed-level tests and the statements need at least this many SFT seeds


def metric_column(metric: str, kind: str) -> str:
    """The column of candidate ``metric`` computed on pairs of ``kind``: ``reward_acc@own``."""
    return f"{metric}@{kind}"


def candidate_columns(kinds=PAIR_KINDS) -> list[str]:
    """Every candidate metric column (each metric on each pair kind)."""
    return [metric_column(m, k) for k in kinds for m in METRICS]


def pair_sources(study) -> dict:
    """Which pair kinds the study can build, checked against what it asks for: own pairs need own samples
    (``self_sampled.samples`` ≥ 2) and a verifier (the testbed's preference prompts; a hub preference set such as
    UltraFeedback has none).  Raises ValueError naming the key to change."""
    samples = int(study.self_sampled.samples)
    verifier = study.preference_data.source == "testbed"
    if samples and not verifier:
        raise ValueError(f"study.self_sampled.samples={samples}: own pairs need a verifier, and the preference data "
                         f"{study.preference_data.source!r} has none (set it to 0)")
    wants_own = [key for key, value in (("rewardrank_pairs", study.rewardrank_pairs), ("dpo_pairs", study.dpo_pairs))
                 if value in ("own", "both")]
    if wants_own and not samples:
        raise ValueError(f"study.{wants_own[0]}={study[wants_own[0]]} needs each checkpoint's own samples: set "
                         "study.self_sampled.samples ≥ 2 (testbed preference data) or use gold_vs_wrong")
    return {"own": bool(samples), "kinds": [k for k in PAIR_KINDS if k != "own" or samples]}


def sft_subsample(records: list[dict], share: float, seed: int) -> list[dict]:
    """Each SFT seed's own training data: ``round(share · n)`` records of each family drawn without replacement
    (numpy ``default_rng(seed)``; at least one per family), all of them in a seed-drawn order.  ``share = 1``
    keeps every record and only reorders them."""
    rng = np.random.default_rng(seed)
    families: dict = {}
    for record in records:
        families.setdefault(record.get("family"), []).append(record)
    kept = []
    for members in families.values():
        size = min(len(members), max(1, round(share * len(members))))
        kept += [members[i] for i in sorted(rng.choice(len(members), size=size, replace=False))]
    return [kept[i] for i in rng.permutation(len(kept))]


def preference_logprobs(model, tokenizer, pairs: list[dict], *, chat: bool, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Summed log-probs and token counts of chosen and rejected responses.  Each prompt is encoded once and both
    responses continue from its KV cache (:func:`~studykit.logprobs.shared_prompt_logprobs`), which halves the
    cost of the metric pass: the testbed's prompts are ~50-120 tokens, its responses ~2-8."""
    if not pairs:
        return {k: np.zeros(0) for k in ("chosen", "rejected", "chosen_tokens", "rejected_tokens")}
    encoded = []  # per pair: ((prompt ids, chosen ids), (prompt ids, rejected ids))
    for pair in pairs:
        prompt_text, chosen = format_pair(tokenizer, pair["prompt"], pair["chosen"], chat)
        _, rejected = format_pair(tokenizer, pair["prompt"], pair["rejected"], chat)
        encoded.append((encode_pair(tokenizer, prompt_text, chosen), encode_pair(tokenizer, prompt_text, rejected)))
    pad = pad_token_id(tokenizer)
    # one prompt encoding for both responses, unless a token merged across a prompt/response boundary
    shared = [i for i, (c, r) in enumerate(encoded) if c[0] == r[0]]
    separate = [i for i, (c, r) in enumerate(encoded) if c[0] != r[0]]
    out: list = [None] * len(pairs)
    scored = shared_prompt_logprobs(model, [encoded[i][0][0] for i in shared],
                                    [[encoded[i][0][1], encoded[i][1][1]] for i in shared], pad, batch_size=batch_size)
    for i, logps in zip(shared, scored):
        out[i] = logps
    flat = pair_logprobs(model, [side for i in separate for side in encoded[i]], pad, batch_size=batch_size)
    for k, i in enumerate(separate):
        out[i] = flat[2 * k:2 * k + 2]
    summed = np.array([[float(r.sum()) for r in logps] for logps in out]).reshape(-1, 2)
    tokens = np.array([[len(c[1]), len(r[1])] for c, r in encoded]).reshape(-1, 2)
    return {"chosen": summed[:, 0], "rejected": summed[:, 1], "chosen_tokens": tokens[:, 0],
            "rejected_tokens": tokens[:, 1]}


def checkpoint_metrics(ckpt: dict[str, np.ndarray], base: dict[str, np.ndarray]) -> dict[str, float]:
    """All candidate RewardRank metrics of one checkpoint from its and the base model's pair log-probs (plus
    ``reward_margin``, reported for reference: ``rank_margin`` minus a constant, so not a separate candidate)."""
    margin = ckpt["chosen"] - ckpt["rejected"]
    margin_norm = ckpt["chosen"] / ckpt["chosen_tokens"] - ckpt["rejected"] / ckpt["rejected_tokens"]
    reward_margin = (ckpt["chosen"] - base["chosen"]) - (ckpt["rejected"] - base["rejected"])
    return {"rank_acc": float((margin > 0).mean()), "rank_acc_norm": float((margin_norm > 0).mean()),
            "reward_acc": float((reward_margin > 0).mean()), "rank_margin": float(margin.mean()),
            "rank_margin_norm": float(margin_norm.mean()), "reward_margin": float(reward_margin.mean())}


def pair_movement(trained: dict[str, np.ndarray], start: dict[str, np.ndarray]) -> dict[str, float]:
    """How a preference run moved the log-probs of a set of pairs (:func:`preference_logprobs` after and before):
    :func:`checkpoint_metrics` with its start as the reference (``reward_acc`` / ``reward_margin``: DPO's implicit
    reward, Rafailov et al., 2023, Eq. 5, up to β) and the mean change of the chosen and of the rejected log-prob —
    whether a margin grew by raising the chosen reply or by pushing the rejected one down."""
    return {**checkpoint_metrics(trained, start),
            "chosen_logprob_change": float(np.mean(trained["chosen"] - start["chosen"])),
            "rejected_logprob_change": float(np.mean(trained["rejected"] - start["rejected"]))}


def pair_metrics(ckpt: dict[str, np.ndarray], base: dict[str, np.ndarray], kind: str, min_pairs: int = 1) -> dict:
    """:func:`checkpoint_metrics` on pairs of ``kind`` as ``<metric>@<kind>`` columns, with ``pairs@<kind>`` (how
    many pairs) — all NaN, and a ``note``, when there are fewer than ``min_pairs`` (too few to rank anything)."""
    n = len(ckpt["chosen"])
    names = [*METRICS, "reward_margin"]
    if n < min_pairs:
        return {**{metric_column(m, kind): float("nan") for m in names}, f"pairs@{kind}": n,
                "note": f"{n} {kind} pairs < {min_pairs}: {kind} metrics not computed"}
    values = checkpoint_metrics(ckpt, base)
    return {**{metric_column(m, kind): values[m] for m in names}, f"pairs@{kind}": n, "note": ""}


def _take(logps: dict[str, np.ndarray], index: slice) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in logps.items()}


@torch.no_grad()
def self_sampled_pairs(model, tokenizer, records: list[dict], *, samples: int, chat: bool, max_new_tokens: int,
                       temperature: float = 1.0, batch_size: int = 16, seed: int = 0) -> list[dict]:
    """Preference pairs from ``model``'s own samples (pass the SFT checkpoint: its OWN pairs): ``samples`` replies
    per prompt at ``temperature``, judged by the verifier (lenient extractor); a prompt with both a correct and an
    incorrect reply gives one pair (the first of each).  Records keep their testbed fields (``family``, ``entry``)
    and gain ``chosen``, ``rejected`` and ``kind = "own"``."""
    if not records:
        return []
    torch.manual_seed(seed)
    replies = generate(model, tokenizer, [r["prompt"] for r in records for _ in range(samples)], chat=chat,
                       max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=True, temperature=temperature)
    pairs = []
    for i, record in enumerate(records):
        group = [reply.strip() for reply in replies[i * samples:(i + 1) * samples]]
        right = [reply for reply in group if reply and judge(record, reply).lenient]
        wrong = [reply for reply in group if reply and not judge(record, reply).lenient]
        if right and wrong:
            pairs.append({**record, "chosen": right[0], "rejected": wrong[0], "kind": "own"})
    return pairs


def measure_checkpoint(model, base_model, tokenizer, *, metric_pairs: list[dict], base_logps: dict[str, np.ndarray],
                       dpo_prompts: list[dict], dev: list[dict], evaluate: Callable, samples: int, temperature: float,
                       chat: bool, max_new_tokens: int, batch_size: int, min_pairs: int, seed: int,
                       score: str = "lenient") -> dict:
    """Everything measured on one SFT checkpoint before DPO, timed:

    * its own pairs on the metric prompts and on the DPO prompts (:func:`self_sampled_pairs`, ``samples`` per
      prompt; none when ``samples`` is 0), sampled with seeds ``seed`` and ``seed + 1``;
    * the candidate metrics on the gold-vs-wrong ``metric_pairs`` and, separately, on its own metric pairs
      (:func:`pair_metrics`; ``base_logps``: the pre-SFT model's log-probs of ``metric_pairs``, the base model scores
      the own pairs here);
    * its greedy replies to the ``dev`` items (``evaluate(model, records)`` → judged predictions; ``score``: their
      per-item score column, lenient accuracy or a judge's win).

    Returns a JSON-able dict (stored with the SFT run): the metric columns, ``pairs@<kind>``, ``note``, the own DPO
    pairs, the pre-DPO dev accuracy and replies, and the seconds of each part."""
    start = time.perf_counter()
    own = (self_sampled_pairs(model, tokenizer, metric_pairs, samples=samples, chat=chat, max_new_tokens=max_new_tokens,
                              temperature=temperature, batch_size=batch_size, seed=seed) if samples else [])
    sampled = time.perf_counter()
    logps = preference_logprobs(model, tokenizer, metric_pairs + own, chat=chat)
    base_own = preference_logprobs(base_model, tokenizer, own, chat=chat)
    n_gold = len(metric_pairs)
    gold = pair_metrics(_take(logps, slice(0, n_gold)), base_logps, "gold_vs_wrong")
    mine = (pair_metrics(_take(logps, slice(n_gold, None)), base_own, "own", min_pairs) if samples else {})
    scored = time.perf_counter()
    own_dpo = (self_sampled_pairs(model, tokenizer, dpo_prompts, samples=samples, chat=chat,
                                  max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size,
                                  seed=seed + 1) if samples else [])
    dpo_sampled = time.perf_counter()
    pre = evaluate(model, dev)
    notes = "; ".join(filter(None, [gold.pop("note"), mine.pop("note", "")]))
    return {**gold, **mine, "note": notes, "own_metric_pairs": own, "own_dpo_pairs": own_dpo,
            "pre_dpo_dev_accuracy": float(pre[score].mean()), "pre_dpo_dev_replies": pre["reply"].tolist(),
            "metric_sampling_seconds": sampled - start, "metric_logprob_seconds": scored - sampled,
            "dpo_sampling_seconds": dpo_sampled - scored}


def dpo_training_pairs(mode: str, own: list[dict], gold: list[dict]) -> tuple[list[dict], str]:
    """The pairs a checkpoint's DPO run (and its placebo) trains on, and what they are: ``own`` (on-policy: the
    checkpoint's own verifier-ranked samples on the DPO prompts), ``gold_vs_wrong`` (the preference data's pairs,
    the same for every checkpoint) or ``both``.  A checkpoint with no own pair at all trains on the gold-vs-wrong
    pairs instead (said in the returned description), so every checkpoint has a DPO run of the same budget."""
    if mode == "gold_vs_wrong":
        return list(gold), "gold_vs_wrong"
    if mode == "both":
        return list(gold) + list(own), f"both ({len(gold)} gold_vs_wrong + {len(own)} own)"
    if mode != "own":
        raise ValueError(f"dpo_pairs must be own, gold_vs_wrong or both, got {mode!r}")
    return (list(own), f"own ({len(own)})") if own else (list(gold), "gold_vs_wrong (no own pairs)")


def changed_items(pre_replies, post_replies) -> np.ndarray:
    """Per item, whether the reply after DPO differs from the reply before it (the same comparison as
    :func:`studykit.guards.changed_replies`, item by item)."""
    pre, post = list(pre_replies), list(post_replies)
    if len(pre) != len(post):
        raise ValueError(f"changed_items: {len(pre)} replies before vs {len(post)} after")
    return np.array([a != b for a, b in zip(pre, post)], dtype=bool)


def placebo_change_test(dpo_changed, placebo_changed, alpha: float = ALPHA) -> dict:
    """Did one DPO run change more dev replies than its placebo of the same budget?  Both are 0/1 "changed from
    the pre-DPO reply" per item, paired on items: :func:`studykit.stats.paired_difference` (difference and 95% CI)
    with its exact McNemar p-value; ``beyond_placebo`` when DPO changed more and p < ``alpha``."""
    dpo, placebo = np.asarray(dpo_changed, float), np.asarray(placebo_changed, float)
    result = paired_difference(dpo, placebo)
    p = float(result.mcnemar_p) if result.mcnemar_p is not None else result.p_value
    return {"changed_dpo": float(dpo.mean()), "changed_placebo": float(placebo.mean()),
            "changed_difference": result.estimate, "changed_ci_low": result.ci_low, "changed_ci_high": result.ci_high,
            "changed_p": p, "beyond_placebo": bool(result.estimate > 0 and p < alpha)}


def change_beyond_placebo(changes: pd.DataFrame, picks: dict[int, int] | None = None) -> dict:
    """Did DPO change more dev replies than its placebo, over SFT seeds?  ``changes``: one row per (``sft_seed``,
    ``step``, ``id``) with 0/1 ``dpo_changed`` and ``placebo_changed``; ``picks`` ({sft_seed: step}) keeps one
    checkpoint per seed (the one a rule picked), else every checkpoint counts.  Per seed and item the changes are
    averaged over its checkpoints (they are not independent), then DPO − placebo is a paired difference over seeds ×
    items with seeds random (:func:`studykit.stats.paired_difference`); ``acted`` when its 95% CI is above 0."""
    if picks is not None:
        chosen = pd.DataFrame(list(picks.items()), columns=["sft_seed", "step"])
        changes = changes.merge(chosen, on=["sft_seed", "step"])
    if changes.empty:
        return {"changed_dpo": float("nan"), "changed_placebo": float("nan"), "difference": float("nan"),
                "ci_low": float("nan"), "ci_high": float("nan"), "p": float("nan"), "seeds": 0, "checkpoints": 0,
                "acted": False}
    dpo = changes.pivot_table(index="sft_seed", columns="id", values="dpo_changed", aggfunc="mean")
    placebo = changes.pivot_table(index="sft_seed", columns="id", values="placebo_changed", aggfunc="mean")
    result = paired_difference(dpo.to_numpy(float), placebo.loc[dpo.index, dpo.columns].to_numpy(float))
    return {"changed_dpo": float(dpo.to_numpy().mean()), "changed_placebo": float(placebo.to_numpy().mean()),
            "difference": result.estimate, "ci_low": result.ci_low, "ci_high": result.ci_high, "p": result.p_value,
            "seeds": result.n_seeds, "checkpoints": int(changes[["sft_seed", "step"]].drop_duplicates().shape[0]),
            "acted": bool(result.ci_low > 0)}


def selection_rules(table: pd.DataFrame, metric_columns: list[str]) -> dict[str, int | None]:
    """Checkpoint step chosen by each rule within one SFT seed (ties → the earliest checkpoint).  ``table`` has one
    row per checkpoint with ``step``, ``val_loss``, ``pre_dpo_dev_accuracy`` (on the dev split) and the
    ``metric_columns``; a metric rule skips checkpoints where its metric is NaN (too few pairs) and picks nothing
    (None) when it is NaN on all of them."""
    table = table.sort_values("step").reset_index(drop=True)
    rules = {"min_val_loss": int(table.loc[table["val_loss"].idxmin(), "step"]),
             "last_checkpoint": int(table["step"].iloc[-1]),
             "best_pre_dpo_dev_accuracy": int(table.loc[table["pre_dpo_dev_accuracy"].idxmax(), "step"])}
    for column in metric_columns:
        values = table[column].astype(float)
        rules[f"{RULE_PREFIX}{column}"] = None if values.isna().all() else int(table.loc[values.idxmax(), "step"])
    return rules


def choose_checkpoints(table: pd.DataFrame, metric_columns: list[str], candidate: str) -> pd.DataFrame:
    """One row per (``sft_seed``, ``rule``) with the ``step`` it chose: :func:`selection_rules`, ``best_on_dev``
    (the best post-DPO accuracy on the dev split) and ``rewardrank`` (the ``candidate`` column fixed in the
    config).  A rule that picks nothing on a seed has no row there."""
    rows = []
    for sft_seed, group in table.groupby("sft_seed"):
        rules = selection_rules(group, metric_columns)
        group = group.sort_values("step").reset_index(drop=True)
        rules["best_on_dev"] = int(group.loc[group["post_dpo_dev_accuracy"].idxmax(), "step"])
        rules["rewardrank"] = rules[f"{RULE_PREFIX}{candidate}"]
        rows += [{"sft_seed": int(sft_seed), "rule": rule, "step": step} for rule, step in rules.items()
                 if step is not None]
    return pd.DataFrame(rows, columns=["sft_seed", "rule", "step"])


def run_name(sft_seed: int, step: int, arm: str = "dpo") -> str:
    """The condition of the DPO run (``arm="dpo"``) or its placebo from checkpoint ``step`` of SFT seed ``sft_seed``."""
    return f"s{sft_seed}-step{step}" + ("" if arm == "dpo" else f"-{arm}")


def rule_conditions(choices: pd.DataFrame) -> tuple[dict[str, list[str]], dict[str, str], dict[str, str]]:
    """(picks, placebos, aliases) for :func:`studykit.analysis.claims_section`: each rule stands for the DPO runs of
    the checkpoints it picked (one per seed), ``<rule>-placebo`` for those checkpoints' placebo runs (a rule's
    placebo), and rules that picked the same checkpoints on every seed are aliases of the first such rule."""
    picks, placebos, steps_of = {}, {}, {}
    for rule, group in choices.groupby("rule", sort=False):
        group = group.sort_values("sft_seed")
        picks[rule] = [run_name(s, st) for s, st in zip(group["sft_seed"], group["step"])]
        picks[f"{rule}-placebo"] = [run_name(s, st, "placebo") for s, st in zip(group["sft_seed"], group["step"])]
        placebos[rule] = f"{rule}-placebo"
        steps_of[rule] = tuple(zip(group["sft_seed"], group["step"]))
    rules = list(steps_of)
    aliases = {rule: next(r for r in rules if steps_of[r] == steps_of[rule]) for rule in rules}
    return picks, placebos, aliases


def seed_level_correlations(table: pd.DataFrame, target: str, signals: list[str], group: str = "sft_seed",
                            alpha: float = ALPHA) -> pd.DataFrame:
    """Does a checkpoint-level signal track ``target`` (e.g. post-DPO accuracy)?  Per SFT seed, the Spearman ρ
    between the signal and the target over that seed's checkpoints (scipy ``spearmanr``; NaN with fewer than 3
    checkpoints where the signal is defined, or a constant series); then over seeds the mean ρ, its t interval and
    a one-sample t-test of mean ρ = 0 (scipy ``ttest_1samp``).  The seeds are the replicates: checkpoints of one
    seed share its SFT run and are not independent.  Fewer than :data:`MIN_SEEDS` seeds with a defined ρ: NaN.

    ``signals`` are columns of ``table``; ``-<column>`` enters a column negated (``-val_loss``: lower loss =
    predicted better).  With few checkpoints per seed ρ takes few values (K = 3: ±1, ±0.5); when every seed gives
    the same ρ, scipy's test has zero variance (p = 0 for a non-zero mean): read the per-seed values."""
    rows = []
    for signal in signals:
        column, sign = (signal[1:], -1.0) if signal.startswith("-") else (signal, 1.0)
        per_seed = {}
        for seed, part in table.groupby(group):
            values = pd.DataFrame({"x": sign * part[column].astype(float), "y": part[target].astype(float)}).dropna()
            defined = len(values) >= 3 and values["x"].nunique() > 1 and values["y"].nunique() > 1
            per_seed[seed] = float(scipy_stats.spearmanr(values["x"], values["y"]).statistic) if defined else np.nan
        rhos = np.array([v for v in per_seed.values() if np.isfinite(v)])
        mean = low = high = p = float("nan")
        if len(rhos) >= MIN_SEEDS:
            test = scipy_stats.ttest_1samp(rhos, 0.0)
            interval = test.confidence_interval(1 - alpha)
            mean, low, high, p = float(rhos.mean()), float(interval.low), float(interval.high), float(test.pvalue)
        rows.append({"signal": signal, "mean_spearman": mean, "ci_low": low, "ci_high": high, "p_value": p,
                     "seeds": len(rhos), "seeds_total": len(per_seed),
                     "checkpoints_per_seed": float(table.groupby(group).size().mean()),
                     "per_seed": " ".join("nan" if not np.isfinite(v) else f"{v:+.2f}" for v in per_seed.values())})
    return pd.DataFrame(rows)


def same_ranking_groups(table: pd.DataFrame, columns: list[str], group: str = "sft_seed") -> list[list[str]]:
    """Columns that rank the checkpoints identically within every seed (monotone transforms of each other here):
    they choose the same checkpoints and correlate identically, so they are one variant, not several (NaN counts
    as its own rank)."""
    keys = {c: tuple(tuple(g.rank(method="dense").fillna(-1)) for _, g in table.groupby(group)[c]) for c in columns}
    groups: dict[tuple, list[str]] = {}
    for column, key in keys.items():
        groups.setdefault(key, []).append(column)
    return list(groups.values())


def rule_regret(predictions: pd.DataFrame, choices: pd.DataFrame, rules: list[str], reference: str,
                metric: str = "lenient") -> pd.DataFrame:
    """Regret of each rule against the ``reference`` rule (e.g. the best checkpoint on the dev split): the paired
    difference reference − rule on the eval items over the SFT seeds both rules chose on (each rule picks one
    checkpoint per seed), with its 95% CI.  :func:`studykit.stats.paired_difference` counts seeds and items as
    random (:func:`studykit.stats.seed_item_variance`), so the interval treats each SFT seed — not each checkpoint
    — as a replicate, and the checkpoints within a seed are never counted as independent.  ``predictions``:
    ``condition`` = :func:`run_name`; ``choices``: one row per (sft_seed, rule) with the chosen ``step``."""
    family_of = predictions.drop_duplicates("id").set_index("id")["family"]
    items = sorted(family_of.index)

    def rows(rule: str) -> dict[int, np.ndarray]:
        out = {}
        for seed, step in choices[choices["rule"] == rule][["sft_seed", "step"]].itertuples(index=False):
            run = predictions[predictions["condition"] == run_name(seed, step)].set_index("id")
            out[int(seed)] = run.loc[items, metric].astype(float).to_numpy()
        return out

    best, out = rows(reference), []
    for rule in rules:
        chosen = rows(rule)
        seeds = sorted(set(best) & set(chosen))
        if not seeds:
            out.append({"rule": rule, "regret": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p": np.nan,
                        "mde": np.nan, "seeds": 0, "items": len(items)})
            continue
        result = paired_difference(np.array([best[s] for s in seeds]), np.array([chosen[s] for s in seeds]))
        out.append({"rule": rule, "regret": result.estimate, "ci_low": result.ci_low, "ci_high": result.ci_high,
                    "p": result.p_value, "mde": result.mde, "seeds": result.n_seeds, "items": result.n_items})
    return pd.DataFrame(out)


def _interval(value: float, low: float, high: float) -> str:
    return f"{value:+.3f} [{low:+.3f}, {high:+.3f}]"


def study_statements(regret: pd.DataFrame, acted: dict[str, dict], correlations: pd.DataFrame, *, candidate: str,
                     seeds: int, checkpoints: int, alpha: float = ALPHA, score: str = "lenient accuracy") -> list[str]:
    """The study's two answers in plain, guarded sentences (each names the SFT seeds and checkpoints it rests on):

    1. Does minimum validation loss fail?  Its regret against ``best_on_dev`` (``regret``, :func:`rule_regret`)
       with a 95% CI above 0 — tested only when DPO from the checkpoints both rules picked changed more dev replies
       than its placebo (``acted[rule]``, :func:`change_beyond_placebo` with the rule's picks) and with ≥
       :data:`MIN_SEEDS` seeds; else ``not tested: <why>``; a CI across 0 is ``not resolved`` (with the MDE).
    2. Does a training-free metric track post-DPO quality?  The seed-level test (``correlations``,
       :func:`seed_level_correlations`) of the ``candidate`` column fixed in advance at ``alpha``, and of the
       other candidates with Holm's adjustment — tested only when DPO acted beyond placebo over all checkpoints
       (``acted["all"]``): otherwise post-DPO accuracy measures the SFT checkpoint, not the DPO start.

    ``score`` names the eval items' per-item score in the sentences (lenient accuracy, or a judge's win rate)."""
    scope = f"{seeds} SFT seeds × {checkpoints} checkpoints"
    out = []
    head = "Min-val-loss fails (a better DPO start exists: best_on_dev − min_val_loss on the eval items)"
    row = regret.set_index("rule").loc["min_val_loss"] if "min_val_loss" in set(regret["rule"]) else None
    idle = [rule for rule in ("best_on_dev", "min_val_loss") if not acted.get(rule, {}).get("acted", False)]
    if seeds < MIN_SEEDS:
        out.append(f"{head}: not tested: {seeds} SFT seed(s), the test needs ≥ {MIN_SEEDS} ({scope}).")
    elif row is None or not np.isfinite(row["regret"]):
        out.append(f"{head}: not tested: no regret of min_val_loss was computed ({scope}).")
    elif idle:
        why = "; ".join(f"{rule}: dev replies changed by DPO − by placebo = "
                        f"{_interval(acted[rule]['difference'], acted[rule]['ci_low'], acted[rule]['ci_high'])}"
                        if rule in acted else f"{rule}: not measured" for rule in idle)
        out.append(f"{head}: not tested: DPO from the checkpoints these rules picked did not act beyond its "
                   f"placebo ({why}; {scope}).")
    else:
        numbers = f"regret {_interval(row['regret'], row['ci_low'], row['ci_high'])} {score} ({scope})"
        if row["ci_low"] > 0:
            out.append(f"{head}: yes — {numbers}: the checkpoint with the best post-DPO dev accuracy beats the "
                       "min-val-loss checkpoint on the eval items.")
        elif row["ci_high"] < 0:
            out.append(f"{head}: no — {numbers}: the min-val-loss checkpoint beats the best-on-dev checkpoint.")
        else:
            out.append(f"{head}: not resolved — {numbers}; the smallest regret this detects with 80% power is "
                       f"{row['mde']:.3f}.")
    head = "A training-free metric tracks post-DPO accuracy (within-seed Spearman ρ, tested over seeds)"
    overall = acted.get("all")
    table = correlations.set_index("signal")
    if overall is None or not overall["acted"]:
        why = ("not measured" if overall is None else
               f"dev replies changed by DPO − by placebo = "
               f"{_interval(overall['difference'], overall['ci_low'], overall['ci_high'])}")
        out.append(f"{head}: not tested: DPO did not act beyond its placebo over all checkpoints ({why}), so post-DPO "
                   f"accuracy measures the SFT checkpoint ({scope}).")
        return out
    if candidate not in table.index or not np.isfinite(table.loc[candidate, "p_value"]):
        seeds_defined = int(table.loc[candidate, "seeds"]) if candidate in table.index else 0
        out.append(f"{head}: the candidate under test, {candidate}: not tested: ρ is defined on {seeds_defined} "
                   f"seed(s), the test needs ≥ {MIN_SEEDS} ({scope}).")
    else:
        r = table.loc[candidate]
        numbers = (f"mean ρ {_interval(r['mean_spearman'], r['ci_low'], r['ci_high'])}, p = {r['p_value']:.3g}, "
                   f"per seed {r['per_seed']} ({scope})")
        label = ("yes" if r["p_value"] < alpha and r["mean_spearman"] > 0 else
                 "it ranks checkpoints AGAINST post-DPO accuracy" if r["p_value"] < alpha else "not resolved")
        out.append(f"{head}: the candidate under test, {candidate} (fixed in advance): {label} — {numbers}.")
    others = table[[c in candidate_columns() and c != candidate and np.isfinite(table.loc[c, "p_value"])
                    for c in table.index]]
    if len(others):
        adjusted = pd.Series(holm(others["p_value"].tolist()), index=others.index)
        tracking = [f"{c} (mean ρ {others.loc[c, 'mean_spearman']:+.2f}, Holm p = {adjusted[c]:.3g})"
                    for c in others.index if adjusted[c] < alpha and others.loc[c, "mean_spearman"] > 0]
        out.append(f"Exploratory, the {len(others)} other candidates with a defined test (Holm-adjusted): "
                   + (f"tracking post-DPO accuracy: {', '.join(tracking)}." if tracking else
                      "none tracks post-DPO accuracy beyond noise."))
    return out


def run_arm(run: str) -> str:
    """The arm of a session run of this study (:func:`run_name`): ``sft``, ``dpo`` or ``dpo_placebo`` (for
    :meth:`studykit.study.Study.compute`)."""
    return "sft" if run == "sft" else "dpo_placebo" if run.endswith("-placebo") else "dpo"


ZEPHYR = {"checkpoints": 16, "metric_pairs": 1_000, "dpo_pairs": 61_135}  # UltraChat 1 epoch / 100-step saves


def zephyr_cost_estimate(checkpoints: int = ZEPHYR["checkpoints"], metric_pairs: int = ZEPHYR["metric_pairs"],
                         dpo_pairs: int = ZEPHYR["dpo_pairs"]) -> float:
    """ESTIMATE, not a measurement: the metric pass over all checkpoints as a fraction of one DPO run at Zephyr
    scale, counting forward-pass equivalents — the pass is one forward of both responses of each metric pair per
    checkpoint; a DPO step is a policy forward + backward (≈ 3 forwards) and a reference forward per response —
    with the same tokens per pair (UltraFeedback pairs only: no own samples, which would add generation)."""
    return (checkpoints * metric_pairs * 2) / (dpo_pairs * 2 * 4)


def cost_statement(metric_seconds: float, dpo_seconds: float, *, checkpoints: int, metric_pairs: float,
                   dpo_pairs_seen: int) -> str:
    """One sentence: the measured metric pass over the ``checkpoints`` of one SFT seed (own-sample generation on
    the metric prompts plus the log-prob pass, ``metric_pairs`` pairs per checkpoint on average) beside one DPO
    run's training seconds, and the labelled Zephyr-scale ESTIMATE (:func:`zephyr_cost_estimate`)."""
    ratio = metric_seconds / dpo_seconds if dpo_seconds > 0 else float("nan")
    return (f"Cost: the metric pass over the {checkpoints} checkpoints of one SFT seed (own-sample generation and the "
            f"log-prob pass, {metric_pairs:.0f} pairs per checkpoint) took {metric_seconds:.1f} s; one DPO run "
            f"(training only, {dpo_pairs_seen} pairs) {dpo_seconds:.1f} s: the pass is {ratio:.0%} of a DPO run — "
            + ("cheaper than one DPO run." if ratio < 1 else
               "NOT cheaper than one DPO run at this scale, where each DPO run is cut to a few steps so that every "
               "checkpoint's DPO run and placebo fit the budget.")
            + f" ESTIMATE at Zephyr scale ({ZEPHYR['checkpoints']} checkpoints, {ZEPHYR['metric_pairs']:,} metric "
            f"pairs, one DPO epoch on {ZEPHYR['dpo_pairs']:,} pairs, forward-pass equivalents, no own samples): "
            f"{zephyr_cost_estimate():.1%} of a DPO run.")


def study_data(cfg, splits: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """SFT train / validation records and the DPO / metric prompts with their gold-vs-wrong pairs (``kind =
    "gold_vs_wrong"``) for the study.

    ``study.sft_data`` / ``study.preference_data`` either name ``testbed`` (the embedded default: the pool, cut
    into train and validation, and the preference split, cut into DPO and metric prompts) or a loader format and a
    local file or hub dataset (the Zephyr recipe: UltraChat ``chat``, UltraFeedback ``preferences``, whose chosen
    vs rejected pairs stand in the ``gold_vs_wrong`` kind)."""
    study = cfg.study
    if study.sft_data.source == "testbed":
        sft = interleave_families(splits["pool"])
    else:
        sft = load_records(study.sft_data.format, source_path(study.sft_data.source), study.sft_data.split,
                           study.sft_data.limit)
    if study.preference_data.source == "testbed":
        prefs = interleave_families(splits["preference"])
    else:
        prefs = load_records(study.preference_data.format, source_path(study.preference_data.source),
                             study.preference_data.split, study.preference_data.limit)
    prefs = [{**p, "kind": "gold_vs_wrong"} for p in prefs]
    held_out = {}
    for name, key, records in (("sft_data", "validation", sft), ("preference_data", "metric_pairs", prefs)):
        fraction = float(study[name][key])  # in (0, 1): checked when the config is composed
        held_out[name] = max(1, round(fraction * len(records)))
        if held_out[name] >= len(records):
            raise ValueError(f"study.{name}.{key}={fraction} leaves none of the {len(records)} items for training")
    n_val, n_metric = held_out["sft_data"], held_out["preference_data"]
    return {"sft_train": sft[n_val:], "sft_val": sft[:n_val], "dpo_pairs": prefs[n_metric:],
            "metric_pairs": prefs[:n_metric]}
