"""Preference training beyond plain DPO.

* :func:`train_preference` — one entry point for every preference loss (registry :data:`studykit.registry.PREFERENCE_LOSSES`): the DPO loss
  family through TRL's own implementations (``DPOTrainer``'s loss types, SimPO from ``trl.experimental.cpo``) and
  the kit's subclasses below;
* losses TRL's ``DPOTrainer`` has no loss type for, as its subclasses: SELM's optimistic term (:class:`SELMTrainer`)
  and Discriminative fine-tuning (:class:`DiscriminativeFTTrainer`);
* Self-Contrast's negatives (:func:`self_contrast_pairs`).

* **SELM** (Zhang et al., 2024, "Self-Exploring Language Models", arXiv 2405.19332; official
  ``scripts/selm_trainer.py::optimistic_dpo_loss``): the sigmoid DPO loss plus an optimistic term
  α·β·(log πθ(y₀) − log π_ref(y₀)) per pair, y₀ the current model's own response to the prompt (the dataset's
  ``reference_response``, as the official data).  Minimizing it lowers the likelihood of what the model already
  says, relative to the reference — the exploration bonus.  Log-probs are sums over the response tokens, as in the
  official code; α = 0.001 in its Zephyr and Phi-3 recipes (1e-4 for Llama-3).
"""
from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, load_from_disk
from omegaconf import OmegaConf
from trl import DPOConfig, DPOTrainer

from . import distributed
from .config import device
from .logprobs import batch_response_logprobs, collate_left, encode_pair, pad_token_id
from .registry import PREFERENCE_LOSSES, resolve
from .rewards import answer_format
from .validate import DELTA_KEEP
from .trainers import dpo_dataset, finish, log_to_file, peft_config, prepare_trainable, training_args

EXPLORE = "reference_response"

def _texts(tokenizer, example: dict) -> tuple[str, str]:
    """(prompt text, response text) of y₀ rendered as TRL renders chosen / rejected."""
    prompt, response = example["prompt"], example[EXPLORE]
    if isinstance(prompt, list):   # conversational: the transcript minus the prompt, end-of-turn tokens included
        prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(prompt + response, tokenize=False)
        if not full.startswith(prompt_text):
            raise ValueError("SELM: the chat template does not render the prompt as a prefix of the transcript")
        return prompt_text, full[len(prompt_text):]
    eos = tokenizer.eos_token or ""
    return prompt, response if response.endswith(eos) else response + eos


class _ExploreCollator:
    """TRL's preference batch plus y₀ as left-padded ``explore_*`` tensors (:func:`studykit.logprobs.collate_left`)."""

    def __init__(self, inner, pad_id: int):
        self.inner, self.pad_id = inner, pad_id

    def __call__(self, examples):
        pairs = [(e.pop("explore_prompt_ids"), e.pop("explore_ids")) for e in examples]
        batch = self.inner(examples)
        batch.update({f"explore_{k}": v for k, v in collate_left(pairs, self.pad_id).items()})
        return batch


def _refuse_precompute(why: str, config) -> None:
    """One clear error, before any reference log-prob is computed, for a trainer that needs its reference model in
    every step (``why``) asked to keep none: ``dpo.precompute_ref_log_probs`` (:func:`train_preference`)."""
    if getattr(config, "precompute_ref_log_probs", False):
        raise ValueError(f"{why}: dpo.precompute_ref_log_probs=true (no reference model kept) is not supported "
                         "with this loss; set dpo.precompute_ref_log_probs=false")


class SELMTrainer(DPOTrainer):
    """DPO with SELM's optimistic term (module docstring); ``alpha`` is its α.  Needs a reference model and a
    ``reference_response`` column (the model's own reply to each prompt, e.g. greedy, generated before training)."""

    def __init__(self, *args, alpha: float = 0.001, **kwargs):
        if alpha < 0:
            raise ValueError(f"SELM: alpha must be ≥ 0, got {alpha}")
        _refuse_precompute("SELM scores its own reply y₀ with the reference model in every step", kwargs.get("args"))
        self.alpha = alpha
        super().__init__(*args, **kwargs)
        if list(self.loss_types) != ["sigmoid"] or self.ref_model is None:
            raise ValueError("SELM's optimistic term is defined on the sigmoid DPO loss with a reference model "
                             f"(loss_type=sigmoid, ref_model=...), got loss_type={self.loss_types}")
        self.data_collator = _ExploreCollator(self.data_collator, pad_token_id(self.processing_class))

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if EXPLORE not in dataset.column_names:
            raise ValueError(f"SELM needs a '{EXPLORE}' column (the model's own response y₀) in the {dataset_name} "
                             f"dataset; it has {dataset.column_names}")
        tokenizer = getattr(processing_class, "tokenizer", processing_class)

        def tokenize_explore(example):
            prompt_ids, explore_ids = encode_pair(tokenizer, *_texts(tokenizer, example))
            return {"explore_prompt_ids": prompt_ids, "explore_ids": explore_ids}

        return super()._prepare_dataset(dataset.map(tokenize_explore), processing_class, args, dataset_name)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, "explore_prompt_ids", "explore_ids"]

    def explore_log_ratio(self, model, explore: dict) -> torch.Tensor:
        """log πθ(y₀) − log π_ref(y₀) per pair (sums over y₀'s tokens); the policy's part carries the gradient."""
        policy = batch_response_logprobs(model, explore).sum(-1)
        with torch.no_grad():
            reference = batch_response_logprobs(self.ref_model, explore).sum(-1)
        return policy - reference.to(policy.device)

    def _compute_loss(self, model, inputs, return_outputs):
        explore = {k[len("explore_"):]: inputs.pop(k) for k in list(inputs) if k.startswith("explore_")}
        result = super()._compute_loss(model, inputs, return_outputs)
        loss = result[0] if return_outputs else result
        ratio = self.explore_log_ratio(model, explore)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["selm/explore_log_ratio"].append(self.accelerator.gather_for_metrics(ratio.detach()).mean().item())
        loss = loss + self.alpha * self.beta * ratio.mean()
        return (loss, result[1]) if return_outputs else loss


def normalizer_update(u_old: torch.Tensor, scores: torch.Tensor, gamma: float) -> torch.Tensor:
    """Discriminative FT's per-example moving normalizer in log space (official ``dft_loss``):
    u ← log((1 − γ)·e^u + γ·mean_k e^{s_k}) over the example's negatives k (``scores``: (examples, negatives));
    γ = 1 forgets the past (u = log mean_k e^{s_k})."""
    w = math.log(gamma) + torch.logsumexp(scores, dim=1) - math.log(scores.shape[1])
    if gamma == 1:
        return w
    return torch.logaddexp(math.log(1.0 - gamma) + u_old, w)


class DiscriminativeFTTrainer(DPOTrainer):
    """Discriminative fine-tuning (Guo et al., 2025, arXiv 2502.18679; official ``scripts/dft_trainer.py``): raise
    the likelihood of the positive y_w and push down sampled negatives y′ in proportion to how much more likely the
    policy makes them than the reference —

        s = log πθ(y′)/τ − log π_ref(y′),   u ← log((1 − γ)e^u + γ·e^s)  (one u per example, from u = 0),
        L = −log πθ(y_w) + sg(e^{s − u})·log πθ(y′)

    (``reference_free``: DFT2, s = log πθ(y′)/τ and every log-prob length-averaged, no reference model).  The
    dataset's ``chosen`` is y_w and ``rejected`` the negative, one per example (the paper: 2 per prompt and epoch).
    Defaults as the paper: DFT τ = 1, γ = 0.85; DFT2 τ = 0.3, γ = 0.9."""

    def __init__(self, *args, tau: float | None = None, gamma: float | None = None, reference_free: bool = False,
                 **kwargs):
        self.tau = tau if tau is not None else (0.3 if reference_free else 1.0)
        self.gamma = gamma if gamma is not None else (0.9 if reference_free else 0.85)
        if self.tau <= 0 or not 0 < self.gamma <= 1:
            raise ValueError(f"Discriminative FT: tau must be > 0 and gamma in (0, 1], got {self.tau}, {self.gamma}")
        self.reference_free = reference_free
        if not reference_free:
            _refuse_precompute("Discriminative FT (DFT; DFT2, reference_free=True, needs none) scores its negatives "
                               "with the reference model in every step", kwargs.get("args"))
        super().__init__(*args, **kwargs)
        if not reference_free and self.ref_model is None:
            raise ValueError("Discriminative FT (DFT) scores its negatives with a reference model in every step: pass "
                             "ref_model; reference_free=True is DFT2")
        self.u = torch.zeros(max(self.train_dataset["example_id"]) + 1)   # u_init = 0, as the official config
        self.data_collator = _IdCollator(self.data_collator)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "example_id" not in dataset.column_names:
            dataset = dataset.add_column("example_id", list(range(len(dataset))))
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, "example_id"]

    def _sequence_logps(self, model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed completion log-probs of the [chosen; rejected] batch and the completion lengths (TRL's layout)."""
        mask = inputs["completion_mask"][..., 1:]
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels,
                    fused_lm_head=True, use_cache=False)
        per_token = out.log_probs[:, -mask.shape[1]:]
        return (per_token * mask).sum(1), mask.sum(1).clamp(min=1)

    def _compute_loss(self, model, inputs, return_outputs):
        ids = inputs.pop("example_id").cpu()
        logps, lengths = self._sequence_logps(model, inputs)
        if self.reference_free:
            logps = logps / lengths
        chosen, rejected = logps.chunk(2)
        scores = rejected / self.tau
        if not self.reference_free:
            with torch.no_grad():
                ref_rejected = self._sequence_logps(self.ref_model, inputs)[0].chunk(2)[1]
            scores = scores - ref_rejected
        u = normalizer_update(self.u[ids].to(scores.device), scores.detach()[:, None], self.gamma)
        self.u[ids] = u.detach().cpu()
        weight = torch.exp(scores.detach() - u)
        loss = (-chosen + weight * rejected).mean()
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["dft/negative_weight"].append(weight.mean().item())
        return (loss, None) if return_outputs else loss


class _IdCollator:
    """TRL's preference batch plus each row's ``example_id`` (its normalizer's index)."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, examples):
        ids = torch.tensor([e.pop("example_id") for e in examples])
        batch = self.inner(examples)
        batch["example_id"] = ids
        return batch


def delta_pairs(prompts: list[dict], chosen: list[dict], rejected: list[dict], keep: str = "bare_answers"
                ) -> tuple[list[dict], dict]:
    """Delta learning's weak pairs (Geng et al., 2025, "The Delta Learning Hypothesis", §3): per prompt, the reply of
    a stronger weak model as chosen and of a weaker one as rejected.  ``chosen`` / ``rejected``: each model's judged
    reply per prompt (``reply``, ``lenient``).  ``keep``: which prompts give a pair — ``bare_answers`` (both replies
    a bare answer in the task's format, :func:`studykit.rewards.answer_format`, and different: a pair that differs
    in quality, not in style), ``different`` (the replies differ) or ``all``.  Returns the pairs and what the
    filter kept: how many prompts, bare-answer pairs, pairs kept, and, among them, right-over-wrong and
    wrong-over-right pairs."""
    if keep not in DELTA_KEEP:
        raise ValueError(f"delta_pairs: keep={keep!r}; expected one of {DELTA_KEEP}")
    if not len(prompts) == len(chosen) == len(rejected):
        raise ValueError(f"delta_pairs: {len(prompts)} prompts, {len(chosen)} chosen and {len(rejected)} rejected replies")
    families = [p["family"] for p in prompts]
    bare = [c and r for c, r in zip(answer_format([c["reply"] for c in chosen], families),
                                    answer_format([r["reply"] for r in rejected], families))]
    differ = [c["reply"].strip() != r["reply"].strip() for c, r in zip(chosen, rejected)]
    kept = [{"bare_answers": b and d, "different": d, "all": True}[keep] for b, d in zip(bare, differ)]
    pairs = [{**p, "chosen": c["reply"], "rejected": r["reply"]}
             for p, c, r, k in zip(prompts, chosen, rejected, kept) if k]
    judged = [(bool(c["lenient"]), bool(r["lenient"])) for c, r, k in zip(chosen, rejected, kept) if k]
    counts = {"prompts": len(prompts), "both bare and different": sum(b and d for b, d in zip(bare, differ)),
              f"pairs ({keep})": len(pairs), "chosen right, rejected wrong": sum(c and not r for c, r in judged),
              "chosen wrong, rejected right": sum(r and not c for c, r in judged)}
    return pairs, counts


def self_contrast_negatives(samples: list[str], similarity: list[float], k: int, share: float = 0.75,
                            rng: random.Random | None = None) -> list[str]:
    """Self-Contrast's negatives for one prompt (Zhao et al., 2024, arXiv 2404.00604; official
    ``src/construct_synthetic_data.py``, mode ``lastdedup-<share>``): the samples ranked by cosine similarity to
    the target (0 = least similar), deduplicated (first occurrence kept), the ``min(⌊N·share⌋, distinct − 1)``
    least similar kept, and ``k`` of those drawn at random — none when fewer than ``k`` are left."""
    if len(samples) != len(similarity) or k < 1 or not 0 < share <= 1:
        raise ValueError(f"self_contrast_negatives: need one similarity per sample, k ≥ 1 and share in (0, 1]; got "
                         f"{len(samples)} samples, {len(similarity)} similarities, k={k}, share={share}")
    order = sorted(range(len(similarity)), key=lambda i: similarity[i])
    rank = {i: r for r, i in enumerate(order)}
    distinct: dict[str, int] = {}
    for i, text in enumerate(samples):
        distinct.setdefault(text, rank[i])
    if not distinct:
        return []
    keep = min(int(len(samples) * share), len(distinct) - 1)
    threshold = sorted(distinct.values())[keep]
    candidates = [text.lstrip(" ") for text, r in distinct.items() if r < threshold and text.strip()]
    if len(candidates) < k:
        return []
    return [candidates[i] for i in sorted((rng or random.Random(0)).sample(range(len(candidates)), k))]


def self_contrast_pairs(records: list[dict], samples: list[list[str]], embed, k: int, share: float = 0.75,
                        seed: int = 0) -> list[dict]:
    """DPO pairs of Self-Contrast: per record, its target (``response``) as chosen against each of its ``k``
    negatives (:func:`self_contrast_negatives`, cosine similarity of ``embed``'s unit embeddings to the
    target's).  ``embed`` is called once, on every target and sample.  Raises when no record gets a negative."""
    if len(records) != len(samples):
        raise ValueError(f"Self-Contrast: {len(records)} records but samples for {len(samples)}")
    texts_per_record = [[record["response"], *texts] for record, texts in zip(records, samples)]
    vectors = np.asarray(embed([text for texts in texts_per_record for text in texts]), dtype=float)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
    bounds = np.cumsum([0] + [len(texts) for texts in texts_per_record])
    rng, pairs = random.Random(seed), []
    for record, texts, start, end in zip(records, samples, bounds[:-1], bounds[1:]):
        similarity = (vectors[start + 1:end] @ vectors[start]).tolist()
        pairs += [{**record, "chosen": record["response"], "rejected": negative, "source": "self_contrast"}
                  for negative in self_contrast_negatives(texts, similarity, k, share, rng)]
    if not pairs:
        raise ValueError(f"Self-Contrast: no record has {k} distinct negatives among its samples (share {share}); "
                         "draw more samples per prompt or lower k")
    return pairs


def _fsdp(config) -> bool:
    """Whether a trainer on ``config`` will shard with FSDP (``Trainer.is_fsdp_enabled``, known before it exists):
    ``accelerate launch`` with an FSDP config sets ``ACCELERATE_USE_FSDP``, or the config's own ``fsdp`` option;
    accelerate ignores both on the CPU (``use_cpu``: plain DDP)."""
    launched = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    return not config.use_cpu and (bool(config.fsdp) or launched)


def _shared(dataset: Dataset, directory: Path) -> Dataset:
    """``dataset`` backed by Arrow files in ``directory``, which every process of a launch shares (the run's output
    directory; the main process writes them).  TRL's precompute (1.16) writes the reference log-probs as a cache
    file next to the dataset's files on the main process and every process reads it; an in-memory dataset's cache
    path is random and in a per-process temporary directory, so the other processes would not find it."""
    if distributed.is_main():
        dataset.save_to_disk(str(directory))
    distributed.barrier()
    return load_from_disk(str(directory))


def train_preference(model, ref_model, tokenizer, pairs: list[dict], cfg, output_dir, *, loss: str = "sigmoid",
                     callbacks=None, **args):
    """Train ``model`` on preference ``pairs`` with one loss of :data:`studykit.registry.PREFERENCE_LOSSES` and ``cfg.dpo`` (+ ``args``:
    config overrides such as ``beta``, ``max_steps``, ``simpo_gamma``, or the loss's trainer options such as SELM's
    ``alpha``); ``ref_model`` is the frozen reference (passed to DPOTrainer and its subclasses, which DFT2 does not
    use; SimPO has none).  Returns the trainer after training.

    With ``dpo.precompute_ref_log_probs`` (DPOConfig losses, full fine-tuning) no reference copy is held: TRL gets
    ``ref_model=None`` and scores every pair once with ``model`` before training, so ``ref_model`` must be
    ``model``'s start (as every caller of the kit passes it) and is not used.  Under FSDP TRL would instead load a
    reference from ``model.config._name_or_path``, which need not be this start (a copied or checkpointed model), so
    there ``ref_model`` is still passed: TRL shards it like the policy, precomputes with it and keeps it (only
    the per-step reference forward is saved).  Under a launch the pairs are written to ``output_dir``/pairs, which
    every process must share (:func:`_shared`).  With an adapter the reference is its start, adapters disabled (no
    copy either way); SELM and DFT refuse the key (they need the reference in every step); SimPO's config has no
    such field and ignores it."""
    if loss not in PREFERENCE_LOSSES:
        raise ValueError(f"train_preference: unknown loss '{loss}'; expected one of {sorted(PREFERENCE_LOSSES)}")
    spec = PREFERENCE_LOSSES[loss]
    trainer_class, config_class = resolve(spec.trainer), resolve(spec.config)
    options = {k: args.pop(k) for k in spec.options if k in args}
    if config_class is DPOConfig:   # every cfg.dpo key must be a DPOConfig field, as for any DPO run
        section, extra = cfg.dpo, {}
    else:                          # another trainer's config: the cfg.dpo settings it shares
        section, extra = None, {k: v for k, v in OmegaConf.to_container(cfg.dpo, resolve=True).items()
                                if k in config_class.__dataclass_fields__}
    config = training_args(config_class, section, output_dir, int(cfg.seed), {**extra, **spec.settings, **args}, device(cfg))
    adapter = peft_config(cfg)
    data = dpo_dataset(pairs, bool(cfg.model.chat_template))
    if getattr(config, "precompute_ref_log_probs", False) and distributed.world_size() > 1:
        data = _shared(data, Path(output_dir) / "pairs")
    common = dict(model=model, args=config, processing_class=tokenizer, callbacks=callbacks, train_dataset=data,
                  peft_config=adapter)
    if config_class is DPOConfig:   # with an adapter the reference is its start, adapters disabled (TRL's way)
        precomputed = config.precompute_ref_log_probs and not _fsdp(config)   # TRL precomputes with the start policy
        common["ref_model"] = None if adapter is not None or precomputed else ref_model
    trainer = prepare_trainable(trainer_class(**common, **spec.fixed, **options))
    log_to_file(trainer).train()
    return finish(trainer, common.get("ref_model"))
