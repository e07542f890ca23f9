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
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from .logprobs import sequence_logprobs
from .stats import rank_correlation

METRICS = ("rank_acc", "rank_acc_norm", "reward_acc", "rank_margin", "rank_margin_norm")


def preference_logprobs(model, tokenizer, pairs: list[dict], *, chat: bool, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Summed log-probs and token counts of chosen and rejected responses, in one batched pass over 2N sequences."""
    prompts = [p["prompt"] for p in pairs] * 2
    responses = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    out = sequence_logprobs(model, tokenizer, prompts, responses, chat=chat, batch_size=batch_size)
    n = len(pairs)
    return {"chosen": out["sum"][:n], "rejected": out["sum"][n:], "chosen_tokens": out["n_tokens"][:n],
            "rejected_tokens": out["n_tokens"][n:]}


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


def correlations(table: pd.DataFrame, target: str) -> pd.DataFrame:
    """Spearman ρ and Kendall τ, each with a permutation p-value, between each checkpoint-level signal and
    ``target`` (e.g. post-DPO accuracy).  Validation loss enters negated (lower loss = predicted better)."""
    rows = []
    signals = {"-val_loss": -table["val_loss"], "pre_dpo_dev_accuracy": table["pre_dpo_dev_accuracy"],
               **{m: table[m] for m in METRICS}}
    for name, signal in signals.items():
        rho = rank_correlation(signal, table[target], "spearman")
        tau = rank_correlation(signal, table[target], "kendall")
        rows.append({"signal": name, "spearman": rho["statistic"], "spearman_p": rho["p_value"],
                     "kendall": tau["statistic"], "kendall_p": tau["p_value"], "checkpoints": rho["n"]})
    return pd.DataFrame(rows)


def regret(table: pd.DataFrame, rules: dict[str, int], target: str) -> pd.DataFrame:
    """Per rule: the chosen step, its ``target`` value, and regret = best achievable − achieved."""
    by_step = table.set_index("step")[target]
    best = by_step.max()
    return pd.DataFrame([{"rule": rule, "step": step, target: by_step[step], "regret": best - by_step[step]}
                         for rule, step in rules.items()])


def verifier_win_rate(policy_correct: np.ndarray, reference_correct: np.ndarray) -> float:
    """Win rate of a policy against its reference on the same prompts, judged by the verifier: a win when only the
    policy is correct, a loss when only the reference is, half a win for ties (both right or both wrong)."""
    policy_correct, reference_correct = np.asarray(policy_correct, bool), np.asarray(reference_correct, bool)
    wins = (policy_correct & ~reference_correct).sum()
    ties = (policy_correct == reference_correct).sum()
    return float((wins + 0.5 * ties) / len(policy_correct))


def study_data(cfg, splits: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """SFT train / validation records and DPO / metric preference pairs for the study.

    ``study.sft_data`` / ``study.preference_data`` either name ``testbed`` (the embedded default: the pool, cut
    into train and validation, and the preference split, cut into DPO and metric pairs) or a loader format and a
    local file or hub dataset (the Zephyr recipe: UltraChat ``chat``, UltraFeedback ``preferences``)."""
    from .data import load_records
    from .testbed import interleave_families

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
