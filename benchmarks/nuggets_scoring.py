"""Nuggets one-shot scoring: the per-pair reference loop vs the vectorized scorer, measured side by side.

    .venv/bin/python benchmarks/nuggets_scoring.py [--candidates 16 --anchors 8 --rounds 3] [hydra overrides]

For each demonstration length, the two scorers run alternately (``--rounds`` interleaved repeats on the same model
and (candidate, anchor) pairs); it prints their pairs/s (min and median time over the rounds), the ratio of the
medians, the largest score difference, and the fraction of this machine's fp32 matmul peak the vectorized scorer
reaches.  The peak is the best GFLOP/s over several matrix sizes and repeats, measured before and after the scoring
rounds, so a noisy peak cannot make a fraction exceed 100% (one that still does is reported as a measurement error).
Model FLOPs: 2 × non-embedding parameters per processed token + 2 × hidden × vocab per scored response token;
attention-score FLOPs are left out, so the fraction is a slight underestimate.

Then a labelled *estimate* (arithmetic on the measured numbers, not a measurement): hours to score a 52,002-item
pool against 100 anchors (the paper's Alpaca setting) with this model on this machine at the measured throughput,
and with a 7B model on one H100 at the same measured fraction of its dense bf16 peak.

KV reuse saves the demonstration's tokens and the LM head over non-response positions, so the attainable ratio grows
with the demonstration/anchor length ratio: ``--demo-items 1 4`` measures demonstrations of one testbed item (about
as long as an anchor) and of four consecutive items (closer to Alpaca's long responses against 200-token anchors).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from studykit.config import compose, device
from studykit.logprobs import pad_token_id
from studykit.models import load_model_and_tokenizer
from studykit.nuggets import encode_anchor, encode_demonstration, one_shot_scores, reference_one_shot
from studykit.testbed import build_testbed

PAPER_POOL, PAPER_ANCHORS = 52_002, 100
H100_BF16_DENSE_TFLOPS = 989.0  # NVIDIA H100 SXM datasheet, dense bf16
LLAMA_7B = {"body_params": 6.48e9, "hidden": 4096, "vocab": 32_000}


def matmul_peak_gflops(sizes=(512, 1024, 2048), repeats: int = 5) -> float:
    """Best fp32 matmul GFLOP/s over several sizes and repeats (the machine's attainable peak)."""
    best = 0.0
    for size in sizes:
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b  # warm-up
        inner = max(1, int(2e9 // (2 * size**3)))  # about 2 GFLOP per timing
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(inner):
                a @ b
            best = max(best, 2 * size**3 * inner / (time.perf_counter() - start) / 1e9)
    return best


def flops_per_pass(model, demos, anchors) -> float:
    embed = model.get_input_embeddings().weight
    body_params = sum(p.numel() for p in model.parameters()) - embed.numel()
    tokens = sum(len(d) for d in demos) + len(demos) * sum(len(q) + len(r) for q, r in anchors)
    head_tokens = len(demos) * sum(len(r) for _, r in anchors)
    return 2 * body_params * tokens + 2 * embed.numel() * head_tokens


def measure(model, tok, demos, anchors, pairs_per_batch: int, rounds: int) -> dict:
    """Interleaved rounds of the reference loop and the vectorized scorer on the same pairs."""
    times = {"reference": [], "vectorized": []}
    for _ in range(rounds):
        start = time.perf_counter()
        reference = reference_one_shot(model, demos, anchors)
        times["reference"].append(time.perf_counter() - start)
        start = time.perf_counter()
        vectorized = one_shot_scores(model, demos, anchors, pad_token_id(tok), pairs_per_batch=pairs_per_batch,
                                     progress=False)
        times["vectorized"].append(time.perf_counter() - start)
    n_pairs = len(demos) * len(anchors)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"demo_tokens": sum(len(d) for d in demos) / len(demos),
            "anchor_tokens": sum(len(q) + len(r) for q, r in anchors) / len(anchors),
            "response_tokens": sum(len(r) for _, r in anchors) / len(anchors),
            "reference_pairs_s": (n_pairs / max(times["reference"]), n_pairs / med["reference"]),
            "vectorized_pairs_s": (n_pairs / max(times["vectorized"]), n_pairs / med["vectorized"]),
            "vectorized_best_s": min(times["vectorized"]), "speedup": med["reference"] / med["vectorized"],
            "max_abs_diff": float(abs(vectorized - reference).max()),
            "flops": flops_per_pass(model, demos, anchors), "n_pairs": n_pairs}


def estimate_hours(row: dict, peak_fraction: float, model_name: str) -> list[str]:
    pairs = PAPER_POOL * PAPER_ANCHORS
    here = pairs / row["vectorized_pairs_s"][1] / 3600
    per_pair_tokens = row["demo_tokens"] / PAPER_ANCHORS + row["anchor_tokens"]  # demo KV computed once per batch
    flops_7b = pairs * (2 * LLAMA_7B["body_params"] * per_pair_tokens
                        + 2 * LLAMA_7B["hidden"] * LLAMA_7B["vocab"] * row["response_tokens"])
    h100 = flops_7b / (H100_BF16_DENSE_TFLOPS * 1e12 * peak_fraction) / 3600
    return [f"  {model_name} on this machine: {here:,.1f} h ({pairs:,} pairs at {row['vectorized_pairs_s'][1]:.1f} pairs/s)",
            f"  a 7B model on one H100 at the same {peak_fraction:.1%} of its {H100_BF16_DENSE_TFLOPS:.0f} TFLOP/s "
            f"dense bf16 peak, with these token lengths: {h100:,.2f} h"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--anchors", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats of both scorers")
    parser.add_argument("--mode", default="faithful")
    parser.add_argument("--pairs-per-batch", type=int, default=64)
    parser.add_argument("--demo-items", type=int, nargs="+", default=[1, 4],
                        help="testbed items concatenated into one demonstration")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    cfg = compose(["study=nuggets", *args.overrides])
    model, tok = load_model_and_tokenizer(cfg.model, device(cfg))
    pool = build_testbed(cfg.data)["pool"]
    step = max(1, len(pool) // (args.candidates + args.anchors))  # spread over the task families
    picked = pool[::step][: args.candidates + args.anchors]
    anchors = [encode_anchor(tok, r, args.mode) for r in picked[args.candidates:]]
    peak_before = matmul_peak_gflops()
    one_shot_scores(model, [encode_demonstration(tok, pool[0], args.mode)], anchors[:2], pad_token_id(tok),
                    progress=False)  # warm-up
    rows = {}
    for k in args.demo_items:
        demos = []
        for i in range(args.candidates):  # k consecutive pool items, joined, as one long demonstration
            items = [pool[(i * step + j) % len(pool)] for j in range(k)]
            joined = {"prompt": items[0]["prompt"], "response": "\n\n".join(
                [items[0]["response"]] + [f"{r['prompt']}\n{r['response']}" for r in items[1:]])}
            demos.append(encode_demonstration(tok, joined, args.mode))
        rows[k] = measure(model, tok, demos, anchors, args.pairs_per_batch, args.rounds)
    peak = max(peak_before, matmul_peak_gflops())
    print(f"model {cfg.model.name}, mode {args.mode}, {args.candidates} candidates x {len(anchors)} anchors = "
          f"{args.candidates * len(anchors)} pairs, {args.rounds} interleaved rounds, torch threads "
          f"{torch.get_num_threads()}, fp32 matmul peak {peak:.1f} GFLOP/s (best of sizes x repeats, before and after)")
    print(f"{'demo items':>10} {'demo tok':>8} {'anchor tok':>10} {'reference p/s':>15} {'vectorized p/s':>15} "
          f"{'ratio':>6} {'max|diff|':>9} {'of peak':>7}")
    print(f"{'':>10} {'':>8} {'':>10} {'min   median':>15} {'min   median':>15} {'median':>6}")
    for k, row in rows.items():
        fraction = row["flops"] / row["vectorized_best_s"] / 1e9 / peak
        flag = "  (above the measured peak: the peak measurement is off)" if fraction > 1 else ""
        print(f"{k:>10} {row['demo_tokens']:>8.0f} {row['anchor_tokens']:>10.0f} "
              f"{row['reference_pairs_s'][0]:>7.1f} {row['reference_pairs_s'][1]:>7.1f} "
              f"{row['vectorized_pairs_s'][0]:>7.1f} {row['vectorized_pairs_s'][1]:>7.1f} {row['speedup']:>5.2f}x "
              f"{row['max_abs_diff']:>9.1e} {fraction:>7.1%}{flag}")
    longest = rows[max(rows)]
    fraction = longest["flops"] / longest["vectorized_best_s"] / 1e9 / peak
    print(f"ESTIMATE (arithmetic on the numbers above, not a measurement), the paper's setting "
          f"{PAPER_POOL:,} items x {PAPER_ANCHORS} anchors, demonstrations of {max(rows)} item(s):")
    print("\n".join(estimate_hours(longest, min(fraction, 1.0), cfg.model.name)))
    print("target: ratio >= 5x")


if __name__ == "__main__":
    main()
