"""ESTIMATE, not a measurement: model-state memory per device of SFT and DPO for each profile's model, from the
parameter count in its config (`n_params_billion`) — fp32 master weights + gradients + AdamW moments (16 B/param),
plus DPO's frozen fp32 reference (4 B/param), divided over the profile's GPUs under FSDP full sharding
(conf/accelerate/fsdp_zephyr.yaml).  Activations are excluded (activation checkpointing keeps them small).

    .venv/bin/python benchmarks/memory_estimate.py
"""
from __future__ import annotations

from studykit.config import compose
from studykit.trainers import memory_estimate

PROFILES = {"embedded": ["profile=embedded"], "embedded_gemma": ["profile=embedded_gemma"], "gpu": ["profile=gpu"],
            "zephyr": ["study=rewardrank_zephyr", "profile=zephyr"]}


def main() -> None:
    print("ESTIMATE of model state per device (activations excluded)")
    print(f"{'profile':16} {'model':24} {'params':>8} {'devices':>7} {'SFT GB':>8} {'DPO GB':>8}")
    for name, overrides in PROFILES.items():
        cfg = compose(overrides)
        gpus = int(cfg.profile.get("gpus", 1))
        n_params = float(cfg.model.n_params_billion) * 1e9
        est = memory_estimate(n_params, shards=gpus)
        print(f"{name:16} {cfg.model.name:24} {n_params / 1e9:7.2f}B {gpus:7d} {est['sft_gb']:8.1f} {est['dpo_gb']:8.1f}")


if __name__ == "__main__":
    main()
