"""`make gpu-check`: the GPU profile checked end to end at a small scale, with a report.

1. Every runnable study on the small `gpu_check` profile (the embedded model, so it needs no hub), each in its own
   process with STUDYKIT_DEVICE_CHECK set: a model call anywhere but the GPU fails the study.  Wall time from the
   manifest, peak GPU memory from the study's timings.json.
2. Throughput as a fraction of the device's measured matmul peak (best over sizes and repeats): the Nuggets scorer
   (fp32, as it scores) against the fp32 peak, SFT steps (bf16 autocast on GPUs) against the bf16 peak.
3. Nuggets scores of one small pool on the CPU and on the GPU: the largest one-shot / zero-shot difference and how
   many golden scores differ, with the paper's strict comparison and with a 1e-3 nats tie tolerance.

Writes results/gpu-check/report.md and report.json.  Without a GPU it stops with one line saying so;
``--device cpu --profile smoke`` runs the same plumbing on a CPU (the tests do).

    .venv/bin/python benchmarks/gpu_check.py [--device cuda] [--studies quickstart ...]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nuggets_precision import compare  # noqa: E402  (bf16 vs fp32 golden scores)
from nuggets_scoring import flops_per_pass  # noqa: E402  (the benchmark's FLOP count of one scoring pass)

from studykit.config import ROOT, compose, list_studies  # noqa: E402
from studykit.logprobs import pad_token_id  # noqa: E402
from studykit.models import copy_model, load_model_and_tokenizer  # noqa: E402
from studykit.nuggets import encode_anchor, encode_demonstration, golden_scores, one_shot_scores, score_pool  # noqa: E402
from studykit.testbed import build_testbed  # noqa: E402
from studykit.train import build_sft_trainer  # noqa: E402


def synchronized(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, sizes=(1024, 2048, 4096), repeats: int = 3) -> float:
    """Best matmul TFLOP/s over several sizes and repeats: the device's attainable peak for ``dtype``."""
    best = 0.0
    for size in sizes:
        a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
        a @ b
        inner = max(1, int(2e10 // (2 * size**3)) if device.type == "cuda" else 1)
        for _ in range(repeats):
            synchronized(device)
            start = time.perf_counter()
            for _ in range(inner):
                a @ b
            synchronized(device)
            best = max(best, 2 * size**3 * inner / (time.perf_counter() - start) / 1e12)
    return best


def run_studies(studies: list[str], profile: str, device: str, scratch: Path) -> list[dict]:
    """Each study in its own ``studykit run`` process under the device check."""
    env = {**os.environ, "STUDYKIT_RESULTS": str(scratch), "STUDYKIT_DEVICE_CHECK": device}
    studykit = Path(sys.executable).with_name("studykit")
    rows = []
    for study in studies:
        start = time.perf_counter()
        done = subprocess.run([str(studykit), "run", study, f"profile={profile}", f"device={device}", "--allow-dirty"],
                              env=env, capture_output=True, text=True)
        out = scratch / study / profile
        timings = json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}
        rows.append({"study": study, "ok": done.returncode == 0, "wall_s": round(time.perf_counter() - start, 1),
                     "peak_gpu_memory_gb": timings.get("peak_gpu_memory_gb"),
                     "error": None if done.returncode == 0 else done.stderr.strip().splitlines()[-1][:300]})
    return rows


def nuggets_inputs(cfg, tok, n_candidates: int, n_anchors: int):
    pool = build_testbed(cfg.data)["pool"]
    demos = [encode_demonstration(tok, r, "faithful") for r in pool[:n_candidates]]
    anchors = [encode_anchor(tok, r, "faithful") for r in pool[-n_anchors:]]
    return pool, demos, anchors


def scoring_fraction(model, tok, cfg, device: torch.device, peak_fp32: float, repeats: int = 3) -> dict:
    _, demos, anchors = nuggets_inputs(cfg, tok, 32, 8)
    times = []
    for _ in range(repeats):
        synchronized(device)
        start = time.perf_counter()
        one_shot_scores(model, demos, anchors, pad_token_id(tok), pairs_per_batch=256)
        synchronized(device)
        times.append(time.perf_counter() - start)
    tflops = flops_per_pass(model, demos, anchors) / min(times) / 1e12
    return {"scoring_tflops": tflops, "scoring_fraction_of_fp32_peak": tflops / peak_fp32,
            "scoring_pairs_per_s": len(demos) * len(anchors) / statistics.median(times)}


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (the device synchronized at both ends)."""

    def __init__(self, device: torch.device):
        self.device, self.times, self.start = device, [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        synchronized(self.device)
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        synchronized(self.device)
        self.times.append(time.perf_counter() - self.start)


def training_fraction(model, tok, cfg, device: torch.device, peak: float, steps: int = 6) -> dict:
    """Median SFT step time after the first (warm-up) step; 6 · params · tokens FLOPs per step."""

    records = build_testbed(cfg.data)["pool"]
    timer = StepTimer(device)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = build_sft_trainer(copy_model(model), tok, records, cfg, scratch, callbacks=[timer],
                                    max_steps=steps + 1)
        batch = next(iter(trainer.get_train_dataloader()))
        tokens_per_step = int(batch["attention_mask"].sum()) * int(cfg.train.gradient_accumulation_steps)
        trainer.train()
    step_s = statistics.median(timer.times[1:])
    n_params = sum(p.numel() for p in model.parameters())
    tflops = 6 * n_params * tokens_per_step / step_s / 1e12
    return {"sft_step_s": step_s, "sft_tokens_per_s": tokens_per_step / step_s, "sft_tflops": tflops,
            "sft_fraction_of_peak": tflops / peak}


def cpu_vs_gpu_golden(cfg, device: torch.device) -> dict:
    """The same small pool scored on the CPU and on ``device`` in fp32, and on ``device`` in bf16 autocast
    (benchmarks/nuggets_precision.py's comparison)."""
    scores = {}
    for where in ("cpu", device):
        model, tok = load_model_and_tokenizer(cfg.model, where)
        pool = build_testbed(cfg.data)["pool"][:40]
        scores[str(where)] = score_pool(model, tok, pool[:32], pool[32:], "faithful", progress=False)
    cpu, gpu = scores["cpu"], scores[str(device)]
    differ = {tol: int((golden_scores(cpu["one_shot"], cpu["zero_shot"], tol)
                        != golden_scores(gpu["one_shot"], gpu["zero_shot"], tol)).sum()) for tol in (0.0, 1e-3)}
    bf16 = score_pool(model, tok, pool[:32], pool[32:], "faithful", progress=False, precision="bfloat16")
    return {"max_abs_one_shot_diff": float(np.abs(cpu["one_shot"] - gpu["one_shot"]).max()),
            "max_abs_zero_shot_diff": float(np.abs(cpu["zero_shot"] - gpu["zero_shot"]).max()),
            "golden_scores_differing_strict": differ[0.0], "golden_scores_differing_tol_1e-3": differ[1e-3],
            "candidates": len(cpu["golden"]),
            "gpu_bf16_vs_fp32": compare(gpu, bf16)}   # what bf16 scoring would change, per tie tolerance


def report_markdown(report: dict) -> str:
    lines = [f"# GPU check — {report['device_name']}", "",
             f"Commit {report['commit']}, profile `{report['profile']}`, {report['date']}.", "",
             "| study | ok | wall (s) | peak GPU memory (GB) | error |", "|---|---|---|---|---|"]
    for row in report["studies"]:
        lines.append(f"| {row['study']} | {'yes' if row['ok'] else 'NO'} | {row['wall_s']} | "
                     f"{row['peak_gpu_memory_gb'] if row['peak_gpu_memory_gb'] is not None else '—'} | "
                     f"{row['error'] or ''} |")
    lines += ["", "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in report["throughput"].items()]
    lines += ["", "CPU vs GPU Nuggets scores: " + (json.dumps(report["cpu_vs_gpu"]) if report["cpu_vs_gpu"]
                                                    else "not run (the check ran on the CPU)")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--profile", default="gpu_check")
    parser.add_argument("--studies", nargs="*", help="default: every study `studykit run all` runs")
    parser.add_argument("--out", default=str(ROOT / "results" / "gpu-check"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu-check: no CUDA GPU is visible (torch.cuda.is_available() is False); nothing was run")
    cfg = compose(["study=nuggets", f"profile={args.profile}", f"device={args.device}"])
    with tempfile.TemporaryDirectory() as scratch:
        studies = run_studies(args.studies if args.studies is not None else list_studies(), args.profile,
                              args.device, Path(scratch))
    model, tok = load_model_and_tokenizer(cfg.model, device)
    small = (256, 512) if device.type == "cpu" else (1024, 2048, 4096)
    peak_fp32 = matmul_peak_tflops(device, torch.float32, small)
    peak_train = matmul_peak_tflops(device, torch.bfloat16, small) if device.type == "cuda" else peak_fp32
    throughput = {"fp32_peak_tflops": peak_fp32, "training_peak_tflops (bf16 on GPUs)": peak_train,
                  **scoring_fraction(model, tok, cfg, device, peak_fp32),
                  **training_fraction(model, tok, cfg, device, peak_train)}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    report = {"device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
              "commit": commit.strip(), "profile": args.profile, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "studies": studies, "throughput": throughput,
              "cpu_vs_gpu": cpu_vs_gpu_golden(cfg, device) if device.type == "cuda" else None}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(report))
    print(report_markdown(report))
    if not all(row["ok"] for row in studies):
        raise SystemExit(f"gpu-check: {sum(not r['ok'] for r in studies)} studies failed (see {out / 'report.md'})")
    return out


if __name__ == "__main__":
    main()
