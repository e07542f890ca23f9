"""The shared TRL plumbing of every trainer of the kit (SFT, its token-weighted objectives, the preference losses,
GRPO and its variants): the training arguments a config section and the device give, the fp32 master-weights check,
the training logs to a file, and the prompt–completion / preference rows TRL's trainers read.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from datasets import Dataset
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, PrinterCallback, TrainerCallback

from .distributed import barrier
from .logprobs import completion_text, format_prompt
from .models import restore_forward

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


def peft_config(cfg):
    """The adapter every trainer of the kit trains when ``cfg.peft`` is set, else None (full fine-tuning): LoRA
    (Hu et al., 2022, eq. 3: W + (α/r)·BA with B zero-initialized, so training starts at the model it adapts) on
    ``target_modules``; ``method: qlora`` is the same adapter on a 4-bit NF4 base (Dettmers et al., 2023;
    :func:`studykit.models.load_model` quantizes the base).  The other keys go to ``peft.LoraConfig`` as they are."""
    spec = cfg.get("peft")
    if spec is None:
        return None
    from peft import LoraConfig

    kwargs = {k: v for k, v in OmegaConf.to_container(spec, resolve=True).items() if k != "method"}
    return LoraConfig(task_type="CAUSAL_LM", **kwargs)


def prepare_trainable(trainer):
    """Apply the fp32-master rule to what ``trainer`` will train, before its optimizer exists: an adapter's
    parameters are cast to fp32 (TRL casts a QLoRA adapter to bf16, where AdamW would round small updates away),
    then :func:`check_master_weights` (a fully fine-tuned model must already be fp32).  Returns ``trainer``."""
    from peft import PeftModel

    if isinstance(trainer.model, PeftModel):
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    check_master_weights(trainer.model)
    return trainer


def merged(model):
    """``model`` with a trained adapter merged into its weights (``merge_and_unload``), so what follows a run —
    evaluation, the run cache, a later stage that starts from it — sees one plain model; a plain model as is."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def gathered(trainer):
    """The policy an FSDP run trained, whole, as a plain model on this process's device (in its dtype): each process
    holds only its shard (flat parameters), so generating from ``trainer.model`` would be wrong.  The accelerate way:
    ``save_model`` writes the full weights from the main process (the FULL_STATE_DICT of
    conf/accelerate/fsdp_zephyr.yaml) to ``<output_dir>/final``, and after a barrier every process reloads them.
    Full fine-tuning (the kit's FSDP profile).  Not tested by the suite: accelerate enables FSDP only on GPU-like
    devices (a CPU launch runs as plain DDP), so this path needs a multi-GPU launch."""
    final = Path(trainer.args.output_dir) / "final"
    dtype = trainer.accelerator.unwrap_model(trainer.model).dtype
    trainer.save_model(str(final))
    barrier()
    return AutoModelForCausalLM.from_pretrained(final, dtype=dtype).to(trainer.accelerator.device)


def finish(trainer, *frozen):
    """After ``trainer.train()``: under FSDP replace ``trainer.model`` by the whole trained policy (:func:`gathered`);
    merge a trained adapter into ``trainer.model`` (:func:`merged`) and give it and the ``frozen`` models it used (a
    reference) their class's forward back (:func:`studykit.models.restore_forward`).  Returns ``trainer``."""
    if trainer.is_fsdp_enabled:
        trainer.model = gathered(trainer)
    trainer.model = merged(trainer.model)
    for model in (trainer.model, *frozen):
        if model is not None:
            restore_forward(model)
    return trainer


def memory_estimate(n_params: float, *, dtype_bytes: int = 4, shards: int = 1, adapter_params: float | None = None
                    ) -> dict[str, float]:
    """ESTIMATE (GB per device) of the model state of an SFT and a DPO run, activations excluded.  Full fine-tuning:
    fp32 master weights (4 B/param), their gradients (4) and AdamW's two moments (8) for the policy, plus a frozen
    reference of ``dtype_bytes`` per parameter for DPO.  With a LoRA adapter of ``adapter_params`` parameters: the
    frozen base at ``dtype_bytes`` per parameter plus the adapter's 16 B/param, and no separate reference (TRL's
    reference is the base with the adapter disabled).  All of it divided over ``shards`` devices (FSDP)."""
    if adapter_params is not None:
        policy = n_params * dtype_bytes + adapter_params * (4 + 4 + 8)
        return {"sft_gb": policy / shards / 1e9, "dpo_gb": policy / shards / 1e9}
    policy = n_params * (4 + 4 + 8)
    return {"sft_gb": policy / shards / 1e9, "dpo_gb": (policy + n_params * dtype_bytes) / shards / 1e9}


def lora_params(architecture, r: int) -> float:
    """Parameters of a LoRA adapter of rank ``r`` on every linear layer of a Llama-style decoder (``architecture``:
    ``hidden``, ``kv`` (the k/v projection width), ``intermediate``, ``layers``): r·(in + out) per projection
    (Hu et al., 2022) — q and o (hidden → hidden), k and v (hidden → kv), gate and up (hidden → intermediate), down."""
    h, kv, i = architecture["hidden"], architecture["kv"], architecture["intermediate"]
    per_layer = 2 * (h + h) + 2 * (h + kv) + 2 * (h + i) + (i + h)
    return float(r * per_layer * architecture["layers"])


def training_args(cls, section, output_dir: str | Path, seed: int, extra: dict, device: torch.device):
    """``cls`` (SFTConfig / DPOConfig) from a config section, then ``extra`` overrides, then the settings of
    ``device``."""
    kwargs = OmegaConf.to_container(section, resolve=True) if section is not None else {}
    kwargs.update(output_dir=str(output_dir), seed=seed, data_seed=seed, report_to=kwargs.get("report_to", "none"),
                  disable_tqdm=True, save_strategy=kwargs.get("save_strategy", "no"))
    kwargs.update(extra)
    kwargs.update(hardware_args(device))
    return cls(**kwargs)


class LogToLogger(TrainerCallback):
    """Training logs (loss, learning rate, …) to the ``studykit.train`` logger — a file under ``studykit run`` —
    instead of stdout, where transformers' PrinterCallback puts them when progress bars are off."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            LOGGER.info("step %s: %s", state.global_step, logs)


def log_to_file(trainer):
    """``trainer`` with its training logs going to the ``studykit.train`` logger instead of stdout."""
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(LogToLogger())
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
