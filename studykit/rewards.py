"""Verifiable rewards of RL on the testbed and on math data (RLVR): one function per reward, listed in :data:`REWARDS`.

``rl.rewards`` in the config maps reward names to weights.  A reward reads TRL's completions and the prompt rows'
``family`` and ``entry`` columns (:func:`studykit.rl.grpo_dataset`) and returns one score per completion.
"""
from __future__ import annotations

import functools
from typing import Callable

from .answers import extract_answer, first_line, judge


def completion_texts(completions: list) -> list[str]:
    """The reply text of each completion: TRL passes conversational completions as message lists."""
    return [c[-1]["content"] if isinstance(c, list) else c for c in completions]


def verifier(completions: list, family: list[str], entry: list[str], **_) -> list[float]:
    """1.0 when the reply states the right final answer anywhere (the lenient judgement of
    :func:`studykit.answers.judge`, which the evaluator uses too: a testbed family's verifier, Math-Verify for math
    records), else 0.0: the verifiable reward of RLVR (Lambert et al., 2024, Tülu 3 §6; DeepSeekMath's rule-based
    reward)."""
    return [float(judge({"family": f, "entry": e}, reply).lenient)
            for reply, f, e in zip(completion_texts(completions), family, entry, strict=True)]


def answer_format(completions: list, family: list[str], **_) -> list[float]:
    """1.0 when the reply is one non-empty line holding nothing but an answer in the family's format (what the
    extractor takes from that line is the whole line, up to case and a final full stop), right or wrong."""
    def bare(text: str) -> str:
        return text.rstrip(".").lower()

    scores = []
    for reply, f in zip(completion_texts(completions), family, strict=True):
        line = first_line(reply)
        one_line = bool(line) and line == reply.strip()
        scores.append(float(one_line and bare(extract_answer(f, line)) == bare(line)))
    return scores


REWARDS: dict[str, Callable[..., list[float]]] = {
    "verifier": verifier,
    "format": answer_format,
}


def reward_functions(rl_cfg) -> tuple[list[Callable], list[float]]:
    """The reward functions and weights of ``rl.rewards`` (weights of 0 are left out), each function named as its
    registry entry (TRL logs a reward under its function's name: ``rewards/verifier/mean``)."""
    weights = {name: float(w) for name, w in rl_cfg["rewards"].items() if float(w) != 0.0}
    unknown = set(weights) - set(REWARDS)
    if unknown or not weights:
        raise ValueError(f"rl.rewards: {sorted(unknown) or 'no non-zero weight'}; expected weights for "
                         f"{sorted(REWARDS)}")
    return [_named(REWARDS[name], name) for name in weights], list(weights.values())


def _named(fn: Callable, name: str) -> Callable:
    @functools.wraps(fn)
    def reward(*args, **kwargs):
        return fn(*args, **kwargs)
    reward.__name__ = name
    return reward
