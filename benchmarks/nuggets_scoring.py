"""Nuggets one-shot scoring: the per-pair reference loop vs the vectorized scorer, measured side by side.

    .venv/bin/python benchmarks/nuggets_scoring.py [--candidates 16 --anchors 8] [hydra overrides, e.g. profile=smoke]

Prints, for each demonstration length, pairs/s of both on the same model and (candidate, anchor) pairs, their ratio
(target ≥ 5×), the largest score difference, and the fraction of this machine's measured fp32 matmul throughput the
vectorized scorer reaches (model FLOPs: 2 × non-embedding parameters per processed token + 2 × hidden × vocab per
scored response token; attention-score FLOPs are left out, so the fraction is a slight underestimate).

KV reuse saves the demonstration's tokens and the LM head over non-response positions, so the attainable ratio grows
with the demonstration/anchor length ratio: ``--demo-items 1 4`` measures demonstrations of one testbed item (about
as long as an anchor) and of four consecutive items (closer to Alpaca's long responses against 200-token anchors).
"""
from __future__ import annotations

import argparse
import time

import torch

from studykit.config import compose
from studykit.logprobs import pad_token_id
from studykit.models import load_model_and_tokenizer
from studykit.nuggets import encode_anchor, encode_demonstration, one_shot_scores, reference_one_shot
from studykit.testbed import build_testbed


def matmul_gflops(size: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def measure(model, tok, demos, anchors, pairs_per_batch: int, peak: float) -> dict:
    start = time.perf_counter()
    reference = reference_one_shot(model, demos, anchors)
    t_ref = time.perf_counter() - start
    start = time.perf_counter()
    vectorized = one_shot_scores(model, demos, anchors, pad_token_id(tok), pairs_per_batch=pairs_per_batch)
    t_vec = time.perf_counter() - start
    embed = model.get_input_embeddings().weight
    body_params = sum(p.numel() for p in model.parameters()) - embed.numel()
    tokens = sum(len(d) for d in demos) + len(demos) * sum(len(q) + len(r) for q, r in anchors)
    head_tokens = len(demos) * sum(len(r) for _, r in anchors)
    flops = 2 * body_params * tokens + 2 * embed.numel() * head_tokens
    n_pairs = len(demos) * len(anchors)
    return {"demo_tokens": sum(len(d) for d in demos) / len(demos),
            "anchor_tokens": sum(len(q) + len(r) for q, r in anchors) / len(anchors),
            "reference_pairs_s": n_pairs / t_ref, "vectorized_pairs_s": n_pairs / t_vec, "speedup": t_ref / t_vec,
            "max_abs_diff": float(abs(vectorized - reference).max()), "peak_fraction": flops / t_vec / 1e9 / peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--anchors", type=int, default=8)
    parser.add_argument("--mode", default="faithful")
    parser.add_argument("--pairs-per-batch", type=int, default=64)
    parser.add_argument("--demo-items", type=int, nargs="+", default=[1, 4],
                        help="testbed items concatenated into one demonstration")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    cfg = compose(["study=nuggets", *args.overrides])
    model, tok = load_model_and_tokenizer(cfg.model)
    pool = build_testbed(cfg.data)["pool"]
    step = max(1, len(pool) // (args.candidates + args.anchors))  # spread over the task families
    picked = pool[::step][: args.candidates + args.anchors]
    anchors = [encode_anchor(tok, r, args.mode) for r in picked[args.candidates:]]
    peak = matmul_gflops()
    one_shot_scores(model, [encode_demonstration(tok, pool[0], args.mode)], anchors[:2], pad_token_id(tok))  # warm-up
    print(f"model {cfg.model.name}, mode {args.mode}, {args.candidates} candidates x {len(anchors)} anchors = "
          f"{args.candidates * len(anchors)} pairs, torch threads {torch.get_num_threads()}, "
          f"measured fp32 matmul peak {peak:.1f} GFLOP/s")
    print(f"{'demo items':>10} {'demo tok':>8} {'anchor tok':>10} {'reference':>12} {'vectorized':>12} {'ratio':>7} "
          f"{'max|diff|':>9} {'of peak':>7}")
    for k in args.demo_items:
        demos = []
        for i in range(args.candidates):  # k consecutive pool items, joined, as one long demonstration
            items = [pool[(i * step + j) % len(pool)] for j in range(k)]
            joined = {"prompt": items[0]["prompt"], "response": "\n\n".join(
                [items[0]["response"]] + [f"{r['prompt']}\n{r['response']}" for r in items[1:]])}
            demos.append(encode_demonstration(tok, joined, args.mode))
        row = measure(model, tok, demos, anchors, args.pairs_per_batch, peak)
        print(f"{k:>10} {row['demo_tokens']:>8.0f} {row['anchor_tokens']:>10.0f} {row['reference_pairs_s']:>8.1f} p/s "
              f"{row['vectorized_pairs_s']:>8.1f} p/s {row['speedup']:>6.2f}x {row['max_abs_diff']:>9.1e} "
              f"{row['peak_fraction']:>7.1%}")
    print("target: ratio >= 5x")


if __name__ == "__main__":
    main()
