"""Analytic checks of the token-weighted SFT objectives, and their wiring into TRL's SFTTrainer."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from trl import SFTConfig, SFTTrainer

from studykit.logprobs import format_pair, response_logprobs

from studykit.objectives import OBJECTIVES, TokenStats, get_objective, objective_loss
from studykit.testbed import build_testbed
from studykit.train import ObjectiveSFTTrainer, train_sft
from studykit.trainers import sft_dataset, training_args as _args

VOCAB = 11


def stats_from_logits(all_logits, targets, mask, **extra) -> TokenStats:
    """TokenStats the way the fused head would produce them, from explicit logits (B, T, V)."""
    log_p = F.log_softmax(all_logits, -1)
    log_probs = log_p.gather(-1, targets[..., None]).squeeze(-1).masked_fill(~mask, 0.0)
    entropy = -(log_p.exp() * log_p).sum(-1).masked_fill(~mask, 0.0)
    return TokenStats(log_probs, mask, entropy=entropy.detach(), **extra)


@pytest.fixture
def batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, VOCAB, requires_grad=True)
    targets = torch.randint(0, VOCAB, (3, 7))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    return logits, targets, mask


def test_every_objective_is_documented_and_registered():
    assert {"sft", "low_lr_sft", "dft", "asft", "pear", "otr"} <= set(OBJECTIVES)
    for objective in OBJECTIVES.values():
        assert objective.fn.__doc__ and "arXiv" in objective.fn.__doc__ or objective.name in ("sft", "low_lr_sft")
    with pytest.raises(ValueError, match="unknown SFT objective 'nope'"):
        get_objective("nope")


def test_uniform_logits_give_log_vocab_for_sft_and_half_of_it_for_dft_at_vocab_two():
    mask = torch.ones(2, 4, dtype=torch.bool)
    targets = torch.zeros(2, 4, dtype=torch.long)
    uniform = stats_from_logits(torch.zeros(2, 4, VOCAB, requires_grad=True), targets, mask)
    assert objective_loss("sft", uniform, mask.sum()).item() == pytest.approx(math.log(VOCAB))
    assert objective_loss("dft", uniform, mask.sum()).item() == pytest.approx(math.log(VOCAB) / VOCAB)
    two = stats_from_logits(torch.zeros(2, 4, 2, requires_grad=True), targets, mask)
    assert objective_loss("dft", two, mask.sum()).item() == pytest.approx(objective_loss("sft", two, mask.sum()).item() / 2)


def test_dft_is_cross_entropy_times_detached_probability(batch):
    logits, targets, mask = batch
    stats = stats_from_logits(logits, targets, mask)
    loss = objective_loss("dft", stats, mask.sum())
    ce = F.cross_entropy(logits[mask], targets[mask], reduction="none")
    expected = (ce * torch.exp(-ce).detach()).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    (grad,) = torch.autograd.grad(loss, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad)


def test_asft_kl_vanishes_when_reference_equals_policy_and_is_positive_otherwise(batch):
    logits, targets, mask = batch
    log_p = F.log_softmax(logits[mask], -1)
    same = stats_from_logits(logits, targets, mask, vocab_log_probs=log_p, ref_vocab_log_probs=log_p.detach())
    assert objective_loss("asft", same, mask.sum(), kl_coef=0.1).item() == pytest.approx(
        objective_loss("dft", same, mask.sum()).item(), rel=1e-6)
    other = stats_from_logits(logits, targets, mask, vocab_log_probs=log_p,
                              ref_vocab_log_probs=F.log_softmax(torch.zeros_like(logits[mask]), -1))
    kl = (F.log_softmax(torch.zeros(VOCAB), -1).exp()
          * (F.log_softmax(torch.zeros(VOCAB), -1) - F.log_softmax(logits[mask], -1))).sum(-1).mean()
    got = objective_loss("asft", other, mask.sum(), kl_coef=0.1) - objective_loss("dft", other, mask.sum())
    assert got.item() == pytest.approx(0.1 * kl.item(), rel=1e-5)
    assert kl.item() > 0


@pytest.mark.parametrize("level", ["sequence", "suffix", "block"])
def test_pear_with_data_policy_equal_to_policy_is_sft(batch, level):
    logits, targets, mask = batch
    stats = stats_from_logits(logits, targets, mask)
    stats.behavior_log_probs = stats.log_probs.detach().clone()
    params = {"level": level, "gamma": 1.0} if level == "suffix" else {"level": level}
    torch.testing.assert_close(objective_loss("pear", stats, mask.sum(), **params), objective_loss("sft", stats, mask.sum()))


def test_pear_weights_follow_the_papers_products_and_clips(batch):
    logits, targets, mask = batch
    stats = stats_from_logits(logits, targets, mask)
    log_delta = torch.full(mask.shape, 0.05)
    stats.behavior_log_probs = stats.log_probs.detach() - log_delta          # Δ_t = e^0.05 everywhere
    n = mask.sum(-1)                                                           # response lengths 5, 3, 4
    weights, _ = OBJECTIVES["pear"].fn(stats, level="sequence")
    for row in range(3):
        assert weights[row][mask[row]].tolist() == pytest.approx([math.exp(0.05 * n[row].item())] * n[row].item())
    weights, _ = OBJECTIVES["pear"].fn(stats, level="suffix", gamma=0.9)
    row0 = weights[0][mask[0]]                                                # T=5: G_t = (0.9 e^0.05)^(T−t)
    assert row0.tolist() == pytest.approx([(0.9 * math.exp(0.05)) ** k for k in (4, 3, 2, 1, 0)], rel=1e-5)
    weights, _ = OBJECTIVES["pear"].fn(stats, level="block", block_size=2)
    assert weights[0][mask[0]].tolist() == pytest.approx([math.exp(0.1)] * 4 + [math.exp(0.05)], rel=1e-5)
    stats.behavior_log_probs = stats.log_probs.detach() - 5.0                # log Δ clipped to 0.3, log G to 5
    weights, _ = OBJECTIVES["pear"].fn(stats, level="sequence")
    assert weights[0][mask[0]][0].item() == pytest.approx(math.exp(min(0.3 * 5, 5.0)), rel=1e-5)
    stats.behavior_log_probs = None
    with pytest.raises(ValueError, match="behavior_log_probs"):
        OBJECTIVES["pear"].fn(stats)


@pytest.mark.parametrize("beta", [-0.1, 0.0, 0.3])
def test_otr_matches_its_full_vocabulary_expectation_in_value_and_gradient(batch, beta):
    logits, targets, mask = batch
    loss = objective_loss("otr", stats_from_logits(logits, targets, mask), mask.sum(), beta=beta)
    log_p = F.log_softmax(logits, -1)[mask]                                    # (N, V)
    reward = torch.full_like(log_p, beta).scatter(-1, targets[mask][:, None], 1.0)
    expected = -(reward * log_p.exp().detach() * log_p).sum(-1).mean()       # −E_{a∼sg(π)}[r(a)·log π(a)]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    (grad,) = torch.autograd.grad(loss, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def records(smoke_cfg):
    return build_testbed(smoke_cfg.data)["pool"][:8]


def _first_batch(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    return {k: v for k, v in batch.items()}


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_the_p_alpha_family_has_the_gradient_of_its_loss_one_minus_p_to_the_alpha_over_alpha(batch, alpha):
    logits, targets, mask = batch
    stats = stats_from_logits(logits, targets, mask)
    loss = objective_loss("prob_power", stats, mask.sum(), alpha=alpha)
    p = torch.exp(-F.cross_entropy(logits[mask], targets[mask], reduction="none"))
    paper = ((1 - p ** alpha) / alpha).mean()                     # the official GeneralFamily-α loss
    (grad,) = torch.autograd.grad(loss, logits)
    (paper_grad,) = torch.autograd.grad(paper, logits)
    torch.testing.assert_close(grad, paper_grad)
    if alpha == 1.0:   # α = 1 is DFT, value and gradient
        dft = objective_loss("dft", stats_from_logits(logits, targets, mask), mask.sum())
        assert loss.item() == pytest.approx(dft.item(), rel=1e-6)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        objective_loss("prob_power", stats, mask.sum(), alpha=0)


@pytest.mark.parametrize("name, keep", [("only_top_p", lambda p, q: p >= q), ("only_bottom_p", lambda p, q: p <= q)])
def test_thresholded_objectives_train_only_the_tokens_on_their_side_of_q(batch, name, keep):
    logits, targets, mask = batch
    stats = stats_from_logits(logits, targets, mask)
    q = float(stats.log_probs.detach()[mask].exp().median())
    loss = objective_loss(name, stats, mask.sum(), threshold=q)
    p = torch.exp(-F.cross_entropy(logits[mask], targets[mask], reduction="none"))
    paper = ((1 - p) * keep(p, q).float()).mean()                 # (1 − p)·1[p ≥ q] or (1 − p)·1[p ≤ q]
    (grad,) = torch.autograd.grad(loss, logits)
    (paper_grad,) = torch.autograd.grad(paper, logits)
    torch.testing.assert_close(grad, paper_grad)
    assert 0 < int(keep(p, q).sum()) < int(mask.sum())            # the threshold really splits the tokens
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        objective_loss(name, stats, mask.sum(), threshold=1.5)


def test_core_dft_matches_trls_builtin_dft_on_a_real_batch(tiny, smoke_cfg, records, tmp_path):
    model, tokenizer = tiny
    data = sft_dataset(records, chat=True)
    trl_dft = SFTTrainer(model=copy.deepcopy(model), processing_class=tokenizer, train_dataset=data,
                         args=_args(SFTConfig, smoke_cfg.train, tmp_path / "a", 0, {"loss_type": "dft"}, torch.device("cpu")))
    core = ObjectiveSFTTrainer(model=copy.deepcopy(model), processing_class=tokenizer, train_dataset=data,
                               args=_args(SFTConfig, smoke_cfg.train, tmp_path / "b", 0, {}, torch.device("cpu")), objective="sft")
    batch = _first_batch(trl_dft)
    expected = trl_dft.compute_loss(trl_dft.model, dict(batch))
    stats, _ = core.token_stats(core.model, dict(batch))
    got = objective_loss("dft", stats, stats.mask.sum())
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    nll = SFTTrainer.compute_loss(core, core.model, dict(batch))                 # TRL's own nll path
    assert core.compute_loss(core.model, dict(batch)).item() == pytest.approx(nll.item(), rel=1e-5)


def test_pear_stores_data_policy_log_probs_aligned_with_the_training_tokens(tiny, smoke_cfg, records, tmp_path):
    model, tokenizer = tiny
    trainer = ObjectiveSFTTrainer(model=copy.deepcopy(model), processing_class=tokenizer,
                                  train_dataset=sft_dataset(records, chat=True),
                                  args=_args(SFTConfig, smoke_cfg.train, tmp_path, 0, {}, torch.device("cpu")), objective="pear",
                                  objective_params={"level": "sequence"})
    trainer.store_behavior_log_probs()
    batch = _first_batch(trainer)
    assert batch["behavior_log_probs"].shape == (batch["input_ids"].shape[0], batch["input_ids"].shape[1] - 1)
    stats, _ = trainer.token_stats(trainer.model.eval(), dict(batch))
    torch.testing.assert_close(stats.behavior_log_probs, stats.log_probs.detach(), atol=1e-5, rtol=1e-5)
    pear = trainer.compute_loss(trainer.model, dict(batch))                       # πβ = πθ before the first step
    assert pear.item() == pytest.approx(SFTTrainer.compute_loss(trainer, trainer.model, dict(batch)).item(), rel=1e-5)


def test_pear_takes_the_data_generating_policy_from_another_model(tiny, smoke_cfg, records, tmp_path):
    """PEAR's πβ when the SFT data were sampled from a teacher: the stored log-probs are the teacher's on exactly the
    training tokens (not the student's), so Δ ≠ 1 at the first step."""
    from studykit.train import build_sft_trainer

    model, tokenizer = tiny
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trainer = build_sft_trainer(copy.deepcopy(model), tokenizer, records, smoke_cfg, tmp_path, objective="pear",
                                behavior_model=copy.deepcopy(teacher))
    batch = _first_batch(trainer)
    stats, _ = trainer.token_stats(trainer.model.eval(), dict(batch))
    texts = [format_pair(tokenizer, r["prompt"], r["response"], True) for r in records]
    expected = response_logprobs(teacher, tokenizer, [p for p, _ in texts], [r for _, r in texts])
    stored = [row[mask].numpy() for row, mask in zip(stats.behavior_log_probs, stats.mask)]
    for got in stored:  # the loader shuffles the rows: each stored row is the teacher's scores of one record
        assert any(len(got) == len(want) and np.allclose(got, want, atol=1e-4) for want in expected)
    assert not torch.allclose(stats.behavior_log_probs[stats.mask], stats.log_probs.detach()[stats.mask], atol=1e-3)


@pytest.mark.parametrize("name", ["dft", "asft", "pear", "otr", "low_lr_sft", "prob_power", "only_bottom_p"])  # (a random model has no p ≥ 0.5)
def test_each_objective_trains_through_trl(tiny, smoke_cfg, records, tmp_path, name):
    model, tokenizer = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = train_sft(copy.deepcopy(model), tokenizer, records, smoke_cfg, tmp_path, objective=name,
                        ref_model=copy.deepcopy(model) if name == "asft" else None)
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert trainer.state.global_step == 2 and all(math.isfinite(loss) for loss in losses)
    changed = any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert changed


def test_asft_without_reference_is_a_clear_error(tiny, smoke_cfg, records, tmp_path):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="needs a frozen reference model"):
        train_sft(copy.deepcopy(model), tokenizer, records, smoke_cfg, tmp_path, objective="asft")


def _bf16_args(smoke_cfg, tmp_path, monkeypatch):
    """SFT arguments with bf16 autocast on the CPU: the mixed precision the GPU profile trains in."""
    import studykit.train

    monkeypatch.setattr(studykit.trainers, "hardware_args", lambda device: {"use_cpu": True, "bf16": True})
    return _args(SFTConfig, smoke_cfg.train, tmp_path, 0, {}, torch.device("cpu"))


def test_pear_stores_the_data_policy_under_the_training_precision(tiny, smoke_cfg, records, tmp_path, monkeypatch):
    """Under bf16 autocast the stored log πβ are computed in bf16 too, so Δ = πθ/πβ = 1 at step 0 (in fp32 they
    would differ from the training pass by bf16 rounding)."""
    model, tokenizer = tiny
    trainer = ObjectiveSFTTrainer(model=copy.deepcopy(model), processing_class=tokenizer,
                                  train_dataset=sft_dataset(records, chat=True), args=_bf16_args(smoke_cfg, tmp_path, monkeypatch),
                                  objective="pear", objective_params={"level": "token"})
    assert trainer.accelerator.mixed_precision == "bf16"
    trainer.store_behavior_log_probs(batch_size=len(records))
    batch = next(iter(trainer.get_train_dataloader()))
    with trainer.accelerator.autocast():                      # what the prepared model's forward does in training
        stats, _ = trainer.token_stats(trainer.model.eval(), dict(batch))
    delta = (stats.log_probs.detach() - stats.behavior_log_probs)[stats.mask].exp()
    torch.testing.assert_close(delta, torch.ones_like(delta), atol=1e-6, rtol=0)
    fp32, _ = trainer.token_stats(trainer.model.eval(), dict(batch))
    assert (fp32.log_probs.detach() - stats.behavior_log_probs)[stats.mask].abs().max() > 1e-4


def test_asft_reference_is_prepared_like_the_policy(tiny, smoke_cfg, records, tmp_path, monkeypatch):
    """ASFT's frozen reference goes to the policy's device and runs under the same bf16 autocast, as TRL prepares
    DPO's reference model (its fp32 weights untouched)."""
    model, tokenizer = tiny
    trainer = ObjectiveSFTTrainer(model=copy.deepcopy(model), processing_class=tokenizer,
                                  train_dataset=sft_dataset(records, chat=True), args=_bf16_args(smoke_cfg, tmp_path, monkeypatch),
                                  objective="asft", ref_model=copy.deepcopy(model))
    assert next(trainer.ref_model.parameters()).device == trainer.args.device
    assert not trainer.ref_model.training and next(trainer.ref_model.parameters()).dtype == torch.float32
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        got = trainer.ref_model(input_ids=ids).logits
        fp32 = model(input_ids=ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(input_ids=ids).logits.float()
    torch.testing.assert_close(got, autocast, atol=0, rtol=0)
    assert not torch.equal(got, fp32)
