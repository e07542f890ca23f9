"""Arms trained from one start, each beside its placebo: the protocol the preference studies (preference_losses,
self_contrast, preference_variants, delta_learning) and the RL studies share.

Each arm's setting (a learning rate, SELM's α) is chosen on the dev items against its placebo
(:meth:`Arms.tune`, :meth:`studykit.study.Study.tune`); then every arm and its placebo train on every seed at the
chosen setting (:meth:`Arms.run`), and each run's effect on held-out pairs is measured against the start
(:func:`studykit.rewardrank.pair_movement`; none without held-out pairs).  An arm is

* a preference loss on its pairs (:func:`studykit.preference.train_preference`, reference = the start); its placebo
  swaps each pair's chosen and rejected by a fair coin (:func:`studykit.placebo.placebo_preference_pairs`);
* or SFT on its data's responses (``loss="sft"``, :func:`studykit.train.train_sft`: a pair's chosen response, a
  record's gold ``response`` — delta learning's chosen-only control, the RL studies' continued-SFT control); its
  placebo permutes those responses within family (:func:`studykit.placebo.placebo_sft_records`);
* or an RL method on its records' prompts (``loss="grpo:<method>"``, a method of
  :data:`studykit.registry.RL_METHODS`, :func:`studykit.rl.train_grpo`); its placebo permutes every reward across
  the batch's completions and the demonstrations within family (``placebo=True``, seeded by the run), and each run's
  per-step RL signal share is kept (:meth:`Arms.signal`).
* or SFT then an RL method in one run (``loss="sft+grpo:<method>"``, HPT's SFT → GRPO baseline): SFT on the
  records' gold responses for ``options["sft_steps"]`` steps (the ``train`` section), then the RL method from that
  model on the same prompts; its placebo scrambles both stages as above.

A run's cache key is what determines it — loss, data, start, settings, the held-out pairs its margins are measured
on, and (RL) the reward settings and whether it is a placebo — so studies that ask for the same run (DPO on the
testbed pairs from the shared SFT start) share it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
from omegaconf import OmegaConf

from .models import copy_model
from .placebo import placebo_preference_pairs, placebo_sft_records
from .preference import train_preference
from .rewardrank import pair_movement, preference_logprobs
from .rl import signal_log, train_grpo
from .train import train_sft
from .tuning import placebo_of

SFT = "sft"   # an arm trained by SFT on its data's responses
RL = "grpo:"  # the prefix of an RL arm's loss: grpo:<a method of studykit.registry.RL_METHODS>
STAGED = "sft+"  # the prefix of an SFT-then-RL arm's loss: sft+grpo:<method>
LOGGED = ("reward", "loss", "step", "frac_reward_zero_std", "hpt/")   # trainer log keys kept in a train_log table


@dataclass(frozen=True)
class Arm:
    """``loss``: a loss of :data:`studykit.registry.PREFERENCE_LOSSES`, :data:`SFT`, ``grpo:<method>`` (:data:`RL`)
    or ``sft+grpo:<method>`` (:data:`STAGED`); ``data``: its training pairs (prompt, chosen, rejected, family, …) or
    records (prompt, response, entry, family, …); ``options``: fixed trainer settings (β, γ, ``num_train_epochs``,
    ``max_steps``, ``sft_steps``, …), beside the chosen ``settings`` of each run."""
    loss: str
    data: list[dict]
    options: dict = field(default_factory=dict)


class Arms:
    """The arms of one study, all trained from ``start`` (a kept :class:`studykit.study.Run`: its model is every run's
    start and every preference loss's reference), recorded through ``session`` (a :class:`studykit.study.Study`);
    margins on ``heldout_pairs`` (none: no margins)."""

    def __init__(self, session, start, arms: dict[str, Arm], heldout_pairs: list[dict]):
        self.session, self.start, self.arms, self.heldout = session, start, arms, heldout_pairs
        self.reference = self._logprobs(start.model) if heldout_pairs else None

    def _logprobs(self, model) -> dict:
        return preference_logprobs(model, self.session.tokenizer, self.heldout, chat=self.session.chat,
                                   batch_size=self.session.cfg.eval.batch_size)

    def data(self, name: str, seed: int, placebo: bool) -> list[dict]:
        """What arm ``name`` trains on with training seed ``seed``: its pairs, scrambled by seed when ``placebo``; an
        SFT arm: records of its pairs' chosen (else its records' gold) responses, permuted when ``placebo``; an RL
        arm: its records (its placebo scrambles rewards and demonstrations in the trainer)."""
        arm = self.arms[name]
        if arm.loss == SFT:
            records = [{**r, "response": r["chosen"]} if "chosen" in r else r for r in arm.data]
            return placebo_sft_records(records, seed) if placebo else records
        if arm.loss.startswith((RL, STAGED)):
            return arm.data
        return placebo_preference_pairs(arm.data, seed) if placebo else arm.data

    def recipe(self, name: str, settings: dict, seed: int, placebo: bool) -> dict:
        """The cache recipe of arm ``name``'s run (or its placebo's) at ``settings``."""
        arm, data = self.arms[name], self.data(name, seed, placebo)
        options = {**arm.options, **settings}
        if arm.loss == SFT:
            recipe = self.session.sft_recipe(data, start=self.start.key, **options)
        elif arm.loss.startswith((RL, STAGED)):
            recipe = {**self.session.recipe(arm.loss, data, start=self.start.key, section="grpo", **options),
                      "rl": OmegaConf.to_container(self.session.cfg.rl, resolve=True), "placebo": placebo}
            if arm.loss.startswith(STAGED):   # the SFT stage trains with the train section
                recipe["train"] = OmegaConf.to_container(self.session.cfg.train, resolve=True)
        else:
            recipe = self.session.recipe(f"dpo:{arm.loss}", data, start=self.start.key, section="dpo", **options)
        return {**recipe, "heldout_pairs": self.heldout}

    def train(self, name: str, run, settings: dict, placebo: bool) -> None:
        """Train arm ``name`` (or its placebo) from the start in ``run``'s body and measure its margins (with
        held-out pairs)."""
        arm, data = self.arms[name], self.data(name, run.seed, placebo)
        options, cfg, tokenizer = {**arm.options, **settings}, self.session.cfg, self.session.tokenizer
        model = copy_model(self.start.model)
        if arm.loss == SFT:
            run.trainer = train_sft(model, tokenizer, data, cfg, run.scratch, **options, seed=run.seed,
                                    data_seed=run.seed)
        elif arm.loss.startswith((RL, STAGED)):
            if arm.loss.startswith(STAGED):   # SFT on the gold responses (permuted for the placebo), then RL
                sft_steps, records = options.pop("sft_steps"), data
                records = placebo_sft_records(records, run.seed) if placebo else records
                stage = train_sft(model, tokenizer, records, cfg, run.scratch / "sft", max_steps=int(sft_steps),
                                  seed=run.seed, data_seed=run.seed)
                model = stage.model
                run.extra.update(sft_steps=int(sft_steps), steps=int(sft_steps) + int(options["max_steps"]),
                                 stage_seconds=float(stage.state.log_history[-1].get("train_runtime", 0.0)))
            run.trainer = train_grpo(model, tokenizer, data, cfg, run.scratch, method=arm.loss.split(RL)[-1],
                                     placebo=placebo, **options, seed=run.seed, data_seed=run.seed)
        else:
            run.trainer = train_preference(model, self.start.model, tokenizer, data, cfg, run.scratch, loss=arm.loss,
                                           **options, seed=run.seed, data_seed=run.seed)
        run.extra["margins"] = pair_movement(self._logprobs(run.model), self.reference) if self.heldout else {}

    def tune(self, name: str, grid: dict[str, dict], seed: int, against: str | None = None):
        """Arm ``name``'s setting chosen on the dev items against its placebo, or against the dev condition
        ``against`` (:meth:`studykit.study.Study.tune`): (the chosen settings, the table of every setting)."""
        return self.session.tune(name, grid, seed, recipe=lambda settings, placebo: self.recipe(name, settings, seed,
                                                                                                 placebo),
                                 train=lambda run, settings, placebo: self.train(name, run, settings, placebo),
                                 against=against)

    def run(self, settings: dict[str, dict], seeds: list[int]) -> tuple[list[dict], list[dict]]:
        """Every arm and its placebo (:func:`placebo_of`) on every seed at its chosen ``settings[arm]``, recorded as
        conditions of the session.  Returns (margin rows: run, seed and :func:`pair_movement`; train-log rows)."""
        margins, logs = [], []
        for seed in seeds:
            for name in self.arms:
                for condition, placebo in ((name, False), (placebo_of(name), True)):
                    with self.session.run(condition, seed, recipe=self.recipe(name, settings[name], seed,
                                                                              placebo)) as run:
                        if not run.done:
                            self.train(name, run, settings[name], placebo)
                    margins.append({"run": condition, "seed": seed, **run.extra["margins"]})
                    logs.extend({"run": condition, "seed": seed,
                                 **{k: v for k, v in row.items() if k.startswith(LOGGED)}}
                                for row in run.log if "loss" in row)
        return margins, logs

    @staticmethod
    def signal(logs: list[dict]) -> pd.DataFrame:
        """The RL runs' per-step signal share (:func:`studykit.rl.signal_log`) from :meth:`run`'s train-log rows:
        ``condition, seed, step, signal_share`` (the ``rl_signal`` of the claims' guards); empty without RL runs."""
        frame = pd.DataFrame(logs)
        if "frac_reward_zero_std" not in frame:
            return pd.DataFrame(columns=["condition", "seed", "step", "signal_share"])
        frame = frame.dropna(subset=["frac_reward_zero_std"])
        return pd.DataFrame([row for (run, seed), part in frame.groupby(["run", "seed"], sort=False)
                             for row in signal_log(part.to_dict("records"), run, seed)])
