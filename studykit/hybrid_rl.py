"""SFT–RL hybrids as ``GRPOTrainer`` subclasses: HPT and Prefix-RFT.  Both read the demonstration of each
prompt from the ``solution`` column of :func:`studykit.rl.grpo_dataset` (and its raw text from ``question``),
and tokenize it as TRL's SFT would after that prompt: a chat turn when the prompts are conversational, else
" " + the response after the plain ``Question: … / Answer:`` frame.

* **HPT** (Lv et al., 2025, "Towards a Unified View of LLM Post-Training", arXiv 2509.04419; official
  ``mix_trainer.select_on_off_ada_balance``): per prompt, G rollouts are verified; if at most γ of them are
  solved, the rollouts are dropped and the demonstration is trained with SFT, otherwise the group is trained
  with the RL loss — ``L = 1[P > γ]·L_RL + 1[P ≤ γ]·c·L_SFT`` with P the solved count.
* **Prefix-RFT** (Huang et al., 2025, arXiv 2507.01679, Eq. 2–3; official ``recipe/prefix_rft``): one of every
  G rollouts continues a demonstration prefix of ``L = ⌊l·|y*|⌋`` tokens, ``l ~ U(low, 0.95)``, ``low``
  cosine-decayed from 0.95 to 0 over training; advantages are computed over all G rollouts, and on the hybrid
  rollout only the top 20% highest-entropy prefix tokens keep their advantage (its continuation keeps all).
"""
from __future__ import annotations

import math
import random

import torch

from .grpo import SharedPromptGRPOTrainer
from .logprobs import batch_response_logprobs, collate_left, encode_pair, format_pair, pad_token_id


def _global_rows(trainer, n_local: int) -> torch.Tensor:
    """Indices of this process's rows in the generation batch gathered over processes (TRL slices it this way)."""
    start = trainer.accelerator.process_index * n_local
    return torch.arange(start, start + n_local)


def demonstration_ids(tokenizer, row: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, demonstration ids) of a GRPO dataset row as TRL's SFT tokenizes a prompt–completion pair: with
    a conversational prompt the demonstration carries the template's end-of-turn tokens; else it is " " + the
    response + EOS."""
    chat = isinstance(row["prompt"], list)
    return encode_pair(tokenizer, *format_pair(tokenizer, row["question"], row["solution"], chat))


def hpt_sft_groups(solved: torch.Tensor, num_generations: int, switch_gate: int) -> torch.Tensor:
    """Per rollout row (groups of ``num_generations`` consecutive rows): True where its group solved at most
    ``switch_gate`` rollouts — HPT's switch to SFT."""
    per_group = solved.view(-1, num_generations).sum(dim=1)
    return (per_group <= switch_gate).repeat_interleave(num_generations)


class HPTTrainer(SharedPromptGRPOTrainer):
    """HPT's switch (arXiv 2509.04419): groups with ≤ ``switch_gate`` (γ) solved rollouts train the
    demonstration with SFT (coefficient ``sft_coef``), the others train with GRPO.

    As the official code (``hpt/verl/verl/mix_src/mix_actor.py``, ``offline_loss_type: sft``: ``pg_loss =
    sft_loss * sft_loss_coef + pg_loss``) in each micro-batch: the SFT term is the token-mean NLL of the switched
    groups' demonstrations (their tokens pooled, each demonstration once; ``compute_sft_pure_loss``), at the fixed
    coefficient — not weighted by the switched share of the batch — and the RL term is the policy loss of the
    rollouts that were not switched alone: TRL's loss with the switched rollouts' advantages 0 (so their terms are
    0), rescaled from all rows to those rows (exact under ``loss_type: grpo`` with β = 0, the kit's settings: the
    mean over rows of each row's token-mean loss).  "Solved" is the ``verifier`` reward = 1."""

    def __init__(self, *args, switch_gate: int = 0, sft_coef: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        if "verifier" not in self.reward_func_names:
            raise ValueError("HPT counts solved rollouts with the 'verifier' reward: give it a weight in rl.rewards")
        if not 0 <= switch_gate < self.num_generations:
            raise ValueError(f"rl.hpt.switch_gate must be in [0, {self.num_generations - 1}] "
                             f"(num_generations={self.num_generations}), got {switch_gate}")
        self.switch_gate, self.sft_coef = switch_gate, sft_coef

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._solved = rewards[:, self.reward_func_names.index("verifier")] >= 1.0  # all processes' rows
        return rewards

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        rows = _global_rows(self, len(inputs))
        switched = hpt_sft_groups(self._solved, self.num_generations, self.switch_gate)
        local = switched[rows].to(output["advantages"].device)
        output["advantages"] = output["advantages"].masked_fill(local, 0.0)
        first = (rows % self.num_generations == 0).to(local.device)
        pairs = [demonstration_ids(self.processing_class, x) for x in inputs]
        batch = collate_left(pairs, pad_token_id(self.processing_class))
        # demo_rows: the first row of each switched group carries its demonstration; switched: every switched row
        output.update({f"demo_{k}": v.to(local.device) for k, v in batch.items()}, demo_rows=local & first,
                      switched=local)
        self._metrics["train" if self.model.training else "eval"]["hpt/sft_group_fraction"].append(
            switched.float().mean().item())
        return output

    def _compute_loss(self, model, inputs):
        loss = super()._compute_loss(model, inputs)
        switched, chosen = inputs["switched"], inputs["demo_rows"]
        on_policy = int((~switched).sum())
        loss = loss * (len(switched) / on_policy) if on_policy else loss * 0.0   # the RL term over its own rows
        if not chosen.any():
            return loss
        batch = {k[len("demo_"):]: v[chosen] for k, v in inputs.items() if k.startswith("demo_") and k != "demo_rows"}
        width = int(batch["response_mask"].sum(-1).max())
        batch["response_ids"], batch["response_mask"] = batch["response_ids"][:, -width:], batch["response_mask"][:, -width:]
        logp = batch_response_logprobs(model, batch)
        sft = -logp.sum() / batch["response_mask"].sum()   # token-mean NLL over the demonstrations' pooled tokens
        accumulation = self.current_gradient_accumulation_steps if self.model.training else 1
        return loss + self.sft_coef * sft / accumulation


def prefix_low(step: int, total_steps: int, start: float = 0.95) -> float:
    """Prefix-RFT's lower bound of the prefix ratio at ``step``: cosine-decayed from ``start`` to 0."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return start * 0.5 * (1.0 + math.cos(math.pi * progress))


def prefix_length(n_tokens: int, low: float, high: float, rng: random.Random) -> int:
    """``⌊l·|y*|⌋`` with ``l ~ U(low, high)``: the number of demonstration tokens a hybrid rollout starts from."""
    return int(math.floor(rng.uniform(low, high) * n_tokens))


def entropy_prefix_mask(entropies: torch.Tensor, prefix_lengths: torch.Tensor, top_share: float) -> torch.Tensor:
    """(B, T) float mask that keeps every continuation token and, of each row's first ``prefix_lengths[b]``
    tokens (the demonstration prefix), only the ``⌈top_share·L⌉`` with the highest entropy."""
    rows, width = entropies.shape
    positions = torch.arange(width, device=entropies.device).expand(rows, -1)
    in_prefix = positions < prefix_lengths[:, None]
    keep = ~in_prefix
    for b in range(rows):
        n = int(prefix_lengths[b])
        if n:
            k = math.ceil(top_share * n)
            top = entropies[b, :n].topk(k).indices
            keep[b, top] = True
    return keep.float()


class PrefixRFTTrainer(SharedPromptGRPOTrainer):
    """Prefix-RFT (arXiv 2507.01679): in every group the first rollout is a hybrid — a demonstration prefix of
    ``⌊l·|y*|⌋`` tokens (``l ~ U(low, high)``, ``low`` cosine-decayed from ``high`` to 0 over ``max_steps``)
    followed by the policy's own continuation.  ``y*`` is the demonstration's content tokens (no end-of-turn), so
    a prefix never ends the reply.  Advantages are the GRPO group advantages over all G rollouts; on the hybrid
    rollout only the ``entropy_top_share`` highest-entropy prefix tokens (entropies of the rollout policy) keep
    theirs.  The rollout budget is unchanged: G rollouts per prompt."""

    def __init__(self, *args, high: float = 0.95, entropy_top_share: float = 0.2, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0.0 < high < 1.0 or not 0.0 < entropy_top_share <= 1.0:
            raise ValueError(f"rl.prefix_rft: high must be in (0, 1) and entropy_top_share in (0, 1], got {high}, "
                             f"{entropy_top_share}")
        self.high, self.entropy_top_share = high, entropy_top_share
        self._rng = random.Random(self.args.seed)

    def _generate_and_score_completions(self, inputs):
        self._demonstrations = [self._content_ids(x) for x in inputs]
        output = super()._generate_and_score_completions(inputs)
        lengths = torch.tensor(self._prefix_lengths, device=output["advantages"].device)
        advantages = output["advantages"][:, None].expand_as(output["completion_mask"]).clone()
        hybrid = lengths > 0
        if hybrid.any():
            with torch.no_grad():
                ids = torch.cat([output["prompt_ids"][hybrid], output["completion_ids"][hybrid]], dim=1)
                mask = torch.cat([output["prompt_mask"][hybrid], output["completion_mask"][hybrid]], dim=1)
                _, entropies, _ = self._get_per_token_logps_and_entropies(
                    self.model, ids, mask, output["completion_ids"].size(1), compute_entropy=True)
            advantages[hybrid] *= entropy_prefix_mask(entropies, lengths[hybrid], self.entropy_top_share)
        output["advantages"] = advantages
        self._metrics["train" if self.model.training else "eval"]["prefix_rft/mean_prefix_tokens"].append(
            lengths[hybrid].float().mean().item() if hybrid.any() else 0.0)
        return output

    def _content_ids(self, row: dict) -> list[int]:
        """The demonstration's content tokens as they follow the prompt (no end-of-turn, no EOS)."""
        chat = isinstance(row["prompt"], list)
        prompt_text, _ = format_pair(self.processing_class, row["question"], row["solution"], chat)
        content = row["solution"] if chat else " " + row["solution"]
        return encode_pair(self.processing_class, prompt_text, content)[1]

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        rows = _global_rows(self, len(prompt_ids))
        low = prefix_low(self.state.global_step, self.state.max_steps or self.args.max_steps, self.high)
        lengths = [prefix_length(len(self._demonstrations[i]), low, self.high, self._rng)
                   if int(rows[i]) % self.num_generations == 0 else 0 for i in range(len(prompt_ids))]
        prefixes = [self._demonstrations[i][:n] for i, n in enumerate(lengths)]
        extended = [list(p) + prefix for p, prefix in zip(prompt_ids, prefixes)]
        continuations, _ = super()._generate_single_turn(extended, images, multimodal_fields, num_generations,
                                                                has_tool_images)
        limit = self.max_completion_length
        self._prefix_lengths = [min(n, limit) for n in lengths]
        completions = [(prefix + list(c))[:limit] for prefix, c in zip(prefixes, continuations)]
        return completions, None  # sampling log-probs (vLLM) would not cover the prefix tokens
