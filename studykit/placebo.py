"""Placebo arms: a trained arm must beat a placebo of the same budget whose learning signal is destroyed;
otherwise its change is optimizer drift.

A placebo run is the trained arm's run, step for step, on data whose signal is scrambled while its marginals are
kept, so the placebo sees the same texts and the same reward distribution:

* **SFT** (:func:`placebo_sft_records`): responses permuted across prompts within each family;
* **DPO and the other preference losses** (:func:`placebo_preference_pairs`): chosen and rejected swapped by a fair
  coin per pair;
* **GRPO and its hybrids** (:func:`permuted_rewards`, switched on by ``build_grpo_trainer(placebo=True)``): rewards
  permuted across the completions of each batch, so a completion's advantage has mean zero whatever it says.

SFT and preference placebos are plain data: pass them to ``train_sft`` / ``train_preference`` / ``train_dpo``.
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np


def placebo_sft_records(records: list[dict], seed: int) -> list[dict]:
    """Copies of ``records`` whose ``response`` (the SFT target, :func:`studykit.train.sft_dataset`) is a random
    permutation (numpy ``default_rng(seed)``) of the responses of the records of the same ``family``; every other
    key — prompt, ``messages``, answer, entry — stays.  Records without a family form one group.  The permutation
    is not a derangement: a record may keep its own response by chance (one per family on average), and in a family
    of few distinct responses (Yes / No) many get a response equal to their own."""
    rng = np.random.default_rng(seed)
    families: dict = {}
    for i, record in enumerate(records):
        families.setdefault(record.get("family"), []).append(i)
    placebo = [dict(record) for record in records]
    for indices in families.values():
        for target, source in zip(indices, rng.permutation(indices)):
            placebo[target]["response"] = records[source]["response"]
    return placebo


def placebo_preference_pairs(pairs: list[dict], seed: int) -> list[dict]:
    """Copies of ``pairs`` with ``chosen`` and ``rejected`` swapped in each pair by an independent fair coin (numpy
    ``default_rng(seed)``).  Every side-specific key ``chosen<suffix>`` swaps with its ``rejected<suffix>`` too;
    ``prompt`` and the rest (SELM's ``reference_response``) stay."""
    swaps = np.random.default_rng(seed).random(len(pairs)) < 0.5
    placebo = []
    for pair, swap in zip(pairs, swaps):
        pair = dict(pair)
        if swap:
            for key in [k for k in pair if k.startswith("chosen")]:
                other = "rejected" + key[len("chosen"):]
                if other in pair:
                    pair[key], pair[other] = pair[other], pair[key]
        placebo.append(pair)
    return placebo


def permuted_rewards(funcs: list[Callable], seed: int) -> list[Callable]:
    """TRL reward functions ``fn(completions, **columns) -> list[float]`` (same ``__name__`` and signature) that
    return ``funcs``' true rewards permuted across the batch.  One permutation per batch, drawn from a generator
    seeded once with ``seed`` when the first function is called (TRL calls them in order on every batch), is
    applied to every function, so the joint distribution of the reward components is kept and successive batches
    get different permutations.  Under multi-process training each process permutes its own completions."""
    rng = np.random.default_rng(seed)
    order: list[int] = []  # the current batch's permutation

    def permuted(index: int, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(completions, **columns):
            rewards = fn(completions, **columns)
            if index == 0:
                order[:] = rng.permutation(len(rewards)).tolist()
            if len(order) != len(rewards):
                raise ValueError(f"placebo reward '{fn.__name__}': {len(rewards)} rewards, but the batch's "
                                 f"permutation has {len(order)}; call the reward functions in order on each batch")
            return [rewards[i] for i in order]
        return wrapper

    return [permuted(i, fn) for i, fn in enumerate(funcs)]
