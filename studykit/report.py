"""What every study notebook shows, computed one way: accuracy per condition with its 95% CI beside the answer
baselines, the figure of it, and the claims table with its generated conclusions."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .claims import claims_table, condition_matrix, conclusions, load_claims
from .evaluate import answer_baselines
from .stats import paired_difference, wilson_interval

# Every study notebook imports this module: its protocol and claims tables show whole values (pandas would cut
# them at 50 characters with "…").
pd.set_option("display.max_colwidth", None)


def condition_accuracy(predictions: pd.DataFrame, metric: str = "lenient", families: list[str] | None = None,
                       seed: int = 0) -> pd.DataFrame:
    """Per condition: accuracy (mean over seeds and items), its 95% CI (Wilson for one seed; a bootstrap over items
    within families and over seeds for several), the items and seeds."""
    frame = predictions if families is None else predictions[predictions["family"].isin(families)]
    rows = []
    family_of = frame.drop_duplicates("id").set_index("id")["family"]
    items = sorted(family_of.index)
    for condition in frame["condition"].unique():
        matrix = condition_matrix(frame, condition, metric, items)
        n_seeds, n_items = matrix.shape
        if n_seeds == 1:
            low, high = wilson_interval(int(matrix.to_numpy().sum()), n_items)
        else:
            result = paired_difference(matrix.to_numpy(), np.zeros(n_items), family_of[items].to_numpy(), seed=seed)
            low, high = result.ci_low, result.ci_high
        rows.append({"condition": condition, f"{metric}_accuracy": float(matrix.to_numpy().mean()),
                     "ci_low": low, "ci_high": high, "items": n_items, "seeds": n_seeds})
    return pd.DataFrame(rows)


def accuracy_figure(tables: dict[str, pd.DataFrame], records: list[dict], title: str,
                    notes: dict[str, str] | None = None):
    """One panel per table (e.g. strict / lenient, or in-domain / OOD): accuracy with 95% CI per condition, and the
    chance and majority-answer baselines of the same eval items as vertical lines.  ``notes`` adds a text per
    condition to its label (e.g. its training-set size)."""
    notes = notes or {}
    baselines = answer_baselines(records).set_index("family").loc["mean"]
    fig, axes = plt.subplots(1, len(tables), figsize=(6.5 * len(tables), 4.2), squeeze=False)
    for ax, (label, table) in zip(axes[0], tables.items()):
        value = next(c for c in table.columns if c.endswith("_accuracy"))
        y = np.arange(len(table))
        ax.errorbar(table[value], y, xerr=[table[value] - table["ci_low"], table["ci_high"] - table[value]],
                    fmt="o", capsize=3)
        ax.set_yticks(y, [f"{c}{' ' + notes[c] if c in notes else ''} (eval {n}×{s} seeds)"
                          for c, n, s in zip(table["condition"], table["items"], table["seeds"])])
        ax.axvline(baselines["chance"], ls=":", c="gray", label=f"chance {baselines['chance']:.2f}")
        ax.axvline(baselines["majority"], ls="--", c="gray", label=f"majority answer {baselines['majority']:.2f}")
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"{label} (fraction of eval items, 95% CI)")
        ax.invert_yaxis()
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def claims_section(study: str, predictions: pd.DataFrame, *, family_groups: dict[str, list[str]] | None = None,
                   aliases: dict[str, str] | None = None,
                   not_run: dict[str, str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The study's claims table (from ``conf/claims/<study>.yaml``) and its generated conclusions."""
    table = claims_table(load_claims(study), predictions, family_groups=family_groups, aliases=aliases,
                         not_run=not_run)
    return table, conclusions(table)


def show_claims(table: pd.DataFrame) -> pd.DataFrame:
    """The claims table as a reader wants it: rounded numbers, the verdict last."""
    columns = [c for c in ("id", "claim", "paper", "source", "paper_numbers", "comparison", "metric", "families",
                           "treatment", "control", "difference", "ci_low", "ci_high", "mde", "items", "seeds",
                           "verdict") if c in table.columns]
    return table[columns].round(3)
