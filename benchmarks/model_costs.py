"""What a study costs with another model: SFT step, one-shot scoring and generation times of two models, side by side.

    .venv/bin/python benchmarks/model_costs.py [--models smollm2_135m gemma3_270m --rounds 3]

The models are loaded once and the three workloads run in interleaved rounds (model A, model B, A, B, …) on the
same testbed items, so a slower or busier machine slows both alike; it prints min and median seconds per workload
and model and the ratio of the medians (second model / first).  Workloads: one SFT step (forward, backward, AdamW)
on a batch of ``--batch`` items; one-shot scoring of ``--candidates`` × ``--anchors`` pairs (the Nuggets scorer);
greedy generation of ``--new-tokens`` tokens for ``--batch`` eval prompts.

Then a labelled *estimate*: the nuggets study's measured times with the first model
(``results/nuggets/embedded/timings.json``) scaled by the median ratios (golden scores by the scoring ratio,
training and evaluation by the mean of the SFT-step and generation ratios) — what the study would take with the
second model on this machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from studykit.config import ROOT, compose, device
from studykit.evaluate import generate
from studykit.logprobs import pad_token_id
from studykit.models import load_model_and_tokenizer
from studykit.nuggets import encode_anchor, encode_demonstration, one_shot_scores
from studykit.testbed import build_testbed


def sft_step(model, tok, records: list[dict]) -> None:
    """One causal-LM training step on prompt + response texts (loss over every token: the cost, not the recipe)."""
    model.train()
    batch = tok([r["prompt"] + "\n" + r["response"] for r in records], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-12)
    model(**batch, labels=labels).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()


def workloads(model, tok, pool, eval_set, args, chat: bool) -> dict:
    demos = [encode_demonstration(tok, r, "faithful") for r in pool[:args.candidates]]
    anchors = [encode_anchor(tok, r, "faithful") for r in pool[args.candidates:args.candidates + args.anchors]]
    return {
        "sft_step": lambda: sft_step(model, tok, pool[:args.batch]),
        "one_shot_scoring": lambda: one_shot_scores(model, demos, anchors, pad_token_id(tok), progress=False),
        "generation": lambda: generate(model, tok, [r["prompt"] for r in eval_set[:args.batch]], chat=chat,
                                       max_new_tokens=args.new_tokens, batch_size=args.batch),
    }


def nuggets_estimate(ratios: dict[str, float]) -> str:
    """The nuggets study's measured golden-score and train+eval seconds, scaled by the scoring ratio and by the mean
    of the SFT-step and generation ratios."""
    path = ROOT / "results" / "nuggets" / "embedded" / "timings.json"
    if not path.is_file():
        return f"  no {path.relative_to(ROOT)} to scale"
    timings = json.loads(path.read_text())
    scoring, training = timings["golden_score_seconds"], timings["train_eval_seconds"]
    scaled = scoring * ratios["one_shot_scoring"] + training * (ratios["sft_step"] + ratios["generation"]) / 2
    return (f"  nuggets study: {(scoring + training) / 60:.0f} min measured (golden scores {scoring / 60:.0f}, "
            f"training and evaluation {training / 60:.0f}) -> about {scaled / 60:.0f} min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs=2, default=["smollm2_135m", "gemma3_270m"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--anchors", type=int, default=12)
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    splits = build_testbed(compose([]).data)
    pool, eval_set = splits["pool"][::7], splits["eval"][::11]  # spread over the families
    runs = {}
    for name in args.models:
        cfg = compose([f"model={name}"])
        model, tok = load_model_and_tokenizer(cfg.model, device(cfg))
        runs[name] = workloads(model, tok, pool, eval_set, args, bool(cfg.model.chat_template))
        for work in runs[name].values():
            work()  # warm-up
    times = {name: {work: [] for work in runs[name]} for name in runs}
    for _ in range(args.rounds):
        for work in runs[args.models[0]]:
            for name in args.models:  # interleaved: A, B on the same workload, then the next workload
                start = time.perf_counter()
                runs[name][work]()
                times[name][work].append(time.perf_counter() - start)
    first, second = args.models
    print(f"{args.rounds} interleaved rounds, torch threads {torch.get_num_threads()}; batch {args.batch}, "
          f"scoring {args.candidates} x {args.anchors} pairs, generation {args.new_tokens} new tokens")
    print(f"{'workload':<18} {first + ' s (min/median)':>28} {second + ' s (min/median)':>28} {'ratio':>7}")
    ratios = {}
    for work in times[first]:
        a, b = times[first][work], times[second][work]
        ratios[work] = statistics.median(b) / statistics.median(a)
        print(f"{work:<18} {min(a):>13.2f} {statistics.median(a):>13.2f} {min(b):>13.2f} "
              f"{statistics.median(b):>13.2f} {ratios[work]:>6.2f}x")
    print(f"ESTIMATE (the committed {first} study timings scaled by these ratios, not a measurement) with {second}:")
    print(nuggets_estimate(ratios))


if __name__ == "__main__":
    main()
