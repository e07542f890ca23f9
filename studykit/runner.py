"""Execute a study notebook with papermill into ``results/<study>/<profile>/`` (or, for a sweep, into
``runs/<study>/<profile>/<tag>/``), atomically, with a manifest.

Canonical runs and sweeps: the *canonical* config of a study is the one composed from ``study=<study>`` plus only
the ``profile=`` and ``device=`` the user gave.  A run whose
config differs from it in any key but ``device`` (``seed=3``, ``train.learning_rate=5e-5``), or that is given a
``tag``, is a *sweep*: it writes ``runs/<study>/<profile>/<tag>/`` (git-ignored), never replaces
``results/<study>/<profile>/`` and never touches ``results/README.md`` (:func:`target_directory`).

The notebook runs in a temporary sibling directory (``.tmp-<profile>-<pid>-*``) with the composed config as its
``config`` parameter; only when it finished without error is the manifest written and the directory swapped into
place.  A failed run leaves the previous results untouched and no partial directory behind; leftovers of runs
killed with SIGKILL (no handler runs) are swept by the next run, which recognizes them by their dead process id.
Two runs never write the same directory: each holds an exclusive lock (``.<name>.lock`` beside it) for the whole
run, and a second one refuses at once (or waits, ``wait=True``); ``results/README.md`` is written under
``results/.index.lock``.  Under ``accelerate launch`` every process executes the notebook into one shared
directory; only the main process locks it, keeps its executed notebook, writes the manifest, the analysis and the
index (:mod:`studykit.distributed`).

Before any work a run checks what would otherwise fail only inside the notebook: the model source, the device
(``device=cuda`` without a GPU) and the testbed's split sizes (:func:`preflight`).  While the notebook runs, the
stages its session appends to ``progress.log`` are printed as they happen (:class:`ProgressTailer`); progress bars
are switched off in the kernel and widget outputs stripped from the executed notebook.

Provenance: a run refuses to start from a git tree with uncommitted changes unless ``allow_dirty`` (recorded in the
manifest); the manifest records commit, the seeds used, every installed distribution, CPU model and flags, torch's
CPU capability and BLAS, and the GPU and driver where present; ``results/README.md`` is regenerated after every
canonical run (:mod:`studykit.provenance`).
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf

from . import distributed
from .analysis import INPUTS, analyze
from .config import NOTEBOOK_DIR, ROOT, compose, device, list_studies, results_root
from .data import is_local, load_splits
from .errors import ConfigError, DataError
from .evaluate import check_vllm
from .judges import length_control
from .models import check_available, check_quantizable, is_qlora
from .provenance import git_state, write_results_index
from .study import PROGRESS_FILE
from .testbed import build_testbed

# The overrides a canonical run may carry: they pick the resources, not the experiment.
CANONICAL_KEYS = ("profile", "device")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# Set for the kernel papermill starts (it inherits os.environ): no progress bar, hence no ipywidgets state, in the
# executed notebook.  transformers' bars (loading weights, writing shards) follow huggingface_hub's switch.
KERNEL_ENV = {"TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
              "TRANSFORMERS_VERBOSITY": "error"}


class StudyError(RuntimeError):
    """A study notebook failed to execute."""


class RunLocked(RuntimeError):
    """Another run is writing the same directory."""


def _say(message: str) -> None:
    print(f"[studykit] {message}", flush=True)


def display_path(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it."""
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return str(path)


def runs_root() -> Path:
    """Where sweeps go: ``runs/`` of the repository (beside ``results/``), or ``$STUDYKIT_RUNS``."""
    return Path(os.environ.get("STUDYKIT_RUNS", results_root().parent / "runs"))


def _versions() -> dict:
    """Every installed distribution, ``{name: version}`` sorted by name (the first of a name on ``sys.path``)."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(name, dist.version)
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def used_seeds(cfg) -> dict:
    """The seeds a run used: ``seed``, and ``data.seed`` / ``study.seeds`` where the config has them."""
    seeds = {"seed": cfg.seed}
    data_seed = OmegaConf.select(cfg, "data.seed", default=None)
    if data_seed is not None:
        seeds["data.seed"] = data_seed
    study_seeds = OmegaConf.select(cfg, "study.seeds", default=None)
    if study_seeds is not None:
        seeds["study.seeds"] = (OmegaConf.to_container(study_seeds, resolve=True)
                                if OmegaConf.is_config(study_seeds) else study_seeds)
    return seeds


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


def _run_directory(parent: Path, label: str) -> Path:
    """The temporary directory a run writes into, beside its final one: private to this process, or under
    ``accelerate launch`` one shared by the launch's processes (named after the launcher, their common parent, so
    a dead launch's directory is swept like a dead run's)."""
    if distributed.world_size() == 1:
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".tmp-{label}-{os.getpid()}-"))
    else:
        tmp = parent / f".tmp-{label}-{os.getppid()}-launch"
        tmp.mkdir(exist_ok=True)
    tmp.chmod(0o755)
    return tmp


@contextmanager
def _executed_path(tmp: Path, notebook: Path):
    """Where papermill writes the executed notebook: the run directory, or for another process of a launch a
    private temporary file (the main process's copy is the one kept)."""
    if distributed.is_main():
        yield tmp / notebook.name
        return
    with tempfile.TemporaryDirectory(prefix="studykit-rank-") as private:
        yield Path(private) / notebook.name


def _replace_dir(new: Path, final: Path) -> None:
    """Move ``new`` to ``final``, replacing an existing directory with as small a window as two renames."""
    old = None
    if final.exists():
        old = final.parent / f".tmp-old-{os.getpid()}-{final.name}"
        final.rename(old)
    new.rename(final)
    if old is not None:
        shutil.rmtree(old)


# --- canonical runs and sweeps -------------------------------------------------------------------------------

def _override_key(override: str) -> str:
    return override.partition("=")[0].lstrip("+")


def canonical_overrides(study: str, overrides: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The study's own overrides plus only the ``profile=`` / ``device=`` of ``overrides``."""
    return [f"study={study}", *(o for o in overrides if "=" in o and _override_key(o) in CANONICAL_KEYS)]


def _flat(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict) and tree:
        flat = {}
        for key, value in tree.items():
            flat.update(_flat(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: tree}


def config_differences(cfg, canonical) -> list[str]:
    """The dotted keys (``device`` aside) where ``cfg`` and ``canonical`` differ, sorted."""
    ours = _flat(OmegaConf.to_container(cfg, resolve=True))
    theirs = _flat(OmegaConf.to_container(canonical, resolve=True))
    missing = object()
    return sorted(key for key in ours.keys() | theirs.keys()
                  if key.split(".")[0] != "device" and ours.get(key, missing) != theirs.get(key, missing))


TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+,-]*")


def sweep_tag(overrides: list[str] | tuple[str, ...], cfg) -> str:
    """A short readable slug of the overrides (those not ``profile=``/``device=``, sorted) and 6 hex digits of the
    composed config (``device`` aside): ``seed=1-train.learning_rate=5e-05-3fa2c1``.  The same config gets the
    same directory; another config another."""
    chosen = sorted(o for o in overrides if _override_key(o) not in CANONICAL_KEYS)
    slug = re.sub(r"[^A-Za-z0-9._=+,-]+", "_", "-".join(chosen)).strip("_.-")[:60].rstrip("_.-=")
    config = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "device"}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return f"{slug}-{digest}" if slug else digest


def _target(study: str, cfg, overrides: list[str], tag: str | None) -> tuple[Path, bool, list[str]]:
    """(directory, is_sweep, the keys where ``cfg`` differs from the canonical config)."""
    if tag is not None and (not TAG.fullmatch(tag) or len(tag) > 100):
        raise ConfigError(f"--tag {tag!r}: a tag is a directory name of letters, digits and . _ = + , - "
                          "(starting with a letter or digit, at most 100 characters)")
    try:
        differences = config_differences(cfg, compose(canonical_overrides(study, overrides)))
    except ConfigError as err:  # the canonical config itself does not compose: this one is not it
        differences = [f"(the canonical config does not compose: {err})"]
    if not differences and tag is None:
        return results_root() / study / cfg.profile.name, False, []
    return runs_root() / study / cfg.profile.name / (tag or sweep_tag(overrides, cfg)), True, differences


def target_directory(study: str, overrides: list[str] | tuple[str, ...] = (), tag: str | None = None
                     ) -> tuple[Path, bool]:
    """Where ``studykit run <study> <overrides> [--tag tag]`` writes, and whether it is a sweep:
    ``results/<study>/<profile>/`` for the canonical config, ``runs/<study>/<profile>/<tag>/`` for any other (or
    when a tag is given).  Composes (and validates) the config; raises :class:`ConfigError`."""
    overrides = list(overrides)
    cfg = compose([f"study={study}", *overrides])
    directory, sweep, _ = _target(study, cfg, overrides, tag)
    return directory, sweep


# --- locks ---------------------------------------------------------------------------------------------------

def lock_path(directory: Path) -> Path:
    """The lock file of a run's target directory: ``.<name>.lock`` beside it."""
    return directory.parent / f".{directory.name}.lock"


def _same_file(path: Path, fd: int) -> bool:
    try:
        here, held = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)


@contextmanager
def exclusive_lock(path: Path, what: str, *, wait: bool = False, announce: bool = True):
    """Hold an exclusive ``flock`` on ``path`` (created, and removed on release) for the ``with`` block.  Held by
    another process: raise :class:`RunLocked` naming its pid and start, or with ``wait`` wait for it (saying so
    once, unless not ``announce``).  A lock of a killed process is released by the kernel."""
    path.parent.mkdir(parents=True, exist_ok=True)
    announced = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip() or "pid unknown"
                if not wait:
                    raise RunLocked(f"another run is writing {what} ({holder}); wait for it to finish, "
                                    "or pass --wait") from None
                if announce and not announced:
                    _say(f"waiting for another run writing {what} ({holder}) to finish")
                    announced = True
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        if _same_file(path, fd):  # not removed by the holder we waited for between our open and our lock
            break
        os.close(fd)
    try:
        started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, started {started}".encode(), 0)
        yield path
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)


def write_index() -> Path:
    """Regenerate ``results/README.md`` under ``results/.index.lock`` (runs finishing together write it in turn)."""
    root = results_root()
    with exclusive_lock(root / ".index.lock", display_path(root / "README.md"), wait=True, announce=False):
        return write_results_index(root)


# --- preflight -----------------------------------------------------------------------------------------------

def _check_device(cfg) -> None:
    """:func:`studykit.config.device`'s refusals (``device=cuda`` or ``cuda:N`` without that GPU) before any work,
    without creating a CUDA context in this process, which would hold GPU memory for the whole run: with CUDA
    present, ``auto``/``cuda`` always resolve and a valid explicit index is only counted."""
    import torch

    name = str(cfg.get("device", "auto"))
    if torch.cuda.is_available() and (name in ("auto", "cuda") or (
            name.startswith("cuda:") and int(os.environ.get("WORLD_SIZE", "1")) == 1
            and torch.device(name).index < torch.cuda.device_count())):
        return
    device(cfg)


def preflight(cfg) -> None:
    """What would otherwise fail only inside the notebook, checked before any work: the device exists (and what
    QLoRA and vLLM need), the judge model is available, real data on this machine loads (``data.source``; hub data loads in the
    run), and the testbed (when the config has ``data.families``) can be drawn at the configured split sizes.
    Raises :class:`ConfigError` / :class:`DataError` / :class:`ModelSourceError`."""
    _check_device(cfg)
    if is_qlora(cfg):
        check_quantizable(device(cfg))
    vllm_eval = OmegaConf.select(cfg, "eval.backend", default="hf") == "vllm"
    if vllm_eval and distributed.world_size() > 1:
        raise ConfigError("eval.backend=vllm is not allowed under accelerate launch: every process would serve a "
                          "model copy it cannot save (transformers saves on rank 0 only); expected eval.backend=hf "
                          "(the eval items are then sharded over the processes)")
    if vllm_eval or OmegaConf.select(cfg, "grpo.use_vllm", default=False):
        check_vllm(device(cfg))
    if OmegaConf.select(cfg, "eval.judge_model", default=None) is not None:
        check_available(cfg.eval.judge_model)
    if OmegaConf.select(cfg, "eval.length_controlled", default=False):
        length_control()
    sources = OmegaConf.select(cfg, "data.source", default=None)
    if sources is not None and all(is_local(spec.path) for spec in sources.values()):
        load_splits(cfg.data)   # real data on this machine: every file read and checked before any work
    if OmegaConf.select(cfg, "data.families", default=None):
        try:
            build_testbed(cfg.data)
        except DataError:
            raise
        except (ValueError, TypeError, KeyError, AssertionError) as err:
            raise DataError(f"data: the testbed cannot be built from this config: {type(err).__name__}: {err}"
                            ) from None


# --- the kernel's output -------------------------------------------------------------------------------------

@contextmanager
def kernel_environment(values: dict[str, str] = KERNEL_ENV):
    """``os.environ`` with ``values`` for the block (the kernel papermill starts inherits it), restored after."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def strip_widgets(notebook):
    """``notebook`` (a dict or NotebookNode, changed in place and returned) without ipywidgets: outputs that
    display a widget dropped, ``metadata.widgets`` removed."""
    for cell in notebook.get("cells", []):
        if "outputs" in cell:
            cell["outputs"] = [out for out in cell["outputs"] if WIDGET_VIEW not in (out.get("data") or {})]
    notebook.get("metadata", {}).pop("widgets", None)
    return notebook


def _strip_widgets_file(path: Path) -> None:
    import nbformat  # jsonschema: a second of import time the other commands do not need

    notebook = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    has_widgets = "widgets" in notebook.get("metadata", {}) or any(
        WIDGET_VIEW in (out.get("data") or {}) for cell in notebook.cells for out in cell.get("outputs", []))
    if has_widgets:
        nbformat.write(strip_widgets(notebook), path)


def _elapsed(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class ProgressTailer:
    """A daemon thread that prints each line appended to ``path`` (the session's :data:`PROGRESS_FILE`) as
    ``[studykit] <study>: <line> (<elapsed> elapsed)``, polling every ``interval`` seconds; :meth:`stop` prints
    what is left.  Use as a context manager around the notebook's execution."""

    def __init__(self, path: Path, study: str, *, started: float | None = None, interval: float = 1.0, stream=None):
        self.path, self.study, self.interval, self.stream = Path(path), study, interval, stream
        self.started = time.monotonic() if started is None else started
        self._offset, self._partial = 0, b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"studykit-progress-{study}", daemon=True)
        self._lock = threading.Lock()

    def poll(self, final: bool = False) -> list[str]:
        """Print the lines appended since the last poll (with ``final``, an unterminated last line too)."""
        with self._lock:
            try:
                with open(self.path, "rb") as handle:
                    size = os.fstat(handle.fileno()).st_size
                    if size < self._offset:  # truncated or replaced: start over
                        self._offset, self._partial = 0, b""
                    handle.seek(self._offset)
                    data = handle.read()
            except FileNotFoundError:
                data = b""
            self._offset += len(data)
            *lines, self._partial = (self._partial + data).split(b"\n")
            if final and self._partial:
                lines, self._partial = [*lines, self._partial], b""
            shown = [line.decode("utf-8", "replace").strip() for line in lines]
            shown = [line for line in shown if line]
            elapsed = _elapsed(time.monotonic() - self.started)
            for line in shown:
                print(f"[studykit] {self.study}: {line} ({elapsed} elapsed)", file=self.stream or sys.stdout,
                      flush=True)
            return shown

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except (OSError, ValueError):  # progress is best effort: never disturb the run
                pass

    def start(self) -> "ProgressTailer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            self.poll(final=True)
        except (OSError, ValueError):
            pass

    def __enter__(self) -> "ProgressTailer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- the run -------------------------------------------------------------------------------------------------

def _refuse_dirty(git: dict, allow_dirty: bool) -> None:
    if git["dirty"] and not allow_dirty:
        raise ConfigError(f"the git tree at {(git['commit'] or '?')[:7]} has uncommitted changes: results must come "
                          "from a commit (commit first, or pass --allow-dirty, which the manifest records)")


def run_study(study: str, overrides: list[str] = (), *, log_output: bool = False, allow_dirty: bool = False,
              tag: str | None = None, wait: bool = False) -> Path:
    """Execute ``notebooks/<study>.ipynb`` under the composed config; returns the directory it wrote
    (:func:`target_directory`: ``results/<study>/<profile>/``, or ``runs/…/<tag>/`` for a sweep).  Refuses a git
    tree with uncommitted changes unless ``allow_dirty``, and a directory another run is writing unless ``wait``
    (:class:`RunLocked`)."""
    import papermill as pm

    if study not in list_studies():
        raise ConfigError(f"unknown study '{study}'; available: {', '.join(list_studies())}")
    overrides = list(overrides)
    cfg = compose([f"study={study}", *overrides])  # fail fast on bad overrides, before any work
    final, sweep, differences = _target(study, cfg, overrides, tag)
    check_available(cfg.model)
    notebook = NOTEBOOK_DIR / cfg.study.notebook
    if not notebook.is_file():
        raise ConfigError(f"conf/study/{study}.yaml names notebook '{cfg.study.notebook}', not found in {NOTEBOOK_DIR}")
    preflight(cfg)
    _refuse_dirty(git_state(), allow_dirty)
    main = distributed.is_main()   # under accelerate launch only the main process locks, writes and analyzes
    with exclusive_lock(lock_path(final), display_path(final), wait=wait) if main else nullcontext():
        if sweep and main:
            why = (f"differs from the canonical config in {', '.join(differences[:6])}"
                   f"{f' and {len(differences) - 6} more' if len(differences) > 6 else ''}" if differences
                   else "tagged")
            _say(f"{study}: a sweep ({why}): writing {display_path(final)}; "
                 f"{display_path(results_root() / study / cfg.profile.name)} and the results index are left as "
                 "they are")
        git = git_state()  # the code the run starts from (after any wait for another run)
        _refuse_dirty(git, allow_dirty)
        final.parent.mkdir(parents=True, exist_ok=True)
        if main:
            sweep_dead_runs(final.parent)
        tmp = _run_directory(final.parent, "sweep" if sweep else cfg.profile.name)
        started = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        try:
            try:
                with kernel_environment(), (ProgressTailer(tmp / PROGRESS_FILE, study) if main
                                            else nullcontext()), _executed_path(tmp, notebook) as executed:
                    pm.execute_notebook(str(notebook), str(executed), cwd=str(NOTEBOOK_DIR),
                                        parameters={"config": OmegaConf.to_container(cfg, resolve=True),
                                                    "overrides": overrides, "output_dir": str(tmp)},
                                        kernel_name="python3", progress_bar=False, log_output=log_output)
            except pm.PapermillExecutionError as err:
                raise StudyError(f"notebook {notebook.relative_to(ROOT)} failed in cell {err.exec_count}: "
                                 f"{err.ename}: {err.evalue}") from None
            if not main:
                return final
            _strip_widgets_file(tmp / notebook.name)
            manifest = {
                "study": study, "profile": cfg.profile.name, "notebook": str(notebook.relative_to(ROOT)),
                "model": {"name": cfg.model.name, "weights": cfg.model.get("weights")},
                "command": [Path(sys.argv[0]).name, *sys.argv[1:]], "overrides": overrides,
                "sweep": {"tag": final.name, "differences": differences} if sweep else None,
                "seeds": used_seeds(cfg), "processes": distributed.world_size(),
                "started_at": started.isoformat(timespec="seconds"), "wall_time_s": round(time.perf_counter() - t0, 1),
                "git": {**git, "allow_dirty": allow_dirty}, "packages": _versions(), "hardware": _hardware(),
                "config": OmegaConf.to_container(cfg, resolve=True),
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            if (tmp / INPUTS).is_file():
                analyze(tmp)  # the guarded analysis of the run's evidence, with the evidence commit in its manifest
            _replace_dir(tmp, final)
        finally:
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
    if not sweep and main:
        write_index()
    return final
