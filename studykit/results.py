"""Where a notebook writes what it found: metrics JSON, CSV tables and PNG figures in one output directory.

Under ``studykit run`` the directory is a temporary one that the runner moves to ``results/<study>/<profile>/``
only when the whole notebook succeeded.  Under ``accelerate launch`` only the main process writes (every process
computes the same results; :mod:`studykit.distributed`); each process logs to its own file.  Run interactively (``output_dir=None``) a notebook writes to
``results/<study>/<profile>-interactive/``, which git ignores.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .config import results_root
from .distributed import is_main, rank


def output_directory(output_dir: str | None, cfg) -> Path:
    path = Path(output_dir) if output_dir else results_root() / cfg.study.name / f"{cfg.profile.name}-interactive"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def save_metrics(output_dir: Path, metrics: dict, name: str = "metrics") -> Path:
    """Merge ``metrics`` into ``<name>.json`` (numbers as plain JSON, NaN → null).  Results go to
    ``metrics.json``; wall-clock timings, which differ run to run, to ``timings.json`` — with the peak GPU memory
    of the run so far where one was used."""
    import torch

    if name == "timings" and torch.cuda.is_available() and torch.cuda.is_initialized():
        metrics = {**metrics, "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 1e9}
    path = Path(output_dir) / f"{name}.json"
    if not is_main():
        return path
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update(_jsonable(metrics))
    path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    return path


def save_table(output_dir: Path, name: str, frame) -> Path:
    path = Path(output_dir) / f"{name}.csv"
    if is_main():
        frame.to_csv(path, index=False, float_format="%.6g")
    return path


def save_figure(output_dir: Path, name: str, figure) -> Path:
    path = Path(output_dir) / f"{name}.png"
    if is_main():
        figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


def save_predictions(output_dir: Path, predictions) -> list[Path]:
    """Per-item predictions (``condition, seed, id, family, reply, extracted, strict, lenient`` …) as one CSV per
    evaluated model under ``predictions/<condition>-seed<seed>.csv``, so any comparison can be re-analysed paired."""
    folder = Path(output_dir) / "predictions"
    if not is_main():
        return []
    folder.mkdir(exist_ok=True)
    paths = []
    for (condition, seed), frame in predictions.groupby(["condition", "seed"], sort=False):
        path = folder / f"{condition}-seed{seed}.csv"
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths


def load_predictions(output_dir: Path):
    """All per-item predictions of a result directory as one long table (what :func:`save_predictions` wrote)."""
    import pandas as pd

    files = sorted((Path(output_dir) / "predictions").glob("*.csv"))
    if not files:
        raise FileNotFoundError(f"{output_dir}/predictions: no prediction files")
    return pd.concat([pd.read_csv(f, keep_default_na=False) for f in files], ignore_index=True)


def log_to_file(output_dir: Path, name: str = "run.log") -> Path:
    """Send training, tokenization and progress logs (transformers, TRL, datasets, warnings) to a file in the
    results directory, so the executed notebook stays readable top to bottom (``run.rank<r>.log`` for the other
    processes of a launch)."""
    import logging
    import warnings

    import datasets
    import transformers

    path = Path(output_dir) / (name if is_main() else name.replace(".log", f".rank{rank()}.log"))
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for logger_name in ("transformers", "trl", "datasets", "accelerate", "py.warnings", "studykit"):
        logger = logging.getLogger(logger_name)
        logger.handlers = [handler]
        logger.propagate = False
        logger.setLevel(logging.INFO)
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.disable_progress_bar()  # e.g. "Loading weights", a widget the stream check misses
    datasets.disable_progress_bars()
    logging.captureWarnings(True)
    warnings.simplefilter("default")
    return path
