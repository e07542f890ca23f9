"""lm-evaluation-harness tasks as an optional extra evaluation of a trained model (``eval.lm_eval``).

The harness is EleutherAI's (Gao et al., 2024, "The Language Model Evaluation Harness"; the ``lm-eval`` extra:
``pip install -e ".[lm-eval]"``).  :func:`harness_items` runs its ``simple_evaluate`` on a model already loaded
(wherever it is: the harness reads the model's device) and returns lm-eval's own per-item scores, one row per
evaluated item, so two conditions can be compared paired on the same items (:func:`harness_table`).  Nothing is
recomputed here: the per-item value is the one lm-eval logs for the task's primary metric (the first of its
``metric_list``), under the first of its filters; for a metric aggregated by its mean (``acc``, ``exact_match``)
the items' mean is lm-eval's reported number.  Prompts are the tasks' own (no chat template, lm-eval's default);
generation is greedy.  lm-eval seeds Python's, NumPy's and torch's generators as its own runs do, and their states
are restored afterwards, so scoring a model changes no draw of the session after it.

Under ``accelerate launch`` the harness runs on the main process only (:func:`studykit.distributed.is_main`): the
others check the input, then return an empty frame with the same columns.
"""
from __future__ import annotations

import numbers
import random
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from . import distributed
from .claims import condition_matrix, paired_matrices
from .config import ROOT
from .errors import ConfigError, ModelSourceError
from .stats import paired_difference

COLUMNS = ["id", "family", "metric", "harness_score"]


def task_folder(include_path: str | None) -> str | None:
    """``include_path`` as lm-eval takes it: a relative folder is relative to the repository (notebooks run
    elsewhere)."""
    return None if include_path is None else str(ROOT / include_path)   # an absolute path replaces ROOT


@contextmanager
def _generators_restored():
    """Python's, NumPy's and torch's (CPU and CUDA) generator states as they were on entry, on exit."""
    import torch

    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0]), np.random.set_state(states[1]), torch.random.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@lru_cache(maxsize=4)
def _task_manager(include_path: str | None):
    from lm_eval.tasks import TaskManager  # indexing every task YAML takes seconds: once per folder

    return TaskManager(include_path=include_path)


def harness_items(model, tokenizer, tasks: list[str], *, limit: int | None = None, batch_size: int = 8,
                  include_path: str | None = None) -> pd.DataFrame:
    """Score ``model`` on lm-eval ``tasks`` (task, group or tag names; ``limit`` items per task, all when None;
    ``include_path`` a folder of local task YAMLs): one row per evaluated item, columns ``id``
    (``<task>/<doc_id>``), ``family`` (the task), ``metric`` (its primary metric) and ``harness_score`` (lm-eval's
    per-item value of it).  Bad input raises one :class:`~studykit.errors.ConfigError` before any evaluation."""
    if not isinstance(tasks, (list, tuple)) or not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise ConfigError(f"eval.lm_eval.tasks={tasks!r} is not allowed: expected a non-empty list of lm-eval task "
                          "names")
    if limit is not None and not (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1):
        raise ConfigError(f"eval.lm_eval.limit={limit!r} is not allowed: expected null (every item) or an "
                          "integer ≥ 1")
    if not (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1):
        raise ConfigError(f"eval.lm_eval.batch_size={batch_size!r} is not allowed: expected an integer ≥ 1")
    folder = task_folder(include_path)
    if folder is not None and not Path(folder).is_dir():
        raise ConfigError(f"eval.lm_eval.include_path={include_path!r} is not allowed: expected a folder of task "
                          f"YAMLs ({folder} is none)")
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
    except ImportError as error:
        raise ModelSourceError(f"eval.lm_eval.tasks needs the lm-eval package ({error}); run "
                               '`pip install -e ".[lm-eval]"` or set eval.lm_eval.tasks=[]') from None
    manager = _task_manager(folder)
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ConfigError(f"eval.lm_eval.tasks={list(tasks)!r} is not allowed: {', '.join(unknown)} is not a task "
                          "(or group, or tag) lm-eval knows; list them with `lm-eval ls tasks"
                          + (f" --include_path {folder}`" if folder else "`"))
    if not distributed.is_main():
        return pd.DataFrame(columns=COLUMNS)
    with _generators_restored():
        results = simple_evaluate(HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size),
                                  tasks=list(tasks), limit=limit, task_manager=manager, log_samples=True,
                                  bootstrap_iters=0, gen_kwargs={"do_sample": False, "temperature": 0.0})
    rows = []
    for task, samples in results["samples"].items():
        configured = [m.get("metric") for m in results["configs"][task].get("metric_list") or []]
        metric = next((m for m in configured if m in samples[0]["metrics"]), samples[0]["metrics"][0])
        first_filter = samples[0]["filter"]
        for sample in samples:
            if sample["filter"] != first_filter:
                continue
            value = sample[metric]
            if not isinstance(value, numbers.Real):
                raise ValueError(f"lm-eval task {task}: metric {metric} has no per-item score ({value!r}: a "
                                 "corpus-level metric); choose a task whose primary metric is scored per item")
            rows.append({"id": f"{task}/{sample['doc_id']}", "family": task, "metric": metric,
                         "harness_score": float(value)})
    return pd.DataFrame(rows, columns=COLUMNS)


def harness_table(frame: pd.DataFrame, control: str) -> pd.DataFrame:
    """Per task and condition of ``frame`` (:meth:`studykit.study.Study.harness`'s rows: ``condition, seed, id,
    family, metric, harness_score``): the mean score, and for every condition but ``control`` the paired difference
    against it on the same items and seeds with its 95% interval and p-value (:func:`studykit.stats.
    paired_difference`; an untrained condition is compared with every seed of the other)."""
    if control not in set(frame["condition"]):
        raise ValueError(f"harness_table: control condition {control!r} is not in the frame "
                         f"(conditions: {sorted(set(frame['condition']))})")
    rows = []
    for family, part in frame.groupby("family", sort=False):
        items = sorted(part["id"].unique())
        c = condition_matrix(part, control, "harness_score", items)
        for condition in part["condition"].unique():
            t = condition_matrix(part, condition, "harness_score", items)
            row = {"family": family, "metric": part["metric"].iloc[0], "condition": condition,
                   "mean": float(t.to_numpy().mean()), "items": len(items), "seeds": len(t.index)}
            if condition != control:
                result = paired_difference(*paired_matrices(t, c))
                row.update(difference=result.estimate, ci_low=result.ci_low, ci_high=result.ci_high,
                           p=result.p_value)
            rows.append(row)
    return pd.DataFrame(rows, columns=["family", "metric", "condition", "mean", "items", "seeds", "difference",
                                       "ci_low", "ci_high", "p"])
