"""Pilot of the RL studies' GRPO budget on DEV items only: from the SFT warm-up on the calibrated RL families, does GRPO
beat its placebo (every reward permuted across the batch's completions, studykit.placebo) of the same budget?

The RL studies (#31) need GRPO runs that act, so the budget (steps, learning rate) is chosen here, before they are
redesigned, on the dev split and a tuning seed that is no eval seed; eval items are never generated.  The warm-up
trains on the pool split, GRPO on the preference split's prompts (disjoint from the warm-up's).  Prints, per setting:
dev accuracy of GRPO and of its placebo, the paired gain with its 95% interval (:func:`studykit.tuning.dev_choice`),
the mean RL signal share (share of prompt groups with reward variance), the mean reward over the first and the last
quarter of the steps, seconds per step, and one dev reply per family of each arm.

    python benchmarks/pilot_grpo.py [hydra overrides] [--settings 36:2e-5 36:1e-4]

Runs go through the run cache (a second invocation reuses the warm-up and every setting it already trained).
"""
import argparse
import tempfile

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from studykit.models import copy_model
from studykit.rl import signal_log, train_grpo
from studykit.study import Study
from studykit.train import train_sft
from studykit.tuning import dev_choice, placebo_of

STUDY = ["data.dev_per_family=24", "data.eval_per_family=12"]   # rl_post_training's data, with more dev items
TUNING_SEED = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of study=rl_post_training (after the pilot's)")
    parser.add_argument("--settings", nargs="+", default=["24:2e-5", "24:1e-4"], help="GRPO max_steps:learning_rate")
    args = parser.parse_args()
    bad = [s for s in args.settings if len(s.split(":")) != 2]
    if bad:
        parser.error(f"--settings {' '.join(bad)}: expected max_steps:learning_rate (Hydra overrides go before "
                     "--settings)")
    session = Study.open("rl_post_training", None, tempfile.mkdtemp(prefix="grpo-pilot-"), STUDY + args.overrides)
    cfg, splits = session.cfg, session.testbed()
    prompts = [{**r, "response": r["chosen"]} for r in splits["preference"]]
    model, tokenizer = session.base_model()
    with session.run("warmup", TUNING_SEED, recipe=session.sft_recipe(splits["pool"]), keep_model=True,
                     split="dev") as start:
        if not start.done:
            start.trainer = train_sft(copy_model(model), tokenizer, splits["pool"], cfg, start.scratch,
                                      seed=TUNING_SEED, data_seed=TUNING_SEED)
    print(f"warm-up: {len(splits['pool'])} records, dev accuracy "
          f"{start.predictions[session.score].mean():.3f}, {start.seconds:.0f} s", flush=True)
    candidates, rows = {}, []
    for setting in args.settings:
        steps, lr = int(setting.split(":")[0]), float(setting.split(":")[1])
        name = f"grpo@{setting}"
        for condition, placebo in ((name, False), (placebo_of(name), True)):
            recipe = {**session.recipe("grpo:grpo", prompts, start=start.key, section="grpo", max_steps=steps,
                                       learning_rate=lr), "rl": OmegaConf.to_container(cfg.rl, resolve=True), "placebo": placebo}
            with session.run(condition, TUNING_SEED, recipe=recipe, split="dev") as run:
                if not run.done:
                    run.trainer = train_grpo(copy_model(start.model), tokenizer, prompts, cfg, run.scratch,
                                             seed=TUNING_SEED, data_seed=TUNING_SEED, placebo=placebo,
                                             max_steps=steps, learning_rate=lr)
            signal = pd.DataFrame(signal_log(run.log, condition, TUNING_SEED))
            reward = [float(row["reward"]) for row in run.log if "reward" in row]
            quarter = max(1, len(reward) // 4)
            rows.append({"condition": condition, "signal_share": signal["signal_share"].mean(),
                         "reward_first_q": np.mean(reward[:quarter]), "reward_last_q": np.mean(reward[-quarter:]),
                         "s_per_step": run.train_seconds / steps, "seconds": run.seconds})
            replies = run.predictions.groupby("family").head(2)
            print(f"\n{condition}: " + pd.DataFrame(rows[-1:]).round(3).to_string(index=False), flush=True)
            print(replies[["family", "reply", session.score]].to_string(index=False), flush=True)
        candidates[setting] = (name, placebo_of(name))
    table = dev_choice(session.dev_predictions, candidates, session.score)
    print("\nGRPO budget pilot on dev (tuning seed %d, %d dev items):" % (TUNING_SEED, len(splits["dev"])))
    print(table.round(3).to_string(index=False))
    print(pd.DataFrame(rows).round(3).to_string(index=False))
    dev = session.dev_predictions
    print("\ndev accuracy per family:")
    print(dev.pivot_table(index="condition", columns="family", values=session.score).round(3).to_string())


if __name__ == "__main__":
    main()
