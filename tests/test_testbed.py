import collections

import pytest

from studykit.testbed import NOISE_KINDS, build_testbed, inject_noise, is_correct, verify


@pytest.fixture(scope="module")
def splits(smoke_cfg):
    return build_testbed(smoke_cfg.data)


def test_splits_have_configured_sizes_and_disjoint_questions(smoke_cfg, splits):
    n_families = len(smoke_cfg.data.families)
    assert len(splits["pool"]) == smoke_cfg.data.pool_per_family * n_families
    assert len(splits["eval"]) == smoke_cfg.data.eval_per_family * n_families
    assert len(splits["preference"]) == smoke_cfg.data.preference_per_family * n_families
    questions = {name: {r["prompt"] for r in rows} for name, rows in splits.items()}
    assert not questions["pool"] & questions["eval"]
    assert not questions["pool"] & questions["preference"]
    assert not questions["eval"] & questions["preference"]


def test_gold_responses_pass_the_verifier(splits):
    for record in splits["pool"] + splits["eval"]:
        assert is_correct(record["family"], record["response"], record["entry"])


def test_preference_pairs_are_verified_correct_vs_incorrect(splits):
    for pair in splits["preference"]:
        assert verify(pair["family"], pair["chosen"], pair["entry"]) == 1.0
        assert verify(pair["family"], pair["rejected"], pair["entry"]) < 1.0


def test_testbed_is_deterministic(smoke_cfg, splits):
    again = build_testbed(smoke_cfg.data)
    assert again == splits


def test_noise_injection_counts_labels_and_ground_truth(splits):
    pool = splits["pool"]
    noisy = inject_noise(pool, 0.5, NOISE_KINDS, seed=3)
    flagged = [r for r in noisy if r["is_noisy"]]
    assert len(flagged) == round(0.5 * len(pool))
    assert set(collections.Counter(r["noise_kind"] for r in flagged)) <= set(NOISE_KINDS)
    for before, after in zip(pool, noisy):
        assert after["clean_response"] == before["response"]
        if after["is_noisy"]:
            assert not is_correct(after["family"], after["response"], after["entry"])
            assert after["response"] != before["response"]
        else:
            assert after["response"] == before["response"] and after["noise_kind"] == ""
    assert inject_noise(pool, 0.5, NOISE_KINDS, seed=3) == noisy
    assert not any(r["is_noisy"] for r in inject_noise(pool, 0.0))


def test_truncated_items_really_are_prefixes(splits):
    noisy = inject_noise(splits["pool"], 1.0, ["truncated"], seed=0)
    for r in noisy:
        if r["noise_kind"] == "truncated":
            assert r["clean_response"].startswith(r["response"]) and len(r["response"]) < len(r["clean_response"])
        else:  # single-character answers cannot be truncated: labelled as the corruption actually applied
            assert r["noise_kind"] in {"wrong_answer", "junk"}


@pytest.mark.parametrize("kwargs, message", [
    ({"fraction": 1.5}, "fraction must be in"),
    ({"fraction": 0.1, "kinds": ["typo"]}, "unknown kinds"),
])
def test_noise_rejects_bad_arguments(splits, kwargs, message):
    with pytest.raises(ValueError, match=message):
        inject_noise(splits["pool"], **kwargs)


def test_one_task_gives_difficulty_arms(smoke_cfg):
    """``knights_knaves:<n>`` families draw from one reasoning-gym task with their own parameters (DUMP's arms)."""
    from omegaconf import OmegaConf

    from studykit.answers import judge

    data = {**OmegaConf.to_container(smoke_cfg.data), "max_answer_share": None,
            "families": {"knights_knaves:2": {"n_people": 2}, "knights_knaves:4": {"n_people": 4}}}
    pool = build_testbed(OmegaConf.create(data))["pool"]
    by_arm = collections.defaultdict(list)
    for r in pool:
        by_arm[r["family"]].append(r)
    assert set(by_arm) == {"knights_knaves:2", "knights_knaves:4"}
    assert all(r["answer"].count(" is a") == 2 for r in by_arm["knights_knaves:2"])
    assert all(r["answer"].count(" is a") == 4 for r in by_arm["knights_knaves:4"])
    for r in pool:
        assert judge(r, r["response"]).strict and not judge(r, "No idea").lenient


@pytest.mark.parametrize("overrides, message", [
    # 2-term 1-digit chain sums: 200 distinct questions, far fewer than 1000 eval items need
    (["data.families={chain_sum: {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}}",
      "data.eval_per_family=1000"],
     r"data\.eval_per_family=1000 is more than family 'chain_sum' can supply: its generator gave 200 distinct "
     r"questions in \d+ draws, 1011 are needed .*lower data\.eval_per_family to at most 189"),
    # the same family with a pool that alone exceeds it: the pool is named
    (["data.families={chain_sum: {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}}",
      "data.pool_per_family=300"], r"data\.pool_per_family=300 is more than family 'chain_sum' can supply"),
    # Yes/No answers cannot fill 4 eval items with no answer above 10% of them
    (["data.max_answer_share=0.1"],
     r"data\.eval_per_family=4 is more than family 'syllogism' can supply: only 2 answer-balanced eval items"),
])
def test_a_split_the_generator_cannot_supply_names_the_key_value_and_supply(overrides, message):
    from studykit.config import compose
    from studykit.errors import DataError

    cfg = compose(["profile=smoke", "data=testbed", *overrides])
    with pytest.raises(DataError, match=message):
        build_testbed(cfg.data)
