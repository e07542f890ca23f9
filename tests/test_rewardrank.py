import numpy as np
import pandas as pd
import pytest

from studykit.config import compose
from studykit.rewardrank import (METRICS, checkpoint_metrics, correlations, preference_logprobs, regret, selection_rules,
                                 study_data, verifier_win_rate)
from studykit.testbed import build_testbed

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"


def logps(chosen, rejected, chosen_tokens=(1, 1), rejected_tokens=(1, 1)):
    return {"chosen": np.array(chosen, float), "rejected": np.array(rejected, float),
            "chosen_tokens": np.array(chosen_tokens), "rejected_tokens": np.array(rejected_tokens)}


def test_metrics_analytic():
    base = logps([-4.0, -2.0], [-1.0, -3.0])
    ckpt = logps([-2.0, -6.0], [-3.0, -4.0], chosen_tokens=(1, 4), rejected_tokens=(1, 1))
    m = checkpoint_metrics(ckpt, base)
    assert m["rank_acc"] == 0.5                       # -2 > -3 yes, -6 > -4 no
    assert m["rank_acc_norm"] == 1.0                  # -2 > -3, -1.5 > -4
    # implicit rewards r = ckpt - base: chosen (2, -4), rejected (-2, -1) → margins 4, -3
    assert m["reward_acc"] == 0.5 and m["reward_margin"] == pytest.approx(0.5)
    assert m["rank_margin"] == pytest.approx(((-2 + 3) + (-6 + 4)) / 2)


def test_the_mean_reward_margin_is_the_ranking_margin_shifted_by_a_constant():
    ones = (1, 1, 1)
    base = logps([-4.0, -2.0, -5.0], [-1.0, -3.0, -2.5], ones, ones)
    base_margin = float(np.mean(base["chosen"] - base["rejected"]))
    for chosen, rejected in [([-2.0, -6.0, -1.0], [-3.0, -4.0, -7.0]), ([-9.0, -1.0, -3.0], [-2.0, -2.0, -2.0])]:
        m = checkpoint_metrics(logps(chosen, rejected, ones, ones), base)
        assert m["reward_margin"] == pytest.approx(m["rank_margin"] - base_margin)  # same ranking of checkpoints
    assert "reward_margin" not in METRICS


def test_reference_equal_to_base_has_zero_implicit_reward():
    same = logps([-4.0, -2.0], [-1.0, -3.0])
    m = checkpoint_metrics(same, same)
    assert m["reward_acc"] == 0.0 and m["reward_margin"] == 0.0


def test_rules_correlations_and_regret():
    table = pd.DataFrame({"step": [10, 20, 30], "val_loss": [1.0, 0.5, 0.7], "pre_dpo_dev_accuracy": [0.1, 0.3, 0.2],
                          **{m: [0.2, 0.4, 0.9] for m in METRICS}, "post": [0.2, 0.3, 0.6]})
    rules = selection_rules(table)
    assert rules["min_val_loss"] == 20 and rules["last_checkpoint"] == 30 and rules["best_pre_dpo_dev_accuracy"] == 20
    assert all(rules[f"rewardrank_{m}"] == 30 for m in METRICS)
    corr = correlations(table, "post").set_index("signal")
    assert corr.loc["rank_acc", "spearman"] == pytest.approx(1.0) and corr.loc["rank_acc", "kendall"] == pytest.approx(1.0)
    assert corr.loc["rank_acc", "spearman_p"] == pytest.approx(2 / 6)  # exact: 2 of the 3! orderings reach |ρ| = 1
    reg = regret(table, rules, "post").set_index("rule")
    assert reg.loc["min_val_loss", "regret"] == pytest.approx(0.3) and reg.loc["rewardrank_reward_acc", "regret"] == 0


def test_verifier_win_rate_counts_ties_as_half():
    policy = np.array([True, True, False, False])
    reference = np.array([False, True, True, False])
    assert verifier_win_rate(policy, reference) == pytest.approx((1 + 0.5 * 2) / 4)
    assert verifier_win_rate(policy, policy) == 0.5


def test_pair_logprobs_one_pass_matches_separate_scoring(tiny):
    from studykit.logprobs import sequence_logprobs

    model, tok = tiny
    pairs = [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}, {"prompt": "Say hi", "chosen": "hi", "rejected": "no way"}]
    got = preference_logprobs(model, tok, pairs, chat=True)
    want = sequence_logprobs(model, tok, ["2+2?", "Say hi"], ["5", "no way"], chat=True)
    np.testing.assert_allclose(got["rejected"], want["sum"], atol=1e-5)
    assert got["rejected_tokens"].tolist() == want["n_tokens"].tolist()


def test_testbed_study_data_is_held_out_and_family_balanced():
    cfg = compose(["study=rewardrank"])
    data = study_data(cfg, build_testbed(cfg.data))
    assert len(data["sft_val"]) == round(0.2 * 120) and len(data["metric_pairs"]) == round(0.25 * 72)
    assert len({r["family"] for r in data["sft_val"]}) == len(cfg.data.families)
    assert not {r["id"] for r in data["sft_val"]} & {r["id"] for r in data["sft_train"]}
    assert not {r["id"] for r in data["metric_pairs"]} & {r["id"] for r in data["dpo_pairs"]}


def test_zephyr_recipe_loads_ultrachat_and_ultrafeedback_formats_from_local_files():
    """The GPU Zephyr config reads the hub datasets through the same loaders; here they point at local fixtures."""
    cfg = compose(["study=rewardrank_zephyr", "profile=gpu", f"study.sft_data.source={FIXTURES / 'chat.jsonl'}",
                   f"study.preference_data.source={FIXTURES / 'preferences.jsonl'}",
                   "study.sft_data.validation=0.5", "study.preference_data.metric_pairs=0.5"])
    assert cfg.train.save_steps == 100 and cfg.dpo.beta == 0.01 and cfg.dpo.learning_rate == 5e-7
    data = study_data(cfg, {"pool": [], "preference": []})
    assert data["sft_val"][0]["response"] == "I am a helpful assistant." and data["sft_train"][0]["response"] == "Paris."
    assert (data["metric_pairs"][0]["chosen"], data["dpo_pairs"][0]["rejected"]) == ("12", "cat")


def test_bad_held_out_fraction_is_a_clear_error():
    from studykit.config import ConfigError

    with pytest.raises(ConfigError, match=r"study.sft_data.validation=1.5 is not allowed: expected a fraction in \(0, 1\)"):
        compose(["study=rewardrank", "study.sft_data.validation=1.5"])
    cfg = compose(["study=rewardrank", "profile=smoke", "study.sft_data.validation=0.99"])
    with pytest.raises(ValueError, match="leaves none of the"):
        study_data(cfg, build_testbed(cfg.data))


def test_sft_with_checkpoints_saves_k_checkpoints_with_validation_loss(tiny, smoke_cfg, tmp_path):
    import copy

    from studykit.train import train_sft_with_checkpoints

    model, tok = tiny
    pool = build_testbed(smoke_cfg.data)["pool"]
    _, table = train_sft_with_checkpoints(copy.deepcopy(model), tok, pool[6:], pool[:6], smoke_cfg, tmp_path,
                                          n_checkpoints=3, max_steps=6)
    assert table["step"].tolist() == [2, 4, 6]
    assert table["val_loss"].notna().all() and all((tmp_path / f"checkpoint-{s}").is_dir() for s in (2, 4, 6))


def test_run_all_skips_hub_only_studies():
    from studykit.cli import _runnable_studies

    assert "rewardrank_zephyr" not in _runnable_studies() and "rewardrank" in _runnable_studies()
