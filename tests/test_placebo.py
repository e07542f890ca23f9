"""Placebo arms: SFT responses permuted within families, preference sides swapped by a fair coin, GRPO rewards
permuted across each batch (with HPT's gate reading the permuted rewards), and one placebo GRPO step."""
from __future__ import annotations

import copy
import inspect
from collections import Counter

import numpy as np
import pytest

from studykit import rl
from studykit.rewards import REWARDS
from studykit.placebo import permuted_rewards, placebo_preference_pairs, placebo_sft_records
from studykit.testbed import build_testbed


def _sft_records() -> list[dict]:
    """Families interleaved: ``yes_no`` (two distinct responses), ``many`` (180 distinct), ``one`` (one item)."""
    records = [{"id": f"many/{i}", "family": "many", "prompt": f"q{i}", "response": f"r{i}", "answer": f"r{i}",
                "entry": f"{{{i}}}"} for i in range(200)]
    yes_no = ["Yes", "Yes", "No"] * 6 + ["No"] * 2
    records[::10] = [{"id": f"yes_no/{i}", "family": "yes_no", "prompt": f"yn{i}", "response": answer,
                      "answer": answer, "entry": "{}"} for i, answer in enumerate(yes_no)]
    return records + [{"id": "one/0", "family": "one", "prompt": "q", "response": "a", "answer": "a", "entry": "{}"}]


def test_sft_placebo_permutes_responses_within_each_family_and_keeps_everything_else():
    records = _sft_records()
    original = copy.deepcopy(records)
    placebo = placebo_sft_records(records, seed=3)
    assert records == original                                                      # the input is not changed
    assert [{k: v for k, v in r.items() if k != "response"} for r in placebo] == [
        {k: v for k, v in r.items() if k != "response"} for r in records]          # prompt, answer, entry, order kept
    for family in ("yes_no", "many", "one"):
        before = Counter(r["response"] for r in records if r["family"] == family)
        assert Counter(r["response"] for r in placebo if r["family"] == family) == before  # within families
    many = [(r["response"], p["response"]) for r, p in zip(records, placebo) if r["family"] == "many"]
    assert sum(old != new for old, new in many) / len(many) > 0.9                 # most responses move
    assert placebo_sft_records(records, seed=3) == placebo and placebo_sft_records(records, seed=4) != placebo
    no_family = [{"prompt": f"q{i}", "response": f"r{i}"} for i in range(30)]     # data.py records: one group
    responses = Counter(r["response"] for r in no_family)
    assert Counter(r["response"] for r in placebo_sft_records(no_family, 0)) == responses


def test_preference_placebo_swaps_about_half_of_the_pairs_side_keys_included():
    pairs = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}", "chosen_score": i, "rejected_score": -i,
              "reference_response": f"y{i}"} for i in range(1000)]
    original = copy.deepcopy(pairs)
    placebo = placebo_preference_pairs(pairs, seed=0)
    assert pairs == original
    swapped = [p["chosen"] != q["chosen"] for p, q in zip(pairs, placebo)]
    assert 400 <= sum(swapped) <= 600
    for pair, new, swap in zip(pairs, placebo, swapped):
        assert {new["chosen"], new["rejected"]} == {pair["chosen"], pair["rejected"]}
        assert (new["chosen_score"], new["rejected_score"]) == (
            (pair["rejected_score"], pair["chosen_score"]) if swap else (pair["chosen_score"], pair["rejected_score"]))
        assert (new["prompt"], new["reference_response"]) == (pair["prompt"], pair["reference_response"])
    assert placebo_preference_pairs(pairs, seed=0) == placebo and placebo_preference_pairs(pairs, seed=1) != placebo


def _score(completions, score, **_):
    """A stand-in reward that returns the batch's ``score`` column, so a permutation can be read off."""
    return [float(s) for s in score]


def _double(completions, score, **_):
    return [2.0 * s for s in score]


def test_permuted_rewards_keep_names_signature_and_multiset_and_share_one_permutation_per_batch():
    first, second = permuted_rewards([_score, _double], seed=5)
    assert (first.__name__, second.__name__) == ("_score", "_double")
    assert inspect.signature(first) == inspect.signature(_score)
    score = list(range(20))
    orders = []
    for _ in range(3):
        true = _score(None, score)
        permuted = first(completions=[None] * 20, score=score)
        assert sorted(permuted) == sorted(true) and permuted != true
        assert second(completions=[None] * 20, score=score) == [2.0 * r for r in permuted]  # the batch's permutation
        orders.append(permuted)
    assert orders[0] == [float(i) for i in np.random.default_rng(5).permutation(20)]  # seeded once
    assert len({tuple(o) for o in orders}) == 3                                         # successive batches differ
    assert first(completions=[None] * 6, score=[1] * 6) == [1.0] * 6                    # equal rewards: nothing moves
    with pytest.raises(ValueError, match="in order"):
        second(completions=[None] * 4, score=[0, 1, 2, 3])


@pytest.fixture(scope="module")
def pool(smoke_cfg):
    return build_testbed(smoke_cfg.data)["pool"]


def test_placebo_grpo_permutes_the_demonstrations_and_the_rewards_hpt_gates_on(tiny, smoke_cfg, pool, tmp_path,
                                                                               monkeypatch):
    pattern = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0]

    def verifier(completions, **_):
        return pattern[:len(completions)]

    monkeypatch.setitem(REWARDS, "verifier", verifier)
    model, tokenizer = tiny
    trainer = rl.build_grpo_trainer(copy.deepcopy(model), tokenizer, pool, smoke_cfg, tmp_path, method="hpt",
                                    placebo=True, per_device_train_batch_size=8)
    assert trainer.reward_func_names == ["verifier"]
    data = trainer.train_dataset.to_dict()
    assert data["question"] == [r["prompt"] for r in pool] and data["entry"] == [r["entry"] for r in pool]
    assert Counter(zip(data["family"], data["solution"])) == Counter((r["family"], r["response"]) for r in pool)
    assert data["solution"] != [r["response"] for r in pool]                      # the demonstrations moved

    trainer.model.train()
    rows = [trainer.train_dataset[i] for i in range(4) for _ in range(trainer.num_generations)]  # 4 prompts × G
    trainer._generate_and_score_completions(rows)
    order = np.random.default_rng(int(smoke_cfg.seed)).permutation(len(pattern))
    assert trainer._solved.tolist() == [pattern[i] == 1.0 for i in order]         # the gate counts permuted rewards


def test_a_placebo_grpo_run_takes_a_step(tiny, smoke_cfg, pool, tmp_path):
    model, tokenizer = tiny
    trainer = rl.train_grpo(copy.deepcopy(model), tokenizer, pool, smoke_cfg, tmp_path, placebo=True, max_steps=1)
    assert trainer.state.global_step == 1
    assert "rewards/verifier/mean" in {k for row in trainer.state.log_history for k in row}
