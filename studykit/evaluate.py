"""Greedy generation + verifier scoring: accuracy per task family on held-out testbed items.

An answer is the first non-empty line of the generated text; it is *correct* when the family's reasoning-gym
verifier gives it the full score (1.0).  The verifier's partial credit is kept as ``score``.
"""
from __future__ import annotations

import pandas as pd
import torch
from tqdm import tqdm

from .logprobs import format_prompt
from .testbed import verify


def extract_answer(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, chat: bool, max_new_tokens: int, batch_size: int = 16,
             progress: bool = False) -> list[str]:
    """Greedy continuations of raw prompts (formatted with :func:`format_prompt`), special tokens stripped."""
    device = next(model.parameters()).device
    texts = [format_prompt(tokenizer, p, chat) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    outputs: list[str] = [""] * len(texts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in tqdm(range(0, len(order), batch_size), disable=not progress, desc="generate", unit="batch"):
            index = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in index], return_tensors="pt", padding=True,
                            add_special_tokens=True).to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
            decoded = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for i, text in zip(index, decoded):
                outputs[i] = text
    finally:
        tokenizer.padding_side = side
    return outputs


def evaluate_records(model, tokenizer, records: list[dict], *, chat: bool, max_new_tokens: int,
                     batch_size: int = 16, progress: bool = False) -> pd.DataFrame:
    """One row per record: id, family, generation, answer extracted, verifier score, correct."""
    generations = generate(model, tokenizer, [r["prompt"] for r in records], chat=chat,
                           max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    rows = []
    for record, text in zip(records, generations):
        answer = extract_answer(text)
        score = verify(record["family"], answer, record["entry"])
        rows.append({"id": record["id"], "family": record["family"], "generation": text, "answer": answer,
                     "gold": record["answer"], "score": score, "correct": score >= 1.0})
    return pd.DataFrame(rows)


def accuracy_by_family(predictions: pd.DataFrame) -> pd.Series:
    """Accuracy per family plus the macro average over families (``"mean"``)."""
    per_family = predictions.groupby("family")["correct"].mean()
    return pd.concat([per_family, pd.Series({"mean": per_family.mean()})])
