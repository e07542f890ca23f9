"""GRPO step time and rollout throughput: TRL's GRPOTrainer built directly vs the kit's GRPO, HPT, Prefix-RFT and
DUMP trainers, with the same settings, measured side by side.

    .venv/bin/python benchmarks/rl_step.py [--steps 4 --rounds 3] [hydra overrides, e.g. profile=smoke]

Every variant trains a fresh copy of the model for ``--steps`` optimizer steps with the embedded ``grpo`` settings
on the same prompts and seed; the first step of each run (compilation, allocator warm-up) is dropped.  Variants
run in interleaved rounds (each round starts at the next variant), so drift in the machine's speed hits all alike.
Printed per variant: the min and median over rounds of the mean step time (TRL's own ``step_time``: generation,
rewards, forward, backward and AdamW), rollout tokens/s (completion tokens over the time spent in generation), and
the step-time ratio to the kit's plain GRPO (target ≤ 1.10 for HPT and Prefix-RFT).  The untrained model solves
almost no prompt, so HPT trains nearly every group's demonstration: its ratio is the upper end of its cost.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import PrinterCallback
from trl import GRPOConfig, GRPOTrainer

from studykit.config import compose, device
from studykit.models import copy_model, load_model_and_tokenizer
from studykit.rl import build_grpo_trainer, grpo_dataset, reward_functions
from studykit.testbed import build_testbed
from studykit.trainers import training_args

VARIANTS = ("trl GRPOTrainer", "kit grpo", "kit hpt", "kit prefix_rft", "kit dump")
TARGETED = {"kit hpt", "kit prefix_rft"}


def build(variant: str, model, tokenizer, records, cfg, output_dir: str, steps: int):
    if variant == "trl GRPOTrainer":  # TRL's trainer, configured by hand with the same values
        funcs, weights = reward_functions(cfg.rl)
        args = training_args(GRPOConfig, cfg.grpo, output_dir, int(cfg.seed), {"reward_weights": weights, "max_steps": steps},
                     device(cfg))
        trainer = GRPOTrainer(model=copy_model(model), processing_class=tokenizer, reward_funcs=funcs, args=args,
                              train_dataset=grpo_dataset(records, tokenizer, bool(cfg.model.chat_template)))
        trainer.remove_callback(PrinterCallback)  # as the kit's trainers do: logs are not the benchmark's output
        return trainer
    return build_grpo_trainer(copy_model(model), tokenizer, records, cfg, output_dir,
                              method=variant.removeprefix("kit "), max_steps=steps)


def timed_generation(trainer) -> dict:
    """Wrap the trainer's rollout call: seconds spent generating and completion tokens produced."""
    totals = {"seconds": 0.0, "tokens": 0}
    inner = trainer._generate_single_turn

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        completions, logprobs = inner(*args, **kwargs)
        totals["seconds"] += time.perf_counter() - start
        # Prefix-RFT's hybrid rollouts return the demonstration prefix too: count only generated tokens
        totals["tokens"] += sum(len(c) for c in completions) - sum(getattr(trainer, "_prefix_lengths", []))
        return completions, logprobs

    trainer._generate_single_turn = wrapper
    return totals


def run(variant, model, tokenizer, records, cfg, steps: int) -> tuple[float, float]:
    """(mean step seconds after the first step, rollout tokens/s) of one fresh training run."""
    with tempfile.TemporaryDirectory() as scratch:
        trainer = build(variant, model, tokenizer, records, cfg, scratch, steps)
        totals = timed_generation(trainer)
        trainer.train()
    step_times = [row["step_time"] for row in trainer.state.log_history if "step_time" in row]
    return statistics.mean(step_times[1:] or step_times), totals["tokens"] / totals["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run (the first is not timed)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    cli = parser.parse_args()
    cfg = compose(["study=rl_post_training", "grpo.logging_steps=1", *cli.overrides])
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(cfg.model, device(cfg))
    records = [r for r in build_testbed(cfg.data)["pool"] if r["family"] in cfg.study.in_domain]
    results = {v: [] for v in VARIANTS}
    for round_ in range(cli.rounds):
        shift = round_ % len(VARIANTS)
        for variant in VARIANTS[shift:] + VARIANTS[:shift]:
            results[variant].append(run(variant, model, tokenizer, records, cfg, cli.steps))
    g = cfg.grpo
    print(f"{cfg.model.name}, {torch.get_num_threads()} threads, {g.per_device_train_batch_size // g.num_generations} "
          f"prompts x G={g.num_generations}, <= {g.max_completion_length} completion tokens, {cli.steps} steps "
          f"(first dropped) x {cli.rounds} interleaved rounds")
    reference = statistics.median(s for s, _ in results["kit grpo"])
    print(f"{'variant':<18}{'step s min':>11}{'median':>8}{'rollout tok/s':>15}{'vs kit grpo':>13}  target")
    for variant in VARIANTS:
        steps = [s for s, _ in results[variant]]
        rate = statistics.median(r for _, r in results[variant])
        ratio = statistics.median(steps) / reference
        target = ("≤ 1.10 " + ("met" if ratio <= 1.10 else "NOT met")) if variant in TARGETED else "-"
        print(f"{variant:<18}{min(steps):>11.2f}{statistics.median(steps):>8.2f}{rate:>15.1f}{ratio:>13.3f}  {target}")


if __name__ == "__main__":
    main()
