"""Output diversity of sampled replies, as measured by "Where does output diversity collapse in post-training?"
(arXiv 2604.16027; official ``src/evaluation/lighteval_diversity_metrics.py``), with quality on the same samples.

For K replies per prompt at temperature 1:

* **EAD** (expectation-adjusted distinct n-grams, Liu et al., 2022): distinct word n-grams divided by the number
  expected among as many uniform draws from a vocabulary of V, ``V·(1 − ((V − 1)/V)^C)`` for C n-grams, clipped to
  [0, 1]; averaged over n = 1..5.  As the official code: "." and newlines are removed and words split on
  whitespace, and V is the *tokenizer's* vocabulary size for every n (not Vⁿ).  Beside it, ``ead_unigram`` (n = 1
  alone): replies of one or two words have no 2–5-grams, so their averaged EAD is at most a fifth of the unigram
  term and mostly measures reply length;
* **embedding diversity**: 1 − the mean pairwise cosine similarity of the replies' sentence embeddings (the paper:
  all-mpnet-base-v2; here the offline all-MiniLM-L6-v2 of :func:`studykit.nuggets.minilm_embeddings`);
* **Vendi** (Friedman & Dieng, 2023): the exponential of the Shannon entropy of the eigenvalues of K/m, K the
  cosine kernel of the m replies' embeddings — the ``vendi-score`` package's ``score_K`` on that kernel.

*Per prompt*: the metric over the prompt's K replies (averaged over prompts by the caller, with CIs over prompts);
*across prompts*: the metric over each prompt's first reply.  Quality is the verifier's lenient judgement of each
sample (:func:`studykit.answers.judge`, the evaluator's rule); an open-ended prompt (no verifier) has none.

The **constrained random character** proxy task (CRC) of Selective Layer Restoration (arXiv 2602.06665) asks for a
random pick from an explicit validity set: ``length`` characters (default one) from a given alphabet.  A reply is
*valid* when its first word, stripped of punctuation and case, is such a string; the diversity objective is the share
of a prompt's K samples that are *distinct valid* strings — a model that always writes the same valid letter scores
1/K, one that never complies 0, uniform picks from 8 letters about 0.66 at K = 8.
"""
from __future__ import annotations

from typing import Callable

import random
import string
import time

import numpy as np
import pandas as pd

from .answers import judge
from .config import seed_everything
from .evaluate import generate

NGRAM_ORDERS = (1, 2, 3, 4, 5)


def word_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """The official tokenization: drop "." and newlines, split on whitespace; no n-gram when fewer than n words."""
    words = text.replace(".", "").replace("\n", "").split()   # "a\nb" is one word, as there
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)] if n >= 1 else []


def ead(replies: list[str], n: int, vocab_size: int) -> float:
    """Expectation-adjusted distinct n-grams of ``replies`` pooled (0.0 when they have no n-gram)."""
    if vocab_size < 2:
        raise ValueError(f"ead: vocab_size must be ≥ 2, got {vocab_size}")
    grams = [g for reply in replies for g in word_ngrams(reply, n)]
    if not grams:
        return 0.0
    v = float(vocab_size)
    expected = v * (1.0 - ((v - 1.0) / v) ** len(grams))
    return float(min(max(len(set(grams)) / expected, 0.0), 1.0))


def mean_ead(replies: list[str], vocab_size: int, orders=NGRAM_ORDERS) -> float:
    """EAD averaged over the n-gram orders (the paper's n = 1..5)."""
    return float(np.mean([ead(replies, n, vocab_size) for n in orders]))


def _unit(embeddings) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a (replies, dimensions) array, got shape {x.shape}")
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def embedding_diversity(embeddings) -> float:
    """1 − the mean cosine similarity over the distinct pairs of replies (0.0 for fewer than two)."""
    x = _unit(embeddings)
    if len(x) < 2:
        return 0.0
    similarity = x @ x.T
    return float(1.0 - similarity[np.triu_indices(len(x), k=1)].mean())


def vendi(embeddings) -> float:
    """The Vendi score of the cosine kernel of ``embeddings``: 1 when all replies are the same, m when the m
    replies are mutually orthogonal."""
    from vendi_score.vendi import score_K

    x = _unit(embeddings)
    return float(score_K(x @ x.T)) if len(x) > 1 else 1.0


def sample_replies(model, tokenizer, prompts: list[str], samples: int, *, chat: bool, max_new_tokens: int,
                   temperature: float = 1.0, batch_size: int = 16, progress: bool = True) -> list[list[str]]:
    """``samples`` replies per prompt at ``temperature`` (batched on the model's device, with a progress bar)."""
    if samples < 1:
        raise ValueError(f"sample_replies: samples must be ≥ 1, got {samples}")
    flat = generate(model, tokenizer, [p for p in prompts for _ in range(samples)], chat=chat,
                    max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress, do_sample=True,
                    temperature=temperature)
    return [flat[i * samples:(i + 1) * samples] for i in range(len(prompts))]


def diversity_per_prompt(records: list[dict], replies: list[list[str]], embed: Callable[[list[str]], np.ndarray],
                         vocab_size: int) -> pd.DataFrame:
    """One row per prompt: id, family, EAD (and its unigram term), embedding diversity, Vendi and quality (the share of its samples the
    verifier accepts, lenient; NaN for a prompt without a verifier), from one embedding pass over every reply."""
    if len(records) != len(replies) or any(len(r) != len(replies[0]) for r in replies):
        raise ValueError(f"diversity_per_prompt: need the same number of replies for each of {len(records)} records, "
                         f"got {[len(r) for r in replies][:5]}…")
    k = len(replies[0])
    embeddings = np.asarray(embed([text for group in replies for text in group]))
    rows = []
    for i, (record, group) in enumerate(zip(records, replies)):
        e = embeddings[i * k:(i + 1) * k]
        rows.append({"id": record["id"], "family": record["family"], "ead": mean_ead(group, vocab_size),
                     "ead_unigram": ead(group, 1, vocab_size),
                     "embedding_diversity": embedding_diversity(e), "vendi": vendi(e),
                     "quality": float(np.mean([judge(record, text).lenient for text in group]))
                     if "entry" in record else float("nan")})
    return pd.DataFrame(rows)


def measure_diversity(model, tokenizer, groups: dict[str, tuple[list[dict], int]], samples: int, *,
                      temperature: float, embed: Callable[[list[str]], np.ndarray], vocab_size: int, chat: bool,
                      batch_size: int, seed: int) -> dict:
    """``samples`` replies per prompt of each group (``{group: (records, max_new_tokens)}``) from ``model`` at
    ``temperature``, drawn from the random stream of ``seed`` → JSON values: ``per_prompt`` (the rows of
    :func:`diversity_per_prompt` with their ``group``), ``across`` (one row of :func:`diversity_across_prompts` per
    group), ``replies`` (per prompt, in group order) and ``seconds`` (sampling and measuring)."""
    model.eval()   # sampled inside a run's body, before the session puts the trained model in eval mode
    seed_everything(seed)
    start = time.perf_counter()
    records, replies, across = [], [], []
    for group, (items, max_new_tokens) in groups.items():
        sampled = sample_replies(model, tokenizer, [r["prompt"] for r in items], samples, chat=chat,
                                 max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size,
                                 progress=False)
        records += [{**r, "group": group} for r in items]
        replies += sampled
        across.append({"group": group, **diversity_across_prompts(sampled, embed, vocab_size)})
    table = diversity_per_prompt(records, replies, embed, vocab_size)
    table.insert(2, "group", [r["group"] for r in records])
    return {"per_prompt": table.to_dict(orient="records"), "across": across, "replies": replies,
            "seconds": time.perf_counter() - start}


def diversity_across_prompts(replies: list[list[str]], embed: Callable[[list[str]], np.ndarray],
                             vocab_size: int) -> dict[str, float]:
    """The metrics over each prompt's first reply (how different the answers to different prompts are)."""
    first = [group[0] for group in replies if group]
    e = np.asarray(embed(first))
    return {"ead": mean_ead(first, vocab_size), "ead_unigram": ead(first, 1, vocab_size),
            "embedding_diversity": embedding_diversity(e), "vendi": vendi(e)}


def crc_prompts(n: int, *, seed: int, split: str, alphabet_size: int = 8, length: int = 1) -> list[dict]:
    """``n`` CRC prompts, each with its own alphabet of ``alphabet_size`` distinct lowercase letters (seeded)."""
    if not 2 <= alphabet_size <= 26 or length < 1 or n < 1:
        raise ValueError(f"crc_prompts: need n ≥ 1, 2 ≤ alphabet_size ≤ 26, length ≥ 1; got n={n}, "
                         f"alphabet_size={alphabet_size}, length={length}")
    rng = random.Random(seed)
    records = []
    for i in range(n):
        alphabet = "".join(sorted(rng.sample(string.ascii_lowercase, alphabet_size)))
        letters = ", ".join(alphabet)
        prompt = (f"Choose one letter at random from: {letters}. Reply with that letter only." if length == 1 else
                  f"Write a random string of exactly {length} letters, each one of: {letters}. Reply with the string only.")
        records.append({"id": f"crc/{split}/{i}", "family": "crc", "prompt": prompt, "alphabet": alphabet,
                        "length": length})
    return records


def crc_answer(record: dict, reply: str) -> str | None:
    """The reply's valid string — its first word without surrounding punctuation, lowercased, when that is
    exactly ``length`` letters of the prompt's alphabet — or None."""
    words = reply.split()
    word = words[0].strip(string.punctuation + "“”‘’").lower() if words else ""
    return word if len(word) == record["length"] and set(word) <= set(record["alphabet"]) else None


def crc_scores(records: list[dict], replies: list[list[str]]) -> pd.DataFrame:
    """One row per CRC prompt: ``crc_valid`` (share of its samples that are valid), ``crc_distinct`` (distinct
    valid strings / samples: SLR's choice objective, which mixes validity and diversity) and
    ``crc_distinct_valid`` (distinct valid strings / valid samples: diversity among the valid ones, NaN when none
    is valid), so a change in validity is not read as one in diversity."""
    rows = []
    for record, group in zip(records, replies, strict=True):
        valid = [a for a in (crc_answer(record, reply) for reply in group) if a is not None]
        rows.append({"id": record["id"], "family": record["family"], "crc_valid": len(valid) / len(group),
                     "crc_distinct": len(set(valid)) / len(group),
                     "crc_distinct_valid": len(set(valid)) / len(valid) if valid else float("nan")})
    return pd.DataFrame(rows)
