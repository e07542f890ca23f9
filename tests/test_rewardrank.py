import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from studykit.config import compose
from studykit.rewardrank import (METRICS, checkpoint_metrics, dpo_movement, implicit_reward_margins, pooled_correlations,
                                 preference_logprobs, rule_regret, same_ranking_groups, selection_rules,
                                 self_sampled_pairs, study_data, tracking_statements, zephyr_cost_estimate)
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


def test_selection_rules_pick_per_their_signal():
    table = pd.DataFrame({"step": [10, 20, 30], "val_loss": [1.0, 0.5, 0.7], "pre_dpo_dev_accuracy": [0.1, 0.3, 0.2],
                          **{m: [0.2, 0.4, 0.9] for m in METRICS}})
    rules = selection_rules(table)
    assert rules["min_val_loss"] == 20 and rules["last_checkpoint"] == 30 and rules["best_pre_dpo_dev_accuracy"] == 20
    assert all(rules[f"rewardrank_{m}"] == 30 for m in METRICS)


def test_pooled_correlations_rank_within_each_seed():
    """Seed 1 is better overall, but within each seed the signal orders the checkpoints exactly as the target:
    within-seed ranks give ρ = 1, where raw pooling would mix the seed offset into the correlation."""
    table = pd.DataFrame({"sft_seed": [0, 0, 0, 1, 1, 1], "val_loss": [3.0, 2.0, 1.0, 3.0, 2.0, 1.0],
                          "pre_dpo_dev_accuracy": [0.1, 0.2, 0.3, 0.1, 0.2, 0.3],
                          **{m: [0.1, 0.2, 0.3, 0.1, 0.2, 0.3] for m in METRICS},
                          "post": [0.10, 0.20, 0.30, 0.60, 0.70, 0.80]})
    corr = pooled_correlations(table, "post").set_index("signal")
    assert corr.loc["rank_acc", "spearman"] == pytest.approx(1.0) and corr.loc["-val_loss", "spearman"] == pytest.approx(1.0)
    assert corr.loc["rank_acc", "checkpoints"] == 6 and corr.loc["rank_acc", "seeds"] == 2
    assert corr.loc["rank_acc", "spearman_p"] < 0.05
    assert "tracks post-DPO accuracy beyond noise" in tracking_statements(corr.reset_index())[2]


def test_monotone_transforms_are_one_variant():
    table = pd.DataFrame({"sft_seed": [0, 0, 0, 1, 1, 1], "a": [1.0, 2.0, 3.0, 3.0, 1.0, 2.0],
                          "b": [10.0, 20.0, 30.0, 30.0, 10.0, 20.0], "c": [3.0, 2.0, 1.0, 1.0, 2.0, 3.0]})
    assert same_ranking_groups(table, ["a", "b", "c"]) == [["a", "b"], ["c"]]


def test_rule_regret_is_the_paired_difference_to_the_reference_rule():
    items = [{"id": f"i{k}", "family": "f"} for k in range(4)]
    rows = []
    for seed in (0, 1):
        for step, correct in ((1, [1, 1, 1, 1]), (2, [1, 0, 0, 0])):
            rows += [{"condition": f"s{seed}-step{step}", "seed": seed, **item, "lenient": bool(c)}
                     for item, c in zip(items, correct)]
    choices = pd.DataFrame([{"sft_seed": s, "rule": r, "step": st} for s in (0, 1)
                            for r, st in (("best", 1), ("bad", 2))])
    regret = rule_regret(pd.DataFrame(rows), choices, ["best", "bad"], reference="best").set_index("rule")
    assert regret.loc["best", "regret"] == 0 and regret.loc["bad", "regret"] == pytest.approx(0.75)
    assert regret.loc["bad", "seeds"] == 2 and regret.loc["bad", "items"] == 4


def test_implicit_reward_margin_is_zero_against_itself_and_signs_the_preference():
    ref = logps([-3.0, -2.0], [-3.0, -2.0])
    assert implicit_reward_margins(ref, ref, 0.1).tolist() == [0.0, 0.0]
    moved = logps([-2.0, -1.0], [-4.0, -3.0])                     # chosen up by 1, rejected down by 1
    np.testing.assert_allclose(implicit_reward_margins(moved, ref, 0.1), [0.2, 0.2])


def test_dpo_movement_win_rate_counts_ties_as_half():
    policy, reference = np.array([1, 1, 0, 0]), np.array([0, 1, 1, 0])
    still = dpo_movement(np.zeros(4), reference, reference)
    assert still["win_rate"] == 0.5 and not still["moved"]
    assert dpo_movement(np.zeros(4), policy, reference)["win_rate"] == pytest.approx((1 + 0.5 * 2) / 4)
    assert dpo_movement(np.full(50, 0.3) + np.linspace(0, 0.1, 50), reference.repeat(1), reference)["moved"]


def test_self_sampled_pairs_keep_a_correct_and_a_wrong_sample(monkeypatch, smoke_cfg):
    import studykit.rewardrank as rewardrank

    record = next(r for r in build_testbed(smoke_cfg.data)["preference"] if r["family"] == "chain_sum")
    gold, wrong = record["answer"], str(int(record["answer"]) + 1)
    monkeypatch.setattr(rewardrank, "generate", lambda *a, **k: [wrong, f"The answer is {gold}.", gold, wrong,  # mixed
                                                               wrong, wrong, "", wrong])                     # all wrong
    pairs = self_sampled_pairs(None, None, [record, {**record, "id": "y"}], samples=4, chat=True, max_new_tokens=8)
    assert len(pairs) == 1 and pairs[0]["chosen"] == f"The answer is {gold}." and pairs[0]["rejected"] == wrong
    assert pairs[0]["kind"] == "self_sampled" and pairs[0]["id"] == record["id"]


def test_zephyr_cost_estimate_is_the_forward_pass_ratio():
    assert zephyr_cost_estimate(16, 1_000, 61_135) == pytest.approx(16 * 1_000 * 2 / (61_135 * 2 * 4))


def test_pair_logprobs_with_a_shared_prompt_match_separate_scoring(tiny):
    from studykit.logprobs import sequence_logprobs

    model, tok = tiny
    pairs = [{"prompt": "2+2?", "chosen": "4", "rejected": "5"},
             {"prompt": "Say hi, and mean it", "chosen": "hi", "rejected": "no way, not today"},
             {"prompt": "x", "chosen": "a much longer chosen reply than the rejected one", "rejected": "b"}]
    got = preference_logprobs(model, tok, pairs, chat=True, batch_size=2)
    for side in ("chosen", "rejected"):
        want = sequence_logprobs(model, tok, [p["prompt"] for p in pairs], [p[side] for p in pairs], chat=True)
        np.testing.assert_allclose(got[side], want["sum"], atol=1e-4)
        assert got[f"{side}_tokens"].tolist() == want["n_tokens"].tolist()


def test_testbed_study_data_is_held_out_and_family_balanced():
    cfg = compose(["study=rewardrank"])
    data = study_data(cfg, build_testbed(cfg.data))
    assert len(data["sft_val"]) == round(0.4 * 60) and len(data["metric_pairs"]) == round(0.6 * 168)
    assert len({r["family"] for r in data["sft_val"]}) == len(cfg.data.families)
    assert not {r["id"] for r in data["sft_val"]} & {r["id"] for r in data["sft_train"]}
    assert not {r["id"] for r in data["metric_pairs"]} & {r["id"] for r in data["dpo_pairs"]}


def test_zephyr_recipe_loads_ultrachat_and_ultrafeedback_formats_from_local_files():
    """The GPU Zephyr config reads the hub datasets through the same loaders; here they point at local fixtures."""
    cfg = compose(["study=rewardrank_zephyr", "profile=zephyr", f"study.sft_data.source={FIXTURES / 'chat.jsonl'}",
                   f"study.preference_data.source={FIXTURES / 'preferences.jsonl'}",
                   "study.sft_data.validation=0.5", "study.preference_data.metric_pairs=0.5"])
    assert cfg.train.save_steps == 100 and cfg.dpo.beta == 0.01 and cfg.dpo.learning_rate == 5e-7
    assert cfg.train.num_train_epochs == 1 and cfg.model.name == "mistral-7b-v0.1" and cfg.model.dtype == "float32"
    data = study_data(cfg, {"pool": [], "preference": []})
    assert data["sft_val"][0]["response"] == "I am a helpful assistant." and data["sft_train"][0]["response"] == "Paris."
    assert (data["metric_pairs"][0]["chosen"], data["dpo_pairs"][0]["rejected"]) == ("12", "cat")


def test_zephyr_recipe_renders_zephyrs_chat_template_and_needs_its_profile(smoke_cfg):
    from studykit.config import ConfigError
    from studykit.models import load_tokenizer

    template = compose(["study=rewardrank_zephyr", "profile=zephyr"]).model.chat_template
    tokenizer = load_tokenizer(OmegaConf.merge(smoke_cfg.model, {"chat_template": template}))
    eos = tokenizer.eos_token
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                              {"role": "user", "content": "Bye"}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered == f"<|user|>\nHi{eos}\n<|assistant|>\nHello{eos}\n<|user|>\nBye{eos}\n<|assistant|>\n"
    with pytest.raises(ConfigError, match="study rewardrank_zephyr needs profile=zephyr, got profile=gpu"):
        compose(["study=rewardrank_zephyr", "profile=gpu"])


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
