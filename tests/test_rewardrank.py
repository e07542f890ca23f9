import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from scipy import stats as scipy_stats

from studykit.config import compose
from studykit.rewardrank import (METRICS, candidate_columns, change_beyond_placebo, changed_items,
                                 checkpoint_metrics, choose_checkpoints, cost_statement, dpo_training_pairs,
                                 measure_checkpoint, metric_column, pair_metrics, pair_sources, placebo_change_test,
                                 preference_logprobs, rule_conditions, rule_regret, run_arm, run_name, same_ranking_groups,
                                 seed_level_correlations, selection_rules, self_sampled_pairs, sft_subsample,
                                 study_data, study_statements, zephyr_cost_estimate)
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


def test_pair_metrics_are_suffixed_and_nan_below_the_minimum_number_of_pairs():
    base = logps([-4.0, -2.0], [-1.0, -3.0])
    ckpt = logps([-2.0, -6.0], [-3.0, -4.0])
    own = pair_metrics(ckpt, base, "own", min_pairs=2)
    assert own["rank_acc@own"] == 0.5 and own["reward_acc@own"] == 0.5 and own["pairs@own"] == 2 and own["note"] == ""
    few = pair_metrics(ckpt, base, "own", min_pairs=3)
    assert all(np.isnan(few[metric_column(m, "own")]) for m in [*METRICS, "reward_margin"])
    assert few["pairs@own"] == 2 and "2 own pairs < 3" in few["note"]
    empty = pair_metrics(logps([], [], (), ()), logps([], [], (), ()), "own", min_pairs=20)
    assert empty["pairs@own"] == 0 and np.isnan(empty["rank_margin@own"])
    assert candidate_columns(["gold_vs_wrong"]) == [f"{m}@gold_vs_wrong" for m in METRICS]


def test_sft_subsample_draws_a_share_of_each_family_per_seed():
    records = [{"id": f"{f}{i}", "family": f} for f in "ab" for i in range(5)]
    first, again, other = (sft_subsample(records, 0.8, s) for s in (0, 0, 1))
    assert first == again                                              # the seed decides
    assert [sum(r["family"] == f for r in first) for f in "ab"] == [4, 4]   # round(0.8 · 5) per family
    assert len({r["id"] for r in first}) == 8 and {r["id"] for r in first} <= {r["id"] for r in records}
    assert {r["id"] for r in first} != {r["id"] for r in other} or [r["id"] for r in first] != [r["id"] for r in other]
    everything = sft_subsample(records, 1.0, 3)
    assert sorted(r["id"] for r in everything) == sorted(r["id"] for r in records)  # share 1: only the order
    assert [len(sft_subsample(records[:1], 0.1, 0))] == [1]                          # at least one per family
    draws = {tuple(sorted(r["id"] for r in sft_subsample(records, 0.8, s))) for s in range(10)}
    assert len(draws) > 1                                              # seeds differ in data, not only in order


def test_selection_rules_pick_per_their_signal_and_skip_undefined_metrics():
    columns = ["rank_acc@own", "reward_acc@own"]
    table = pd.DataFrame({"step": [10, 20, 30], "val_loss": [1.0, 0.5, 0.7], "pre_dpo_dev_accuracy": [0.1, 0.3, 0.2],
                          "rank_acc@own": [0.2, np.nan, 0.1], "reward_acc@own": [np.nan] * 3})
    rules = selection_rules(table, columns)
    assert rules["min_val_loss"] == 20 and rules["last_checkpoint"] == 30 and rules["best_pre_dpo_dev_accuracy"] == 20
    assert rules["rewardrank_rank_acc@own"] == 10 and rules["rewardrank_reward_acc@own"] is None


def test_choose_checkpoints_adds_best_on_dev_and_the_fixed_candidate():
    table = pd.DataFrame({"sft_seed": [0, 0, 1, 1], "step": [5, 10, 5, 10], "val_loss": [1.0, 2.0, 2.0, 1.0],
                          "pre_dpo_dev_accuracy": [0.1, 0.2, 0.2, 0.1], "post_dpo_dev_accuracy": [0.5, 0.4, 0.3, 0.3],
                          "reward_acc@own": [0.1, 0.9, np.nan, np.nan]})
    choices = choose_checkpoints(table, ["reward_acc@own"], "reward_acc@own").set_index(["sft_seed", "rule"])["step"]
    assert choices[0, "best_on_dev"] == 5 and choices[1, "best_on_dev"] == 5          # ties → the earliest
    assert choices[0, "rewardrank"] == 10 and (1, "rewardrank") not in choices.index  # NaN on seed 1: no pick
    assert choices[1, "min_val_loss"] == 10


def test_rule_conditions_give_each_rule_its_picks_placebo_and_alias():
    choices = pd.DataFrame([{"sft_seed": s, "rule": r, "step": st} for s in (0, 1)
                            for r, st in (("min_val_loss", 5), ("last_checkpoint", 10), ("rewardrank", 5))])
    picks, placebos, aliases = rule_conditions(choices)
    assert picks["min_val_loss"] == ["s0-step5", "s1-step5"]
    assert picks["min_val_loss-placebo"] == ["s0-step5-placebo", "s1-step5-placebo"]
    assert placebos == {r: f"{r}-placebo" for r in ("min_val_loss", "last_checkpoint", "rewardrank")}
    assert aliases == {"min_val_loss": "min_val_loss", "last_checkpoint": "last_checkpoint",
                       "rewardrank": "min_val_loss"}
    assert run_name(2, 7) == "s2-step7" and run_name(2, 7, "placebo") == "s2-step7-placebo"


def test_seed_level_correlation_is_the_mean_within_seed_rho_tested_over_seeds():
    """Per seed ρ is +1, +1, +1, −1 (the last seed reversed): mean 0.5, and the test is scipy's one-sample t-test
    of those four values (SD 1, SE 0.5, t = 1, 3 df)."""
    rows = []
    for seed, sign in ((0, 1), (1, 1), (2, 1), (3, -1)):
        for k, step in enumerate((5, 10, 15)):
            rows.append({"sft_seed": seed, "step": step, "x": float(k), "loss": float(-k), "post": 0.1 * sign * k + seed})
    table = pd.DataFrame(rows)
    corr = seed_level_correlations(table, "post", ["x", "-loss"]).set_index("signal")
    expected = scipy_stats.ttest_1samp([1.0, 1.0, 1.0, -1.0], 0.0)
    for signal in ("x", "-loss"):                     # "-loss" enters negated: the same ordering as x
        assert corr.loc[signal, "mean_spearman"] == pytest.approx(0.5)
        assert corr.loc[signal, "p_value"] == pytest.approx(expected.pvalue) and corr.loc[signal, "seeds"] == 4
        assert corr.loc[signal, "ci_low"] == pytest.approx(0.5 - scipy_stats.t.ppf(0.975, 3) * 0.5)
    assert corr.loc["x", "per_seed"] == "+1.00 +1.00 +1.00 -1.00"
    two = seed_level_correlations(table[table["sft_seed"] < 2], "post", ["x"]).iloc[0]
    assert np.isnan(two["mean_spearman"]) and np.isnan(two["p_value"]) and two["seeds"] == 2   # < 3 seeds: NaN
    flat = seed_level_correlations(table.assign(x=1.0), "post", ["x"]).iloc[0]
    assert flat["seeds"] == 0 and np.isnan(flat["p_value"])   # a constant signal has no ρ on any seed


def test_monotone_transforms_are_one_variant():
    table = pd.DataFrame({"sft_seed": [0, 0, 0, 1, 1, 1], "a": [1.0, 2.0, 3.0, 3.0, 1.0, 2.0],
                          "b": [10.0, 20.0, 30.0, 30.0, 10.0, 20.0], "c": [3.0, 2.0, 1.0, 1.0, 2.0, 3.0],
                          "d": [np.nan] * 6, "e": [np.nan] * 6})
    assert same_ranking_groups(table, ["a", "b", "c", "d", "e"]) == [["a", "b"], ["c"], ["d", "e"]]


def regret_predictions():
    items = [{"id": f"i{k}", "family": "f"} for k in range(4)]
    rows = []
    for seed in (0, 1, 2):
        for step, correct in ((1, [1, 1, 1, 1]), (2, [1, 0, 0, 0])):
            rows += [{"condition": run_name(seed, step), "seed": seed, **item, "lenient": bool(c)}
                     for item, c in zip(items, correct)]
    return pd.DataFrame(rows)


def test_rule_regret_is_the_paired_difference_to_the_reference_rule():
    choices = pd.DataFrame([{"sft_seed": s, "rule": r, "step": st} for s in (0, 1)
                            for r, st in (("best", 1), ("bad", 2))])
    regret = rule_regret(regret_predictions(), choices, ["best", "bad"], reference="best").set_index("rule")
    assert regret.loc["best", "regret"] == 0 and regret.loc["bad", "regret"] == pytest.approx(0.75)
    assert regret.loc["bad", "seeds"] == 2 and regret.loc["bad", "items"] == 4


def test_rule_regret_uses_the_seeds_both_rules_chose_on():
    choices = pd.DataFrame([{"sft_seed": 0, "rule": "best", "step": 1}, {"sft_seed": 1, "rule": "best", "step": 1},
                            {"sft_seed": 2, "rule": "best", "step": 1}, {"sft_seed": 1, "rule": "partial", "step": 2}])
    regret = rule_regret(regret_predictions(), choices, ["partial", "never"], reference="best").set_index("rule")
    assert regret.loc["partial", "seeds"] == 1 and regret.loc["partial", "regret"] == pytest.approx(0.75)
    assert regret.loc["never", "seeds"] == 0 and np.isnan(regret.loc["never", "regret"])


def test_self_sampled_pairs_keep_a_correct_and_a_wrong_sample(monkeypatch, smoke_cfg):
    import studykit.rewardrank as rewardrank

    record = next(r for r in build_testbed(smoke_cfg.data)["preference"] if r["family"] == "chain_sum")
    gold, wrong = record["answer"], str(int(record["answer"]) + 1)
    monkeypatch.setattr(rewardrank, "generate", lambda *a, **k: [wrong, f"The answer is {gold}.", gold, wrong,  # mixed
                                                               wrong, wrong, "", wrong])                     # all wrong
    pairs = self_sampled_pairs(None, None, [record, {**record, "id": "y"}], samples=4, chat=True, max_new_tokens=8)
    assert len(pairs) == 1 and pairs[0]["chosen"] == f"The answer is {gold}." and pairs[0]["rejected"] == wrong
    assert pairs[0]["kind"] == "own" and pairs[0]["id"] == record["id"]
    assert self_sampled_pairs(None, None, [], samples=4, chat=True, max_new_tokens=8) == []


def test_measure_checkpoint_builds_own_pairs_and_scores_both_kinds(monkeypatch, tiny, smoke_cfg):
    """A fake sampler (2 samples per prompt) answers right only on the first sample of each call: the first metric
    prompt and the DPO prompt give an own pair each (chosen = the right sample, which differs from the SFT target's
    form), metrics are computed per kind, and own metrics are NaN when the pairs are fewer than the minimum."""
    import studykit.rewardrank as rewardrank

    model, tokenizer = tiny
    prefs = [r for r in build_testbed(smoke_cfg.data)["preference"] if r["family"] == "chain_sum"][:3]
    metric, dpo_prompts = prefs[:2], prefs[2:]

    def first_prompt_mixed(_model, _tok, prompts, **kwargs):   # 2 samples per prompt; only the first prompt is mixed
        answers = [next(r for r in prefs if r["prompt"] == p)["answer"] for p in prompts]
        return [f"It is {a}" if i == 0 else str(int(a) + 7) for i, a in enumerate(answers)]

    monkeypatch.setattr(rewardrank, "generate", first_prompt_mixed)
    dev = pd.DataFrame({"reply": ["x", "y"], "lenient": [True, False]})
    base_logps = preference_logprobs(model, tokenizer, metric, chat=True)
    common = dict(metric_pairs=metric, base_logps=base_logps, dpo_prompts=dpo_prompts, dev=[], evaluate=lambda m, r: dev,
                  samples=2, temperature=1.0, chat=True, max_new_tokens=4, batch_size=4, seed=0)
    got = measure_checkpoint(model, model, tokenizer, min_pairs=1, **common)
    assert got["pairs@gold_vs_wrong"] == 2 and got["pairs@own"] == 1
    own = got["own_metric_pairs"][0]
    assert own["chosen"] == f"It is {metric[0]['answer']}" and own["chosen"] != metric[0]["response"]
    assert own["kind"] == "own" and len(got["own_dpo_pairs"]) == 1
    assert got["reward_acc@own"] == 0.0 and got["reward_margin@own"] == 0.0   # the checkpoint is the base model here
    assert 0 <= got["rank_acc@gold_vs_wrong"] <= 1 and got["pre_dpo_dev_accuracy"] == 0.5
    assert got["pre_dpo_dev_replies"] == ["x", "y"] and got["note"] == ""
    few = measure_checkpoint(model, model, tokenizer, min_pairs=20, **common)
    assert np.isnan(few["reward_acc@own"]) and "1 own pairs < 20" in few["note"] and few["pairs@own"] == 1
    none = measure_checkpoint(model, model, tokenizer, min_pairs=20, **{**common, "samples": 0})
    assert "pairs@own" not in none and none["own_dpo_pairs"] == [] and not np.isnan(none["rank_acc@gold_vs_wrong"])


def test_dpo_training_pairs_modes_and_the_fallback_without_own_pairs():
    own, gold = [{"id": "o"}], [{"id": "g1"}, {"id": "g2"}]
    assert dpo_training_pairs("own", own, gold) == (own, "own (1)")
    assert dpo_training_pairs("own", [], gold) == (gold, "gold_vs_wrong (no own pairs)")
    assert dpo_training_pairs("gold_vs_wrong", own, gold) == (gold, "gold_vs_wrong")
    assert dpo_training_pairs("both", own, gold)[0] == gold + own
    with pytest.raises(ValueError, match="dpo_pairs"):
        dpo_training_pairs("mixed", own, gold)


def test_changed_items_agree_with_the_changed_replies_guard():
    from studykit.guards import changed_replies

    pre, post = ["4", "cat", "7", ""], ["4", "dog", "7 ", ""]
    changed = changed_items(pre, post)
    assert changed.tolist() == [False, True, True, False]
    frame = pd.DataFrame([{"condition": c, "seed": 0, "id": f"i{k}", "reply": r}
                          for c, replies in (("pre", pre), ("post", post)) for k, r in enumerate(replies)])
    assert changed.mean() == changed_replies(frame, "post", "pre") == 0.5
    with pytest.raises(ValueError):
        changed_items(pre, post[:2])


def test_placebo_change_test_pairs_the_items_with_an_exact_mcnemar_test():
    dpo = np.array([1] * 8 + [0] * 2)
    placebo = np.zeros(10)
    result = placebo_change_test(dpo, placebo)
    assert result["changed_dpo"] == 0.8 and result["changed_placebo"] == 0.0
    assert result["changed_difference"] == pytest.approx(0.8)
    assert result["changed_p"] == pytest.approx(2 * 0.5 ** 8)            # 8 discordant cells, all DPO's
    assert result["beyond_placebo"]
    same = placebo_change_test(dpo, dpo)
    assert same["changed_difference"] == 0 and same["changed_p"] == 1.0 and not same["beyond_placebo"]
    assert not placebo_change_test(placebo, dpo)["beyond_placebo"]       # the placebo changed more


def changes_table(seeds: int = 3, items: int = 20) -> pd.DataFrame:
    """Per seed two checkpoints; DPO changes every other dev item (which ones depends on the seed: share 0.5), the
    placebo every fifth item on seed 0 only (share 4/20 on one seed of three: 1/15 overall)."""
    return pd.DataFrame([{"sft_seed": seed, "step": step, "id": f"i{k}", "dpo_changed": int((k + seed) % 2 == 0),
                          "placebo_changed": int(k % 5 == 0 and seed == 0)}
                         for seed in range(seeds) for step in (5, 10) for k in range(items)])


def test_change_beyond_placebo_averages_checkpoints_within_seed_and_tests_over_seeds():
    changes = changes_table()
    acted = change_beyond_placebo(changes)
    assert acted["changed_dpo"] == 0.5 and acted["changed_placebo"] == pytest.approx(1 / 15)
    assert acted["difference"] == pytest.approx(0.5 - 1 / 15) and acted["seeds"] == 3 and acted["checkpoints"] == 6
    assert acted["acted"] and acted["ci_low"] > 0
    silent = changes.assign(dpo_changed=np.where(changes["step"] == 10, changes["placebo_changed"],
                                                 changes["dpo_changed"]))
    picked = change_beyond_placebo(silent, picks={0: 10, 1: 10, 2: 10})   # the picked checkpoints: DPO = placebo
    assert picked["difference"] == 0 and not picked["acted"] and picked["checkpoints"] == 3
    assert change_beyond_placebo(silent)["difference"] == pytest.approx((0.5 - 1 / 15) / 2)   # averaged within seed
    assert not change_beyond_placebo(changes, picks={})["acted"]


def statements(regret_row: dict, acted_rules: bool = True, acted_all: bool = True, seeds: int = 5,
               candidate_row: dict | None = None) -> list[str]:
    regret = pd.DataFrame([{"rule": "min_val_loss", "regret": 0.1, "ci_low": 0.02, "ci_high": 0.18, "mde": 0.05,
                            **regret_row}])
    act = {"acted": True, "difference": 0.2, "ci_low": 0.1, "ci_high": 0.3}
    idle = {"acted": False, "difference": 0.01, "ci_low": -0.02, "ci_high": 0.04}
    acted = {"all": act if acted_all else idle, "best_on_dev": act, "min_val_loss": act if acted_rules else idle}
    corr = pd.DataFrame([{"signal": "reward_acc@own", "mean_spearman": 0.6, "ci_low": 0.2, "ci_high": 1.0,
                          "p_value": 0.01, "seeds": 5, "per_seed": "+0.50 +1.00 +0.50 +0.50 +0.50",
                          **(candidate_row or {})},
                         {"signal": "rank_acc@gold_vs_wrong", "mean_spearman": 0.9, "ci_low": 0.8, "ci_high": 1.0,
                          "p_value": 0.001, "seeds": 5, "per_seed": ""},
                         {"signal": "-val_loss", "mean_spearman": 0.9, "ci_low": 0.8, "ci_high": 1.0,
                          "p_value": 0.001, "seeds": 5, "per_seed": ""}])
    return study_statements(regret, acted, corr, candidate="reward_acc@own", seeds=seeds, checkpoints=3)


def test_study_statements_say_when_min_val_loss_fails_and_when_it_is_not_tested():
    fails = statements({})
    assert "Min-val-loss fails" in fails[0] and ": yes — regret +0.100 [+0.020, +0.180]" in fails[0]
    assert "5 SFT seeds × 3 checkpoints" in fails[0]
    assert ": not resolved — " in statements({"ci_low": -0.02})[0] and "0.050" in statements({"ci_low": -0.02})[0]
    assert ": no — " in statements({"regret": -0.1, "ci_low": -0.18, "ci_high": -0.02})[0]
    idle = statements({}, acted_rules=False)[0]
    assert ": not tested: DPO from the checkpoints these rules picked did not act beyond its placebo" in idle
    assert "min_val_loss: dev replies changed by DPO − by placebo = +0.010 [-0.020, +0.040]" in idle
    assert ": not tested: 2 SFT seed(s), the test needs ≥ 3" in statements({}, seeds=2)[0]
    assert ": not tested: no regret" in statements({"regret": np.nan})[0]


def test_study_statements_say_whether_a_metric_tracks_post_dpo_accuracy():
    tracks = statements({})
    assert "the candidate under test, reward_acc@own (fixed in advance): yes — mean ρ +0.600 [+0.200, +1.000]" in tracks[1]
    assert "Exploratory, the 1 other candidates" in tracks[2] and "rank_acc@gold_vs_wrong" in tracks[2]
    assert "-val_loss" not in tracks[2]                        # a baseline, not a training-free candidate
    assert ": not resolved — " in statements({}, candidate_row={"p_value": 0.3})[1]
    assert "AGAINST" in statements({}, candidate_row={"mean_spearman": -0.6, "p_value": 0.01})[1]
    undefined = statements({}, candidate_row={"p_value": np.nan, "seeds": 2})[1]
    assert "not tested: ρ is defined on 2 seed(s), the test needs ≥ 3" in undefined
    idle = statements({}, acted_all=False)
    assert len(idle) == 2 and "not tested: DPO did not act beyond its placebo over all checkpoints" in idle[1]
    assert "post-DPO accuracy measures the SFT checkpoint" in idle[1]


def test_runs_are_grouped_into_sft_dpo_and_placebo_arms():
    assert [run_arm(name) for name in ("sft", run_name(0, 5), run_name(3, 15, "placebo"))] == ["sft", "dpo", "dpo_placebo"]


def test_zephyr_cost_estimate_is_the_forward_pass_ratio_and_is_labelled():
    assert zephyr_cost_estimate(16, 1_000, 61_135) == pytest.approx(16 * 1_000 * 2 / (61_135 * 2 * 4))
    sentence = cost_statement(30.0, 60.0, checkpoints=3, metric_pairs=120, dpo_pairs_seen=24)
    assert "took 30.0 s" in sentence and "60.0 s" in sentence and "50% of a DPO run — cheaper" in sentence
    assert "ESTIMATE at Zephyr scale" in sentence and f"{zephyr_cost_estimate():.1%}" in sentence
    assert "NOT cheaper" in cost_statement(90.0, 60.0, checkpoints=3, metric_pairs=120, dpo_pairs_seen=24)


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
    assert all(len(v) == 0 for v in preference_logprobs(model, tok, [], chat=True).values())


def test_testbed_study_data_is_held_out_and_family_balanced():
    cfg = compose(["study=rewardrank"])
    assert cfg.data.name == "reasoning_gym_calibrated_preference" and list(cfg.study.seeds) == [0, 1, 2, 3, 4]
    data = study_data(cfg, build_testbed(cfg.data))
    pool, prefs = cfg.data.pool_per_family * len(cfg.data.families), cfg.data.preference_per_family * len(cfg.data.families)
    assert len(data["sft_val"]) == round(cfg.study.sft_data.validation * pool)
    assert len(data["metric_pairs"]) == round(cfg.study.preference_data.metric_pairs * prefs)
    assert len({r["family"] for r in data["sft_val"]}) == len(cfg.data.families)
    assert len({r["family"] for r in data["dpo_pairs"]}) == len(cfg.data.families)
    assert not {r["id"] for r in data["sft_val"]} & {r["id"] for r in data["sft_train"]}
    assert not {r["id"] for r in data["metric_pairs"]} & {r["id"] for r in data["dpo_pairs"]}
    assert {p["kind"] for p in data["metric_pairs"] + data["dpo_pairs"]} == {"gold_vs_wrong"}
    assert pair_sources(cfg.study) == {"own": True, "kinds": ["own", "gold_vs_wrong"]}


def test_pair_sources_refuse_own_pairs_without_samples_or_a_verifier():
    cfg = compose(["study=rewardrank"])
    study = OmegaConf.to_container(cfg.study)
    with pytest.raises(ValueError, match="study.rewardrank_pairs=own needs each checkpoint's own samples"):
        pair_sources(OmegaConf.create({**study, "self_sampled": {"samples": 0, "temperature": 1.0}}))
    with pytest.raises(ValueError, match="own pairs need a verifier"):
        pair_sources(OmegaConf.create({**study, "preference_data": {**study["preference_data"], "source": "x/y"}}))
    gold = OmegaConf.create({**study, "self_sampled": {"samples": 0, "temperature": 1.0},
                             "rewardrank_pairs": "gold_vs_wrong", "dpo_pairs": "gold_vs_wrong"})
    assert pair_sources(gold) == {"own": False, "kinds": ["gold_vs_wrong"]}


@pytest.mark.parametrize("profile", ["paper_zephyr", "paper_zephyr_lora"])
def test_zephyr_recipe_loads_ultrachat_and_ultrafeedback_formats_from_local_files(profile):
    """The GPU Zephyr profiles read the hub datasets through the same loaders; here they point at local fixtures."""
    cfg = compose(["study=rewardrank", f"profile={profile}", f"study.sft_data.source={FIXTURES / 'chat.jsonl'}",
                   f"study.preference_data.source={FIXTURES / 'preferences.jsonl'}",
                   "study.sft_data.validation=0.5", "study.preference_data.metric_pairs=0.5"])
    assert cfg.train.save_steps == 100 and cfg.dpo.beta == 0.01 and cfg.train.num_train_epochs == 1
    assert cfg.train.max_steps == -1 and cfg.dpo.max_steps == -1 and cfg.model.name == "mistral-7b-v0.1"
    full = profile == "paper_zephyr"   # the recipe: full fine-tuning, fp32 masters; LoRA: an fp32 adapter on a bf16 base
    assert (cfg.get("peft") is None, cfg.model.dtype, cfg.dpo.learning_rate) == \
        ((True, "float32", 5e-7) if full else (False, "bfloat16", 5e-6))
    global_batch = cfg.train.per_device_train_batch_size * cfg.train.gradient_accumulation_steps * cfg.profile.gpus
    assert global_batch == 128 and cfg.eval.judge == "reward_model" and cfg.data.name == "alpaca_eval2"
    # no verifier for UltraFeedback: no own pairs; the metric under test and DPO use its chosen-vs-rejected pairs
    assert (cfg.study.rewardrank_pairs, cfg.study.dpo_pairs, cfg.study.self_sampled.samples) == \
        ("gold_vs_wrong", "gold_vs_wrong", 0)
    assert list(cfg.study.seeds) == [0] and cfg.study.sft_subsample == 1.0
    assert pair_sources(cfg.study) == {"own": False, "kinds": ["gold_vs_wrong"]}
    data = study_data(cfg, {"pool": [], "preference": []})
    assert data["sft_val"][0]["response"] == "I am a helpful assistant." and data["sft_train"][0]["response"] == "Paris."
    assert (data["metric_pairs"][0]["chosen"], data["dpo_pairs"][0]["rejected"]) == ("12", "cat")


def test_zephyr_recipe_renders_zephyrs_chat_template(smoke_cfg):
    from studykit.models import load_tokenizer

    template = compose(["study=rewardrank", "profile=paper_zephyr"]).model.chat_template
    tokenizer = load_tokenizer(OmegaConf.merge(smoke_cfg.model, {"chat_template": template}))
    eos = tokenizer.eos_token
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                              {"role": "user", "content": "Bye"}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered == f"<|user|>\nHi{eos}\n<|assistant|>\nHello{eos}\n<|user|>\nBye{eos}\n<|assistant|>\n"


def test_bad_values_are_clear_errors():
    from studykit.config import ConfigError

    with pytest.raises(ConfigError, match=r"study.sft_data.validation=1.5 is not allowed: expected a fraction in \(0, 1\)"):
        compose(["study=rewardrank", "study.sft_data.validation=1.5"])
    with pytest.raises(ConfigError, match=r"study.rewardrank_pairs='mine' is not allowed: expected own or gold_vs_wrong"):
        compose(["study=rewardrank", "study.rewardrank_pairs=mine"])
    with pytest.raises(ConfigError, match=r"study.dpo_pairs='all' is not allowed: expected own, gold_vs_wrong or both"):
        compose(["study=rewardrank", "study.dpo_pairs=all"])
    with pytest.raises(ConfigError, match=r"study.sft_subsample=0 is not allowed: expected a share in \(0, 1\]"):
        compose(["study=rewardrank", "study.sft_subsample=0"])
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


def test_the_embedded_recipe_fits_checkpoints_on_its_steps():
    from studykit.train import checkpoint_every

    cfg = compose(["study=rewardrank"])
    train = OmegaConf.to_container(cfg.train, resolve=True)
    data = study_data(cfg, build_testbed(cfg.data))
    per_seed = len(sft_subsample(data["sft_train"], cfg.study.sft_subsample, 0))
    every = checkpoint_every(per_seed, train, cfg.study.checkpoints)
    assert [every * k for k in range(1, cfg.study.checkpoints + 1)] == [5, 10, 15] == [5, 10, cfg.train.max_steps]


def test_pair_movement_splits_a_margin_gain_into_the_chosen_and_the_rejected_change():
    from studykit.rewardrank import pair_movement

    start = {"chosen": np.array([-5.0, -6.0]), "rejected": np.array([-4.0, -7.0]),
             "chosen_tokens": np.array([2, 3]), "rejected_tokens": np.array([2, 3])}
    trained = {**start, "chosen": np.array([-4.0, -6.0]), "rejected": np.array([-6.0, -8.0])}
    moved = pair_movement(trained, start)
    assert moved["chosen_logprob_change"] == 0.5 and moved["rejected_logprob_change"] == -1.5
    assert moved["reward_margin"] == 2.0 and moved["reward_acc"] == 1.0   # (+1 + 2) and (0 + 1) nats, both > 0
    assert moved["rank_acc"] == 1.0 and moved["rank_margin"] == 2.0       # −4 vs −6, −6 vs −8
