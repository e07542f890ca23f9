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

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import PartialState
from omegaconf import OmegaConf
from trl import DPOTrainer, SFTConfig, SFTTrainer
from trl.trainer.utils import add_fused_lm_head

from .config import compose, device
from .errors import one_line_errors
from .evaluate import accuracy_by_family, evaluate_records
from .models import copy_model, load_model_and_tokenizer, restore_forward
from .objectives import TokenStats, get_objective, objective_loss
from .preference import train_preference
from .testbed import build_testbed, inject_noise
from .trainers import finish, log_to_file, peft_config, prepare_trainable, sft_dataset, training_args


class _StoredLogProbsCollator:
    """Pads the stored per-token ``behavior_log_probs`` next to TRL's (right-padded) batch."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, examples):
        stored = [example.pop("behavior_log_probs") for example in examples]
        batch = self.inner(examples)
        padded = torch.zeros(len(stored), batch["input_ids"].shape[1] - 1)
        for row, values in enumerate(stored):
            padded[row, :len(values)] = torch.as_tensor(values)
        batch["behavior_log_probs"] = padded
        return batch


class ObjectiveSFTTrainer(SFTTrainer):
    """``SFTTrainer`` whose loss is the registered objective ``objective`` (see module docstring)."""

    def __init__(self, *args, objective: str, objective_params: dict | None = None, ref_model=None, **kwargs):
        self.objective = get_objective(objective)
        self.objective_params = dict(objective_params or {})
        super().__init__(*args, **kwargs)
        if self.args.packing or self.args.padding_free:
            raise ValueError("token-weighted objectives need unpacked, padded batches (packing=False, padding_free=False)")
        if "full_logits" in self.objective.needs and ref_model is None:
            raise ValueError(f"objective '{self.objective.name}' needs a frozen reference model (ref_model=...)")
        # ASFT's frozen reference: on the policy's device and prepared like it (mixed-precision autocast included),
        # as TRL's DPOTrainer prepares its reference; used under no_grad, never trained
        self.ref_model = (self.accelerator.prepare_model(ref_model.eval(), evaluation_mode=True)
                          if ref_model is not None else None)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "behavior_log_probs" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "behavior_log_probs"]

    @torch.no_grad()
    def store_behavior_log_probs(self, behavior_model=None, batch_size: int = 16) -> None:
        """PEAR's πβ: score every training row once with ``behavior_model`` (default: the model before training, the
        policy that generated self-generated data) on exactly the tokens SFT will see; stored as a dataset column."""
        model = self.model
        if behavior_model is not None:
            model = behavior_model
            add_fused_lm_head(model, outputs=("log_probs",))
        was_training = model.training
        model.eval()
        model.to(self.args.device)
        dataset, device = self.train_dataset, self.args.device
        rows = []
        for start in range(0, len(dataset), batch_size):
            examples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = self.data_collator([{k: v for k, v in e.items() if k != "behavior_log_probs"} for e in examples])
            with self.accelerator.autocast():  # the precision training will compute in, so Δ = 1 at step 0
                out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                            labels=batch["labels"].to(device), fused_lm_head=True)
            for row, example in enumerate(examples):
                rows.append(out.log_probs[row, :len(example["input_ids"]) - 1].float().cpu().tolist())
        model.train(was_training)
        if behavior_model is not None:
            restore_forward(behavior_model)
        if "behavior_log_probs" in dataset.column_names:
            dataset = dataset.remove_columns("behavior_log_probs")
        self.train_dataset = dataset.add_column("behavior_log_probs", rows)
        if not isinstance(self.data_collator, _StoredLogProbsCollator):
            self.data_collator = _StoredLogProbsCollator(self.data_collator)

    def token_stats(self, model, inputs) -> tuple[TokenStats, object]:
        behavior = inputs.pop("behavior_log_probs", None)
        if "behavior" in self.objective.needs and behavior is None:
            raise ValueError("PEAR needs stored data-policy log-probs: call store_behavior_log_probs() before train()")
        if "full_logits" in self.objective.needs:
            model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
            outputs = model(**model_inputs)
            mask = inputs["labels"][:, 1:] != -100
            vocab_log_probs = F.log_softmax(outputs.logits[:, :-1][mask].float(), -1)
            targets = inputs["labels"][:, 1:][mask]
            token_log_probs = vocab_log_probs.gather(-1, targets[:, None]).squeeze(-1)
            log_probs = torch.zeros(mask.shape, dtype=token_log_probs.dtype,
                                    device=mask.device).masked_scatter(mask, token_log_probs)
            with torch.no_grad():
                ref_vocab_log_probs = F.log_softmax(self.ref_model(**model_inputs).logits[:, :-1][mask].float(), -1)
            stats = TokenStats(log_probs, mask, vocab_log_probs=vocab_log_probs,
                               ref_vocab_log_probs=ref_vocab_log_probs)
        else:
            outputs = model(**inputs, fused_lm_head=True)
            stats = TokenStats(outputs.log_probs, outputs.label_mask, entropy=outputs.entropy)
        if behavior is not None:
            stats.behavior_log_probs = behavior.to(stats.log_probs.device)
        return stats, outputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.objective.trl_loss_type is not None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs["use_cache"] = False
        stats, outputs = self.token_stats(model, inputs)
        num_tokens = stats.mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = objective_loss(self.objective.name, stats, num_tokens, **self.objective_params)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss


def build_sft_trainer(model, tokenizer, records: list[dict], cfg, output_dir: str | Path, *, eval_records=None,
                      callbacks=None, objective: str | None = None, objective_params: dict | None = None,
                      ref_model=None, behavior_model=None, **args) -> SFTTrainer:
    """A TRL SFT trainer on ``records`` with ``cfg.train`` (+ ``args`` overrides), ready to ``train()``.

    ``objective`` picks a registered token-weighted loss from :mod:`studykit.objectives` (default: TRL's own NLL);
    ``ref_model`` is ASFT's frozen reference; PEAR's data-policy log-probs are stored from ``behavior_model`` (the
    policy that generated ``records``' responses), by default from the model before training.
    """
    chat = bool(cfg.model.chat_template)
    common = dict(model=model, processing_class=tokenizer, train_dataset=sft_dataset(records, chat),
                  eval_dataset=sft_dataset(eval_records, chat) if eval_records else None, callbacks=callbacks,
                  peft_config=peft_config(cfg))
    if objective is None:
        return log_to_file(prepare_trainable(SFTTrainer(
            args=training_args(SFTConfig, cfg.train, output_dir, int(cfg.seed), args, device(cfg)), **common)))
    spec = get_objective(objective)
    if spec.trl_loss_type is not None:
        args = {**args, "loss_type": spec.trl_loss_type}
    trainer = ObjectiveSFTTrainer(args=training_args(SFTConfig, cfg.train, output_dir, int(cfg.seed), args, device(cfg)),
                                  objective=objective, objective_params=objective_params, ref_model=ref_model,
                                  **common)
    if "behavior" in spec.needs:
        trainer.store_behavior_log_probs(behavior_model)
    return log_to_file(prepare_trainable(trainer))


def train_sft(model, tokenizer, records: list[dict], cfg, output_dir: str | Path, **kwargs) -> SFTTrainer:
    """:func:`build_sft_trainer`, trained; returns the trainer after training."""
    trainer = build_sft_trainer(model, tokenizer, records, cfg, output_dir, **kwargs)
    trainer.train()
    return finish(trainer, kwargs.get("ref_model"))


def train_dpo(model, ref_model, tokenizer, pairs: list[dict], cfg, output_dir: str | Path, *, callbacks=None,
              **args) -> DPOTrainer:
    """Run TRL DPO from ``model`` against the frozen ``ref_model`` with ``cfg.dpo`` (+ ``args`` overrides): the
    sigmoid loss of :func:`studykit.preference.train_preference`."""
    return train_preference(model, ref_model, tokenizer, pairs, cfg, output_dir, loss="sigmoid", callbacks=callbacks,
                            **args)


def finetune_and_evaluate(base_model, tokenizer, records: list[dict], eval_records: list[dict], cfg, *, seed: int,
                          return_model: bool = False, **args) -> dict:
    """SFT a fresh copy of ``base_model`` on ``records`` with ``seed`` (``args`` go to :func:`train_sft`: an
    objective, SFTConfig overrides), then evaluate it on ``eval_records``.  Returns ``{"predictions": per-item
    judged replies, "accuracy": per-family lenient accuracy (+ "mean"), "steps", "final_loss", "seconds"}``
    (+ ``"model"`` with ``return_model``)."""
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
    global_batch = train["per_device_train_batch_size"] * train["gradient_accumulation_steps"] * num_processes
    total = train["max_steps"] if train["max_steps"] > 0 else math.ceil(n_records / global_batch) * train["num_train_epochs"]
    return max(1, int(total // n_checkpoints))


def train_sft_with_checkpoints(model, tokenizer, records: list[dict], val_records: list[dict], cfg,
                               output_dir: str | Path, *, n_checkpoints: int | None, **args):
    """SFT saving model-only checkpoints and logging the validation loss at each.  ``n_checkpoints`` spreads that
    many checkpoints evenly over training; None keeps ``train.save_steps`` (e.g. every 100 steps as in Zephyr).
    Returns (trainer, DataFrame[step, val_loss, path])."""
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
    sys.exit(one_line_errors(main, "python -m studykit.train"))
