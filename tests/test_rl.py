"""RL with verifiable rewards: the rewards on real replies, HPT's switch, Prefix-RFT's prefixes and entropy mask,
DUMP's sampling distribution on a hand-computed case, and one GRPO step of every registered trainer."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from trl import GRPOTrainer

from studykit import rl
from studykit.registry import RL_METHODS
from studykit.rewards import REWARDS, answer_format, reward_functions, verifier
from studykit.curriculum import CurriculumSampler, UCBCurriculum
from studykit.data import load_math
from studykit.hybrid_rl import entropy_prefix_mask, hpt_sft_groups, prefix_length, prefix_low
from studykit.logprobs import encode_pair, format_pair, sequence_logprobs
from studykit.testbed import _generate, build_testbed


def record(family: str, answer: str, **params) -> dict:
    for entry in _generate(family, params, 60, seed=7):
        if str(entry["answer"]) == answer:
            return {"family": family, "entry": json.dumps(entry), "answer": answer}
    raise LookupError(answer)


def rewards(fn, rec: dict, replies: list) -> list[float]:
    n = len(replies)
    return fn(completions=replies, family=[rec["family"]] * n, entry=[rec["entry"]] * n)


def test_verifier_reward_is_the_lenient_judgement_of_real_replies():
    chain = record("chain_sum", "7", min_terms=2, max_terms=2, min_digits=1, max_digits=1)
    chat = [[{"role": "assistant", "content": text}] for text in ("The answer is 7.", "3 + 4 = 7", "8", "")]
    assert rewards(verifier, chain, chat) == [1.0, 1.0, 0.0, 0.0]
    assert rewards(verifier, chain, ["7", "I think 8"]) == [1.0, 0.0]  # plain-text completions too
    knights = {"family": "knights_knaves:2", "entry": json.dumps(
        _generate("knights_knaves", {"n_people": 2}, 1, seed=1)[0])}
    gold = json.loads(knights["entry"])["answer"]
    assert rewards(verifier, knights, [gold, "The answer is: " + gold, "I do not know"]) == [1.0, 1.0, 0.0]


def test_format_reward_wants_the_answer_alone_on_one_line_right_or_wrong():
    chain = record("chain_sum", "7", min_terms=2, max_terms=2, min_digits=1, max_digits=1)
    assert rewards(answer_format, chain, ["7", "8.", "The answer is 7.", "7\nbecause 3 + 4", " "]) == [
        1.0, 1.0, 0.0, 0.0, 0.0]
    syllogism = record("syllogism", "Yes")
    assert rewards(answer_format, syllogism, ["Yes.", "no", "Yes, because all A are B"]) == [1.0, 1.0, 0.0]
    knights = {"family": "knights_knaves", "entry": "{}"}
    assert rewards(answer_format, knights, ["Amelia is a hero, and Elizabeth is a villain."]) == [1.0]


def test_reward_weights_come_from_the_config(smoke_cfg):
    funcs, weights = reward_functions(smoke_cfg.rl)
    assert [f.__name__ for f in funcs] == ["verifier"] and weights == [1.0]
    with pytest.raises(ValueError, match="rl.rewards"):
        reward_functions({"rewards": {"verifier": 0.0}})


def test_verifier_reward_on_math_is_math_verify_on_the_final_answer(tiny):
    """A math record's prompt row (studykit.data.load_math → grpo_dataset) carries the entry that routes the
    verifier reward to Math-Verify: the final answer counts in any equal form, an earlier number does not."""
    problem = load_math(Path(__file__).parent / "fixtures" / "paper" / "math_500.jsonl")[0]   # gold \frac{3}{4}
    row = rl.grpo_dataset([problem], tiny[1], chat=True)[0]
    assert (row["family"], row["entry"], row["solution"]) == ("math", problem["entry"], problem["response"])
    replies = ["1/2 + 1/4 = 3/4, so the answer is $\\boxed{\\frac{3}{4}}$.", "\\boxed{0.75}", "\\boxed{3/4}.",
               "First 3/4, then \\boxed{1}", "", "I do not know."]
    chat = [[{"role": "assistant", "content": text}] for text in replies]
    assert rewards(verifier, row, chat) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_hpt_switches_to_sft_exactly_for_groups_with_at_most_gamma_solved():
    solved = torch.tensor([1, 0, 0, 0,   1, 1, 0, 0,   0, 0, 0, 0,   1, 1, 1, 1], dtype=torch.bool)
    expected = {0: [False, False, True, False], 1: [True, False, True, False], 2: [True, True, True, False]}
    for gamma, groups in expected.items():
        assert hpt_sft_groups(solved, 4, gamma).tolist() == [g for g in groups for _ in range(4)]


def test_prefix_ratio_schedule_and_length():
    assert prefix_low(0, 100) == pytest.approx(0.95)
    assert prefix_low(50, 100) == pytest.approx(0.475)
    assert prefix_low(100, 100) == pytest.approx(0.0) and prefix_low(150, 100) == pytest.approx(0.0)
    rng = __import__("random").Random(0)
    assert prefix_length(20, 0.95, 0.95, rng) == 19  # ⌊0.95 · 20⌋
    assert all(0 <= prefix_length(7, 0.0, 0.95, rng) <= 6 for _ in range(200))  # never the whole demonstration


def test_entropy_mask_keeps_the_top_share_of_prefix_tokens_and_every_continuation_token():
    entropies = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.2, 0.05],
                              [0.1, 0.9, 0.5, 0.3, 0.2, 0.05]])
    mask = entropy_prefix_mask(entropies, torch.tensor([5, 3]), top_share=0.4)
    # row 0: prefix of 5 → ⌈0.4·5⌉ = 2 highest (positions 1, 2), then the continuation (5);
    # row 1: prefix of 3 → ⌈0.4·3⌉ = 2 highest of positions 0–2 (1, 2), continuation 3–5.
    assert mask.tolist() == [[0, 1, 1, 0, 0, 1], [0, 1, 1, 1, 1, 1]]


def test_dump_probabilities_follow_the_ucb_formula_on_a_hand_computed_case():
    curriculum = UCBCurriculum(["a", "b"], window=2, temperature=0.1)
    assert curriculum.probabilities() == pytest.approx([0.5, 0.5])  # no data: equal scores
    curriculum.update(["a", "a", "b"], [1.0, -3.0, 0.5])
    curriculum.update(["a"], [-2.0])          # window 2: a keeps |−3|, |−2| → μ_a = 2.5; n_a = 3, n_b = 1, N = 4
    score_a = 2.5 + math.sqrt(2 * math.log(5) / 4)
    score_b = 0.5 + math.sqrt(2 * math.log(5) / 2)
    p_b = 1 / (1 + math.exp((score_a - score_b) / 0.1))
    assert curriculum.scores() == pytest.approx([score_a, score_b])
    mu, bonus = curriculum.terms()
    assert mu == pytest.approx([2.5, 0.5]) and bonus == pytest.approx([score_a - 2.5, score_b - 0.5])
    assert curriculum.probabilities() == pytest.approx([1 - p_b, p_b], rel=1e-9)


def test_curriculum_sampler_repeats_prompts_like_trl_and_draws_from_the_favoured_arm():
    curriculum = UCBCurriculum(["easy", "hard"], window=10, temperature=0.01)
    curriculum.update(["hard"] * 10 + ["easy"] * 10, [1.0] * 10 + [0.0] * 10)  # hard carries the signal
    arms = ["easy", "hard"] * 5
    sampler = CurriculumSampler(arms, curriculum, mini_repeat_count=3, batch_size=2, repeat_count=2, seed=0)
    indices = list(sampler)
    assert len(indices) == len(sampler) == 5 * 2 * 3 * 2
    block = indices[:12]
    assert block[:6] == block[6:12]                                        # each block twice (repeat_count)
    assert all(len(set(block[i:i + 3])) == 1 for i in range(0, 6, 3))     # each prompt G times in a row
    assert all(arms[i] == "hard" for i in indices)
    with pytest.raises(ValueError, match="arms without items"):
        CurriculumSampler(["easy"], curriculum, mini_repeat_count=2, batch_size=1, repeat_count=1, seed=0)


@pytest.fixture(scope="module")
def pool(smoke_cfg):
    return build_testbed(smoke_cfg.data)["pool"]


def _pattern_reward(pattern: list[float]):
    """A stand-in 'verifier' reward that solves rollouts in a fixed pattern (one entry per rollout row)."""
    def verifier(completions, **_):
        return pattern[:len(completions)]
    verifier.__name__ = "verifier"
    return verifier


def _generation_batch(trainer, rows: list[dict]) -> list[dict]:
    dataset = trainer.train_dataset
    by_entry = {r["entry"]: i for i, r in enumerate(dataset)}
    return [dataset[by_entry[r["entry"]]] for r in rows for _ in range(trainer.num_generations)]


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "plain"])
def test_hpt_trains_the_switched_groups_demonstration_with_sft(tiny, pool, tmp_path, monkeypatch, chat):
    from studykit.config import compose

    model, tokenizer = tiny
    cfg = compose(["profile=smoke", f"model.chat_template={str(chat).lower()}"])
    monkeypatch.setitem(REWARDS, "verifier", _pattern_reward([1.0, 0.0, 0.0, 0.0]))  # group 0 solves 1, group 1 none
    trainer = rl.build_grpo_trainer(copy.deepcopy(model), tokenizer, pool, cfg, tmp_path, method="hpt")
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); here the loss is called directly
    rows = pool[:2]
    output = trainer._generate_and_score_completions(_generation_batch(trainer, rows))
    assert output["advantages"][2:].abs().sum() == 0 and output["advantages"][:2].abs().sum() > 0
    assert output["demo_rows"].tolist() == [False, False, True, False]   # once per switched group
    assert output["switched"].tolist() == [False, False, True, True]

    rl_all_rows = GRPOTrainer._compute_loss(trainer, trainer.model, output)
    total = trainer._compute_loss(trainer.model, output)
    demo = sequence_logprobs(trainer.model, tokenizer, [rows[1]["prompt"]], [rows[1]["response"]], chat=chat)
    # the official code: the RL loss over the unswitched rows (2 of 4) + sft_coef × the demonstration's token-mean NLL,
    # not weighted by the switched share
    expected = rl_all_rows.item() * 4 / 2 - demo["mean"][0]
    assert total.item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "plain"])
def test_prefix_rft_hybrid_rollout_starts_with_the_demonstration_and_masks_its_prefix(tiny, pool, tmp_path,
                                                                                       monkeypatch, chat):
    from studykit.config import compose

    model, tokenizer = tiny
    cfg = compose(["profile=smoke", f"model.chat_template={str(chat).lower()}"])
    monkeypatch.setitem(REWARDS, "verifier", _pattern_reward([1.0, 0.0, 0.0, 1.0]))
    trainer = rl.build_grpo_trainer(copy.deepcopy(model), tokenizer, pool, cfg, tmp_path, method="prefix_rft",
                                    max_completion_length=12)
    trainer.model.train()
    rows = sorted(pool, key=lambda r: -len(r["response"]))[:2]  # long demonstrations: prefixes of several tokens
    output = trainer._generate_and_score_completions(_generation_batch(trainer, rows))
    lengths = trainer._prefix_lengths
    assert lengths[1] == lengths[3] == 0 and lengths[0] > 1 and lengths[2] > 1  # the first rollout of each group
    for row, rec in ((0, rows[0]), (2, rows[1])):
        prompt_text, _ = format_pair(tokenizer, rec["prompt"], rec["response"], chat=chat)
        content = encode_pair(tokenizer, prompt_text, rec["response"] if chat else " " + rec["response"])[1]
        assert output["prompt_ids"][row][output["prompt_mask"][row].bool()].tolist() == tokenizer(prompt_text)["input_ids"]
        n = lengths[row]
        assert n == min(math.floor(0.95 * len(content)), 12)  # step 0: low = high = 0.95
        assert output["completion_ids"][row, :n].tolist() == content[:n]
        advantage = output["advantages"][row]
        kept = (advantage[:n] != 0).sum().item()
        assert kept == math.ceil(0.2 * n)                              # top 20% of the prefix keep theirs
        continuation = output["completion_mask"][row].bool().clone()
        continuation[:n] = False
        assert torch.all(advantage[continuation] == advantage[:n][advantage[:n] != 0][0])
    assert torch.all(output["advantages"][1] == output["advantages"][1, 0])  # ordinary rollouts: one advantage


@pytest.mark.parametrize("method", sorted(RL_METHODS))
def test_every_rl_trainer_takes_a_grpo_step_on_the_smoke_profile(method, tiny, smoke_cfg, pool, tmp_path):
    model, tokenizer = tiny
    trainer = rl.train_grpo(copy.deepcopy(model), tokenizer, pool, smoke_cfg, tmp_path, method=method, max_steps=1)
    assert trainer.state.global_step == 1
    logged = {k for row in trainer.state.log_history for k in row}
    assert {"loss", "reward", "rewards/verifier/mean"} <= logged
    own = {"hpt": "hpt/sft_group_fraction", "prefix_rft": "prefix_rft/mean_prefix_tokens"}.get(method)
    assert own is None or own in logged
    assert [(r["step"], 0 <= r["signal_share"] <= 1) for r in rl.signal_log(trainer.state.log_history, method, 0)] == [(1, True)]
    if method == "dump":
        assert trainer.history and set(trainer.history[0]) >= {"step", "p[chain_sum]", "mu[chain_sum]",
                                                               "bonus[chain_sum]"}


def test_rl_settings_are_checked_before_any_work():
    from studykit.config import ConfigError, compose

    with pytest.raises(ConfigError, match=r"grpo.per_device_train_batch_size=6 is not allowed: expected a multiple"):
        compose(["profile=smoke", "grpo.per_device_train_batch_size=6", "grpo.num_generations=4"])
    with pytest.raises(ConfigError, match=r"grpo.num_generations=1 is not allowed"):
        compose(["grpo.num_generations=1"])
    with pytest.raises(ConfigError, match=r"rl.rewards=.* is not allowed"):
        compose(["rl.rewards.verifier=0"])
    with pytest.raises(ConfigError, match=r"rl.prefix_rft.high=1.5 is not allowed"):
        compose(["rl.prefix_rft.high=1.5"])
    with pytest.raises(ValueError, match="unknown RL method 'ppo'"):
        rl.build_grpo_trainer(None, None, [], compose(["profile=smoke"]), "/tmp", method="ppo")


def test_signal_log_is_one_minus_the_share_of_groups_with_one_reward_per_logged_step():
    history = [{"loss": 0.1, "frac_reward_zero_std": 0.25, "step": 1},
               {"loss": 0.2, "frac_reward_zero_std": 1.0, "step": 2}, {"train_runtime": 3.0, "step": 2}]
    assert rl.signal_log(history, "grpo", 3) == [
        {"condition": "grpo", "seed": 3, "step": 1, "signal_share": 0.75},
        {"condition": "grpo", "seed": 3, "step": 2, "signal_share": 0.0}]
    with pytest.raises(ValueError, match="no 'frac_reward_zero_std'"):
        rl.signal_log(history[2:], "sft", 0)


def test_evaluate_every_evaluates_in_eval_mode_at_every_nth_step_before_the_last():
    from types import SimpleNamespace

    from studykit.rl import EvaluateEvery

    model = torch.nn.Linear(1, 1)
    seen = []
    callback = EvaluateEvery(lambda m: seen.append(m.training) or len(seen), every=2)
    for step in range(1, 7):
        callback.on_step_end(None, SimpleNamespace(global_step=step, max_steps=6), None, model=model)
    assert callback.curve == [(2, 1), (4, 2)] and seen == [False, False] and model.training
    with pytest.raises(ValueError, match="every must be ≥ 1"):
        EvaluateEvery(lambda m: None, every=0)


def test_the_instance_filter_drops_exactly_the_prompts_whose_rollouts_all_fail(tiny, pool, monkeypatch):
    """RIF-RFT's filter: a prompt stays when at least one of its rollouts is verified correct."""
    import studykit.transforms as transforms

    model, tokenizer = tiny
    pool = pool[:6]
    solved_once = {pool[1]["id"], pool[4]["id"]}

    def fake_generate(model, tokenizer, prompts, **kwargs):  # 3 rollouts per prompt; only the second can be right
        return [pool[i // 3]["answer"] if i % 3 == 1 and pool[i // 3]["id"] in solved_once else "zzz"
                for i in range(len(prompts))]

    monkeypatch.setattr(transforms, "generate", fake_generate)
    kept = rl.learnable_prompts(pool, model, tokenizer, rollouts=3, chat=True, max_new_tokens=4)
    assert [r["id"] for r in kept] == [r["id"] for r in pool if r["id"] in solved_once]
    with pytest.raises(ValueError, match="rollouts must be ≥ 1"):
        rl.learnable_prompts(pool, model, tokenizer, rollouts=0, chat=True, max_new_tokens=4)


def test_one_prompt_pass_per_group_gives_trls_log_probs_entropies_and_gradients(tiny, smoke_cfg, pool, tmp_path):
    """SharedPromptGRPOTrainer runs each distinct prompt once (studykit.grpo): on a batch of two left-padded prompts
    of different lengths, each with G = 3 right-padded completions of different lengths, its per-token log-probs,
    entropies and the gradient of a loss on them equal those of TRL's own pass over every row whole."""
    from studykit.grpo import SharedPromptGRPOTrainer

    model, tokenizer = tiny
    trainer = rl.build_grpo_trainer(copy.deepcopy(model), tokenizer, pool, smoke_cfg, tmp_path)
    assert isinstance(trainer, SharedPromptGRPOTrainer)
    pad = tokenizer.pad_token_id
    prompts = [[5, 17, 230, 41, 9], [88, 12, 7]]                       # 5 and 3 tokens, left-padded to 5
    completions = [[3, 4, 5, 6], [7, 8], [9], [10, 11, 12], [13], [14, 15, 16, 17]]
    rows = [(prompts[i // 3], c) for i, c in enumerate(completions)]
    ids = torch.tensor([[pad] * (5 - len(p)) + p + c + [pad] * (4 - len(c)) for p, c in rows])
    mask = torch.tensor([[0] * (5 - len(p)) + [1] * (len(p) + len(c)) + [0] * (4 - len(c)) for p, c in rows])
    policy = trainer.model
    shapes = []   # what the backbone runs: the distinct prompts once, then each row's last prompt token + completion
    policy.base_model.register_forward_hook(lambda module, args, kwargs, out: shapes.append(
        tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    results = {}
    for name, method in (("shared", trainer._get_per_token_logps_and_entropies),
                         ("trl", lambda *a, **k: GRPOTrainer._get_per_token_logps_and_entropies(trainer, *a, **k))):
        policy.zero_grad()
        logps, entropies, _ = method(policy, ids, mask, 4, compute_entropy=True)
        completion_mask = mask[:, 5:].bool()
        (logps[completion_mask] * torch.linspace(0.5, 1.5, int(completion_mask.sum()))).sum().backward()
        results[name] = (logps.detach(), entropies.detach(), [p.grad.clone() for p in policy.parameters()])
    (logps, entropies, grads), (trl_logps, trl_entropies, trl_grads) = results["shared"], results["trl"]
    completion_mask = mask[:, 5:].bool()
    torch.testing.assert_close(logps[completion_mask], trl_logps[completion_mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropies[completion_mask], trl_entropies[completion_mask], atol=1e-5, rtol=1e-5)
    for grad, trl_grad in zip(grads, trl_grads):
        torch.testing.assert_close(grad, trl_grad, atol=1e-5, rtol=1e-4)
    assert logps.shape == trl_logps.shape == (6, 4)
    assert shapes == [(2, 4), (6, 5), (6, 9)]   # shared: 8 + 30 token positions; TRL: 54


@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sampled"])
def test_one_prefill_per_group_generates_trls_rollouts(tiny, smoke_cfg, pool, tmp_path, sample):
    """Rollouts from each distinct prompt's shared prefill (studykit.grpo) are TRL's own: the same tokens, greedy or
    sampled from the same seed, for left-padded prompts of different lengths; the prefill runs on 2 rows, not 6."""
    from transformers import GenerationConfig

    model, tokenizer = tiny
    trainer = rl.build_grpo_trainer(copy.deepcopy(model), tokenizer, pool, smoke_cfg, tmp_path)
    trainer.generation_config = GenerationConfig(do_sample=sample, max_new_tokens=6, temperature=1.0, top_k=0,
                                                 pad_token_id=tokenizer.pad_token_id,
                                                 eos_token_id=trainer.eos_token_ids)
    prompts = [[5, 17, 230, 41, 9], [88, 12, 7]]
    prompt_ids = [prompts[0]] * 3 + [prompts[1]] * 3
    shapes = []
    trainer.model.base_model.register_forward_hook(lambda module, args, kwargs, out: shapes.append(
        tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    torch.manual_seed(3)
    shared, _ = trainer._generate_single_turn(prompt_ids, None, {}, 3)
    first_shapes, shapes[:] = list(shapes), []
    torch.manual_seed(3)
    trl, _ = GRPOTrainer._generate_single_turn(trainer, prompt_ids, None, {}, 3)
    assert shared == trl and {len(c) for c in shared} != {0}
    assert first_shapes[:2] == [(2, 4), (6, 1)] and shapes[0] == (6, 5)   # shared prefill; then TRL's whole one
    assert "generate" not in trainer.model.__dict__                       # the model's own generate again


def test_hpt_pools_the_demonstrations_tokens_when_every_group_switches(tiny, pool, smoke_cfg, tmp_path, monkeypatch):
    """No group solves a rollout: no RL term, and the SFT term is the token-mean NLL over both demonstrations'
    pooled tokens (the official compute_sft_pure_loss), not the mean of their per-demonstration means."""
    model, tokenizer = tiny
    cfg = smoke_cfg
    monkeypatch.setitem(REWARDS, "verifier", _pattern_reward([0.0, 0.0, 0.0, 0.0]))
    trainer = rl.build_grpo_trainer(copy.deepcopy(model), tokenizer, pool, cfg, tmp_path, method="hpt")
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    rows = sorted(pool, key=lambda r: len(r["response"]))[::len(pool) - 1][:2]   # the shortest and the longest
    output = trainer._generate_and_score_completions(_generation_batch(trainer, rows))
    assert output["switched"].all() and output["demo_rows"].tolist() == [True, False, True, False]
    demo = sequence_logprobs(trainer.model, tokenizer, [r["prompt"] for r in rows], [r["response"] for r in rows],
                             chat=True)
    assert demo["n_tokens"][0] != demo["n_tokens"][1]
    pooled = -demo["sum"].sum() / demo["n_tokens"].sum()
    assert trainer._compute_loss(trainer.model, output).item() == pytest.approx(pooled, rel=1e-4)
    assert abs(pooled + demo["mean"].mean()) > 5e-4 * pooled   # the other reading differs beyond that tolerance
