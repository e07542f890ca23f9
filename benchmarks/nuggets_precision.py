"""Golden scores in bf16 against fp32, measured on the same pairs: how far bf16 autocast moves one-shot gains and
how many golden scores it changes at each tie tolerance (studykit.nuggets.score_pool's ``precision``).

    .venv/bin/python benchmarks/nuggets_precision.py [--candidates 48 --anchors 16] [hydra overrides]

On a CPU this measures the CPU's bf16 autocast; `make gpu-check` runs the same comparison on a GPU, whose bf16
kernels differ.  A tie tolerance for bf16 scoring is one under which the bf16 and fp32 golden scores agree.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from studykit.config import compose, device
from studykit.models import load_model_and_tokenizer
from studykit.nuggets import golden_scores, score_pool
from studykit.testbed import build_testbed

TOLERANCES = (0.0, 1e-3, 1e-2, 0.05, 0.1, 0.2, 0.5)


def compare(fp32: dict, bf16: dict, tolerances=TOLERANCES) -> dict:
    """How bf16 scores differ from fp32 ones on the same (candidate, anchor) pairs."""
    gain32 = fp32["one_shot"] - fp32["zero_shot"][None, :]
    gain16 = bf16["one_shot"] - bf16["zero_shot"][None, :]
    return {"max_abs_one_shot_diff": float(np.abs(fp32["one_shot"] - bf16["one_shot"]).max()),
            "max_abs_gain_diff": float(np.abs(gain32 - gain16).max()),
            "pairs_gain_sign_differs": float(np.mean((gain32 > 0) != (gain16 > 0))),
            **{f"golden_differs_tol_{tol:g}": float(np.mean(golden_scores(fp32["one_shot"], fp32["zero_shot"], tol)
                                                            != golden_scores(bf16["one_shot"], bf16["zero_shot"], tol)))
               for tol in tolerances}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--candidates", type=int, default=48)
    parser.add_argument("--anchors", type=int, default=16)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    cfg = compose(["study=nuggets", *args.overrides])
    model, tok = load_model_and_tokenizer(cfg.model, device(cfg))
    pool = build_testbed(cfg.data)["pool"][:args.candidates + args.anchors]
    candidates, anchors = pool[:args.candidates], pool[args.candidates:]
    scores, seconds = {}, {}
    for precision in ("float32", "bfloat16"):
        start = time.perf_counter()
        scores[precision] = score_pool(model, tok, candidates, anchors, cfg.study.nuggets.mode, progress=False,
                                       precision=precision)
        seconds[precision] = time.perf_counter() - start
    print(f"{cfg.model.name} on {device(cfg)}: {args.candidates} candidates x {args.anchors} anchors "
          f"({cfg.study.nuggets.mode}); fp32 {seconds['float32']:.1f} s, bf16 {seconds['bfloat16']:.1f} s")
    for key, value in compare(scores["float32"], scores["bfloat16"]).items():
        print(f"  {key:34} {value:.4g}")


if __name__ == "__main__":
    main()
