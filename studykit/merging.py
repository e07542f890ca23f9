"""Weight-space operations on models of one architecture, each returning a new model (:func:`copy_model`):

* **Selective Layer Restoration** (SLR, arXiv 2602.06665): copy a contiguous range of transformer layers of the
  pre-trained model into the post-trained one — training-free, no extra inference cost;
* **model soups** (Wortsman et al., 2022, ICML): the *uniform* soup averages the weights of models fine-tuned from
  one initialization; the *greedy* soup adds models in order of decreasing dev score and keeps each only when the
  soup's dev score strictly improves;
* **Disperse-then-Merge** (DTM, arXiv 2405.13432): split the instruction data into k portions, fine-tune one model
  on each, average them (plain averaging: :func:`uniform_soup`); :func:`disperse` makes the split.
"""
from __future__ import annotations

import random
from typing import Callable

import torch

from .models import copy_model


def decoder_layers(model) -> torch.nn.ModuleList:
    """The transformer blocks of a causal LM (``model.get_decoder().layers``)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"{type(model).__name__}: no decoder layer list found (model.get_decoder().layers)")
    return layers


def layer_ranges(n_layers: int, block: int) -> list[tuple[int, int]]:
    """Every contiguous range ``(start, end)`` (end exclusive) of whole blocks of ``block`` layers (the last block
    may be shorter): SLR's search space at block resolution, ``b·(b + 1)/2`` ranges for ``b`` blocks."""
    if n_layers < 1 or block < 1:
        raise ValueError(f"layer_ranges: need n_layers ≥ 1 and block ≥ 1, got n_layers={n_layers}, block={block}")
    bounds = sorted({*range(0, n_layers, block), n_layers})
    return [(a, b) for i, a in enumerate(bounds) for b in bounds[i + 1:]]


def restore_layers(post, base, start: int, end: int):
    """SLR: a copy of ``post`` whose layers ``start .. end − 1`` carry ``base``'s weights (everything else,
    embeddings and head included, stays post-trained)."""
    target, source = decoder_layers(post), decoder_layers(base)
    if len(target) != len(source) or not 0 <= start < end <= len(target):
        raise ValueError(f"restore_layers: need 0 ≤ start < end ≤ {len(target)} layers (and models of one "
                         f"architecture, base has {len(source)}), got start={start}, end={end}")
    restored = copy_model(post)
    layers = decoder_layers(restored)
    with torch.no_grad():
        for i in range(start, end):
            layers[i].load_state_dict(source[i].state_dict())
    return restored


def uniform_soup(models: list):
    """The weight average of ``models`` (same architecture, same parameter names), as a new model; averaged in
    float64, so a soup of identical models is that model bit for bit."""
    if not models:
        raise ValueError("uniform_soup: no models to average")
    states = [m.state_dict() for m in models]
    if any(s.keys() != states[0].keys() for s in states):
        raise ValueError("uniform_soup: the models' parameter names differ (not one architecture)")
    soup = copy_model(models[0])
    with torch.no_grad():
        soup.load_state_dict({k: (torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype)
                                  if v.is_floating_point() else v) for k, v in states[0].items()})
    return soup


def greedy_soup(models: list, dev_score: Callable[[object], float]) -> tuple[object, list[int]]:
    """The greedy soup: models sorted by ``dev_score`` (higher is better), each added to the soup only when the
    soup's dev score strictly improves.  Returns the soup and the indices of the models in it."""
    if not models:
        raise ValueError("greedy_soup: no models")
    scores = [dev_score(m) for m in models]
    order = sorted(range(len(models)), key=lambda i: -scores[i])
    chosen, best = [order[0]], scores[order[0]]
    soup = copy_model(models[order[0]])
    for i in order[1:]:
        candidate = uniform_soup([models[j] for j in chosen + [i]])
        score = dev_score(candidate)
        if score > best:
            chosen, best, soup = chosen + [i], score, candidate
    return soup, chosen


def disperse(records: list[dict], portions: int, seed: int = 0) -> list[list[dict]]:
    """DTM's split: ``records`` shuffled with ``seed`` and dealt into ``portions`` parts of (nearly) equal size."""
    if not 1 <= portions <= len(records):
        raise ValueError(f"disperse: portions must be in [1, {len(records)}] (the records), got {portions}")
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    return [shuffled[i::portions] for i in range(portions)]
