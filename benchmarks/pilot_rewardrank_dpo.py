"""Pilot of RewardRank's DPO budget on DEV items only: does DPO from an SFT checkpoint change more greedy dev replies
than its placebo (chosen/rejected swapped by a fair coin per pair) of the same budget?

The study (conf/study/rewardrank.yaml) needs DPO runs that act (issue: "post-DPO answers differ from pre-DPO beyond
the DPO placebo for most checkpoints"), so the smallest budget that does is chosen here, before the study runs, on
the dev split and SFT seed 0's checkpoints; eval items are never generated.  Prints one row per (checkpoint,
setting): own DPO pairs, dev replies changed by DPO and by its placebo, the exact McNemar p, dev accuracy before,
after DPO and after the placebo, and seconds.

    python benchmarks/pilot_rewardrank_dpo.py [train.max_steps=40 ...] [--settings 6:1e-5 6:3e-5 6:1e-4] [--steps 10]

Its first run (SFT seed 0, stopped after the step-5 checkpoint): conf/study/rewardrank.yaml, above ``dpo:``.
"""
import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from studykit.models import copy_model, load_checkpoint
from studykit.placebo import placebo_preference_pairs
from studykit.rewardrank import (changed_items, dpo_training_pairs, measure_checkpoint, placebo_change_test,
                                 preference_logprobs, sft_subsample, study_data)
from studykit.study import Study
from studykit.train import train_dpo, train_sft_with_checkpoints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of study=rewardrank")
    parser.add_argument("--settings", nargs="+", default=["6:1e-5", "6:3e-5", "6:1e-4"],
                        help="DPO budgets as max_steps:learning_rate")
    parser.add_argument("--steps", nargs="*", type=int, help="the SFT checkpoints to start from (default: all)")
    parser.add_argument("--sft-seed", type=int, default=0)
    parser.add_argument("--sft-dir", help="reuse the SFT checkpoints (checkpoint-<step>) an earlier pilot saved here")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="rr-pilot-")
    session = Study.open("rewardrank", None, scratch, args.overrides)
    cfg, study = session.cfg, session.cfg.study
    data = study_data(cfg, session.testbed())
    dev = session.testbed()["dev"]
    base_model, tokenizer = session.base_model()
    base_logps = preference_logprobs(base_model, tokenizer, data["metric_pairs"], chat=session.chat)
    if args.sft_dir:
        paths = sorted(Path(args.sft_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        checkpoints = pd.DataFrame({"step": [int(p.name.split("-")[1]) for p in paths], "path": [str(p) for p in paths]})
    else:
        train_items = sft_subsample(data["sft_train"], float(study.sft_subsample), args.sft_seed)
        start = time.perf_counter()
        _, checkpoints = train_sft_with_checkpoints(copy_model(base_model), tokenizer, train_items, data["sft_val"],
                                                    cfg, f"{scratch}/sft", n_checkpoints=study.checkpoints,
                                                    seed=args.sft_seed, data_seed=args.sft_seed)
        print(f"SFT: {time.perf_counter() - start:.0f} s, checkpoints in {scratch}/sft at "
              f"{checkpoints['step'].tolist()}", flush=True)
    rows = []
    for ckpt in checkpoints.itertuples():
        if args.steps and ckpt.step not in args.steps:
            continue
        measured = measure_checkpoint(
            load_checkpoint(ckpt.path, base_model), base_model, tokenizer, metric_pairs=data["metric_pairs"],
            base_logps=base_logps, dpo_prompts=data["dpo_pairs"], dev=dev, evaluate=session.evaluate,
            samples=int(study.self_sampled.samples), temperature=float(study.self_sampled.temperature),
            chat=session.chat, max_new_tokens=int(cfg.eval.max_new_tokens), batch_size=int(cfg.eval.batch_size),
            min_pairs=int(study.min_own_pairs), seed=10_000 * args.sft_seed + ckpt.step)
        pairs, used = dpo_training_pairs(study.dpo_pairs, measured["own_dpo_pairs"], data["dpo_pairs"])
        arms = {"dpo": pairs, "placebo": placebo_preference_pairs(pairs, seed=10_000 * args.sft_seed + ckpt.step)}
        for setting in args.settings:
            steps, lr = setting.split(":")
            after, seconds = {}, 0.0
            for arm, arm_pairs in arms.items():
                policy, reference = load_checkpoint(ckpt.path, base_model), load_checkpoint(ckpt.path, base_model)
                start = time.perf_counter()
                trainer = train_dpo(policy, reference, tokenizer, arm_pairs, cfg, f"{scratch}/dpo",
                                    seed=args.sft_seed, data_seed=args.sft_seed, max_steps=int(steps),
                                    learning_rate=float(lr))
                seconds += time.perf_counter() - start
                after[arm] = session.evaluate(trainer.model.eval(), dev)
            changed = {arm: changed_items(measured["pre_dpo_dev_replies"], after[arm]["reply"]) for arm in arms}
            test = placebo_change_test(changed["dpo"], changed["placebo"])
            rows.append({"step": ckpt.step, "setting": setting, "pairs": used,
                         "changed_dpo": test["changed_dpo"], "changed_placebo": test["changed_placebo"],
                         "p": test["changed_p"], "beyond_placebo": test["beyond_placebo"],
                         "dev_pre": measured["pre_dpo_dev_accuracy"], "dev_dpo": after["dpo"]["lenient"].mean(),
                         "dev_placebo": after["placebo"]["lenient"].mean(), "seconds_both": seconds})
            print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False), flush=True)
            sample = after["dpo"].assign(pre=measured["pre_dpo_dev_replies"]).groupby("family").head(1)
            print(sample[["family", "pre", "reply", "lenient"]].to_string(index=False), flush=True)
    print("\nDPO budget pilot on dev (SFT seed %d):" % args.sft_seed)
    print(pd.DataFrame(rows).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
