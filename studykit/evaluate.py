"""Greedy generation, per-item predictions judged by the one answer extractor, and accuracy baselines.

Each evaluated item gets a row: id, family, the reply, its first line, the extracted answer, strict and lenient
correctness (:mod:`studykit.answers`).  Accuracy tables report both, beside the chance and majority-answer
baselines of each family (:func:`answer_baselines`).
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .answers import judge
from .models import require_gpu_extra
from .logprobs import (collate_left, encode_pair, format_pair, format_prompt, pad_token_id, response_logits,
                       token_logprobs)

METRICS = ("strict", "lenient")
SKEWED = 0.5  # a family whose majority answer alone scores at least this is flagged


@torch.no_grad()
def generate_ids(model, tokenizer, prompts: list[str], *, chat: bool, max_new_tokens: int, batch_size: int = 16,
                 samples: int = 1, progress: bool = False, do_sample: bool = False, temperature: float = 1.0
                 ) -> list[list[list[int]]]:
    """The generated token ids of ``samples`` continuations per raw prompt (formatted with :func:`format_prompt`),
    each cut before its first end-of-sequence token; greedy unless ``do_sample``.  Batches (of ``batch_size``
    prompts) are length-sorted and left-padded on the model's device.  A greedy or sampled continuation's first
    ``b`` tokens are the continuation at a budget of ``b`` tokens, so one pass serves every smaller budget."""
    device = next(model.parameters()).device
    texts = [format_prompt(tokenizer, p, chat) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    outputs: list[list[list[int]]] = [[] for _ in texts]
    stops = set(_as_list(model.generation_config.eos_token_id)) | {tokenizer.eos_token_id}
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": None} if do_sample else \
        {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    try:
        for start in tqdm(range(0, len(order), batch_size), disable=not progress, desc="generate", unit="batch"):
            index = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in index], return_tensors="pt", padding=True,
                            add_special_tokens=True).to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 num_return_sequences=samples, **sampling)
            new = out[:, enc["input_ids"].shape[1]:].tolist()
            for row, ids in enumerate(new):
                cut = next((k for k, token in enumerate(ids) if token in stops), len(ids))
                outputs[index[row // samples]].append(ids[:cut])
    finally:
        tokenizer.padding_side = side
    return outputs


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def generate(model, tokenizer, prompts: list[str], *, chat: bool, max_new_tokens: int, batch_size: int = 16,
             progress: bool = False, do_sample: bool = False, temperature: float = 1.0) -> list[str]:
    """One continuation per raw prompt (:func:`generate_ids`), decoded with special tokens stripped."""
    ids = generate_ids(model, tokenizer, prompts, chat=chat, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       progress=progress, do_sample=do_sample, temperature=temperature)
    return tokenizer.batch_decode([sequences[0] for sequences in ids], skip_special_tokens=True)


VLLM_MEMORY_SHARE = 0.4   # of the GPU's memory vLLM may take beside the study's own models


def check_vllm(device: torch.device) -> None:
    """``eval.backend=vllm`` and ``grpo.use_vllm`` need a CUDA device and the ``vllm`` package."""
    require_gpu_extra("vLLM generation (eval.backend=vllm or grpo.use_vllm=true)", "vllm", device,
                      "eval.backend=hf and grpo.use_vllm=false")


def vllm_generate(model, tokenizer, prompts: list[str], *, chat: bool, max_new_tokens: int) -> list[str]:
    """Greedy replies to raw prompts through vLLM (Kwon et al., 2023, PagedAttention), the GPU path of
    ``eval.backend=vllm``: ``model`` is saved to a temporary directory and served by an offline ``vllm.LLM`` for
    this call; prompts are formatted as :func:`generate` formats them (:func:`studykit.logprobs.format_prompt`) and
    replies decoded with special tokens stripped, so the two backends differ only in their kernels."""
    import tempfile

    from vllm import LLM, SamplingParams

    texts = [format_prompt(tokenizer, p, chat) for p in prompts]
    with tempfile.TemporaryDirectory(prefix="vllm-") as directory:
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        engine = LLM(model=directory, dtype="bfloat16", gpu_memory_utilization=VLLM_MEMORY_SHARE, seed=0)
        outputs = engine.generate(texts, SamplingParams(temperature=0.0, max_tokens=max_new_tokens))
        del engine
    return [output.outputs[0].text for output in outputs]


def replies(model, tokenizer, prompts: list[str], *, backend: str, chat: bool, max_new_tokens: int,
            batch_size: int = 16) -> list[str]:
    """Greedy replies by ``backend``: ``hf`` (:func:`generate`, every device) or ``vllm`` (:func:`vllm_generate`,
    CUDA only)."""
    if backend == "vllm":
        return vllm_generate(model, tokenizer, prompts, chat=chat, max_new_tokens=max_new_tokens)
    return generate(model, tokenizer, prompts, chat=chat, max_new_tokens=max_new_tokens, batch_size=batch_size)


def judge_replies(records: list[dict], replies: list[str]) -> pd.DataFrame:
    """One row per (record, reply): id, family, gold, reply, first_line, extracted, strict, lenient."""
    rows = []
    for record, reply in zip(records, replies, strict=True):
        verdict = judge(record, reply)
        rows.append({"id": record["id"], "family": record["family"], "gold": record["answer"], "reply": reply,
                     "first_line": verdict.first_line, "extracted": verdict.extracted, "strict": verdict.strict,
                     "lenient": verdict.lenient})
    return pd.DataFrame(rows)


def evaluate_records(model, tokenizer, records: list[dict], *, chat: bool, max_new_tokens: int,
                     batch_size: int = 16, progress: bool = False) -> pd.DataFrame:
    """Greedy replies to ``records``' prompts, judged: see :func:`judge_replies`."""
    replies = generate(model, tokenizer, [r["prompt"] for r in records], chat=chat, max_new_tokens=max_new_tokens,
                       batch_size=batch_size, progress=progress)
    return judge_replies(records, replies)


def accuracy_by_family(predictions: pd.DataFrame, metric: str = "lenient") -> pd.Series:
    """Accuracy per family plus the macro average over families (``"mean"``)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    per_family = predictions.groupby("family")[metric].mean()
    return pd.concat([per_family, pd.Series({"mean": per_family.mean()})])


def answer_baselines(records: list[dict]) -> pd.DataFrame:
    """Per family: items, distinct gold answers, chance accuracy (a uniform guess among the distinct gold answers:
    1 / distinct), majority accuracy (always the most common gold answer), the most common answer, and ``skewed``
    when the majority answer alone scores ≥ 0.5.  The last row is the macro mean."""
    rows = []
    for family in dict.fromkeys(r["family"] for r in records):
        answers = Counter(r["answer"] for r in records if r["family"] == family)
        n = sum(answers.values())
        common, count = answers.most_common(1)[0]
        rows.append({"family": family, "items": n, "distinct_answers": len(answers), "chance": 1 / len(answers),
                     "majority": count / n, "majority_answer": common, "skewed": count / n >= SKEWED})
    table = pd.DataFrame(rows)
    mean = {"family": "mean", "items": int(table["items"].sum()), "chance": table["chance"].mean(),
            "majority": table["majority"].mean(), "skewed": bool(table["skewed"].any())}
    return pd.concat([table, pd.DataFrame([mean])], ignore_index=True)


@torch.no_grad()
def gold_token_scores(model, tokenizer, records: list[dict], *, chat: bool, batch_size: int = 16) -> pd.DataFrame:
    """Per record: ``id``, ``family``, ``gold_token_accuracy`` — the share of its gold answer's tokens (the end of
    turn left out) that are the model's argmax given the prompt and the gold tokens before it: teacher-forced
    greedy agreement — and ``gold_logprob``, their mean log-probability.  How much of an unseen task a model has
    learned where its greedy accuracy is 0 (prob_objectives' model-weak families; "Beyond Log Likelihood", arXiv
    2510.00526, judges figfont by accuracy).  Token accuracy favours neither NLL, whose loss is the
    log-probability, nor −p, whose loss is the probability; the log-probability is the prior the paper's
    model-capability continuum is about."""
    model.eval()   # scored inside a run's body, before the session puts the trained model in eval mode
    pad = pad_token_id(tokenizer)
    pairs = [encode_pair(tokenizer, *format_pair(tokenizer, r["prompt"], r["response"], chat, add_eos=False))
             for r in records]
    accuracy, logprob = np.zeros(len(pairs)), np.zeros(len(pairs))
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]), reverse=True)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        batch = collate_left([pairs[i] for i in index], pad)
        logits = response_logits(model, batch)
        targets, mask = batch["response_ids"].to(logits.device), batch["response_mask"].to(logits.device)
        tokens = mask.sum(-1)
        accuracy[index] = (((logits.argmax(-1) == targets) & mask).sum(-1) / tokens).cpu().numpy()
        logprob[index] = (token_logprobs(logits, targets).masked_fill(~mask, 0.0).sum(-1) / tokens).cpu().numpy()
    return pd.DataFrame({"id": [r["id"] for r in records], "family": [r["family"] for r in records],
                         "gold_token_accuracy": accuracy, "gold_logprob": logprob})


def accuracy_table(predictions: dict[str, pd.DataFrame], records: list[dict]) -> pd.DataFrame:
    """Strict and lenient accuracy per family (+ macro mean) for each named model, beside the chance and majority
    (best constant answer) baselines of the same eval items, and the two columns that tell a skill from a
    constant: the share of the model's most common extracted answer (``modal share``) and its lenient accuracy on
    the items whose gold is not the family's majority answer (``lenient off-majority``).  The guard that acts on
    them is :func:`studykit.guards.family_profile`."""
    baselines = answer_baselines(records).set_index("family")
    table = baselines[["items", "chance", "majority", "skewed"]].copy()
    majority_of = baselines["majority_answer"].dropna()
    for name, frame in predictions.items():
        for metric in METRICS:
            table[f"{name} {metric}"] = accuracy_by_family(frame, metric)
        answers = frame["extracted"].fillna("").astype(str).str.strip()
        modal = answers.groupby(frame["family"]).agg(lambda a: a.value_counts(normalize=True).iloc[0])
        table[f"{name} modal share"] = pd.concat([modal, pd.Series({"mean": modal.mean()})])
        off = frame[frame["gold"].astype(str) != frame["family"].map(majority_of).astype(str)]
        table[f"{name} lenient off-majority"] = accuracy_by_family(off, "lenient")
    return table.rename_axis("family").reset_index()
