"""Training throughput of each SFT objective vs TRL's built-in ``loss_type="nll"``, measured side by side.

    .venv/bin/python benchmarks/sft_objectives.py [--steps 3 --rounds 3] [hydra overrides, e.g. profile=smoke]

Every objective trains its own copy of the model on the *same* batches (taken once from the nll trainer's
dataloader): forward + backward (``trainer.training_step``) + AdamW step.  Objectives are timed in interleaved rounds
so drift in the machine's speed hits all of them alike (each round starts at the next objective); tokens/s counts every attended token.  Printed: tokens/s and
the ratio to nll (target ≥ 0.95 for the weight-only objectives: sft core, dft, pear, otr; ASFT needs full logits and
a reference forward, so it is reported, not targeted).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from studykit.config import compose, device
from studykit.models import copy_model, load_model_and_tokenizer
from studykit.objectives import get_objective
from studykit.testbed import build_testbed
from studykit.train import build_sft_trainer

# label -> (objective or None for TRL's own nll, objective params)
CASES = {
    "trl nll": (None, {}),
    "trl dft": ("dft", {}),
    "core sft": ("sft", {}),
    "core otr": ("otr", {"beta": -0.1}),
    "core pear (sequence)": ("pear", {"level": "sequence"}),
    "core pear (suffix)": ("pear", {"level": "suffix"}),
    "core asft": ("asft", {"kl_coef": 0.1}),
}
WEIGHT_ONLY = {"trl dft", "core sft", "core otr", "core pear (sequence)", "core pear (suffix)"}


def build(label, model, tokenizer, pool, cfg, output_dir):
    objective, params = CASES[label]
    needs_reference = objective is not None and "full_logits" in get_objective(objective).needs
    trainer = build_sft_trainer(copy_model(model), tokenizer, pool, cfg, output_dir, objective=objective,
                                objective_params=params, ref_model=model if needs_reference else None)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1      # set by Trainer's own loop, which is bypassed here
    trainer.model.train()
    return trainer


def run_steps(trainer, batches) -> float:
    start = time.perf_counter()
    for batch in batches:
        trainer.training_step(trainer.model, dict(batch))
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per objective per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    cli = parser.parse_args()
    cfg = compose(cli.overrides)
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(cfg.model, device(cfg))
    pool = build_testbed(cfg.data)["pool"]
    with tempfile.TemporaryDirectory() as scratch:
        trainers = {label: build(label, model, tokenizer, pool, cfg, f"{scratch}/{i}") for i, label in enumerate(CASES)}
        loader = iter(trainers["trl nll"].get_train_dataloader())
        base_batches = [next(loader) for _ in range(cli.steps)]
        tokens = sum(int(b["attention_mask"].sum()) for b in base_batches)
        batches = {}
        for label, trainer in trainers.items():          # the same rows, plus PEAR's stored log-probs where needed
            if "behavior_log_probs" in trainer.train_dataset.column_names:
                loader = iter(trainer.get_train_dataloader())
                batches[label] = [next(loader) for _ in range(cli.steps)]
                assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches[label], base_batches))
            else:
                batches[label] = base_batches
        for label, trainer in trainers.items():          # warm-up
            run_steps(trainer, batches[label][:1])
        seconds = dict.fromkeys(CASES, 0.0)
        labels = list(CASES)
        for round_ in range(cli.rounds):                   # each round starts at a different objective
            for label in labels[round_ % len(labels):] + labels[:round_ % len(labels)]:
                seconds[label] += run_steps(trainers[label], batches[label])
    total = tokens * cli.rounds
    print(f"{cfg.model.name}, {torch.get_num_threads()} threads, batch {cfg.train.per_device_train_batch_size}, "
          f"{cli.steps} steps x {cli.rounds} rounds, {tokens / cli.steps:.0f} tokens per batch")
    print(f"{'objective':<22}{'tokens/s':>10}{'vs nll':>9}  target")
    for label in CASES:
        ratio = seconds["trl nll"] / seconds[label]
        target = ("≥ 0.95 " + ("met" if ratio >= 0.95 else "NOT met")) if label in WEIGHT_ONLY else "-"
        print(f"{label:<22}{total / seconds[label]:>10.0f}{ratio:>9.3f}  {target}")


if __name__ == "__main__":
    main()
