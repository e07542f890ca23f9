"""Pilot of the preference studies' DPO budget on DEV items only: from their shared SFT start on the calibrated
preference families, which learning rate, β and number of epochs make DPO's greedy answers beat its placebo (each
pair's chosen and rejected swapped by a fair coin, studykit.placebo) of the same budget?

preference_losses (c2d6438) and delta_learning (6e932bd) found DPO learning its pairs' likelihoods (held-out
implicit-reward accuracy 0.73 and 0.86 against placebos at 0.57 and 0.43) while its eval accuracy stayed its
placebo's, at 1 epoch of 96 pairs (12 steps) and lr 2e-5 or 1e-4.  The preference studies (#31) need a budget at which
DPO acts, so it is chosen here, before they are redesigned, on the dev split and a tuning seed that is no eval seed;
eval items are never generated.  Prints the dev choice table (:func:`studykit.tuning.dev_choice`: each setting's dev
accuracy, its placebo's, the paired gain with its 95% interval), the share of dev replies each run changed from the
SFT start, dev accuracy per family, and two dev replies per family of each run.

    python benchmarks/pilot_dpo.py [hydra overrides] [--settings 1:2e-5:0.1 3:2e-5:0.1 3:5e-6:0.1]

A setting is epochs:learning_rate:beta.  Runs go through the run cache: the SFT start is preference_losses' own, and a
second invocation reuses every setting it already trained.
"""
import argparse
import tempfile

import pandas as pd

from studykit.arms import Arm, Arms
from studykit.study import Study

TUNING_SEED = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of study=preference_losses")
    parser.add_argument("--settings", nargs="+", default=["1:2e-5:0.1", "3:2e-5:0.1", "3:5e-6:0.1"],
                        help="DPO budgets as epochs:learning_rate:beta")
    args = parser.parse_args()
    bad = [s for s in args.settings if len(s.split(":")) != 3]
    if bad:
        parser.error(f"--settings {' '.join(bad)}: expected epochs:learning_rate:beta (Hydra overrides go before "
                     "--settings)")
    session = Study.open("preference_losses", None, tempfile.mkdtemp(prefix="dpo-pilot-"), args.overrides)
    cfg, splits = session.cfg, session.testbed()
    held = int(cfg.study.heldout_pairs_per_family)
    by_family = {}
    for pair in splits["preference"]:
        by_family.setdefault(pair["family"], []).append(pair)
    train_pairs = [p for pairs in by_family.values() for p in pairs[:-held]]
    heldout_pairs = [p for pairs in by_family.values() for p in pairs[-held:]]
    model, _ = session.base_model()
    sft = session.sft_start("sft", splits["pool"], session.seeds[0], model)
    start = session.evaluate(sft.model, splits["dev"]).set_index("id")["reply"]
    arms = Arms(session, sft, {"dpo": Arm("sigmoid", train_pairs)}, heldout_pairs)
    grid = {}
    for setting in args.settings:
        epochs, lr, beta = setting.split(":")
        grid[f"ep={epochs},lr={lr},beta={beta}"] = {"num_train_epochs": int(epochs), "learning_rate": float(lr),
                                                   "beta": float(beta)}
    _, table = arms.tune("dpo", grid, TUNING_SEED)
    dev = session.dev_predictions
    print(f"\nDPO budget pilot on dev (tuning seed {TUNING_SEED}, {dev['id'].nunique()} dev items, "
          f"{len(train_pairs)} training pairs):")
    print(table.round(3).to_string(index=False))
    changed = dev.groupby("condition").apply(lambda g: (g.set_index("id")["reply"] != start.reindex(g["id"])).mean())
    print("\nshare of dev replies changed from the SFT start:")
    print(changed.round(3).to_string())
    print("\ndev accuracy per family:")
    print(dev.pivot_table(index="condition", columns="family", values=session.score).round(3).to_string())
    print("\ntwo dev replies per family and run:")
    print(dev.groupby(["condition", "family"]).head(2)[["condition", "family", "gold", "reply"]].to_string(index=False))
    print(session.runs.to_string(index=False))


if __name__ == "__main__":
    main()
