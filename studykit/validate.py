"""Validation of a composed config, before any work: one :class:`~studykit.errors.ConfigError` naming the key, the
value and what is allowed.

Each rule is one line of :data:`RULES`: a dotted key, a check, and what the check allows.  Keys a study does not
have are skipped, so study-specific rules live here beside the general ones.
"""
from __future__ import annotations

import re
from typing import Any, Callable

import reasoning_gym
from omegaconf import DictConfig, ListConfig, OmegaConf

from .errors import ConfigError
from .objectives import OBJECTIVES
from .registry import PREFERENCE_LOSSES, RL_METHODS, SUBSET_RULES
from .rewards import REWARDS
from .testbed import NOISE_KINDS, task_of


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def positive_int(v) -> bool:
    return _int(v) and v >= 1


def non_negative_int(v) -> bool:
    return _int(v) and v >= 0


def positive(v) -> bool:
    return _number(v) and v > 0


def unit_interval(v) -> bool:
    return _number(v) and 0.0 <= v <= 1.0


def open_unit_interval(v) -> bool:
    return _number(v) and 0.0 < v < 1.0


def max_steps(v) -> bool:
    return _int(v) and (v == -1 or v >= 1)


def int_list(v) -> bool:
    return isinstance(v, (list, ListConfig)) and len(v) > 0 and all(_int(x) for x in v)


def one_of(*options) -> Callable[[Any], bool]:
    return lambda v: v in options


def _families(v) -> bool:
    return isinstance(v, (dict, DictConfig)) and len(v) > 0 and all(
        task_of(f) in reasoning_gym.factory.DATASETS for f in v)


def _rewards(v) -> bool:
    return (isinstance(v, (dict, DictConfig)) and set(v) <= set(REWARDS) and all(_number(w) for w in v.values())
            and any(w != 0 for w in v.values()))


def _share(v) -> bool:
    return _number(v) and 0 < v <= 1


def _rl_methods(v) -> bool:
    return isinstance(v, (dict, DictConfig)) and len(v) > 0 and all(m in RL_METHODS for m in v.values())


def _loss_names() -> set[str]:
    return set(PREFERENCE_LOSSES)


def _preference_losses(v) -> bool:
    return isinstance(v, (dict, DictConfig)) and len(v) > 0 and all(
        isinstance(spec, (dict, DictConfig)) and spec.get("loss") in _loss_names() for spec in v.values())


def _noise_kinds(v) -> bool:
    return isinstance(v, (list, ListConfig)) and len(v) > 0 and set(v) <= set(NOISE_KINDS)


def _objectives(v) -> bool:
    return isinstance(v, (dict, DictConfig)) and all(
        isinstance(spec, (dict, DictConfig)) and spec.get("objective") in OBJECTIVES for spec in v.values())


def _subset_conditions(v) -> bool:
    if not isinstance(v, (dict, DictConfig)) or not v:
        return False
    earlier: set[str] = set()
    for name, spec in v.items():
        if not isinstance(spec, (dict, DictConfig)) or spec.get("rule") not in SUBSET_RULES:
            return False
        rule, value = spec["rule"], spec.get("value")
        if spec.get("score", "golden") not in ("golden", "random") or not isinstance(spec.get("stratified", False), bool):
            return False
        if rule in ("above", "at_most") and not unit_interval(value):
            return False
        if rule == "top_share" and not _share(value):
            return False
        if rule == "size_of" and value not in earlier:
            return False
        earlier.add(name)
    return True


RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("seed", _int, "an integer"),
    ("data.families", _families, "a non-empty mapping of reasoning-gym task names (or <task>:<arm>) to their parameters"),
    ("data.pool_per_family", positive_int, "an integer ≥ 1"),
    ("data.eval_per_family", positive_int, "an integer ≥ 1"),
    ("data.preference_per_family", non_negative_int, "an integer ≥ 0"),
    ("data.noise.fraction", unit_interval, "a fraction in [0, 1]"),
    ("data.noise.kinds", _noise_kinds, "a non-empty subset of wrong_answer, truncated, mismatched, junk"),
    ("data.dev_per_family", non_negative_int, "an integer ≥ 0"),
    ("data.max_answer_share", lambda v: v is None or open_unit_interval(v) or v == 1, "null or a share in (0, 1]"),
    ("model.chat_template", lambda v: isinstance(v, bool) or (isinstance(v, str) and "{%" in v),
     "true (the tokenizer's template), false (plain Question/Answer prompts) or a Jinja chat template string"),
    ("device", lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None,
     "auto, cpu, cuda or cuda:<index>"),
    ("eval.batch_size", positive_int, "an integer ≥ 1"),
    ("eval.max_new_tokens", positive_int, "an integer ≥ 1"),
    ("profile.seeds", int_list, "a non-empty list of integers"),
    ("profile.anchors", positive_int, "an integer ≥ 1"),
    ("train.learning_rate", positive, "a number > 0"),
    ("train.num_train_epochs", positive, "a number > 0"),
    ("train.max_steps", max_steps, "-1 (use epochs) or an integer ≥ 1"),
    ("train.per_device_train_batch_size", positive_int, "an integer ≥ 1"),
    ("train.gradient_accumulation_steps", positive_int, "an integer ≥ 1"),
    ("train.max_length", positive_int, "an integer ≥ 1"),
    ("dpo.learning_rate", positive, "a number > 0"),
    ("dpo.beta", positive, "a number > 0"),
    ("dpo.num_train_epochs", positive, "a number > 0"),
    ("dpo.max_steps", max_steps, "-1 (use epochs) or an integer ≥ 1"),
    ("dpo.per_device_train_batch_size", positive_int, "an integer ≥ 1"),
    ("grpo.learning_rate", positive, "a number > 0"),
    ("grpo.num_generations", lambda v: _int(v) and v >= 2, "an integer ≥ 2 (GRPO's group baseline)"),
    ("grpo.per_device_train_batch_size", positive_int, "an integer ≥ 1"),
    ("grpo.max_completion_length", positive_int, "an integer ≥ 1"),
    ("grpo.max_steps", max_steps, "-1 (use epochs) or an integer ≥ 1"),
    ("grpo.temperature", positive, "a number > 0"),
    ("rl.rewards", _rewards, "a mapping of registered reward names (studykit.rewards.REWARDS: verifier, format, …) to numbers, at least one non-zero"),
    ("rl.hpt.switch_gate", non_negative_int, "an integer ≥ 0 (at most num_generations − 1)"),
    ("rl.hpt.sft_coef", positive, "a number > 0"),
    ("rl.prefix_rft.high", open_unit_interval, "a ratio in (0, 1)"),
    ("rl.prefix_rft.entropy_top_share", _share, "a share in (0, 1]"),
    ("rl.dump.window", positive_int, "an integer ≥ 1"),
    ("rl.dump.temperature", positive, "a number > 0"),
    ("study.seeds", int_list, "a non-empty list of integers"),
    ("study.headline_threshold", unit_interval, "a golden-score threshold in [0, 1]"),
    ("study.low_threshold", unit_interval, "a golden-score threshold in [0, 1]"),
    ("study.nuggets.anchors.n", positive_int, "an integer ≥ 1"),
    ("study.min_subset", positive_int, "an integer ≥ 1"),
    ("study.nuggets.mode", one_of("faithful", "clean"), "faithful or clean"),
    ("study.nuggets.anchors.method", one_of("kmeans", "random"), "kmeans or random"),
    ("study.nuggets.anchors.embedding", one_of("model", "minilm"), "model or minilm"),
    ("study.nuggets.pairs_per_batch", positive_int, "an integer ≥ 1"),
    ("study.conditions", _subset_conditions,
     "a mapping of condition names to {rule: all|above|at_most|top_share|size_of, value, score: golden|random, "
     "stratified: bool}: above/at_most take a threshold in [0, 1], top_share a share in (0, 1], size_of the name of "
     "an earlier condition"),
    ("study.anchor_multipliers", lambda v: isinstance(v, (list, ListConfig)) and len(v) > 0 and all(positive(x) for x in v),
     "a non-empty list of numbers > 0 (anchor counts relative to study.nuggets.anchors.n)"),
    ("study.top_share", _share, "a share in (0, 1]"),
    ("study.thresholds", lambda v: isinstance(v, (list, ListConfig)) and all(unit_interval(x) for x in v),
     "a list of golden-score thresholds in [0, 1]"),
    ("study.checkpoints", lambda v: v is None or (_int(v) and v >= 2), "null or an integer ≥ 2"),
    ("study.sft_data.validation", open_unit_interval, "a fraction in (0, 1)"),
    ("study.rewardrank_metric", one_of("rank_acc", "rank_acc_norm", "reward_acc", "rank_margin", "rank_margin_norm"),
     "one of rank_acc, rank_acc_norm, reward_acc, rank_margin, rank_margin_norm"),
    ("study.preference_data.metric_pairs", open_unit_interval, "a fraction in (0, 1)"),
    ("study.self_sampled.samples", lambda v: _int(v) and (v == 0 or v >= 2), "0 (none) or an integer ≥ 2"),
    ("study.self_sampled.temperature", positive, "a number > 0"),
    ("study.objectives", _objectives, "a mapping of run names to {objective: <a registered objective>, ...}"),
    ("study.transforms", lambda v: set(v) <= {"grape", "ssr", "s3ft"}, "a subset of grape, ssr, s3ft"),
    ("study.response_tokens", positive_int, "an integer ≥ 1"),
    ("study.teacher_share", open_unit_interval, "a fraction in (0, 1)"),
    ("study.teacher_samples", positive_int, "an integer ≥ 1"),
    ("study.gold_when_unsolved", lambda v: isinstance(v, bool), "true or false"),
    ("study.aliases", lambda v: isinstance(v, (dict, DictConfig)) and all(isinstance(x, str) for x in v.values()),
     "a mapping of condition names to the run they are identical to"),
    ("study.first_steps", positive_int, "an integer ≥ 1"),
    ("study.second_steps", positive_int, "an integer ≥ 1"),
    ("study.filter_rollouts", positive_int, "an integer ≥ 1"),
    ("study.steps", lambda v: _int(v) and v >= 2, "an integer ≥ 2 (optimizer steps of every run)"),
    ("study.curve_every", positive_int, "an integer ≥ 1"),
    ("study.samples", lambda v: _int(v) and v >= 2, "an integer ≥ 2 (samples per prompt)"),
    ("study.temperature", positive, "a number > 0"),
    ("study.verifiable_tokens", positive_int, "an integer ≥ 1"),
    ("study.open_ended", lambda v: _int(v) and 1 <= v <= 40, "an integer from 1 to 40 (MT-Bench's open-ended questions)"),
    ("study.open_ended_tokens", positive_int, "an integer ≥ 1"),
    ("study.stage_steps", lambda v: isinstance(v, (dict, DictConfig)) and set(v) == {"sft", "dpo", "grpo"}
     and all(positive_int(x) for x in v.values()), "a mapping {sft, dpo, grpo} of integers ≥ 1"),
    ("study.ingredient_lrs", lambda v: isinstance(v, (list, ListConfig)) and len(v) >= 2 and all(positive(x) for x in v)
     and len(set(v)) == len(v), "a list of at least two distinct learning rates > 0"),
    ("study.dtm_portions", lambda v: _int(v) and v >= 2, "an integer ≥ 2"),
    ("study.slr.block", positive_int, "an integer ≥ 1 (layers per block)"),
    ("study.slr.samples", lambda v: _int(v) and v >= 2, "an integer ≥ 2 (samples per prompt)"),
    ("study.slr.crc_dev", positive_int, "an integer ≥ 1"),
    ("study.slr.crc_eval", positive_int, "an integer ≥ 1"),
    ("study.slr.alphabet_size", lambda v: _int(v) and 2 <= v <= 26, "an integer from 2 to 26"),
    ("study.slr.length", positive_int, "an integer ≥ 1"),
    ("study.slr.max_new_tokens", positive_int, "an integer ≥ 1"),
    ("study.warmup_steps", positive_int, "an integer ≥ 1"),
    ("study.preference_steps", positive_int, "an integer ≥ 1"),
    ("study.heldout_pairs_per_family", positive_int, "an integer ≥ 1"),
    ("study.losses", _preference_losses, "a mapping of run names to {loss: <one of studykit.registry.PREFERENCE_LOSSES>, ...}"),
    ("study.delta.chosen_steps", positive_int, "an integer ≥ 1"),
    ("study.sample_tokens", positive_int, "an integer ≥ 1"),
    ("study.objective_steps", positive_int, "an integer ≥ 1"),
    ("study.budget", lambda v: _int(v) and v >= 2, "an integer ≥ 2 (examples in all)"),
    ("study.sft_shares", lambda v: isinstance(v, (list, ListConfig)) and len(v) > 0 and all(unit_interval(x) for x in v)
     and len({round(100 * x) for x in v}) == len(v), "a non-empty list of distinct shares in [0, 1]"),
    ("study.self_contrast.negatives", lambda v: int_list(v) and min(v) >= 1, "a non-empty list of integers ≥ 1"),
    ("study.self_contrast.share", lambda v: _number(v) and 0 < v <= 1, "a share in (0, 1]"),
    ("study.selm.alpha", lambda v: _number(v) and v >= 0, "a number ≥ 0"),
    ("study.delta.loss", lambda v: v in _loss_names(), "one of studykit.registry.PREFERENCE_LOSSES"),
    ("study.delta.beta", positive, "a number > 0"),
    ("study.methods", _rl_methods, "a mapping of run names to registered RL methods (studykit.registry.RL_METHODS)"),
]


_MISSING = object()


def validate(cfg: DictConfig) -> None:
    """Raise :class:`~studykit.errors.ConfigError` for the first value no rule allows."""
    for key, check, allowed in RULES:
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is _MISSING:
            continue
        if not check(value):
            shown = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
            raise ConfigError(f"{key}={shown!r} is not allowed: expected {allowed}")
    grpo = OmegaConf.select(cfg, "grpo", default=None)
    if grpo is not None and grpo.per_device_train_batch_size % grpo.num_generations:
        raise ConfigError(f"grpo.per_device_train_batch_size={grpo.per_device_train_batch_size} is not allowed: "
                          f"expected a multiple of grpo.num_generations={grpo.num_generations} (whole groups per step)")
    steps, sft_steps = (OmegaConf.select(cfg, f"study.{k}", default=None) for k in ("steps", "sft_steps"))
    if sft_steps is not None and not (_int(sft_steps) and 1 <= sft_steps < (steps or 0)):
        raise ConfigError(f"study.sft_steps={sft_steps!r} is not allowed: expected an integer from 1 to "
                          f"study.steps − 1 = {(steps or 0) - 1} (SFT → GRPO takes both stages within study.steps)")
    methods, curve_runs = (OmegaConf.select(cfg, f"study.{k}", default=None) for k in ("methods", "curve_runs"))
    if curve_runs is not None and not (isinstance(curve_runs, ListConfig) and set(curve_runs) <= set(methods or {})):
        raise ConfigError(f"study.curve_runs={OmegaConf.to_container(curve_runs) if isinstance(curve_runs, ListConfig) else curve_runs!r} "
                          f"is not allowed: expected a list of run names of study.methods ({', '.join(methods or {})})")
    tasks = [OmegaConf.select(cfg, f"study.{k}", default=None) for k in ("first_task", "second_task")]
    if tasks != [None, None] and (len(set(tasks)) != 2 or not set(tasks) < set(cfg.data.families)):
        raise ConfigError(f"study.first_task={tasks[0]!r} (with study.second_task={tasks[1]!r}) is not allowed: expected "
                          f"two different families of data.families ({', '.join(cfg.data.families)}), some left held out")
    rates = OmegaConf.select(cfg, "study.ingredient_lrs", default=None)
    if rates is not None and float(cfg.train.learning_rate) not in map(float, rates):
        raise ConfigError(f"train.learning_rate={cfg.train.learning_rate!r} is not allowed: expected one of "
                          f"study.ingredient_lrs={list(rates)!r} (that ingredient is the all-data model)")
    weak = OmegaConf.select(cfg, "study.model_weak", default=None)
    if weak is not None and weak not in cfg.data.families:
        raise ConfigError(f"study.model_weak={weak!r} is not allowed: expected a family of data.families "
                          f"({', '.join(cfg.data.families)})")
    candidates = OmegaConf.select(cfg, "study.model_strong_candidates", default=None)
    if candidates is not None:
        listed = OmegaConf.to_container(candidates) if isinstance(candidates, ListConfig) else candidates
        if not (isinstance(listed, list) and listed and set(listed) <= set(cfg.data.families) - {weak}):
            raise ConfigError(f"study.model_strong_candidates={listed!r} is not allowed: expected a non-empty list of "
                              f"families of data.families other than study.model_weak={weak!r} "
                              f"({', '.join(cfg.data.families)})")
        if cfg.data.dev_per_family < 1:
            raise ConfigError(f"data.dev_per_family={cfg.data.dev_per_family!r} is not allowed: expected ≥ 1 with "
                              "study.model_strong_candidates (the model-strong family is chosen on dev items, never on "
                              "eval items)")
    heldout = OmegaConf.select(cfg, "study.heldout_pairs_per_family", default=None)
    if heldout is not None and heldout >= cfg.data.preference_per_family:
        raise ConfigError(f"study.heldout_pairs_per_family={heldout!r} is not allowed: expected fewer than "
                          f"data.preference_per_family={cfg.data.preference_per_family} (the rest train every "
                          "preference run)")
    required = OmegaConf.select(cfg, "study.requires_profile", default=None)
    if required is not None and cfg.profile.name != required:
        raise ConfigError(f"study {cfg.study.name} needs profile={required}, got profile={cfg.profile.name}: "
                          f"conf/profile/{required}.yaml holds the resources its recipe was run with")
    in_domain = OmegaConf.select(cfg, "study.in_domain", default=None)
    if in_domain is not None:
        unknown = set(in_domain) - set(cfg.data.families)
        if unknown or set(in_domain) == set(cfg.data.families):
            raise ConfigError(f"study.in_domain={list(in_domain)!r} is not allowed: expected a proper subset of "
                              f"data.families ({', '.join(cfg.data.families)})")
