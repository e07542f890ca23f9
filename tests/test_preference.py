"""SELM's optimistic DPO term on the tiny model: its value against the kit's independent scorer, and its wiring."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from trl import DPOConfig, DPOTrainer

from studykit.logprobs import sequence_logprobs
from studykit.models import copy_model
from studykit.preference import SELMTrainer
from studykit.testbed import build_testbed
from studykit.trainers import dpo_dataset, training_args as _args


@pytest.fixture(scope="module")
def pairs(smoke_cfg):
    pairs = build_testbed(smoke_cfg.data)["preference"][:6]
    return [{**p, "reference_response": "I think " + p["rejected"]} for p in pairs]   # y₀: the model's own reply


def _args_for(cfg, tmp_path, n):
    return _args(DPOConfig, cfg.dpo, tmp_path, 0, {"per_device_train_batch_size": n}, torch.device("cpu"))


def _loss(trainer):
    batch = dict(next(iter(trainer.get_train_dataloader())))
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch))


def test_selm_adds_alpha_beta_times_the_log_ratio_of_the_models_own_reply(tiny, smoke_cfg, pairs, tmp_path):
    model, tokenizer = tiny
    policy = copy_model(model)
    with torch.no_grad():
        for p in policy.model.layers[0].parameters():
            p.add_(torch.randn_like(p) * 0.2)
    alpha, beta = 0.3, smoke_cfg.dpo.beta
    selm = SELMTrainer(model=policy, ref_model=copy_model(model), processing_class=tokenizer, alpha=alpha,
                       args=_args_for(smoke_cfg, tmp_path / "selm", len(pairs)), train_dataset=dpo_dataset(pairs, True))
    dpo = DPOTrainer(model=copy_model(policy), ref_model=copy_model(model), processing_class=tokenizer,
                     args=_args_for(smoke_cfg, tmp_path / "dpo", len(pairs)),
                     train_dataset=dpo_dataset([{k: v for k, v in p.items() if k != "reference_response"} for p in pairs], True))
    prompts, replies = [p["prompt"] for p in pairs], [p["reference_response"] for p in pairs]
    log_ratio = (sequence_logprobs(policy, tokenizer, prompts, replies, chat=True)["sum"]
                 - sequence_logprobs(model, tokenizer, prompts, replies, chat=True)["sum"])
    assert abs(log_ratio.mean()) > 1e-3
    assert _loss(selm) - _loss(dpo) == pytest.approx(alpha * beta * float(np.mean(log_ratio)), rel=1e-4, abs=1e-6)


def test_the_optimistic_term_vanishes_when_the_policy_is_the_reference(tiny, smoke_cfg, pairs, tmp_path):
    model, tokenizer = tiny
    data = dpo_dataset(pairs, True)
    selm = SELMTrainer(model=copy_model(model), ref_model=copy_model(model), processing_class=tokenizer, alpha=1.0,
                       args=_args_for(smoke_cfg, tmp_path / "a", len(pairs)), train_dataset=data)
    assert _loss(selm) == pytest.approx(np.log(2.0), rel=1e-5)   # DPO at policy = reference is log 2; the term is 0


def test_a_selm_step_trains_and_lowers_the_likelihood_of_the_own_reply_more_than_dpo(tiny, smoke_cfg, pairs, tmp_path):
    model, tokenizer = tiny
    prompts, replies = [p["prompt"] for p in pairs], [p["reference_response"] for p in pairs]
    results = {}
    for name, alpha in (("dpo", 0.0), ("selm", 50.0)):
        trainer = SELMTrainer(model=copy_model(model), ref_model=copy_model(model), processing_class=tokenizer,
                              alpha=alpha, train_dataset=dpo_dataset(pairs, True),
                              args=_args(DPOConfig, smoke_cfg.dpo, tmp_path / name, 0,
                                         {"max_steps": 1, "learning_rate": 1e-3, "per_device_train_batch_size": 6,
                                          "lr_scheduler_type": "constant", "warmup_steps": 0}, torch.device("cpu")))
        trainer.train()
        results[name] = sequence_logprobs(trainer.model, tokenizer, prompts, replies, chat=True)["sum"].mean()
    assert results["selm"] < results["dpo"]


def test_selm_needs_the_models_reply_and_the_sigmoid_loss(tiny, smoke_cfg, pairs, tmp_path):
    model, tokenizer = tiny
    plain = dpo_dataset([{k: v for k, v in p.items() if k != "reference_response"} for p in pairs], True)
    with pytest.raises(ValueError, match="needs a 'reference_response' column"):
        SELMTrainer(model=copy_model(model), ref_model=copy_model(model), processing_class=tokenizer,
                    args=_args_for(smoke_cfg, tmp_path / "a", 2), train_dataset=plain)
    with pytest.raises(ValueError, match="sigmoid DPO loss"):
        SELMTrainer(model=copy_model(model), ref_model=copy_model(model), processing_class=tokenizer,
                    args=_args(DPOConfig, smoke_cfg.dpo, tmp_path / "b", 0, {"loss_type": ["ipo"]}, torch.device("cpu")),
                    train_dataset=dpo_dataset(pairs, True))


def test_the_normalizer_follows_its_log_space_moving_average():
    from studykit.preference import normalizer_update

    s = torch.tensor([[1.0, 3.0]])
    expected = math.log(0.15 * math.exp(0.0) + 0.85 * (math.e + math.e ** 3) / 2)
    assert normalizer_update(torch.zeros(1), s, 0.85).item() == pytest.approx(expected)
    assert normalizer_update(torch.tensor([5.0]), s, 1.0).item() == pytest.approx(math.log((math.e + math.e ** 3) / 2))


@pytest.mark.parametrize("reference_free", [False, True])
def test_discriminative_ft_loss_matches_the_papers_formula_on_the_kits_own_scores(tiny, smoke_cfg, pairs, tmp_path,
                                                                                  reference_free):
    from studykit.preference import DiscriminativeFTTrainer

    model, tokenizer = tiny
    policy = copy_model(model)
    with torch.no_grad():
        for p in policy.model.layers[0].parameters():
            p.add_(torch.randn_like(p) * 0.2)
    plain = [{k: v for k, v in p.items() if k != "reference_response"} for p in pairs]
    trainer = DiscriminativeFTTrainer(model=policy, ref_model=copy_model(model), processing_class=tokenizer,
                                      reference_free=reference_free, args=_args_for(smoke_cfg, tmp_path, len(pairs)),
                                      train_dataset=dpo_dataset(plain, True))
    prompts = [p["prompt"] for p in plain]
    key = "mean" if reference_free else "sum"
    chosen = sequence_logprobs(policy, tokenizer, prompts, [p["chosen"] for p in plain], chat=True)[key]
    rejected = sequence_logprobs(policy, tokenizer, prompts, [p["rejected"] for p in plain], chat=True)[key]
    ref = sequence_logprobs(model, tokenizer, prompts, [p["rejected"] for p in plain], chat=True)["sum"]
    tau, gamma = trainer.tau, trainer.gamma
    s = rejected / tau - (0.0 if reference_free else ref)
    u = np.log((1 - gamma) * 1.0 + gamma * np.exp(s))            # from u = 0
    expected = float(np.mean(-chosen + np.exp(s - u) * rejected))
    assert _loss(trainer) == pytest.approx(expected, rel=1e-4)
    first_u = trainer.u.clone()                                     # u is indexed by the example's row
    assert first_u.numpy() == pytest.approx(u, rel=1e-4)
    _loss(trainer)                                                  # the second pass starts from the stored u
    again = np.logaddexp(np.log(1 - gamma) + first_u.numpy(), np.log(gamma) + s)
    assert trainer.u.numpy() == pytest.approx(again, rel=1e-4)


def test_discriminative_ft_needs_a_reference_unless_reference_free_and_valid_settings(tiny, smoke_cfg, pairs, tmp_path):
    from studykit.preference import DiscriminativeFTTrainer

    model, tokenizer = tiny
    data = dpo_dataset([{k: v for k, v in p.items() if k != "reference_response"} for p in pairs], True)
    with pytest.raises(ValueError, match="gamma in \\(0, 1\\]"):
        DiscriminativeFTTrainer(model=copy_model(model), ref_model=copy_model(model), processing_class=tokenizer,
                                gamma=0.0, args=_args_for(smoke_cfg, tmp_path, 2), train_dataset=data)
    with pytest.raises(ValueError, match=r"dpo.precompute_ref_log_probs=true \(no reference model kept\) is not supported"):
        DiscriminativeFTTrainer(model=copy_model(model), processing_class=tokenizer, train_dataset=data,
                                args=_args(DPOConfig, smoke_cfg.dpo, tmp_path / "p", 0,
                                           {"precompute_ref_log_probs": True}, torch.device("cpu")))


def test_self_contrast_keeps_the_least_similar_distinct_samples_as_the_official_lastdedup_mode():
    from studykit.preference import self_contrast_negatives

    samples = ["a", "b", "a", "c", "d", " "]          # "a" twice; an empty sample never becomes a negative
    similarity = [0.9, 0.1, 0.9, 0.5, 0.3, 0.0]        # ranks: " " 0, b 1, d 2, c 3, a 4 (and 5)
    # ⌊6 · 0.5⌋ = 3 least-similar distinct samples: " ", b, d → without the empty one: b, d
    assert sorted(self_contrast_negatives(samples, similarity, k=2, share=0.5)) == ["b", "d"]
    assert self_contrast_negatives(samples, similarity, k=3, share=0.5) == []          # fewer than k left
    assert self_contrast_negatives(["a", "a"], [0.2, 0.2], k=1) == []                   # one distinct: the target's twin
    with pytest.raises(ValueError, match="one similarity per sample"):
        self_contrast_negatives(samples, similarity[:2], k=1)


def test_self_contrast_pairs_use_the_target_as_chosen_and_fail_clearly_without_negatives():
    from studykit.preference import self_contrast_pairs

    records = [{"id": "x", "prompt": "q", "response": "yes"}]
    def embed(texts):   # one axis per word: "yes" is the target, "yep" close to it, "no" / "nah" far
        axes = {"yes": [1, 0, 0], "yep": [0.9, 0.1, 0], "no": [0, 1, 0], "nah": [0, 0, 1]}
        return np.array([axes[t] for t in texts])
    pairs = self_contrast_pairs(records, [["yep", "no", "nah", "no"]], embed, k=1, share=0.5)
    assert len(pairs) == 1 and pairs[0]["chosen"] == "yes" and pairs[0]["rejected"] in {"no", "nah"}
    calls = []
    def embed_counted(texts):
        calls.append(list(texts))
        return embed(texts)
    two = [{"id": "x", "prompt": "q", "response": "yes"}, {"id": "y", "prompt": "r", "response": "no"}]
    pairs = self_contrast_pairs(two, [["yep", "no", "nah"], ["no", "nah", "yes"]], embed_counted, k=1, share=0.5)
    assert calls == [["yes", "yep", "no", "nah", "no", "no", "nah", "yes"]]     # one call, on every target and sample
    assert {(p["id"], p["rejected"]) for p in pairs} <= {("x", "no"), ("x", "nah"), ("y", "yes"), ("y", "nah")}
    assert {p["id"] for p in pairs} == {"x", "y"}
    with pytest.raises(ValueError, match="no record has 1 distinct negatives"):
        self_contrast_pairs(records, [["yep", "yep"]], embed, k=1)


def _first_loss(tiny, cfg, pairs, tmp_path, loss, **options):
    """The loss TRL logs for the first step, taken on all ``pairs`` at once before any update."""
    from studykit.preference import train_preference

    model, tokenizer = tiny
    trainer = train_preference(copy_model(model), copy_model(model), tokenizer, pairs, cfg, tmp_path, loss=loss,
                               max_steps=1, per_device_train_batch_size=len(pairs), logging_steps=1, **options)
    assert trainer.state.global_step == 1
    return trainer.state.log_history[0]["loss"]


@pytest.mark.parametrize("loss, expected", [("sigmoid", math.log(2)), ("sigmoid_norm", math.log(2)),
                                            ("ipo", (1 / (2 * 0.1)) ** 2)])
def test_dpo_family_losses_at_policy_equal_reference(tiny, smoke_cfg, pairs, tmp_path, loss, expected):
    """Every log-ratio is 0 at the start: DPO and its length-normalized form give log 2, IPO (1/(2β))² (β = 0.1)."""
    assert smoke_cfg.dpo.beta == 0.1
    plain = [{k: v for k, v in p.items() if k != "reference_response"} for p in pairs]
    assert _first_loss(tiny, smoke_cfg, plain, tmp_path, loss) == pytest.approx(expected, rel=1e-5)


def test_simpo_loss_is_the_papers_formula_on_length_averaged_log_probs(tiny, smoke_cfg, pairs, tmp_path):
    """SimPO (eq. 6): −log σ(β/|y_w|·log π(y_w) − β/|y_l|·log π(y_l) − γ), reference-free, on the kit's own scores.
    TRL's CPOTrainer appends the tokenizer's EOS after the chat template's end of turn, so each response it scores
    is the kit's response tokens plus one EOS (scored, and counted in the length average)."""
    from studykit.logprobs import encode_pair, format_pair, pair_logprobs, pad_token_id

    model, tokenizer = tiny
    plain = [{k: v for k, v in p.items() if k != "reference_response"} for p in pairs]
    beta, gamma = 2.0, 1.0

    def mean_logprob(side):
        encoded = [encode_pair(tokenizer, *format_pair(tokenizer, p["prompt"], p[side], True)) for p in plain]
        scored = pair_logprobs(model, [(ids, response + [tokenizer.eos_token_id]) for ids, response in encoded],
                               pad_token_id(tokenizer))
        return np.array([float(np.mean(t)) for t in scored])

    margin = beta * (mean_logprob("chosen") - mean_logprob("rejected")) - gamma
    expected = float(np.mean(np.log1p(np.exp(-margin))))
    got = _first_loss(tiny, smoke_cfg, plain, tmp_path, "simpo", beta=beta, simpo_gamma=gamma)
    assert got == pytest.approx(expected, rel=1e-4)


def test_an_unknown_preference_loss_is_one_clear_error(tiny, smoke_cfg, pairs, tmp_path):
    from studykit.preference import train_preference

    model, tokenizer = tiny
    with pytest.raises(ValueError, match="unknown loss 'kto'.*expected one of"):
        train_preference(model, model, tokenizer, pairs, smoke_cfg, tmp_path, loss="kto")


@pytest.mark.parametrize("loss, options", [("selm", {"alpha": 0.01}), ("dft", {}), ("dft2", {"tau": 0.5}),
                                           ("simpo", {}), ("ipo", {})])
def test_every_registered_loss_trains_through_one_entry_point(tiny, smoke_cfg, pairs, tmp_path, loss, options):
    from studykit.preference import train_preference

    model, tokenizer = tiny
    policy = copy_model(model)
    data = pairs if loss == "selm" else [{k: v for k, v in p.items() if k != "reference_response"} for p in pairs]
    trainer = train_preference(policy, copy_model(model), tokenizer, data, smoke_cfg, tmp_path, loss=loss,
                               max_steps=2, learning_rate=1e-3, **options)
    assert trainer.state.global_step == 2 and np.isfinite(trainer.state.log_history[-1]["train_loss"])
    moved = sum(float((a - b).abs().sum()) for a, b in zip(policy.parameters(), model.parameters()))
    assert moved > 0
    if loss == "selm":
        assert trainer.alpha == 0.01                       # a trainer option, not a DPOConfig field
    if loss == "dft2":
        assert trainer.reference_free and trainer.tau == 0.5


def test_delta_pairs_keep_bare_answers_that_differ_and_count_what_they_kept():
    from studykit.preference import delta_pairs

    prompts = [{"id": i, "family": "basic_arithmetic:1d", "prompt": f"q{i}"} for i in range(4)]
    chosen = [{"reply": "7", "lenient": True}, {"reply": "3", "lenient": False}, {"reply": "The answer is 5", "lenient": True},
              {"reply": "4", "lenient": False}]
    rejected = [{"reply": "6", "lenient": False}, {"reply": "3", "lenient": False}, {"reply": "5", "lenient": True},
                {"reply": "2", "lenient": True}]
    pairs, counts = delta_pairs(prompts, chosen, rejected)
    # prompt 1: the same reply; prompt 2: the chosen reply is not a bare answer
    assert [(p["id"], p["chosen"], p["rejected"]) for p in pairs] == [(0, "7", "6"), (3, "4", "2")]
    assert counts == {"prompts": 4, "both bare and different": 2, "pairs (bare_answers)": 2,
                      "chosen right, rejected wrong": 1, "chosen wrong, rejected right": 1}
    assert [p["id"] for p in delta_pairs(prompts, chosen, rejected, keep="different")[0]] == [0, 2, 3]
    assert len(delta_pairs(prompts, chosen, rejected, keep="all")[0]) == 4
    with pytest.raises(ValueError, match="keep='some'"):
        delta_pairs(prompts, chosen, rejected, keep="some")
