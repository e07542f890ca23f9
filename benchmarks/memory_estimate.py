"""ESTIMATE, not a measurement: per-device model-state memory and GPU-hours of each profile, from the parameter counts
in its configs (`n_params_billion`, `architecture`) and the assumptions printed with the numbers.

Memory counts every model the study's notebook holds at its peak: the policy as it trains (full fine-tuning: fp32
master weights + gradients + AdamW moments, 16 B/param, with DPO's frozen reference; LoRA: the frozen base at its
dtype + the adapter's 16 B/param, no separate reference), the base model the notebook keeps to copy each arm from,
and the judge model when `eval.judge` is one.  The policy and the reference are divided over the profile's GPUs
(FSDP full sharding, conf/accelerate/fsdp_zephyr.yaml); the notebook's base copy and the judge are not (each
process holds them).  Activations are excluded (activation checkpointing keeps them small).

GPU-hours: FLOPs / (GPU peak x utilisation), with 6·N FLOPs per trained token for full fine-tuning and 4·N for
LoRA (no weight gradients of the base), 2·N per scored or generated token; the token counts are assumptions.
Decoding is memory-bound, not FLOP-bound, so the generation part is a lower bound
(HF generate; vLLM is not wired yet).  Nuggets' golden scores are computed in fp32 with TF32 off (studykit.nuggets.fp32_matmul), so they run at the GPU's
fp32 peak, not its bf16 tensor-core peak: the scoring column says what that costs.

    .venv/bin/python benchmarks/memory_estimate.py
"""
from __future__ import annotations

from studykit.config import compose
from studykit.trainers import lora_params, memory_estimate

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GPU_PEAK_FLOPS, FP32_PEAK_FLOPS = 989e12, 67e12   # an H100 SXM's dense bf16 tensor-core and plain fp32 peaks
UTILISATION = 0.35                                 # an assumed model-FLOPs utilisation
PROFILES = {"embedded": ["profile=embedded"], "embedded_gemma": ["profile=embedded_gemma"], "gpu": ["profile=gpu"],
            "paper_nuggets": ["study=nuggets", "profile=paper_nuggets"],
            "paper_zephyr": ["study=rewardrank", "profile=paper_zephyr"],
            "paper_zephyr_lora": ["study=rewardrank", "profile=paper_zephyr_lora"],
            "paper_math": ["study=rl_post_training", "profile=paper_math"]}
# ASSUMED work of one run of each paper profile (not measured): tokens trained (summed over arms and epochs), scored
# (Nuggets' one-shot pairs) and generated (evaluation replies), in billions.
WORK = {
    # 52,002 items x ~300 tokens x 3 epochs for full + placebo, + GS > 0.8 (~14.5%) and its random twin;
    # scoring: 52,002 x 100 anchors x ~150 anchor tokens after each demonstration's cached prefix (~300 tokens once
    # per candidate); 4 arms x 805 prompts x 512 new tokens
    "paper_nuggets": {"train": 52_002 * 300 * 3 * (2 + 2 * 0.145) / 1e9,
                      "score": (52_002 * 100 * 150 + 52_002 * 300) / 1e9, "generate": 4 * 805 * 512 / 1e9},
    # UltraChat 207,865 conversations x ~1,200 tokens, 1 epoch; ~16 checkpoints x (DPO + placebo) x 61,135 pairs x
    # ~1,000 tokens (chosen + rejected; DPO's reference forward ~1/3 more); 32 runs x 705 prompts x 1,024 new tokens
    "paper_zephyr": {"train": (207_865 * 1_200 + 16 * 2 * 61_135 * 1_000 * 4 / 3) / 1e9, "score": 0.0,
                     "generate": 32 * 705 * 1_024 / 1e9},
}
WORK["paper_zephyr_lora"] = WORK["paper_zephyr"]
# MATH 7,500 solutions x ~400 tokens x 1 epoch for SFT and its placebo; GRPO and its placebo: 200 steps x 128
# rollouts x ~700 tokens (prompt + ~600 generated), each generated token also decoded (2·N) and trained on (6·N);
# 5 models x 500 MATH-500 problems x ~600 new tokens
WORK["paper_math"] = {"train": (2 * 7_500 * 400 + 2 * 200 * 128 * 700) / 1e9, "score": 0.0,
                      "generate": (2 * 200 * 128 * 600 + 5 * 500 * 600) / 1e9}


def estimate(cfg) -> dict:
    model = cfg.model
    n_params, dtype = float(model.n_params_billion) * 1e9, BYTES[model.get("dtype", "float32")]
    gpus = int(cfg.profile.get("gpus", 1))
    adapter = lora_params(model.architecture, int(cfg.peft.r)) if cfg.get("peft") else None
    state = memory_estimate(n_params, dtype_bytes=dtype, shards=gpus, adapter_params=adapter)
    held = n_params * dtype / 1e9                       # the base model the notebook copies each arm from
    judge = cfg.eval.get("judge_model") if cfg.eval.get("judge", "verifier") != "verifier" else None
    judge_gb = float(judge.n_params_billion) * BYTES[judge.get("dtype", "float32")] if judge else 0.0
    return {"model": model.name, "params_b": n_params / 1e9, "adapter_m": (adapter or 0) / 1e6, "gpus": gpus,
            "sft_gb": state["sft_gb"] + held + judge_gb, "dpo_gb": state["dpo_gb"] + held + judge_gb,
            "judge": judge.name if judge else "—", "n_params": n_params, "lora": adapter is not None}


def gpu_hours(row: dict, work: dict) -> tuple[float, float]:
    """(GPU-hours of training and generation in bf16, GPU-hours of fp32 scoring)."""
    bf16 = ((4 if row["lora"] else 6) * work["train"] + 2 * work["generate"]) * row["n_params"] * 1e9
    fp32 = 2 * work["score"] * row["n_params"] * 1e9
    return bf16 / (GPU_PEAK_FLOPS * UTILISATION) / 3600, fp32 / (FP32_PEAK_FLOPS * UTILISATION) / 3600


def main() -> None:
    print("ESTIMATE of model state per device (activations excluded; every model the notebook holds) and of "
          f"GPU-hours (H100 bf16 peak {GPU_PEAK_FLOPS / 1e12:.0f} TFLOP/s at an assumed {UTILISATION:.0%} "
          "utilisation; token counts assumed, see WORK in this file; generation FLOPs are a lower bound)")
    print(f"{'profile':18} {'model':26} {'params':>7} {'LoRA':>7} {'GPUs':>4} {'SFT GB':>7} {'DPO GB':>7} "
          f"{'judge':34} {'GPU-h train+gen':>15} {'GPU-h score':>11}")
    for name, overrides in PROFILES.items():
        try:
            row = estimate(compose(overrides))
        except Exception as err:   # a profile this checkout does not have
            print(f"{name:18} not estimated: {err}")
            continue
        hours = "{:15.1f} {:11.1f}".format(*gpu_hours(row, WORK[name])) if name in WORK else f"{'—':>15} {'—':>11}"
        lora = f"{row['adapter_m']:6.1f}M" if row["lora"] else "      —"
        print(f"{name:18} {row['model']:26} {row['params_b']:6.2f}B {lora} {row['gpus']:4d} {row['sft_gb']:7.1f} "
              f"{row['dpo_gb']:7.1f} {row['judge']:34} {hours}")


if __name__ == "__main__":
    main()
