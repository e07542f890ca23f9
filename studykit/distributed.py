"""One study under ``accelerate launch``: every process runs the notebook, trains its share of each batch (DDP) and
evaluates its share of the items; only the main process writes.

``accelerate launch --config_file conf/accelerate/multi_gpu.yaml -m studykit.cli run <study> …`` starts one
``studykit run`` per process; each executes the notebook in its own kernel, and the kernels join one process group
(TRL's trainers through accelerate; :func:`state` before any trainer).  The runner gives them one shared output
directory and lets only the main process take the lock, write the manifest, the analysis and the index
(:mod:`studykit.runner`); the session writes results and progress only there, stores runs in the run cache only
there, and shares each run's scratch directory (checkpoints saved by the main process) between the processes
(:mod:`studykit.study`).  With one process every function here is the identity.
"""
from __future__ import annotations

import os


def rank() -> int:
    """This process's rank in the launch (0 without one)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def state():
    """accelerate's process state, initializing the process group on first use (gloo without CUDA)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def barrier() -> None:
    """Wait until every process of the launch gets here (nothing without one)."""
    if world_size() > 1:
        state().wait_for_everyone()


def shard(items: list) -> list:
    """This process's contiguous share of ``items`` (all of them without a launch); :func:`gather_frame` puts the shares
    back in order."""
    size, count = world_size(), len(items)
    return items[rank() * count // size:(rank() + 1) * count // size]


def gather_frame(frame):
    """Every process's rows of ``frame`` (its :func:`shard`'s results), concatenated in rank order, on every
    process; ``frame`` itself without a launch."""
    if world_size() == 1:
        return frame
    import pandas as pd
    from accelerate.utils import gather_object

    state()
    return pd.DataFrame(gather_object(frame.to_dict(orient="records")))
