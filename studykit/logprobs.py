"""Batched, padding-aware per-token log-probabilities of responses given prompts.

The workhorse of every training-free score in the kit (Nuggets' golden score, IFD, GRAPE, RewardRank's
implicit rewards): ``log p(response_t | prompt, response_<t)`` for each response token, prompt tokens masked out.

How it is batched: examples are sorted by length (so each batch holds similar lengths and little padding),
left-padded (so every response ends at the last position), and position ids are rebuilt from the attention mask
(so a padded row sees the same positions as the unpadded sequence).  Because all responses end at the right
edge, only the last ``max_response_len + 1`` positions need logits (``logits_to_keep``): the LM head — the
largest matmul for small models with big vocabularies — never runs over prompt tokens.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm
from transformers import DynamicCache
from trl.data_utils import common_prefix_length


def format_prompt(tokenizer, prompt: str, chat: bool) -> str:
    """The text the model sees before its response: the chat template's user turn + assistant header, or a
    plain ``Question: … / Answer:`` frame for models without a chat template — with no trailing space, which
    SentencePiece tokenizers would make a token of its own that training (prompt + " response", tokenized
    jointly) never sees."""
    if chat:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return f"Question: {prompt}\nAnswer:"


def format_pair(tokenizer, prompt: str, response: str, chat: bool, add_eos: bool = True) -> tuple[str, str]:
    """(prompt text, response text) exactly as TRL's SFT/DPO build prompt–completion data: with a chat template
    the response is the full transcript minus the prompt (so it carries the template's end-of-turn tokens);
    without one it is " " + the raw response plus EOS (:func:`completion_text`)."""
    prompt_text = format_prompt(tokenizer, prompt, chat)
    if not chat:
        return prompt_text, completion_text(response) + (tokenizer.eos_token if add_eos else "")
    full = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                          {"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(prompt_text):
        raise ValueError("the chat template does not render the prompt as a prefix of the full transcript")
    response_text = full[len(prompt_text):]
    return prompt_text, (response_text if add_eos else response)


def completion_text(response: str) -> str:
    """A response as the completion of a plain (non-chat) prompt: after "Answer:" it starts with a space."""
    return " " + response


def encode_pair(tokenizer, prompt_text: str, response_text: str) -> tuple[list[int], list[int]]:
    """Token ids of an already-formatted prompt and response as TRL's SFT and DPO tokenize them: the prompt and
    prompt + response are tokenized jointly and the response is what follows their common prefix, so a token that
    merges across the boundary counts as the response's and scoring sees exactly the tokens training sees."""
    prompt_ids = tokenizer(prompt_text)["input_ids"]
    full_ids = tokenizer(prompt_text + response_text)["input_ids"]
    n = common_prefix_length(prompt_ids, full_ids)
    if n == len(full_ids):
        raise ValueError(f"empty response after tokenization for prompt {prompt_text[-60:]!r}")
    return full_ids[:n], full_ids[n:]


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] without materializing the full log-softmax (fp32)."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded token ids, their attention mask and the position ids rebuilt from it (a padded row sees the
    positions of the unpadded sequence)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, sequence in enumerate(sequences):
        ids[i, width - len(sequence):] = torch.tensor(sequence)
        mask[i, width - len(sequence):] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def collate_left(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad (prompt_ids, response_ids) pairs; returns input_ids, attention_mask, position_ids and the
    right-aligned response ids / mask of width max_response_len."""
    input_ids, attention_mask, position_ids = left_pad([p + r for p, r in pairs], pad_id)
    response_ids, response_mask, _ = left_pad([r for _, r in pairs], pad_id)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
            "response_ids": response_ids, "response_mask": response_mask.bool()}


def batch_response_logprobs(model, batch: dict[str, torch.Tensor], prefix=None) -> torch.Tensor:
    """Per-token response log-probs for one collated batch: shape (B, max_response_len), 0 where masked.

    ``prefix`` optionally continues every row from a cached prefix (Nuggets' demonstration):
    ``(past_key_values, prefix_attention_mask (B, P), prefix_lengths (B,))``.  Rows are then laid out as
    [prefix | left pad | prompt | response], the pads masked out and positions continuing from the prefix.
    """
    logits = response_logits(model, batch, prefix)
    logp = token_logprobs(logits, batch["response_ids"].to(logits.device))
    return logp.masked_fill(~batch["response_mask"].to(logits.device), 0.0)


def response_logits(model, batch: dict[str, torch.Tensor], prefix=None) -> torch.Tensor:
    """The logits that predict each response token of one collated batch (:func:`batch_response_logprobs`):
    shape (B, max_response_len, vocabulary), the LM head run over the response positions only."""
    device = next(model.parameters()).device
    resp_width = batch["response_ids"].shape[1]
    attention_mask, position_ids, cache = batch["attention_mask"], batch["position_ids"], None
    if prefix is not None:
        cache, prefix_mask, prefix_lengths = prefix
        attention_mask = torch.cat([prefix_mask, attention_mask], dim=1)
        position_ids = position_ids + prefix_lengths[:, None]
    out = model(input_ids=batch["input_ids"].to(device), attention_mask=attention_mask.to(device),
                position_ids=position_ids.to(device), past_key_values=cache, use_cache=cache is not None,
                logits_to_keep=resp_width + 1)
    return out.logits[:, :-1]


def prefix_cache(model, prefixes: list[list[int]], pad_id: int):
    """One forward over left-padded token prefixes: per-layer (keys, values), attention mask (B, P), lengths (B,).
    Rows continue from it through ``batch_response_logprobs(..., prefix=...)`` after the cache is tiled to them."""
    device = next(model.parameters()).device
    ids, mask, positions = left_pad(prefixes, pad_id)
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                use_cache=True, logits_to_keep=1)
    layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
    return layers, mask, mask.sum(-1)


def tiled_prefix(layers, mask: torch.Tensor, lengths: torch.Tensor, rows: int):
    """The ``prefix`` argument of :func:`batch_response_logprobs` with each cached row repeated ``rows`` times
    (consecutively), as a fresh cache: a forward pass appends to the cache it is given."""
    cache = DynamicCache([(k.repeat_interleave(rows, 0), v.repeat_interleave(rows, 0)) for k, v in layers])
    return cache, mask.repeat_interleave(rows, 0), lengths.repeat_interleave(rows, 0)


@torch.no_grad()
def shared_prompt_logprobs(model, prompts: list[list[int]], responses: list[list[list[int]]], pad_id: int, *,
                           batch_size: int = 16) -> list[list[np.ndarray]]:
    """Per-token log-probs of several responses to each prompt, the prompt encoded once: ``responses[i]`` holds
    the responses to ``prompts[i]`` (token ids); returns the same nesting of float32 arrays.

    One forward over all but the last token of a batch of prompts fills a KV cache; every response row continues
    from its prompt's cache as [prompt[:-1] | pad | prompt[-1] + response] (the last prompt token is re-fed so its
    logits score the first response token).  Equal to scoring each (prompt, response) on its own, at about half
    the cost when prompts are long and responses short (RewardRank's chosen/rejected pairs)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} response lists")
    if any(len(p) < 2 for p in prompts):
        raise ValueError("every prompt needs at least 2 tokens (all but the last one are cached)")
    if len({len(r) for r in responses}) > 1:
        raise ValueError("shared_prompt_logprobs needs the same number of responses for every prompt")
    rows = len(responses[0]) if responses else 0
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    results: list[list[np.ndarray]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        layers, mask, lengths = prefix_cache(model, [prompts[i][:-1] for i in index], pad_id)
        batch = collate_left([([prompts[i][-1]], r) for i in index for r in responses[i]], pad_id)
        logp = batch_response_logprobs(model, batch, prefix=tiled_prefix(layers, mask, lengths, rows)).cpu().numpy()
        for k, i in enumerate(index):
            for j, response in enumerate(responses[i]):
                row = logp[k * rows + j]
                results[i].append(row[len(row) - len(response):])
    return results


@torch.no_grad()
def pair_logprobs(model, pairs: list[tuple[list[int], list[int]]], pad_id: int, *, batch_size: int = 16,
                  progress: bool = False) -> list[np.ndarray]:
    """Per-token log-probs of each response given its prompt, for (prompt_ids, response_ids) pairs: float32
    arrays in input order.  Batches are length-bucketed (sorted by total length)."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]), reverse=True)
    results: list[np.ndarray | None] = [None] * len(pairs)
    for start in tqdm(range(0, len(order), batch_size), disable=not progress, desc="log-probs", unit="batch"):
        index = order[start:start + batch_size]
        logp = batch_response_logprobs(model, collate_left([pairs[i] for i in index], pad_id)).cpu().numpy()
        for row, i in enumerate(index):
            results[i] = logp[row, logp.shape[1] - len(pairs[i][1]):]
    return results


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def response_logprobs(model, tokenizer, prompt_texts: list[str], response_texts: list[str], *,
                      batch_size: int = 16, progress: bool = False) -> list[np.ndarray]:
    """Per-token log-probs (float32 arrays, one per example, in input order) of each response given its prompt.

    ``prompt_texts`` / ``response_texts`` are already formatted (see :func:`format_pair`).
    """
    if len(prompt_texts) != len(response_texts):
        raise ValueError(f"{len(prompt_texts)} prompts but {len(response_texts)} responses")
    pairs = [encode_pair(tokenizer, p, r) for p, r in zip(prompt_texts, response_texts)]
    return pair_logprobs(model, pairs, pad_token_id(tokenizer), batch_size=batch_size, progress=progress)


def sequence_logprobs(model, tokenizer, prompts: list[str], responses: list[str], *, chat: bool,
                      add_eos: bool = True, batch_size: int = 16, progress: bool = False) -> dict[str, np.ndarray]:
    """Summed and mean response log-probs of raw (prompt, response) strings: ``{"sum", "mean", "n_tokens"}``."""
    texts = [format_pair(tokenizer, p, r, chat, add_eos) for p, r in zip(prompts, responses)]
    per_token = response_logprobs(model, tokenizer, [p for p, _ in texts], [r for _, r in texts],
                                  batch_size=batch_size, progress=progress)
    n_tokens = np.array([len(t) for t in per_token])
    total = np.array([float(t.sum()) for t in per_token])
    return {"sum": total, "mean": total / n_tokens, "n_tokens": n_tokens}
