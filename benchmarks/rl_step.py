"""GRPO step time and rollout throughput: TRL's GRPOTrainer built directly vs the kit's GRPO, HPT, Prefix-RFT and
DUMP trainers, with the same settings, measured side by side; and (``--breakdown``) where one GRPO step's time goes.

    .venv/bin/python benchmarks/rl_step.py [--steps 4 --rounds 3] [hydra overrides, e.g. profile=smoke]
    .venv/bin/python benchmarks/rl_step.py --breakdown [--steps 6] [hydra overrides, e.g. grpo.num_generations=8]

``--breakdown`` trains the kit's GRPO once and splits each step (after the first) into: ``generate``'s prefill and
decoding (timestamps of a streamer passed to ``generate``: the prompt arrives before the prefill, each new token
after its decoding step; with the kit's shared prompt pass, :mod:`studykit.grpo`, ``generate`` prefills only the
last prompt token), the rest of rollout generation (the kit's shared prompt pass included), rewards, the no-grad log-prob passes (the old policy's and the
reference's, where the settings need them), the rest of TRL's input preparation (tokenization, advantages), the
policy's forward with gradients, its backward, and the optimizer step (clipping included; between the callbacks
``on_pre_optimizer_step`` and ``on_optimizer_step``).  It also prints the prompt and completion tokens per step and
the share of rollouts that ran to ``max_completion_length``.

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
from transformers import PrinterCallback, TrainerCallback
from transformers.generation.streamers import BaseStreamer
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


class _Clock(BaseStreamer, TrainerCallback):
    """Seconds per component of each optimizer step (module docstring), filled by the wrappers of :func:`_instrument`."""

    def __init__(self):
        self.steps: list[dict] = []
        self.current: dict = {}
        self._token_times: list[float] = []

    def add(self, component: str, seconds: float) -> None:
        self.current[component] = self.current.get(component, 0.0) + seconds

    def put(self, value):          # the streamer: the prompt once, then one call per decoding step
        self._token_times.append(time.perf_counter())

    def end(self):
        pass

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._optimizer_start = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.add("optimizer step", time.perf_counter() - self._optimizer_start)

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(self.current)
        self.current = {}


def _timed(clock: _Clock, component: str, function, when=lambda: True):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            if when():
                clock.add(component, time.perf_counter() - start)
    return wrapper


def _instrument(trainer, clock: _Clock, max_tokens: int) -> None:
    generate = trainer.model.generate

    def streamed_generate(*args, **kwargs):
        clock._token_times = []
        out = generate(*args, streamer=clock, **kwargs)
        times = clock._token_times + [time.perf_counter()]
        clock.add("prefill", times[1] - times[0])
        clock.add("decode", times[-1] - times[1])
        prompt_length = kwargs["input_ids"].shape[1]
        clock.add("prompt tokens", float(kwargs["attention_mask"].sum()))
        clock.add("rollouts", float(out.shape[0]))
        clock.add("decoding steps", float(out.shape[1] - prompt_length))
        return out

    def single_turn(*args, **kwargs):
        start = time.perf_counter()
        before = clock.current.get("prefill", 0.0) + clock.current.get("decode", 0.0)
        completions, logprobs = inner_turn(*args, **kwargs)
        after = clock.current.get("prefill", 0.0) + clock.current.get("decode", 0.0)
        clock.add("rest of generation", time.perf_counter() - start - (after - before))
        clock.add("completion tokens", float(sum(len(c) for c in completions)))
        clock.add("rollouts at the length limit", float(sum(len(c) >= max_tokens for c in completions)))
        return completions, logprobs

    inner_turn = trainer._generate_single_turn
    trainer.model.generate = streamed_generate
    trainer._generate_single_turn = single_turn
    trainer._calculate_rewards = _timed(clock, "rewards", trainer._calculate_rewards)
    trainer._get_per_token_logps_and_entropies = _timed(clock, "no-grad log-prob passes",
                                                        trainer._get_per_token_logps_and_entropies,
                                                        when=lambda: not torch.is_grad_enabled())
    trainer._prepare_inputs = _timed(clock, "input preparation (all)", trainer._prepare_inputs)
    trainer.compute_loss = _timed(clock, "policy forward", trainer.compute_loss)
    trainer.training_step = _timed(clock, "training step (all)", trainer.training_step)
    trainer.add_callback(clock)


PARTS = ("prefill", "decode", "rest of generation", "rewards", "no-grad log-prob passes", "rest of input preparation",
         "policy forward", "backward", "optimizer step")


def breakdown(model, tokenizer, records, cfg, steps: int) -> None:
    """Train the kit's GRPO for ``steps`` steps with every component timed; print the median seconds per step of
    each (the first step dropped) and its share of the whole."""
    clock = _Clock()
    with tempfile.TemporaryDirectory() as scratch:
        trainer = build("kit grpo", model, tokenizer, records, cfg, scratch, steps)
        _instrument(trainer, clock, int(cfg.grpo.max_completion_length))
        trainer.train()
    rows = []
    for step in clock.steps[1:] or clock.steps:
        generation = step.get("prefill", 0) + step.get("decode", 0) + step.get("rest of generation", 0)
        step["rest of input preparation"] = (step["input preparation (all)"] - generation - step.get("rewards", 0)
                                             - step.get("no-grad log-prob passes", 0))
        step["backward"] = step["training step (all)"] - step["input preparation (all)"] - step["policy forward"]
        rows.append(step)
    median = {k: statistics.median(r.get(k, 0.0) for r in rows) for k in (*PARTS, "prompt tokens", "rollouts",
              "decoding steps", "completion tokens", "rollouts at the length limit")}
    total = sum(median[p] for p in PARTS)
    g = cfg.grpo
    print(f"{cfg.model.name}, {torch.get_num_threads()} threads, {g.per_device_train_batch_size // g.num_generations} "
          f"prompts x G={g.num_generations} per step, <= {g.max_completion_length} completion tokens, beta {g.beta}, "
          f"num_iterations {g.num_iterations}; {len(rows)} steps timed (first dropped), medians")
    print(f"{'component':<28}{'s / step':>9}{'share':>8}")
    for part in PARTS:
        print(f"{part:<28}{median[part]:>9.3f}{median[part] / total:>8.1%}")
    print(f"{'whole step':<28}{total:>9.3f}")
    print(f"per step: {median['rollouts']:.0f} rollouts, {median['prompt tokens']:.0f} prompt tokens prefilled "
          f"({median['prompt tokens'] / median['rollouts']:.0f} per rollout), {median['decoding steps']:.0f} decoding "
          f"steps, {median['completion tokens']:.0f} completion tokens ({median['completion tokens'] / median['rollouts']:.1f} "
          f"per rollout), {median['rollouts at the length limit']:.0f} rollouts at the length limit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run (the first is not timed)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--breakdown", action="store_true", help="where one kit GRPO step's time goes")
    parser.add_argument("overrides", nargs="*")
    cli = parser.parse_args()
    cfg = compose(["study=rl_post_training", "grpo.logging_steps=1", *cli.overrides])
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(cfg.model, device(cfg))
    records = [r for r in build_testbed(cfg.data)["pool"] if r["family"] in cfg.study.in_domain]
    if cli.breakdown:
        breakdown(model, tokenizer, records, cfg, cli.steps)
        return
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
