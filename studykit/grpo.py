"""GRPO (Shao et al., 2024, DeepSeekMath §4.1) through TRL's ``GRPOTrainer``, with one forward pass of each prompt
shared by its group of G rollouts, in the rollouts' generation and in the log-prob passes of the update.

Every prompt of a GRPO batch appears G times, once per rollout, and TRL scores each row whole: prompt and completion
tokens through the policy (with gradients) and, where the settings need them, the old policy and the reference. On
the testbed a prompt is ~75 tokens for a completion of ≤ 24, so about three quarters of that forward and backward
computes the same prompt activations G times over (``benchmarks/rl_step.py --breakdown``).
:class:`SharedPromptGRPOTrainer` runs the distinct prompts once (all but their last token, caching keys and values),
hands each row its prompt's cache (an index into the distinct prompts: a differentiable gather, so every rollout's
gradient flows back into the one prompt pass) and runs only the last prompt token and the completion through TRL's
fused log-prob head. Positions and masks are TRL's own (its forward numbers the positions of a left-padded row from
0 across the padding, as the cache continues them), so the per-token log-probs and entropies are TRL's up to
floating-point error (``tests/test_rl.py``). Generation likewise prefills each distinct prompt once (but its last
token, at the positions ``generate`` gives a left-padded prompt) and hands ``generate`` every rollout's copy of that
cache, so it decodes from the last prompt token on (transformers' prompt-cache reuse). Batches without a repeated
prompt, adapters (``peft``), vision inputs, MoE auxiliary losses and a model wrapped for several processes (DDP's
reducer needs its own forward) take TRL's own path.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import DynamicCache
from trl import GRPOTrainer


def _distinct_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a row index of each distinct (ids, mask) row, each row's distinct index)."""
    distinct, row_of = torch.unique(torch.cat([input_ids, attention_mask], dim=1), dim=0, return_inverse=True)
    first = torch.zeros(len(distinct), dtype=torch.long, device=input_ids.device)
    return first.scatter_(0, row_of, torch.arange(len(input_ids), device=input_ids.device)), row_of


@contextmanager
def shared_prompt_generation(model):
    """While open, ``model.generate(input_ids, attention_mask, …)`` prefills each distinct prompt once (module
    docstring) and passes every row its prompt's cache; batches without a repeated prompt generate as they are."""
    generate, wrapped = model.generate, model.__dict__.get("generate")   # a wrapper already set on the instance

    def generate_from_shared_prompts(input_ids, attention_mask, **kwargs):
        first, row_of = _distinct_rows(input_ids, attention_mask)
        configured = getattr(kwargs.get("generation_config"), "cache_implementation", None)
        if len(first) == len(input_ids) or input_ids.size(1) < 2 or "past_key_values" in kwargs or configured:
            return generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        mask = attention_mask[first]
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)   # what generate gives a left-padded row
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=input_ids[first, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                  past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.reorder_cache(row_of)
        return generate(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, **kwargs)

    model.generate = generate_from_shared_prompts
    try:
        yield model
    finally:
        if wrapped is None:
            del model.generate
        else:
            model.generate = wrapped


class SharedPromptGRPOTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer`` whose log-prob passes run each distinct prompt once per batch (module docstring)."""

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if self.use_vllm or self.use_transformers_continuous_batching or images is not None or multimodal_fields:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)
        with shared_prompt_generation(self.accelerator.unwrap_model(self.model_wrapped)):
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **vision):
        prompts = input_ids[:, :-logits_to_keep]
        prompt_mask = attention_mask[:, :-logits_to_keep]
        first_row, row_of = _distinct_rows(prompts, prompt_mask)
        shared = (len(first_row) < len(input_ids) and prompts.size(1) > 1 and not compute_aux_loss
                  and not any(v is not None for v in vision.values()) and not hasattr(model, "peft_config")
                  and model is self.accelerator.unwrap_model(model))   # DDP's reducer needs its own forward
        if not shared:
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                              batch_size, compute_entropy, compute_aux_loss, **vision)
        width = prompts.size(1)
        cache = DynamicCache(config=model.config)
        with self.accelerator.autocast():
            model.base_model(input_ids=prompts[first_row, :-1], attention_mask=prompt_mask[first_row, :-1],
                             past_key_values=cache, use_cache=True)
            cache.reorder_cache(row_of)                     # each row reads its prompt's keys and values
            tail = input_ids[:, width - 1:]                  # the last prompt token, then the completion
            labels = tail[:, 1:].masked_fill(attention_mask[:, width:] == 0, -100)
            labels = torch.cat([labels, torch.full_like(labels[:, :1], -100)], dim=1)   # the last token predicts none
            outputs = model(input_ids=tail, attention_mask=attention_mask, past_key_values=cache,
                            shift_labels=labels, fused_lm_head=True)
        entropies = outputs.entropy[:, :logits_to_keep] if compute_entropy else None
        return outputs.log_probs[:, :logits_to_keep], entropies, None
