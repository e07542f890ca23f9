"""Hydra composition of ``conf/``: model × data × study × profile, plus command-line style overrides.

``compose(["study=quickstart", "profile=smoke", "train.learning_rate=1e-5"])`` returns the resolved, read-only
config.  Every composition problem (unknown study, unknown key, malformed override) becomes one
:class:`ConfigError` that says what was wrong and what exists.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError
from .validate import validate

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"
NOTEBOOK_DIR = ROOT / "notebooks"


def results_root() -> Path:
    """``results/`` of the repository, or ``$STUDYKIT_RESULTS`` (the tests point it at a temporary directory)."""
    return Path(os.environ.get("STUDYKIT_RESULTS", ROOT / "results"))


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def list_studies() -> list[str]:
    return _options("study")


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides; raises :class:`ConfigError` on any problem."""
    overrides = list(overrides)
    for item in overrides:
        key, sep, value = item.partition("=")
        group = key.lstrip("+~")
        if sep and (CONF_DIR / group).is_dir() and value not in _options(group):
            raise ConfigError(f"unknown {group} '{value}' in override '{item}'; available: {', '.join(_options(group))}")
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=overrides)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        message = " ".join(line.strip() for line in str(err).strip().splitlines() if line.strip())
        raise ConfigError(f"cannot compose config with overrides {overrides}: {message}") from None
    validate(cfg)
    _check_seed_override(cfg, overrides)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _check_seed_override(cfg: DictConfig, overrides: list[str]) -> None:
    """One meaning per seed (conf/config.yaml): ``seed`` trains a single-seed study and seeds a study's own draws
    outside training where its YAML says so (``study.seed_use``), ``study.seeds`` are a multi-seed study's training
    seeds, ``data.seed`` draws the testbed.  A ``seed=`` override on a multi-seed study that declares no
    ``seed_use`` would change nothing, so it is refused rather than recorded as if it had."""
    seeds = OmegaConf.select(cfg, "study.seeds", default=None)
    given = [item for item in overrides if item.split("=", 1)[0].lstrip("+~") == "seed"]
    if seeds is not None and given and OmegaConf.select(cfg, "study.seed_use", default=None) is None:
        raise ConfigError(f"override '{given[0]}' changes nothing in study {cfg.study.name}: it trains the seeds "
                          f"study.seeds={list(seeds)} (override those, e.g. study.seeds=[0,1,2,3,4]); "
                          "data.seed draws the testbed's items")


def device(cfg) -> torch.device:
    """The device of a study (``device`` in ``conf/config.yaml``): every model load, scoring pass, generation and
    training run goes there.  ``auto`` is the CUDA device when one is available, else the CPU; ``auto`` and ``cuda``
    give each process of an ``accelerate launch`` its own local GPU (``LOCAL_RANK``).

    An explicit ``cuda:<index>`` also becomes torch's current CUDA device, because TRL's trainers (through
    accelerate) train a single process on the *current* device: kit placement and training then agree.  It is
    refused under a multi-process launch, where accelerate assigns one GPU per process."""
    name = cfg.get("device", "auto")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} is not available: torch sees no CUDA device (use device=auto or cpu)")
    if name in ("auto", "cuda"):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    index = torch.device(name).index
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"device={name!r}: a multi-process launch gives each process its own GPU; "
                          "use device=auto or cuda (CUDA_VISIBLE_DEVICES picks the GPUs)")
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device={name!r} is not available: torch sees {torch.cuda.device_count()} CUDA device(s)")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU runs with the same seed are then bit-identical)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
