"""Where a notebook writes what it found: metrics JSON, CSV tables and PNG figures in one output directory.

Under ``studykit run`` the directory is a temporary one that the runner moves to ``results/<study>/<profile>/``
only when the whole notebook succeeded.  Run interactively (``output_dir=None``) a notebook writes to
``results/<study>/<profile>-interactive/``, which git ignores.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .config import results_root


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
    ``metrics.json``; wall-clock timings, which differ run to run, to ``timings.json``."""
    path = Path(output_dir) / f"{name}.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update(_jsonable(metrics))
    path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    return path


def save_table(output_dir: Path, name: str, frame) -> Path:
    path = Path(output_dir) / f"{name}.csv"
    frame.to_csv(path, index=False, float_format="%.6g")
    return path


def save_figure(output_dir: Path, name: str, figure) -> Path:
    path = Path(output_dir) / f"{name}.png"
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path
