"""Preference arms beside their placebos: what each arm and placebo trains on, and the run a recipe names (the same
run in every study that asks for it, so studies share it through the run cache)."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from studykit.arms import SFT, Arm, Arms
from studykit.config import compose
from studykit.study import Study


@pytest.fixture
def session(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDYKIT_CACHE", str(tmp_path / "cache"))
    config = OmegaConf.to_container(compose(["study=preference_losses", "profile=smoke", "study.heldout_pairs_per_family=1"]), resolve=True)
    session = Study.open("preference_losses", config, str(tmp_path / "out"))
    session.start_model, _ = session.base_model()
    return session


class _Start:   # a kept start run: its key and model are all the arms read of it
    key = "start-key"

    def __init__(self, session):
        self.model = session.start_model


def _pairs(n: int = 6) -> list[dict]:
    return [{"id": f"p{i}", "family": "lcm" if i % 2 else "leg_counting", "prompt": f"q{i}", "chosen": f"c{i}",
             "rejected": f"r{i}"} for i in range(n)]


def test_an_arm_trains_on_its_pairs_and_its_placebo_on_the_same_texts_scrambled(session):
    pairs = _pairs()
    arms = Arms(session, _Start(session), {"dpo": Arm("sigmoid", pairs), "chosen": Arm(SFT, pairs)}, [])
    assert arms.data("dpo", 0, placebo=False) == pairs
    swapped = arms.data("dpo", 0, placebo=True)
    assert all({p["chosen"], p["rejected"]} == {q["chosen"], q["rejected"]} for p, q in zip(pairs, swapped))
    assert any(p["chosen"] != q["chosen"] for p, q in zip(pairs, swapped))
    records = arms.data("chosen", 0, placebo=False)
    assert [r["response"] for r in records] == [p["chosen"] for p in pairs]
    permuted = arms.data("chosen", 3, placebo=True)
    for family in ("lcm", "leg_counting"):   # responses permuted within each family
        assert sorted(r["response"] for r in permuted if r["family"] == family) == \
            sorted(r["response"] for r in records if r["family"] == family)


def test_a_recipe_is_the_same_in_every_study_and_changes_with_what_determines_the_run(session):
    pairs, heldout = _pairs(), _pairs(2)
    one = Arms(session, _Start(session), {"dpo": Arm("sigmoid", pairs)}, heldout)
    other = Arms(session, _Start(session), {"also_dpo": Arm("sigmoid", pairs)}, heldout)   # another study's name
    recipe = one.recipe("dpo", {"learning_rate": 1e-5}, 0, placebo=False)
    assert recipe == other.recipe("also_dpo", {"learning_rate": 1e-5}, 0, placebo=False)
    assert recipe["start"] == "start-key" and recipe["heldout_pairs"] == heldout
    assert recipe["dpo"]["learning_rate"] == 1e-5 and recipe["method"] == "dpo:sigmoid"
    assert recipe != one.recipe("dpo", {"learning_rate": 1e-4}, 0, placebo=False)
    assert recipe != one.recipe("dpo", {"learning_rate": 1e-5}, 0, placebo=True)
    sft = Arms(session, _Start(session), {"chosen": Arm(SFT, pairs, {"num_train_epochs": 1})}, heldout)
    sft_recipe = sft.recipe("chosen", {}, 0, placebo=False)
    assert sft_recipe["method"] == "sft" and sft_recipe["train"]["num_train_epochs"] == 1


def _records(n: int = 4) -> list[dict]:
    return [{"id": f"r{i}", "family": "lcm", "prompt": f"q{i}", "response": f"{i}", "entry": {}} for i in range(n)]


def test_an_rl_arm_trains_on_its_prompts_and_its_placebo_is_named_by_the_recipe(session):
    records = _records()
    arms = Arms(session, _Start(session), {"grpo": Arm("grpo:grpo", records, {"max_steps": 3}),
                                           "more_sft": Arm(SFT, records)}, [])
    assert arms.data("grpo", 0, placebo=True) == records   # the trainer scrambles rewards and demonstrations
    assert [r["response"] for r in arms.data("more_sft", 0, placebo=False)] == ["0", "1", "2", "3"]  # gold responses
    recipe = arms.recipe("grpo", {"learning_rate": 1e-5}, 0, placebo=False)
    assert recipe["method"] == "grpo:grpo" and recipe["start"] == "start-key" and recipe["placebo"] is False
    assert recipe["grpo"]["learning_rate"] == 1e-5 and recipe["grpo"]["max_steps"] == 3
    assert recipe["rl"] == OmegaConf.to_container(session.cfg.rl, resolve=True)
    assert recipe != arms.recipe("grpo", {"learning_rate": 1e-5}, 0, placebo=True)
    staged = Arms(session, _Start(session), {"sft_grpo": Arm("sft+grpo:grpo", records, {"sft_steps": 1, "max_steps": 2})},
                  []).recipe("sft_grpo", {"learning_rate": 1e-5}, 0, placebo=False)
    assert staged["method"] == "sft+grpo:grpo" and staged["grpo"]["sft_steps"] == 1
    assert staged["train"] == OmegaConf.to_container(session.cfg.train, resolve=True)   # the SFT stage's settings
    assert staged["data"] == recipe["data"] and staged != recipe


def test_an_sft_then_grpo_arm_trains_both_stages_in_one_run(session):
    records = [{**r, "response": r["answer"]} for r in session.testbed()["pool"][:4]]
    arms = Arms(session, _Start(session), {"sft_grpo": Arm("sft+grpo:grpo", records, {"sft_steps": 1, "max_steps": 1})},
                [])
    with session.run("sft_grpo", 0, recipe=arms.recipe("sft_grpo", {}, 0, placebo=True), evaluate=False) as run:
        arms.train("sft_grpo", run, {}, placebo=True)
    assert run.extra["sft_steps"] == 1 and run.steps == 2                    # one SFT step, then one GRPO step
    assert run.train_seconds > run.extra["stage_seconds"] > 0                # both stages' seconds
    assert any("frac_reward_zero_std" in row for row in run.log)             # the run's log is the GRPO stage's


def test_the_signal_share_of_each_rl_run_and_seed_comes_from_its_log():
    logs = [{"run": "grpo", "seed": 0, "step": 1, "loss": 0.1, "frac_reward_zero_std": 0.25},
            {"run": "grpo", "seed": 0, "step": 2, "loss": 0.1, "frac_reward_zero_std": 1.0},
            {"run": "more_sft", "seed": 0, "step": 1, "loss": 2.0},
            {"run": "grpo", "seed": 1, "step": 1, "loss": 0.1, "frac_reward_zero_std": 0.5}]
    signal = Arms.signal(logs)
    assert signal.to_dict("records") == [{"condition": "grpo", "seed": 0, "step": 1, "signal_share": 0.75},
                                         {"condition": "grpo", "seed": 0, "step": 2, "signal_share": 0.0},
                                         {"condition": "grpo", "seed": 1, "step": 1, "signal_share": 0.5}]
    assert Arms.signal(logs[2:3]).empty
