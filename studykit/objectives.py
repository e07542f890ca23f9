"""SFT objectives as one token-weighted loss, plugged into TRL's SFTTrainer.

Every objective here has the form (METHODS.md, "SFT objectives")

    loss = ( −Σ_t m_t · w_t · log πθ(y_t | x, y<t)  +  Σ_t m_t · r_t ) / N

with the weight w_t computed without gradient, an optional per-token term r_t (ASFT's KL, OTR's constant), the
completion mask m_t and N the number of completion tokens in the (accumulated) batch, normalized exactly like
TRL's own ``loss_type="nll"`` / ``"dft"``.  An objective is one function returning ``(w, r)``, listed in
:data:`OBJECTIVES`; adding one is a function, its line there and a config entry (``conf/study/sft_objectives.yaml``).

How it plugs into TRL 1.16: :class:`studykit.train.ObjectiveSFTTrainer` subclasses ``SFTTrainer`` and overrides ``compute_loss``,
reading log πθ from TRL's fused LM head (chunked, no ``(batch, seq, vocab)`` logits), so a weight-only objective
costs what ``loss_type="nll"`` costs.  ``compute_loss_func`` — the hook the issue names — is deprecated in TRL 1.16
and makes SFTTrainer run a second, no-grad forward for its metrics (about a third more compute); the subclass is
what TRL's deprecation message asks for.  DFT itself runs TRL's built-in ``loss_type="dft"``; the core's DFT weight
is tested to match it.  Only ASFT needs full-vocabulary logits (and a frozen reference model).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class TokenStats:
    """What an objective may read, per next-token position (shape ``(batch, seq-1)``, aligned with
    ``labels[:, 1:]``).  ``log_probs`` carries the gradient; everything else is detached."""
    log_probs: torch.Tensor                        # log πθ(y_t), 0 where mask is False
    mask: torch.Tensor                             # bool, completion tokens
    entropy: torch.Tensor | None = None            # H(πθ(·|x, y<t))
    behavior_log_probs: torch.Tensor | None = None  # log πβ(y_t), stored before training (PEAR)
    vocab_log_probs: torch.Tensor | None = None      # (n_masked, vocab) log πθ(·) at masked positions (ASFT)
    ref_vocab_log_probs: torch.Tensor | None = None  # (n_masked, vocab) log π_ref(·), frozen reference (ASFT)


@dataclass(frozen=True)
class Objective:
    name: str
    fn: Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
    needs: frozenset = frozenset()      # subset of {"entropy", "behavior", "full_logits"}
    trl_loss_type: str | None = None    # run TRL's built-in loss instead of the core (DFT)


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown SFT objective '{name}'; available: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]


def objective_loss(name: str, stats: TokenStats, num_tokens, **params) -> torch.Tensor:
    """The core: (−Σ m·sg(w)·log p + Σ m·r) / N for the registered objective ``name``."""
    weights, extra = get_objective(name).fn(stats, **params)
    per_token = -weights.detach() * stats.log_probs
    if extra is not None:
        per_token = per_token + extra
    per_token = per_token.masked_fill(~stats.mask, 0.0)
    return per_token.sum() / torch.as_tensor(num_tokens, device=per_token.device).clamp(min=1)


# --- objectives ---------------------------------------------------------------------------------------------------

def sft(stats: TokenStats):
    """Plain SFT: w_t = 1 (token-averaged NLL, as TRL's ``loss_type="nll"``)."""
    return torch.ones_like(stats.log_probs), None


def low_lr_sft(stats: TokenStats):
    """Low-LR SFT ("Implicit Reward as the Bridge", NeurIPS 2025): SFT is implicit-reward learning whose KL term is
    constant, so its fix is a smaller learning rate — same loss as SFT, the rate is scaled in the study config."""
    return torch.ones_like(stats.log_probs), None


def dft(stats: TokenStats):
    """DFT (Wu et al., arXiv 2508.05629, Eq. 9): w_t = sg(πθ(y_t)), each token's NLL rescaled by its probability.
    Trained with TRL's ``SFTConfig(loss_type="dft")``; this weight is the core's version, tested to match TRL."""
    return stats.log_probs.exp(), None


def asft(stats: TokenStats, kl_coef: float = 0.1):
    """ASFT (arXiv 2509.23753): DFT + λ·KL(π_ref ‖ πθ) over the full vocabulary at every response token, π_ref the
    frozen pre-SFT model (λ 0.05–0.1 in the paper's code).  The KL anchors DFT, whose weights let the policy drift."""
    log_ref = stats.ref_vocab_log_probs
    kl = (log_ref.exp() * (log_ref - stats.vocab_log_probs)).sum(-1)          # (n_masked,)
    extra = torch.zeros_like(stats.log_probs).masked_scatter(stats.mask, kl.to(stats.log_probs.dtype))
    return stats.log_probs.exp(), kl_coef * extra


def _pear_log_ratio(stats: TokenStats, clip: tuple[float, float]) -> torch.Tensor:
    if stats.behavior_log_probs is None:
        raise ValueError("PEAR needs the data policy's stored log-probs (column 'behavior_log_probs')")
    log_delta = (stats.log_probs.detach() - stats.behavior_log_probs).clamp(*clip)
    return log_delta.masked_fill(~stats.mask, 0.0)


def pear(stats: TokenStats, level: str = "suffix", gamma: float = 0.999, block_size: int = 8,
         log_delta_clip=(-0.08, 0.3), log_weight_clip=(-10.0, 5.0)):
    """PEAR (arXiv 2602.01058): importance weights of the policy against the data-generating policy πβ, in log
    space, Δ_t = πθ(y_t)/πβ(y_t) with log Δ clipped to [−0.08, 0.3] and log G to [−10, 5].

    ``level="sequence"``: G = Π_t Δ_t for every token of the response.
    ``level="suffix"``:   G_t = γ^(T−t) Π_{j>t} Δ_j (the tokens after t decide whether y_t leads somewhere πθ goes).
    ``level="block"``:    G_t = Π_{j in t's block} Δ_j over consecutive blocks of ``block_size`` response tokens
                          (our reading of the paper's block level: it interpolates token (1) and sequence (T)).
    With πβ = πθ every Δ is 1 and PEAR is SFT."""
    log_delta = _pear_log_ratio(stats, tuple(log_delta_clip))
    mask = stats.mask
    if level == "sequence":
        log_weight = log_delta.sum(-1, keepdim=True).expand_as(log_delta)
    elif level == "suffix":
        after = log_delta.sum(-1, keepdim=True) - log_delta.cumsum(-1)                  # Σ_{j>t} log Δ_j
        n_after = mask.sum(-1, keepdim=True) - mask.long().cumsum(-1)                    # T − t
        log_weight = after + n_after * math.log(gamma)
    elif level == "block":
        position = mask.long().cumsum(-1) - 1                                            # index within the response
        block = (position.clamp(min=0) // block_size) + torch.arange(len(mask), device=mask.device)[:, None] * mask.shape[1]
        sums = torch.zeros(mask.numel(), dtype=log_delta.dtype, device=mask.device)
        sums.index_add_(0, block.flatten(), log_delta.flatten())
        log_weight = sums[block]
    else:
        raise ValueError(f"PEAR level must be sequence, suffix or block, got '{level}'")
    return log_weight.clamp(*log_weight_clip).exp(), None


def otr(stats: TokenStats, beta: float = -0.1):
    """OTR (arXiv 2509.26313): per position, tokens sampled from the detached policy π' earn reward 1 if equal to
    the gold token, else β.  Its expectation J_t = π'(y_t)·log π(y_t) + β Σ_{a≠y_t} π'(a)·log π(a) needs no full
    logits: Σ_a π'(a)∇log π(a) = ∇Σ_a π(a) = 0, so ∇J_t = (1−β)·π'(y_t)·∇log π(y_t) and
    J_t = (1−β)·p·log p − β·H.  Hence w_t = (1−β)·sg(p_t) — DFT scaled by (1−β) — and r_t = β·H_t, a constant that
    makes the reported loss the exact −J.  This equivalence holds only when the sampling policy π' is the model itself
    at temperature 1 (as here); OTR sampled at another temperature, or from another policy, is not DFT."""
    p = stats.log_probs.detach().exp()
    return (1.0 - beta) * p, beta * stats.entropy.detach()


def prob_power(stats: TokenStats, alpha: float = 1.0):
    """The p^α family of "Beyond Log Likelihood" (arXiv 2510.00526; official ``objective_trans``
    ``GeneralFamily-α``): the loss (1 − p^α)/α has gradient −p^α·∇log p, so it is this weighted NLL with
    w_t = sg(p_t^α) — the same gradient, a loss value that differs by a per-token constant.  α → 0 is SFT (−log p),
    α = 1 is DFT (1 − p, TRL's ``loss_type="dft"``)."""
    if alpha <= 0:
        raise ValueError(f"prob_power: alpha must be > 0 (alpha → 0 is plain SFT), got {alpha}")
    return stats.log_probs.detach().mul(alpha).exp(), None


def _thresholded_p(stats: TokenStats, threshold: float, keep_above: bool):
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"the probability threshold must be in [0, 1], got {threshold}")
    p = stats.log_probs.detach().exp()
    return p * ((p >= threshold) if keep_above else (p <= threshold)).to(p.dtype), None


def only_top_p(stats: TokenStats, threshold: float = 0.5):
    """"Beyond Log Likelihood" (arXiv 2510.00526) ``OnlyTopP-q``: the loss (1 − p)·1[p ≥ q] trains only the tokens
    the model already gives probability ≥ q, with DFT's gradient there: w_t = sg(p_t)·1[p_t ≥ q]."""
    return _thresholded_p(stats, threshold, keep_above=True)


def only_bottom_p(stats: TokenStats, threshold: float = 0.5):
    """"Beyond Log Likelihood" (arXiv 2510.00526) ``OnlyBottomP-q``: the loss (1 − p)·1[p ≤ q] trains only the
    tokens the model gives probability ≤ q: w_t = sg(p_t)·1[p_t ≤ q]."""
    return _thresholded_p(stats, threshold, keep_above=False)


OBJECTIVES: dict[str, Objective] = {
    "sft": Objective("sft", sft),
    "low_lr_sft": Objective("low_lr_sft", low_lr_sft),
    "dft": Objective("dft", dft, trl_loss_type="dft"),
    "asft": Objective("asft", asft, needs=frozenset({"full_logits"})),
    "pear": Objective("pear", pear, needs=frozenset({"behavior"})),
    "otr": Objective("otr", otr, needs=frozenset({"entropy"})),
    "prob_power": Objective("prob_power", prob_power),
    "only_top_p": Objective("only_top_p", only_top_p),
    "only_bottom_p": Objective("only_bottom_p", only_bottom_p),
}
