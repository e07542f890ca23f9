"""Reinforcement learning with verifiable rewards (RLVR) on the testbed and on math, through TRL's ``GRPOTrainer``.

GRPO (Shao et al., 2024, DeepSeekMath §4.1): for each prompt, G completions are sampled; each gets a reward
from the task's verifier; the advantage of completion i is its reward minus the group mean (divided by the
group's standard deviation with ``scale_rewards: group``), and the clipped policy-gradient loss of PPO is applied
to every completion token.  This module adds only what the testbed needs:

* **rewards**: :data:`studykit.rewards.REWARDS` (``verifier``: the reply's final answer verified correct;
  ``format``: the answer alone on one line), weighted by ``rl.rewards``;
* **data**: :func:`grpo_dataset` turns testbed records into prompt rows that carry what the rewards and the
  hybrid trainers need (family, verifier entry, demonstration, curriculum arm);
* **the trainer**: :func:`build_grpo_trainer` builds GRPO or a registered variant (:data:`studykit.registry.RL_METHODS`:
  TRL's trainer with one prompt pass per group, :mod:`studykit.grpo`, and its subclasses HPT and Prefix-RFT in
  :mod:`studykit.hybrid_rl` and the DUMP curriculum in :mod:`studykit.curriculum`) with ``cfg.grpo``
  passed to ``GRPOConfig`` as it is, and the device's settings added (:func:`studykit.trainers.hardware_args`);
  ``placebo=True`` builds the same run with its learning signal destroyed (:mod:`studykit.placebo`);
* **the signal log**: :func:`signal_log`, the per-step share of prompt groups that gave GRPO a gradient (the
  evidence behind a claim's ``requires: {signal_share: …}``, :mod:`studykit.guards`);
* **SFT vs RL on the same problems**: :func:`train_sft_and_grpo`, the arms of the paper-scale math study (SFT,
  GRPO and a placebo of each, per seed).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
from datasets import Dataset
from omegaconf import OmegaConf
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from .config import device
from .logprobs import format_prompt
from .models import copy_model
from .placebo import permuted_rewards, placebo_sft_records
from .registry import RL_METHODS, resolve
from .rewards import reward_functions
from .train import train_sft
from .trainers import finish, log_to_file, peft_config, prepare_trainable, training_args
from .transforms import verified_samples

def grpo_dataset(records: list[dict], tokenizer, chat: bool) -> Dataset:
    """Prompt rows for ``GRPOTrainer``: the prompt (a user turn with a chat template, else the plain
    ``Question: … / Answer:`` frame), and the columns the rewards and hybrid trainers read — ``question`` (the
    raw prompt text), ``family``, ``entry`` (the verifier's item), ``solution`` (the gold response, HPT's and
    Prefix-RFT's demonstration) and ``arm`` (the curriculum arm: the family)."""
    if not records:
        raise ValueError("GRPO needs at least one prompt; the selected records are empty")
    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}] if chat else format_prompt(tokenizer, r["prompt"], False),
             "question": r["prompt"], "family": r["family"], "entry": r["entry"], "solution": r["response"],
             "arm": r["family"]} for r in records]
    return Dataset.from_list(rows)


def build_grpo_trainer(model, tokenizer, records: list[dict], cfg, output_dir: str | Path, *, method: str = "grpo",
                       placebo: bool = False, callbacks=None, **args) -> GRPOTrainer:
    """A TRL GRPO trainer (or the registered variant ``method``) on ``records``' prompts with ``cfg.grpo``
    (+ ``args`` overrides) and the rewards of ``cfg.rl.rewards``, ready to ``train()``.  A variant's own
    settings come from ``cfg.rl.<method>``.

    ``placebo``: the placebo arm (:mod:`studykit.placebo`), seeded with the run's seed — every reward permuted
    across the completions of each batch, and the demonstrations (``solution``, what HPT trains with SFT and
    Prefix-RFT's prefixes) permuted within each family, so no variant keeps a learning signal."""
    if method not in RL_METHODS:
        raise ValueError(f"unknown RL method '{method}'; available: {', '.join(sorted(RL_METHODS))}")
    funcs, weights = reward_functions(cfg.rl)
    grpo_args = training_args(GRPOConfig, cfg.grpo, output_dir, int(cfg.seed), {"reward_weights": weights, **args},
                      device(cfg))
    if placebo:
        funcs, records = permuted_rewards(funcs, grpo_args.seed), placebo_sft_records(records, grpo_args.seed)
    own = OmegaConf.to_container(cfg.rl[method], resolve=True) if method in cfg.rl else {}
    trainer = resolve(RL_METHODS[method])(model=model, processing_class=tokenizer, reward_funcs=funcs, args=grpo_args,
                               train_dataset=grpo_dataset(records, tokenizer, bool(cfg.model.chat_template)),
                               callbacks=callbacks, peft_config=peft_config(cfg), **own)
    return log_to_file(prepare_trainable(trainer))


def learnable_prompts(records: list[dict], model, tokenizer, *, rollouts: int, chat: bool, max_new_tokens: int,
                      batch_size: int = 16) -> list[dict]:
    """RIF-RFT's rollout-based instance filter (rftforgetting2025, §RIF-RFT): before RL, sample ``rollouts``
    temperature-1 replies of ``model`` per prompt and keep only the prompts at least one of them solves (the
    verifier reward); a prompt every rollout fails gives GRPO no signal.  The paper's exact rule is not published:
    this is the reading "drop an instance whose rollouts all fail"."""
    if rollouts < 1:
        raise ValueError(f"learnable_prompts: rollouts must be ≥ 1, got {rollouts}")
    solved = {r["sample_of"] for r in verified_samples(records, model, tokenizer, samples=rollouts, chat=chat,
                                                       max_new_tokens=max_new_tokens, batch_size=batch_size)}
    return [r for r in records if r["id"] in solved]


class EvaluateEvery(TrainerCallback):
    """Accuracy-vs-step curves: ``evaluate(model)`` (in eval mode) after every ``every``-th optimizer step before
    the last (the caller evaluates the final model); the results are kept in ``curve`` as ``(step, result)``."""

    def __init__(self, evaluate: Callable, every: int):
        if every < 1:
            raise ValueError(f"EvaluateEvery: every must be ≥ 1, got {every}")
        self.evaluate, self.every, self.curve = evaluate, every, []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 and state.global_step < state.max_steps:
            model.eval()
            self.curve.append((state.global_step, self.evaluate(model)))
            model.train()


def train_grpo(model, tokenizer, records: list[dict], cfg, output_dir: str | Path, **kwargs) -> GRPOTrainer:
    """:func:`build_grpo_trainer` (``kwargs``: ``method``, ``placebo``, GRPOConfig overrides), trained; returns the
    trainer after training."""
    trainer = build_grpo_trainer(model, tokenizer, records, cfg, output_dir, **kwargs)
    trainer.train()
    return finish(trainer)


def signal_log(log_history: list[dict], condition: str, seed: int) -> list[dict]:
    """The per-step share of prompt groups with reward variance — i.e. with a GRPO gradient (a group whose G
    rewards are all equal has zero advantage) — from TRL's log history: ``1 − frac_reward_zero_std`` of every
    logged step, as rows ``condition, seed, step, signal_share`` (the ``rl_signal`` of
    :func:`studykit.analysis.claims_section`).  One row per optimizer step with ``grpo.logging_steps: 1``."""
    rows = [{"condition": condition, "seed": int(seed), "step": int(row["step"]),
             "signal_share": 1.0 - float(row["frac_reward_zero_std"])}
            for row in log_history if row.get("frac_reward_zero_std") is not None]
    if not rows:
        raise ValueError(f"signal_log({condition!r}, seed {seed}): no 'frac_reward_zero_std' in the trainer's log "
                         "history (not a GRPO trainer, or it logged no step)")
    return rows


# The arms of train_sft_and_grpo and the placebo each trained arm must beat
PLACEBOS = {"sft": "sft_placebo", "grpo": "grpo_placebo"}
ARMS = (*PLACEBOS, *PLACEBOS.values())


def train_sft_and_grpo(session, model, tokenizer, records: list[dict], seeds: list[int]) -> pd.DataFrame:
    """SFT against RL with verifiable rewards on the same problems (DeepSeekMath §4–5; the SFT vs RL comparisons of
    HPT and Prefix-RFT), each arm from ``model`` per seed through ``session.run`` (a Study session: cached,
    evaluated, recorded): ``sft`` on ``records``' worked solutions (``response``), ``grpo`` on their prompts with the
    rewards of ``rl.rewards``, and each one's placebo at the same budget (:data:`PLACEBOS`): ``sft_placebo`` on the
    solutions permuted within family (:func:`studykit.placebo.placebo_sft_records`), ``grpo_placebo`` with its
    rewards permuted (``placebo=True``).  Returns the GRPO runs' per-step log: ``condition, seed, step,
    signal_share`` (:func:`signal_log`) and the mean ``reward``."""
    cfg, rl = session.cfg, OmegaConf.to_container(session.cfg.rl, resolve=True)
    session.plan(len(ARMS) * len(seeds))
    rows = []
    for seed in seeds:
        for name, data in (("sft", records), ("sft_placebo", placebo_sft_records(records, seed))):
            with session.run(name, seed, recipe=session.sft_recipe(data)) as run:
                if not run.done:  # not in the run cache
                    run.trainer = train_sft(copy_model(model), tokenizer, data, cfg, run.scratch, seed=seed,
                                            data_seed=seed)
        for name, placebo in (("grpo", False), ("grpo_placebo", True)):
            recipe = {**session.recipe("grpo:grpo", records, section="grpo"), "rl": rl, "placebo": placebo}
            with session.run(name, seed, recipe=recipe) as run:
                if not run.done:
                    run.trainer = train_grpo(copy_model(model), tokenizer, records, cfg, run.scratch, seed=seed,
                                             data_seed=seed, placebo=placebo)
            reward = {int(row["step"]): float(row["reward"]) for row in run.log if "reward" in row}
            rows += [{**row, "reward": reward.get(row["step"])} for row in signal_log(run.log, name, seed)]
    return pd.DataFrame(rows)
