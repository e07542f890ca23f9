"""The run cache: every trained run of every study, stored under a key made of what determines it.

A run's key is the SHA-256 of: the source of the kit's training and evaluation code (:data:`UNCACHED_MODULES` are
left out: the analysis and orchestration code does not change what a run trains or answers), the versions of the
libraries that train and generate, the model, the run's seed, the evaluation settings and eval items, and the
run's *recipe* — the method, its settings and its training data, as the notebook declares them.  Nothing else (not
the study's name) enters, so two studies that train the same SFT start share one entry, and a stopped study that is
run again finds its finished runs here and resumes at the first unfinished one.

An entry is a directory ``$STUDYKIT_CACHE/runs/<key>/`` holding ``predictions.parquet`` (the per-item judged
replies on the eval items), ``log.json`` (the trainer's log history), ``extra.json`` (what the notebook attached:
steps, curves, …), ``model/`` when a later step needs the weights, ``checkpoints/checkpoint-<step>/`` when a
later step starts from the run's checkpoints, and ``meta.json``, written last: an entry without it is unfinished
and ignored.  ``studykit cache list`` / ``prune`` show and remove entries.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import time
from functools import lru_cache
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf

from .models import cache_root

PACKAGE = Path(__file__).resolve().parent
UNCACHED_MODULES = {"analysis", "cache", "claims", "cli", "guards", "provenance", "report", "results", "runner",
                    "stats", "study"}
LIBRARIES = ("torch", "transformers", "trl", "datasets", "accelerate", "peft", "reasoning-gym", "numpy")
META = "meta.json"
CHECKPOINTS = "checkpoints"


def runs_root() -> Path:
    return cache_root() / "runs"


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """SHA-256 of the training and evaluation code of the kit and the versions of the libraries it trains with."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem not in UNCACHED_MODULES:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for name in LIBRARIES:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = None
        digest.update(f"{name}=={version}\0".encode())
    return digest.hexdigest()


def _plain(value):
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"run recipe: {type(value).__name__} is not a JSON value; declare what determines the run "
                    "as plain values (config sections, records, names)")


def run_key(spec: dict) -> str:
    """The cache key of a run described by ``spec`` (plain values, config sections and record lists)."""
    text = json.dumps({"code": code_fingerprint(), **spec}, sort_keys=True, default=_plain, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def lookup(key: str) -> Path | None:
    """The finished entry of ``key``, or None."""
    entry = runs_root() / key
    return entry if (entry / META).is_file() else None


def store(key: str, meta: dict, predictions: pd.DataFrame, log: list[dict], extra: dict, model=None,
          checkpoints: dict | None = None) -> Path:
    """Write an entry atomically (a temporary sibling, renamed into place); a concurrent writer of the same key wins
    and this copy is discarded (both hold the same run).  ``checkpoints``: {step: a model or a saved checkpoint's
    directory}, stored as ``checkpoints/checkpoint-<step>/``."""
    root = runs_root()
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        predictions.to_parquet(tmp / "predictions.parquet", index=False)
        (tmp / "log.json").write_text(json.dumps(log, default=_plain))
        (tmp / "extra.json").write_text(json.dumps(extra, default=_plain))
        if model is not None:
            model.save_pretrained(tmp / "model")
        for step, saved in sorted((checkpoints or {}).items()):
            if isinstance(saved, (str, Path)):
                shutil.copytree(saved, checkpoint_dir(tmp, step))
            else:
                saved.save_pretrained(checkpoint_dir(tmp, step))
        meta = {**meta, "key": key, "code": code_fingerprint(), "created": time.time(), "has_model": model is not None}
        (tmp / META).write_text(json.dumps(meta, indent=2, default=_plain) + "\n")
        try:
            tmp.rename(root / key)
        except OSError:  # another process stored the same run first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / key


def checkpoint_dir(entry: Path, step: int) -> Path:
    return Path(entry) / CHECKPOINTS / f"checkpoint-{int(step)}"


def checkpoint_steps(entry: Path) -> list[int]:
    """The steps of the checkpoints stored in ``entry``."""
    return sorted(int(p.name.removeprefix("checkpoint-")) for p in (Path(entry) / CHECKPOINTS).glob("checkpoint-*"))


def load(entry: Path) -> dict:
    """An entry's ``predictions``, ``log``, ``extra`` and ``meta`` (the weights stay on disk: ``entry / "model"``)."""
    return {"predictions": pd.read_parquet(entry / "predictions.parquet"),
            "log": json.loads((entry / "log.json").read_text()),
            "extra": json.loads((entry / "extra.json").read_text()),
            "meta": json.loads((entry / META).read_text())}


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def list_entries() -> pd.DataFrame:
    """One row per finished entry: key, study, run, seed, created, seconds, size, whether it holds weights, and
    whether it is stale (made by other training/evaluation code or library versions than the installed ones)."""
    rows = []
    for meta_path in sorted(runs_root().glob(f"*/{META}")):
        meta = json.loads(meta_path.read_text())
        rows.append({"key": meta["key"][:12], "study": meta.get("study"), "run": meta.get("name"),
                     "seed": meta.get("seed"), "created": pd.Timestamp(meta["created"], unit="s").floor("s"),
                     "seconds": meta.get("seconds"), "size_mb": round(_size_mb(meta_path.parent), 1),
                     "has_model": meta.get("has_model", False), "stale": meta.get("code") != code_fingerprint()})
    return pd.DataFrame(rows, columns=["key", "study", "run", "seed", "created", "seconds", "size_mb", "has_model",
                                       "stale"])


def prune(*, stale: bool = False, older_than_days: float | None = None, everything: bool = False) -> list[Path]:
    """Remove entries that are stale, older than ``older_than_days``, or all of them; returns the removed paths
    (unfinished leftovers of killed writers included)."""
    removed = []
    now = time.time()
    for entry in sorted(p for p in runs_root().glob("*") if p.is_dir()):
        meta_path = entry / META
        if not meta_path.is_file():
            remove = entry.name.startswith(".tmp-")
        else:
            meta = json.loads(meta_path.read_text())
            remove = (everything or (stale and meta.get("code") != code_fingerprint())
                      or (older_than_days is not None and now - meta["created"] > older_than_days * 86400))
        if remove:
            shutil.rmtree(entry)
            removed.append(entry)
    return removed
