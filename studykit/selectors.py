"""Instruction-data selectors: one registry, one function each.

A selector maps pool statistics to a *keep score* per item (higher = more worth keeping); the notebook then keeps
items above a threshold or the top-k.  Adding a selector is one function here and its line in :data:`SELECTORS`, plus, if it needs a new
statistic, one entry in :func:`pool_statistics`.

Statistics (all under the target model, with its chat template, as SFT will see the data):
  ``nll``          L(A|Q): mean negative log-likelihood of the response given the instruction
  ``nll_alone``    L(A):   mean NLL of the response with no instruction (an empty user turn)
  ``n_tokens``     response length in tokens
  ``golden``       Nuggets golden score (from :mod:`studykit.nuggets`)
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .logprobs import sequence_logprobs

def keep_scores(name: str, stats: dict, seed: int = 0) -> np.ndarray:
    if name not in SELECTORS:
        raise ValueError(f"unknown selector '{name}'; available: {', '.join(sorted(SELECTORS))}")
    return np.asarray(SELECTORS[name](stats, seed), dtype=float)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores (ties broken by position), sorted."""
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[:k])


def random_scores(stats: dict, seed: int) -> np.ndarray:
    """Uniform random keep scores: the random-subset baseline."""
    return np.random.default_rng(seed).random(len(stats["nll"]))


def full_data(stats: dict, seed: int) -> np.ndarray:
    """Every item ties: keeping all of them is the full-data baseline."""
    return np.ones(len(stats["nll"]))


def perplexity_low(stats: dict, seed: int) -> np.ndarray:
    """Keep the responses the model finds most likely (lowest perplexity exp L(A|Q))."""
    return -stats["nll"]


def perplexity_high(stats: dict, seed: int) -> np.ndarray:
    """Keep the responses the model finds least likely (highest perplexity): "hard" examples."""
    return stats["nll"]


def instruction_following_difficulty(stats: dict, seed: int) -> np.ndarray:
    """IFD = L(A|Q) / L(A) (Li et al., "From Quantity to Quality", NAACL 2024, Eq. 4; a ratio of losses).
    Cherry LLM keeps the highest IFD and discards IFD ≥ 1 (the instruction does not help): those tie last here
    (IFD > 0, so -1 ranks below every kept item)."""
    ifd = stats["nll"] / stats["nll_alone"]
    return np.where(ifd < 1.0, ifd, -1.0)


def grape_likelihood(stats: dict, seed: int) -> np.ndarray:
    """GRAPE (Zhang et al., arXiv 2502.04194): length-normalized log-likelihood of the response under the target
    model.  With one response per instruction this ranks items exactly as ``perplexity_low``; GRAPE's own use,
    choosing among several responses per instruction, lives with the SFT data transforms."""
    return -stats["nll"]


def response_length(stats: dict, seed: int) -> np.ndarray:
    """Keep the longest responses ("Long Is More for Alignment", Zhao et al., ICML 2024)."""
    return stats["n_tokens"].astype(float)


def nuggets_golden(stats: dict, seed: int) -> np.ndarray:
    """Nuggets golden score (Li et al., ACL 2024, Eq. 3): fraction of anchors the item helps as a one-shot
    demonstration."""
    return stats["golden"]


def pool_statistics(model, tokenizer, pool: list[dict], *, chat: bool, batch_size: int = 16) -> dict:
    """L(A|Q), L(A) and response length of every pool item in two batched passes."""
    responses = [r["response"] for r in pool]
    conditional = sequence_logprobs(model, tokenizer, [r["prompt"] for r in pool], responses, chat=chat,
                                    batch_size=batch_size)
    alone = sequence_logprobs(model, tokenizer, [""] * len(pool), responses, chat=chat, batch_size=batch_size)
    return {"nll": -conditional["mean"], "nll_alone": -alone["mean"], "n_tokens": conditional["n_tokens"]}


SELECTORS: dict[str, Callable[[dict, int], np.ndarray]] = {
    "random": random_scores,
    "full": full_data,
    "perplexity_low": perplexity_low,
    "perplexity_high": perplexity_high,
    "ifd": instruction_following_difficulty,
    "grape": grape_likelihood,
    "length": response_length,
    "nuggets": nuggets_golden,
}
