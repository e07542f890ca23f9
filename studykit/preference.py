"""Preference losses that TRL's ``DPOTrainer`` has no loss type for, as its subclasses.

* **SELM** (Zhang et al., 2024, "Self-Exploring Language Models", arXiv 2405.19332; official
  ``scripts/selm_trainer.py::optimistic_dpo_loss``): the sigmoid DPO loss plus an optimistic term
  α·β·(log πθ(y₀) − log π_ref(y₀)) per pair, y₀ the current model's own response to the prompt (the dataset's
  ``reference_response``, as the official data).  Minimizing it lowers the likelihood of what the model already
  says, relative to the reference — the exploration bonus.  Log-probs are sums over the response tokens, as in the
  official code; α = 0.001 in its Zephyr and Phi-3 recipes (1e-4 for Llama-3).
"""
from __future__ import annotations

import torch
from trl import DPOTrainer

from .logprobs import batch_response_logprobs, collate_left, encode_pair, pad_token_id

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


class SELMTrainer(DPOTrainer):
    """DPO with SELM's optimistic term (module docstring); ``alpha`` is its α.  Needs a reference model and a
    ``reference_response`` column (the model's own reply to each prompt, e.g. greedy, generated before training)."""

    def __init__(self, *args, alpha: float = 0.001, **kwargs):
        if alpha < 0:
            raise ValueError(f"SELM: alpha must be ≥ 0, got {alpha}")
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
