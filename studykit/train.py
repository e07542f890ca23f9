"""Thin wrappers over TRL's SFTTrainer / DPOTrainer, configured correctly for CPU and GPU.

The ``train`` / ``dpo`` groups of the Hydra config are passed through to ``SFTConfig`` / ``DPOConfig`` as they
are (any TRL field can be set from the command line: ``+train.max_grad_norm=0.5``); this module only adds what
depends on the hardware: on CPU, fp32 and plain AdamW (TRL's defaults assume a GPU: bf16, gradient checkpointing,
fused AdamW); on GPU, bf16 where supported.

Also a plain module for ``accelerate launch``::

    accelerate launch --config_file conf/accelerate/multi_gpu.yaml -m studykit.train sft profile=gpu
    python -m studykit.train sft --output-dir /tmp/sft profile=smoke      # same entry point, one process
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from datasets import Dataset
from omegaconf import OmegaConf
from transformers import PrinterCallback, TrainerCallback
from trl import DPOTrainer, SFTConfig, SFTTrainer

from .config import device
from .logprobs import completion_text, format_prompt
from .models import copy_model, restore_forward
from .objectives import ObjectiveSFTTrainer, get_objective

LOGGER = logging.getLogger("studykit.train")


def hardware_args(device: torch.device) -> dict:
    """TrainingArguments that depend on the study's device: on a GPU, bf16 autocast (fp32 master weights: the
    models are loaded in fp32, see :func:`check_master_weights`) where supported."""
    if device.type == "cuda":
        return {"bf16": torch.cuda.is_bf16_supported(), "use_cpu": False}
    return {"bf16": False, "fp16": False, "use_cpu": True, "activation_checkpointing": False,
            "optim": "adamw_torch", "dataloader_pin_memory": False}


def check_master_weights(model) -> None:
    """Refuse to train a model whose trainable weights are not fp32: AdamW on bf16 weights rounds away every update
    below the weights' bf16 resolution (DPO at lr 5e-7 would lose most of them).  Load models in float32; on GPUs
    the trainer computes in bf16 autocast (:func:`hardware_args`)."""
    dtypes = sorted({str(p.dtype) for p in model.parameters() if p.requires_grad})
    if dtypes != ["torch.float32"]:
        raise ValueError(f"training needs fp32 master weights, got trainable parameters in {', '.join(dtypes)}: "
                         "set model.dtype=float32 (bf16 autocast is switched on for GPUs)")


def memory_estimate(n_params: float, *, dtype_bytes: int = 4, shards: int = 1) -> dict[str, float]:
    """ESTIMATE (GB per device) of the model state of an SFT and a DPO run, activations excluded: fp32 master
    weights (4 B/param), their gradients (4) and AdamW's two moments (8) for the policy, plus a frozen reference of
    ``dtype_bytes`` per parameter for DPO; all of it divided over ``shards`` devices (FSDP full sharding)."""
    policy = n_params * (4 + 4 + 8)
    return {"sft_gb": policy / shards / 1e9, "dpo_gb": (policy + n_params * dtype_bytes) / shards / 1e9}


def _args(cls, section, output_dir: str | Path, seed: int, extra: dict, device: torch.device):
    """``cls`` (SFTConfig / DPOConfig) from a config section, then ``extra`` overrides, then the settings of
    ``device``."""
    kwargs = OmegaConf.to_container(section, resolve=True) if section is not None else {}
    kwargs.update(output_dir=str(output_dir), seed=seed, data_seed=seed, report_to="none",
                  disable_tqdm=True, save_strategy=kwargs.get("save_strategy", "no"))
    kwargs.update(extra)
    kwargs.update(hardware_args(device))
    return cls(**kwargs)


class _LogToLogger(TrainerCallback):
    """Training logs (loss, learning rate, …) to the ``studykit.train`` logger — a file under ``studykit run`` —
    instead of stdout, where transformers' PrinterCallback puts them when progress bars are off."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            LOGGER.info("step %s: %s", state.global_step, logs)


def _logged(trainer):
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(_LogToLogger())
    return trainer


def sft_dataset(records: list[dict], chat: bool) -> Dataset:
    """Prompt–completion rows for SFTTrainer (conversational when the model has a chat template), so the loss
    covers the response tokens only.  A multi-turn record (``messages``: the turns before its response, e.g.
    UltraChat) keeps its turns; the loss covers the final assistant turn."""
    if chat:
        rows = [{"prompt": r.get("messages") or [{"role": "user", "content": r["prompt"]}],
                 "completion": [{"role": "assistant", "content": r["response"]}]} for r in records]
    else:
        rows = [{"prompt": format_prompt(None, r["prompt"], chat=False), "completion": completion_text(r["response"])}
                for r in records]
    if not rows:
        raise ValueError("SFT needs at least one training record; the selected pool is empty")
    return Dataset.from_list(rows)


def dpo_dataset(pairs: list[dict], chat: bool) -> Dataset:
    """Prompt / chosen / rejected rows for DPOTrainer (and ``reference_response``, SELM's y₀, where the pairs
    carry one), every response in the same form."""
    responses = [k for k in ("chosen", "rejected", "reference_response") if k in (pairs[0] if pairs else {})]
    if chat:
        rows = [{"prompt": [{"role": "user", "content": p["prompt"]}],
                 **{k: [{"role": "assistant", "content": p[k]}] for k in responses}} for p in pairs]
    else:
        rows = [{"prompt": format_prompt(None, p["prompt"], chat=False),
                 **{k: completion_text(p[k]) for k in responses}} for p in pairs]
    if not rows:
        raise ValueError("DPO needs at least one preference pair")
    return Dataset.from_list(rows)


def build_sft_trainer(model, tokenizer, records: list[dict], cfg, output_dir: str | Path, *, eval_records=None,
                      callbacks=None, objective: str | None = None, objective_params: dict | None = None,
                      ref_model=None, behavior_model=None, **args) -> SFTTrainer:
    """A TRL SFT trainer on ``records`` with ``cfg.train`` (+ ``args`` overrides), ready to ``train()``.

    ``objective`` picks a registered token-weighted loss from :mod:`studykit.objectives` (default: TRL's own NLL);
    ``ref_model`` is ASFT's frozen reference; PEAR's data-policy log-probs are stored from ``behavior_model`` (the
    policy that generated ``records``' responses), by default from the model before training.
    """
    check_master_weights(model)
    chat = bool(cfg.model.chat_template)
    common = dict(model=model, processing_class=tokenizer, train_dataset=sft_dataset(records, chat),
                  eval_dataset=sft_dataset(eval_records, chat) if eval_records else None, callbacks=callbacks)
    if objective is None:
        return _logged(SFTTrainer(args=_args(SFTConfig, cfg.train, output_dir, int(cfg.seed), args, device(cfg)), **common))
    spec = get_objective(objective)
    if spec.trl_loss_type is not None:
        args = {**args, "loss_type": spec.trl_loss_type}
    trainer = ObjectiveSFTTrainer(args=_args(SFTConfig, cfg.train, output_dir, int(cfg.seed), args, device(cfg)),
                                  objective=objective, objective_params=objective_params, ref_model=ref_model,
                                  **common)
    if "behavior" in spec.needs:
        trainer.store_behavior_log_probs(behavior_model)
    return _logged(trainer)


def train_sft(model, tokenizer, records: list[dict], cfg, output_dir: str | Path, **kwargs) -> SFTTrainer:
    """:func:`build_sft_trainer`, trained; returns the trainer after training."""
    trainer = build_sft_trainer(model, tokenizer, records, cfg, output_dir, **kwargs)
    trainer.train()
    for model in (trainer.model, kwargs.get("ref_model")):
        if model is not None:
            restore_forward(model)
    return trainer


def train_dpo(model, ref_model, tokenizer, pairs: list[dict], cfg, output_dir: str | Path, *, callbacks=None,
              **args) -> DPOTrainer:
    """Run TRL DPO from ``model`` against the frozen ``ref_model`` with ``cfg.dpo`` (+ ``args`` overrides): the
    sigmoid loss of :func:`studykit.preference.train_preference`."""
    from .preference import train_preference

    return train_preference(model, ref_model, tokenizer, pairs, cfg, output_dir, loss="sigmoid", callbacks=callbacks,
                            **args)


def finetune_and_evaluate(base_model, tokenizer, records: list[dict], eval_records: list[dict], cfg, *, seed: int,
                          return_model: bool = False, **args) -> dict:
    """SFT a fresh copy of ``base_model`` on ``records`` with ``seed`` (``args`` go to :func:`train_sft`: an
    objective, SFTConfig overrides), then evaluate it on ``eval_records``.  Returns ``{"predictions": per-item
    judged replies, "accuracy": per-family lenient accuracy (+ "mean"), "steps", "final_loss", "seconds"}``
    (+ ``"model"`` with ``return_model``)."""
    import tempfile
    import time

    from .evaluate import accuracy_by_family, evaluate_records

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        trainer = train_sft(copy_model(base_model), tokenizer, records, cfg, scratch,
                            **{"seed": seed, "data_seed": seed, **args})
    predictions = evaluate_records(trainer.model, tokenizer, eval_records, chat=bool(cfg.model.chat_template),
                                   max_new_tokens=int(cfg.eval.max_new_tokens), batch_size=int(cfg.eval.batch_size))
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    result = {"predictions": predictions, "accuracy": accuracy_by_family(predictions),
              "steps": trainer.state.global_step, "final_loss": losses[-1] if losses else float("nan"),
              "seconds": time.perf_counter() - start}
    return {**result, "model": trainer.model} if return_model else result


def checkpoint_every(n_records: int, train: dict, n_checkpoints: int, num_processes: int = 1) -> int:
    """Optimizer steps between ``n_checkpoints`` evenly spread checkpoints of an SFT run with the SFTConfig values
    ``train``: each of ``num_processes`` processes takes its own per-device batch, so a run has ``num_processes``
    times fewer steps per epoch."""
    import math

    global_batch = train["per_device_train_batch_size"] * train["gradient_accumulation_steps"] * num_processes
    total = train["max_steps"] if train["max_steps"] > 0 else math.ceil(n_records / global_batch) * train["num_train_epochs"]
    return max(1, int(total // n_checkpoints))


def train_sft_with_checkpoints(model, tokenizer, records: list[dict], val_records: list[dict], cfg,
                               output_dir: str | Path, *, n_checkpoints: int | None, **args):
    """SFT saving model-only checkpoints and logging the validation loss at each.  ``n_checkpoints`` spreads that
    many checkpoints evenly over training; None keeps ``train.save_steps`` (e.g. every 100 steps as in Zephyr).
    Returns (trainer, DataFrame[step, val_loss, path])."""
    import pandas as pd
    from accelerate import PartialState

    train = {**OmegaConf.to_container(cfg.train, resolve=True), **args}  # what SFTConfig will receive
    save_steps = (checkpoint_every(len(records), train, n_checkpoints, PartialState().num_processes) if n_checkpoints
                  else int(train["save_steps"]))
    trainer = train_sft(model, tokenizer, records, cfg, output_dir, eval_records=val_records,
                        **{"save_strategy": "steps", "save_steps": save_steps, "eval_strategy": "steps",
                           "eval_steps": save_steps, "save_only_model": True, **args})
    rows = [{"step": row["step"], "val_loss": row["eval_loss"], "path": str(Path(output_dir) / f"checkpoint-{row['step']}")}
            for row in trainer.state.log_history if "eval_loss" in row]
    table = pd.DataFrame(rows)
    return trainer, table[table["path"].map(lambda p: Path(p).is_dir())].reset_index(drop=True)


def main(argv: list[str] | None = None) -> None:
    """``python -m studykit.train sft [--output-dir DIR] [hydra overrides]`` – SFT on the configured testbed pool
    (with the configured noise), saving the final model; launchable with ``accelerate launch``."""
    import argparse

    from .config import compose
    from .models import load_model_and_tokenizer
    from .testbed import build_testbed, inject_noise

    parser = argparse.ArgumentParser(prog="python -m studykit.train")
    parser.add_argument("method", choices=["sft"])
    parser.add_argument("--output-dir", help="default: runs/<study>/<profile>/sft")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. profile=gpu train.learning_rate=1e-5")
    args = parser.parse_intermixed_args(argv)
    cfg = compose(args.overrides)
    output_dir = Path(args.output_dir or Path("runs") / cfg.study.name / cfg.profile.name / "sft")
    model, tokenizer = load_model_and_tokenizer(cfg.model, device(cfg))
    pool = inject_noise(build_testbed(cfg.data)["pool"], cfg.data.noise.fraction, list(cfg.data.noise.kinds),
                        int(cfg.seed))
    trainer = train_sft(model, tokenizer, pool, cfg, output_dir)
    trainer.save_model(str(output_dir / "final"))


if __name__ == "__main__":
    import sys

    from .cli import one_line_errors

    sys.exit(one_line_errors(main, "python -m studykit.train"))
