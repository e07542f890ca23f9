"""Settings chosen on the dev split, never on the eval items: a grid of settings (a learning rate, β) for one arm,
each trained once with its placebo (:mod:`studykit.placebo`: the same run on data whose learning signal is
destroyed) and scored on the dev items; the chosen setting is the one whose run beats its placebo by the most.

Why the placebo and not the arm's own dev score: at the testbed's budgets a larger step size moves every model —
toward the task's answer format as much as toward the answers — so the setting that learns most from the signal is
the one that gains most over the same run without it (the guard every verdict later passes on the eval items,
:mod:`studykit.guards`).  :meth:`studykit.study.Study.tune` trains the grid; :func:`dev_choice` reads its dev
predictions.
"""
from __future__ import annotations

import pandas as pd

from .stats import paired_difference

COLUMNS = ["setting", "arm", "placebo", "arm_accuracy", "placebo_accuracy", "gain", "ci_low", "ci_high", "items",
           "chosen"]


def placebo_of(name: str) -> str:
    """The condition name of arm ``name``'s placebo."""
    return f"placebo_{name}"


def dev_choice(dev_predictions: pd.DataFrame, candidates: dict[str, tuple[str, str]],
               metric: str = "lenient") -> pd.DataFrame:
    """One row per setting of ``candidates`` (``{setting: (arm condition, placebo condition)}``, in the grid's order)
    with the arm's and the placebo's mean ``metric`` on the dev items both answered, the gain (arm − placebo, paired
    on items; :func:`studykit.stats.paired_difference`, seeds and items random) and its 95% interval; ``chosen`` marks
    the largest gain, the first in grid order on a tie (list the gentler settings first).  A gain ≤ 0 everywhere
    still picks one; the eval-time placebo guard then withholds the verdicts."""
    if not candidates:
        raise ValueError("dev_choice: no candidate settings")
    rows = []
    for setting, (arm, placebo) in candidates.items():
        tables = {}
        for condition in (arm, placebo):
            part = dev_predictions[dev_predictions["condition"] == condition]
            if part.empty:
                raise ValueError(f"dev_choice: setting {setting!r} has no dev predictions of {condition!r}")
            tables[condition] = part.pivot_table(index="seed", columns="id", values=metric, aggfunc="first")
        items = tables[arm].columns.intersection(tables[placebo].columns)
        difference = paired_difference(tables[arm][items].to_numpy(), tables[placebo][items].to_numpy())
        rows.append({"setting": setting, "arm": arm, "placebo": placebo,
                     "arm_accuracy": float(tables[arm][items].to_numpy().mean()),
                     "placebo_accuracy": float(tables[placebo][items].to_numpy().mean()),
                     "gain": difference.estimate, "ci_low": difference.ci_low, "ci_high": difference.ci_high,
                     "items": len(items)})
    table = pd.DataFrame(rows, columns=COLUMNS[:-1])
    table["chosen"] = False
    table.loc[int(table["gain"].to_numpy().argmax()), "chosen"] = True
    return table


def chosen_setting(table: pd.DataFrame) -> str:
    """The setting :func:`dev_choice` chose."""
    return str(table.loc[table["chosen"], "setting"].iloc[0])
