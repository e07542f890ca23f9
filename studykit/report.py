"""What every study notebook shows, computed one way: accuracy per condition with its 95% CI beside the answer
baselines, the figure of it, and the claims table as a reader wants it (the claims themselves:
:mod:`studykit.analysis`)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .claims import ACCURACY, condition_matrix, defined_items
from .evaluate import answer_baselines
from .guards import UNTRAINED, changed_replies
from .stats import paired_difference, wilson_interval

# Every study notebook imports this module: its protocol and claims tables show whole values (pandas would cut
# them at 50 characters with "…").
pd.set_option("display.max_colwidth", None)


def condition_accuracy(predictions: pd.DataFrame, metric: str = "lenient",
                       families: list[str] | None = None) -> pd.DataFrame:
    """Per condition: accuracy (mean over seeds and items), its 95% CI (Wilson for one seed; for several, the t
    interval with seeds and items random of :func:`studykit.stats.paired_difference`), the items and seeds.  For a
    per-prompt measurement (``metric`` not an accuracy, e.g. ``embedding_diversity``) the column is named after it
    and the CI is always the t interval."""
    frame = predictions if families is None else predictions[predictions["family"].isin(families)]
    rows = []
    family_of = frame.drop_duplicates("id").set_index("id")["family"]
    items = sorted(family_of.index)
    for condition in frame["condition"].unique():
        matrix = condition_matrix(frame, condition, metric, items)
        n_seeds, n_items = matrix.shape
        if n_seeds == 1 and metric in ACCURACY:
            low, high = wilson_interval(int(matrix.to_numpy().sum()), n_items)
        else:
            result = paired_difference(matrix.to_numpy(), np.zeros(n_items))
            low, high = result.ci_low, result.ci_high
        value = f"{metric}_accuracy" if metric in ACCURACY else metric
        rows.append({"condition": condition, value: float(matrix.to_numpy().mean()),
                     "ci_low": low, "ci_high": high, "items": n_items, "seeds": n_seeds})
    return pd.DataFrame(rows)


def accuracy_figure(tables: dict[str, pd.DataFrame], records: list[dict] | None, title: str,
                    notes: dict[str, str] | None = None):
    """One panel per table (e.g. strict / lenient, or in-domain / OOD): accuracy (or a judge's win rate) with 95%
    CI per condition, and the chance and majority-answer baselines of the same eval items as vertical lines (for
    judged replies, ``records=None``: the win rate of a reply as good as the reference, 0.5).  ``notes`` adds a
    text per condition to its label (e.g. its training-set size)."""
    notes = notes or {}
    baselines = (answer_baselines(records).set_index("family").loc["mean", ["chance", "majority"]] if records is not None else
                 pd.Series({"even with the reference": 0.5}))
    fig, axes = plt.subplots(1, len(tables), figsize=(6.5 * len(tables), 4.2), squeeze=False)
    for ax, (label, table) in zip(axes[0], tables.items()):
        value = next(c for c in table.columns if c.endswith("_accuracy") or c == "win")
        y = np.arange(len(table))
        ax.errorbar(table[value], y, xerr=[table[value] - table["ci_low"], table["ci_high"] - table[value]],
                    fmt="o", capsize=3)
        ax.set_yticks(y, [f"{c}{' ' + notes[c] if c in notes else ''} (eval {n}×{s} seeds)"
                          for c, n, s in zip(table["condition"], table["items"], table["seeds"])])
        for (name, level), style in zip(baselines.items(), (":", "--")):
            ax.axvline(level, ls=style, c="gray", label=f"{name if name != 'majority' else 'majority answer'} {level:.2f}")
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"{label} (fraction of eval items, 95% CI)")
        ax.invert_yaxis()
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def show_claims(table: pd.DataFrame) -> pd.DataFrame:
    """The claims table as a reader wants it: rounded numbers, the verdict last."""
    columns = [c for c in ("id", "kind", "claim", "paper", "source", "paper_numbers", "paper_regime", "our_regime",
                           "comparison", "metric", "families", "excluded_families", "treatment", "control",
                           "difference", "ci_low", "ci_high", "per_seed", "mde", "p", "p_holm", "items", "seeds",
                           "guards", "flags", "verdict") if c in table.columns]
    return table[columns].round(3)


def movement_table(margin_rows: list[dict], predictions: pd.DataFrame, start: str) -> pd.DataFrame:
    """One row per (run, seed) of ``margin_rows`` (each ``run``, ``seed`` and its
    :func:`studykit.rewardrank.pair_movement`), with the share of eval replies that differ from those of the run's
    ``start`` condition of the same seed, or of its one seed when every run starts from one model
    (:func:`studykit.guards.changed_replies`)."""
    table = pd.DataFrame(margin_rows)
    origin = predictions[predictions["condition"] == start]
    one_start = origin["seed"].nunique() == 1

    def changed(run: str, seed: int) -> float:
        arm = predictions[(predictions["condition"] == run) & (predictions["seed"] == seed)]
        return changed_replies(pd.concat([arm, origin if one_start else origin[origin["seed"] == seed]]), run, start)

    table[f"changed replies vs {start}"] = [changed(run, seed) for run, seed in zip(table["run"], table["seed"])]
    return table


def rl_run_summary(train_log: pd.DataFrame, rl_signal: pd.DataFrame) -> pd.DataFrame:
    """Per RL run (the train-log rows of :meth:`studykit.arms.Arms.run`), mean over seeds: the share of prompt groups
    with a learning signal (``rl_signal``, mean over steps), HPT's share of groups trained with SFT where logged, and
    the mean training reward over the first and the last quarter of the run's RL steps."""
    reward = train_log.dropna(subset=["reward"]) if "reward" in train_log else pd.DataFrame(columns=["run", "step"])
    hpt = "hpt/sft_group_fraction" in train_log
    rows = []
    for run, part in reward.groupby("run", sort=False):
        last = int(part["step"].max())
        quarter = max(1, last // 4)
        rows.append({"run": run, "signal share": rl_signal.loc[rl_signal["condition"] == run, "signal_share"].mean(),
                     **({"SFT groups (HPT)": part["hpt/sft_group_fraction"].mean()} if hpt else {}),
                     "reward, first quarter": part.loc[part["step"] <= quarter, "reward"].mean(),
                     "reward, last quarter": part.loc[part["step"] > last - quarter, "reward"].mean()})
    return pd.DataFrame(rows, columns=["run", "signal share", *(["SFT groups (HPT)"] if hpt else []),
                                       "reward, first quarter", "reward, last quarter"])


def sample_replies(predictions: pd.DataFrame, seed: int, per_family: int = 2) -> pd.DataFrame:
    """What each condition answers: the replies of training seed ``seed`` (and of the untrained conditions) to the
    first ``per_family`` eval items of each family, one column per condition."""
    shown = predictions[predictions["seed"].isin([seed, UNTRAINED])]
    items = shown.groupby("family", sort=False)["id"].unique().map(lambda ids: list(ids[:per_family])).sum()
    shown = shown[shown["id"].isin(items)]
    return shown.pivot_table(index=["family", "id"], columns="condition", values="reply", aggfunc="first")


def metric_summary(predictions: pd.DataFrame, metrics: list[str],
                   family_groups: dict[str, list[str]]) -> pd.DataFrame:
    """One row per condition × family group: each per-prompt metric's mean with its 95% CI (over prompts and
    seeds, :func:`condition_accuracy`).  A metric undefined on some prompts — quality on open-ended prompts (no
    verifier), CRC diversity among valid samples where a model wrote none — is averaged, per condition, over the
    prompts where it is defined in every seed of that condition (``prompts``)."""
    rows = []
    for group, families in family_groups.items():
        frame = predictions[predictions["family"].isin(families)]
        for metric in metrics:
            for condition, part in frame.groupby("condition", sort=False):
                items, _ = defined_items(part, [condition], metric, sorted(part["id"].unique()))
                if not items:
                    continue
                r = condition_accuracy(part[part["id"].isin(items)], metric).iloc[0]
                rows.append({"group": group, "metric": metric, "condition": condition, "mean": r[metric],
                             "ci_low": r["ci_low"], "ci_high": r["ci_high"], "prompts": r["items"],
                             "seeds": r["seeds"]})
    return pd.DataFrame(rows)


def diversity_quality_figure(summary: pd.DataFrame, diversity: str, group: str, title: str):
    """Diversity (y) against quality (x) per condition on one family group, both with their 95% CIs."""
    part = summary[summary["group"] == group].set_index(["metric", "condition"])
    conditions = part.loc[diversity].index.tolist()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for condition in conditions:
        q, d = part.loc[("quality", condition)], part.loc[(diversity, condition)]
        ax.errorbar(q["mean"], d["mean"], xerr=[[q["mean"] - q["ci_low"]], [q["ci_high"] - q["mean"]]],
                    yerr=[[d["mean"] - d["ci_low"]], [d["ci_high"] - d["mean"]]], fmt="o", capsize=3, label=condition)
    ax.set_xlabel("quality: share of samples the verifier accepts (95% CI)")
    ax.set_ylabel(f"{diversity.replace('_', ' ')} per prompt (95% CI)")
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def layer_range_heatmap(sweep: pd.DataFrame, value: str, title: str):
    """A heat map of ``value`` over restored layer ranges: rows = first restored layer, columns = last (inclusive),
    one cell per ``(start, end)`` row of ``sweep`` (mean over any repeats)."""
    table = sweep.assign(last=sweep["end"] - 1).pivot_table(index="start", columns="last", values=value, aggfunc="mean")
    fig, ax = plt.subplots(figsize=(1.1 * len(table.columns) + 2.5, 0.8 * len(table) + 2))
    image = ax.imshow(table.to_numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(table.columns)), table.columns)
    ax.set_yticks(range(len(table.index)), table.index)
    for (i, j), v in np.ndenumerate(table.to_numpy()):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xlabel("last restored layer")
    ax.set_ylabel("first restored layer")
    fig.colorbar(image, ax=ax, label=value.replace("_", " "))
    ax.set_title(title)
    fig.tight_layout()
    return fig
