"""RewardRank: training-free choice of the SFT checkpoint that DPO starts from (and uses as its reference).

"Select Before Use: On the Importance of Reference Model Selection in Preference Alignment" (Li et al., ACL 2026).
RewardRank scores a checkpoint by the "initial implicit alignment between reference model and preference objective",
and selecting by it beats the usual minimum-validation-loss choice.  Only the paper's abstract was available when
the kit was written, so its exact formula is not known here; this module computes the plausible candidates side by
side, each from one batched pass of the checkpoint over held-out preference pairs (y_w preferred to y_l):

  (A) ranking accuracy      mean 1[ log π_ckpt(y_w|x) > log π_ckpt(y_l|x) ]            raw and length-normalized
  (B) implicit-reward acc.  mean 1[ r(y_w) > r(y_l) ],  r(y) = log π_ckpt(y|x) − log π_base(y|x)
                            (DPO's implicit reward at initialization with the pre-SFT model as reference; β > 0
                            does not change the sign)
  (C) margins               the mean differences behind (A)

The mean implicit-reward margin is not a separate candidate: it equals the ranking margin minus the base model's
margin, a constant over checkpoints, so it ranks checkpoints exactly as the ranking margin does.

Baselines: minimum validation loss, the last checkpoint, the best pre-DPO accuracy on the *dev* split (never on the
eval items the post-DPO result is scored on).

Preference pairs come in two kinds: gold vs a verified-wrong answer (the testbed's), and the model's own samples
ranked by the verifier (:func:`self_sampled_pairs`: a correct and an incorrect sample of the same prompt).  Several
SFT seeds each give K checkpoints; correlations pool them with ranks taken within each seed
(:func:`pooled_correlations`), and each rule chooses one checkpoint per seed.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .answers import judge
from .data import load_records
from .evaluate import generate
from .logprobs import encode_pair, format_pair, pad_token_id, pair_logprobs, shared_prompt_logprobs
from .stats import paired_difference, rank_correlation
from .testbed import interleave_families

METRICS = ("rank_acc", "rank_acc_norm", "reward_acc", "rank_margin", "rank_margin_norm")


def preference_logprobs(model, tokenizer, pairs: list[dict], *, chat: bool, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Summed log-probs and token counts of chosen and rejected responses.  Each prompt is encoded once and both
    responses continue from its KV cache (:func:`~studykit.logprobs.shared_prompt_logprobs`), which halves the
    cost of the metric pass: the testbed's prompts are ~60-80 tokens, its responses ~3-8."""
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


def selection_rules(table: pd.DataFrame) -> dict[str, int]:
    """Checkpoint step chosen by each rule (ties → the earliest checkpoint).  ``table`` has one row per checkpoint
    with ``step``, ``val_loss``, ``pre_dpo_dev_accuracy`` (on the dev split) and the :data:`METRICS` columns."""
    table = table.sort_values("step")
    rules = {"min_val_loss": int(table.loc[table["val_loss"].idxmin(), "step"]),
             "last_checkpoint": int(table["step"].iloc[-1]),
             "best_pre_dpo_dev_accuracy": int(table.loc[table["pre_dpo_dev_accuracy"].idxmax(), "step"])}
    for metric in METRICS:
        rules[f"rewardrank_{metric}"] = int(table.loc[table[metric].idxmax(), "step"])
    return rules


def pooled_correlations(table: pd.DataFrame, target: str, group: str = "sft_seed") -> pd.DataFrame:
    """Spearman ρ and Kendall τ, each with a permutation p-value, between each checkpoint-level signal and
    ``target`` (e.g. post-DPO accuracy) over the checkpoints of all SFT seeds.  Both are ranked within each seed
    first (average ranks, centred), so a seed that is better overall does not make a correlation.  Validation loss
    enters negated (lower loss = predicted better)."""
    signals = {"-val_loss": -table["val_loss"], "pre_dpo_dev_accuracy": table["pre_dpo_dev_accuracy"],
               **{m: table[m] for m in METRICS if m in table}}

    def within(series: pd.Series) -> np.ndarray:
        ranks = series.groupby(table[group]).rank()
        return (ranks - ranks.groupby(table[group]).transform("mean")).to_numpy()

    rows = []
    for name, signal in signals.items():
        rho = rank_correlation(within(signal), within(table[target]), "spearman")
        tau = rank_correlation(within(signal), within(table[target]), "kendall")
        rows.append({"signal": name, "spearman": rho["statistic"], "spearman_p": rho["p_value"],
                     "kendall": tau["statistic"], "kendall_p": tau["p_value"], "checkpoints": rho["n"],
                     "seeds": table[group].nunique()})
    return pd.DataFrame(rows)


def same_ranking_groups(table: pd.DataFrame, columns: list[str], group: str = "sft_seed") -> list[list[str]]:
    """Columns that rank the checkpoints identically within every seed (monotone transforms of each other here):
    they choose the same checkpoints and correlate identically, so they are one variant, not several."""
    keys = {c: tuple(tuple(g.rank(method="dense")) for _, g in table.groupby(group)[c]) for c in columns}
    groups: dict[tuple, list[str]] = {}
    for column, key in keys.items():
        groups.setdefault(key, []).append(column)
    return list(groups.values())


def rule_regret(predictions: pd.DataFrame, choices: pd.DataFrame, rules: list[str], reference: str,
                metric: str = "lenient") -> pd.DataFrame:
    """Regret of each rule against the ``reference`` rule (e.g. the best checkpoint on the dev split): the paired
    difference reference − rule on the eval items, over SFT seeds (each rule picks one checkpoint per seed), with
    its 95% CI.  ``predictions``: ``condition`` = ``s<seed>-step<step>``; ``choices``: one row per (sft_seed, rule)
    with the chosen ``step``."""
    family_of = predictions.drop_duplicates("id").set_index("id")["family"]
    items = sorted(family_of.index)

    def matrix(rule: str) -> np.ndarray:
        rows = []
        for seed, step in choices[choices["rule"] == rule][["sft_seed", "step"]].itertuples(index=False):
            run = predictions[predictions["condition"] == f"s{seed}-step{step}"].set_index("id")
            rows.append(run.loc[items, metric].astype(float).to_numpy())
        return np.array(rows)

    best = matrix(reference)
    out = []
    for rule in rules:
        result = paired_difference(best, matrix(rule))
        out.append({"rule": rule, "regret": result.estimate, "ci_low": result.ci_low, "ci_high": result.ci_high,
                    "mde": result.mde, "seeds": result.n_seeds, "items": result.n_items})
    return pd.DataFrame(out)


def implicit_reward_margins(policy: dict[str, np.ndarray], reference: dict[str, np.ndarray], beta: float) -> np.ndarray:
    """Per pair, DPO's implicit-reward margin β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))]
    (Rafailov et al., 2023, Eq. 7): 0 for every pair at the start of DPO, positive where DPO learned the pair."""
    return beta * ((policy["chosen"] - reference["chosen"]) - (policy["rejected"] - reference["rejected"]))


def dpo_movement(margins: np.ndarray, policy_correct, reference_correct) -> dict:
    """Did DPO move the policy?  The mean implicit-reward margin on held-out pairs (0 before DPO) and the verifier
    win rate against the run's own reference (0.5 = no change; ties count half), each with its 95% t interval;
    ``moved`` when either CI excludes its no-change value."""
    margin = paired_difference(np.asarray(margins, float), np.zeros(len(margins)))
    policy_correct, reference_correct = np.asarray(policy_correct, float), np.asarray(reference_correct, float)
    wins = paired_difference(0.5 + 0.5 * (policy_correct - reference_correct), np.full(len(policy_correct), 0.5))
    return {"margin": margin.estimate, "margin_ci_low": margin.ci_low, "margin_ci_high": margin.ci_high,
            "win_rate": 0.5 + wins.estimate, "win_rate_ci_low": 0.5 + wins.ci_low,
            "win_rate_ci_high": 0.5 + wins.ci_high,
            "moved": bool(margin.ci_low > 0 or wins.ci_low > 0 or wins.ci_high < 0)}


@torch.no_grad()
def self_sampled_pairs(model, tokenizer, records: list[dict], *, samples: int, chat: bool, max_new_tokens: int,
                       temperature: float = 1.0, batch_size: int = 16, seed: int = 0) -> list[dict]:
    """Preference pairs from the model's own samples: ``samples`` replies per prompt at ``temperature``, judged by
    the verifier (lenient extractor); a prompt with both a correct and an incorrect reply gives one pair (the first
    of each).  Records keep their testbed fields (``family``, ``entry``) and gain ``chosen``, ``rejected`` and
    ``kind = "self_sampled"``."""
    torch.manual_seed(seed)
    replies = generate(model, tokenizer, [r["prompt"] for r in records for _ in range(samples)], chat=chat,
                       max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=True, temperature=temperature)
    pairs = []
    for i, record in enumerate(records):
        group = [reply.strip() for reply in replies[i * samples:(i + 1) * samples]]
        right = [reply for reply in group if reply and judge(record, reply).lenient]
        wrong = [reply for reply in group if reply and not judge(record, reply).lenient]
        if right and wrong:
            pairs.append({**record, "chosen": right[0], "rejected": wrong[0], "kind": "self_sampled"})
    return pairs


def tracking_statements(corr: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """One sentence per signal: does it track post-DPO quality beyond noise (pooled within-seed Spearman ρ with a
    two-sided permutation p-value below ``alpha``, in the predicted direction)?"""
    out = []
    for row in corr.itertuples():
        head = f"{row.signal}: within-seed Spearman ρ = {row.spearman:+.2f} (permutation p = {row.spearman_p:.3f}, " \
               f"{row.checkpoints} checkpoints of {row.seeds} SFT seeds)"
        if not np.isfinite(row.spearman):
            out.append(f"{head} — undefined (fewer than 3 checkpoints, or a signal constant over them).")
        elif row.spearman_p < alpha:
            out.append(f"{head} — tracks post-DPO accuracy beyond noise" if row.spearman > 0 else
                       f"{head} — ranks checkpoints *against* post-DPO accuracy beyond noise")
        else:
            out.append(f"{head} — not distinguishable from no association at this power.")
    return out


ZEPHYR = {"checkpoints": 16, "metric_pairs": 1_000, "dpo_pairs": 61_135}  # UltraChat 1 epoch / 100-step saves


def zephyr_cost_estimate(checkpoints: int = ZEPHYR["checkpoints"], metric_pairs: int = ZEPHYR["metric_pairs"],
                         dpo_pairs: int = ZEPHYR["dpo_pairs"]) -> float:
    """ESTIMATE, not a measurement: the metric pass over all checkpoints as a fraction of one DPO run at Zephyr
    scale, counting forward-pass equivalents — the pass is one forward of both responses of each metric pair per
    checkpoint; a DPO step is a policy forward + backward (≈ 3 forwards) and a reference forward per response —
    with the same tokens per pair."""
    return (checkpoints * metric_pairs * 2) / (dpo_pairs * 2 * 4)


def study_data(cfg, splits: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """SFT train / validation records and DPO / metric preference pairs for the study.

    ``study.sft_data`` / ``study.preference_data`` either name ``testbed`` (the embedded default: the pool, cut
    into train and validation, and the preference split, cut into DPO and metric pairs) or a loader format and a
    local file or hub dataset (the Zephyr recipe: UltraChat ``chat``, UltraFeedback ``preferences``)."""
    study = cfg.study
    if study.sft_data.source == "testbed":
        sft = interleave_families(splits["pool"])
    else:
        sft = load_records(study.sft_data.format, study.sft_data.source, study.sft_data.split, study.sft_data.limit)
    if study.preference_data.source == "testbed":
        prefs = interleave_families(splits["preference"])
    else:
        prefs = load_records(study.preference_data.format, study.preference_data.source, study.preference_data.split,
                             study.preference_data.limit)
    held_out = {}
    for name, key, records in (("sft_data", "validation", sft), ("preference_data", "metric_pairs", prefs)):
        fraction = float(study[name][key])  # in (0, 1): checked when the config is composed
        held_out[name] = max(1, round(fraction * len(records)))
        if held_out[name] >= len(records):
            raise ValueError(f"study.{name}.{key}={fraction} leaves none of the {len(records)} items for training")
    n_val, n_metric = held_out["sft_data"], held_out["preference_data"]
    return {"sft_train": sft[n_val:], "sft_val": sft[:n_val], "dpo_pairs": prefs[n_metric:],
            "metric_pairs": prefs[:n_metric]}
