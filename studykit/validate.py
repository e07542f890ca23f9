"""Validation of a composed config, before any work: one :class:`~studykit.errors.ConfigError` naming the key, the
value and what is allowed.

:data:`CHECKS` is the vocabulary of checks: a name → (a check, what the check allows).  The general keys (``seed``,
``data.*``, ``train.*``, ``dpo.*``, ``grpo.*``, ``rl.*``, ``eval.*``, ``profile.*``, ``device``,
``model.chat_template``) are the lines of :data:`RULES`: a dotted key, a check, and what it allows; keys a config
does not have are skipped.  A study's own keys are declared by the study, in ``study.schema`` of
``conf/study/<study>.yaml``: its dotted key (relative to ``study.``) → a name of :data:`CHECKS` (``any`` where
nothing is constrained).  :func:`validate` walks the composed ``study`` node: a key of the schema is checked (and
not descended into), a mapping the schema does not name is descended into, and any other key is unknown and
refused, naming the file and the keys its schema allows.  The framework keys of :data:`FRAMEWORK_KEYS` (``name``,
``notebook``, ``schema``, ``smoke``, ``outputs``, …) need no schema entry.  Checks across keys (``study.sft_steps``
against ``study.steps``, the families of ``study.first_task`` or ``study.in_domain``, …) come last.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import reasoning_gym
from omegaconf import DictConfig, ListConfig, OmegaConf

from .errors import ConfigError
from .objectives import OBJECTIVES
from .registry import (DATA_FORMATS, EVAL_JUDGES, PAIRWISE_JUDGES, PEFT_METHODS, PREFERENCE_LOSSES,
                       SCORING_PRECISIONS, SUBSET_RULES, VERIFIABLE_FORMATS)
from .rewards import REWARDS
from .testbed import NOISE_KINDS, task_of


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _list(v) -> bool:
    return isinstance(v, (list, ListConfig))


def _mapping(v) -> bool:
    return isinstance(v, (dict, DictConfig))


def anything(v) -> bool:
    return True


def boolean(v) -> bool:
    return isinstance(v, bool)


def positive_int(v) -> bool:
    return _int(v) and v >= 1


def non_negative_int(v) -> bool:
    return _int(v) and v >= 0


def at_least_two(v) -> bool:
    return _int(v) and v >= 2


def positive(v) -> bool:
    return _number(v) and v > 0


def non_negative(v) -> bool:
    return _number(v) and v >= 0


def unit_interval(v) -> bool:
    return _number(v) and 0.0 <= v <= 1.0


def open_unit_interval(v) -> bool:
    return _number(v) and 0.0 < v < 1.0


def share(v) -> bool:
    return _number(v) and 0 < v <= 1


def max_steps(v) -> bool:
    return _int(v) and (v == -1 or v >= 1)


def int_list(v) -> bool:
    return _list(v) and len(v) > 0 and all(_int(x) for x in v)


def one_of(*options) -> Callable[[Any], bool]:
    return lambda v: v in options


def _families(v) -> bool:
    return _mapping(v) and len(v) > 0 and all(task_of(f) in reasoning_gym.factory.DATASETS for f in v)


def _starts(v) -> bool:
    return _list(v) and len(v) > 0 and v[0] == "base" and set(v) <= {"base", "warmup"}


_CALIBRATION_SETTINGS = {"items": positive_int, "pool": positive_int, "samples": at_least_two, "budgets": lambda v: int_list(v) and min(v) >= 1,
                         "starts": _starts}


def _by_model(v) -> bool:
    return _mapping(v) and all(_mapping(s) and set(s) <= set(_CALIBRATION_SETTINGS)
                               and all(_CALIBRATION_SETTINGS[k](x) for k, x in s.items()) for s in v.values())


def _rewards(v) -> bool:
    return (_mapping(v) and set(v) <= set(REWARDS) and all(_number(w) for w in v.values())
            and any(w != 0 for w in v.values()))


def _noise_kinds(v) -> bool:
    return _list(v) and len(v) > 0 and set(v) <= set(NOISE_KINDS)


def _max_answer_share(v) -> bool:
    return v is None or open_unit_interval(v) or v == 1


def _chat_template(v) -> bool:
    return isinstance(v, bool) or (isinstance(v, str) and "{%" in v)


def _device(v) -> bool:
    return isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None


def _null_or_at_least_two(v) -> bool:
    return v is None or at_least_two(v)


def _zero_or_at_least_two(v) -> bool:
    return _int(v) and (v == 0 or v >= 2)


def _alphabet_size(v) -> bool:
    return _int(v) and 2 <= v <= 26


def _mt_bench_questions(v) -> bool:
    return _int(v) and 1 <= v <= 40


def _thresholds(v) -> bool:
    return _list(v) and all(unit_interval(x) for x in v)


def _positive_int_list(v) -> bool:
    return int_list(v) and min(v) >= 1


def _tie_tolerances(v) -> bool:
    return _list(v) and len(v) > 0 and all(non_negative(x) for x in v)


def _scorer(v) -> bool:
    models = Path(__file__).resolve().parent.parent / "conf" / "model"
    return v == "policy" or (isinstance(v, str) and (models / f"{v}.yaml").is_file())


def _positive_list(v) -> bool:
    return _list(v) and len(v) > 0 and all(positive(x) for x in v)


def _learning_rates(v) -> bool:
    return _list(v) and len(v) >= 2 and all(positive(x) for x in v) and len(set(v)) == len(v)


def _transforms(v) -> bool:
    return _list(v) and set(v) <= {"grape", "ssr", "s3ft"}


def _aliases(v) -> bool:
    return _mapping(v) and all(isinstance(x, str) for x in v.values())


def _preference_loss(v) -> bool:
    return v in PREFERENCE_LOSSES


def _preference_losses(v) -> bool:
    return _mapping(v) and len(v) > 0 and all(_mapping(spec) and _preference_loss(spec.get("loss"))
                                               for spec in v.values())


def _objectives(v) -> bool:
    return _mapping(v) and all(_mapping(spec) and spec.get("objective") in OBJECTIVES for spec in v.values())


def _subset_conditions(v) -> bool:
    if not _mapping(v) or not v:
        return False
    earlier: set[str] = set()
    for name, spec in v.items():
        if not _mapping(spec) or spec.get("rule") not in SUBSET_RULES:
            return False
        rule, value = spec["rule"], spec.get("value")
        if spec.get("score", "golden") not in ("golden", "random") or not isinstance(spec.get("stratified", False), bool):
            return False
        if rule in ("above", "at_most") and not unit_interval(value):
            return False
        if rule == "top_share" and not share(value):
            return False
        if rule == "size_of" and value not in earlier:
            return False
        earlier.add(name)
    return True


# The vocabulary of checks: name → (check, what it allows).  A study's ``schema`` names its keys' checks from here.
DELTA_KEEP = ("bare_answers", "different", "all")   # which prompts give a delta-learning pair (preference.delta_pairs)

CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "any": (anything, "anything"),
    "bool": (boolean, "true or false"),
    "positive_int": (positive_int, "an integer ≥ 1"),
    "non_negative_int": (non_negative_int, "an integer ≥ 0"),
    "at_least_two": (at_least_two, "an integer ≥ 2"),
    "null_or_at_least_two": (_null_or_at_least_two, "null or an integer ≥ 2"),
    "zero_or_at_least_two": (_zero_or_at_least_two, "0 (none) or an integer ≥ 2"),
    "alphabet_size": (_alphabet_size, "an integer from 2 to 26"),
    "mt_bench_questions": (_mt_bench_questions, "an integer from 1 to 40 (MT-Bench's open-ended questions)"),
    "max_steps": (max_steps, "-1 (use epochs) or an integer ≥ 1"),
    "positive": (positive, "a number > 0"),
    "non_negative": (non_negative, "a number ≥ 0"),
    "unit_interval": (unit_interval, "a fraction in [0, 1]"),
    "open_unit_interval": (open_unit_interval, "a fraction in (0, 1)"),
    "share": (share, "a share in (0, 1]"),
    "threshold": (unit_interval, "a golden-score threshold in [0, 1]"),
    "thresholds": (_thresholds, "a list of golden-score thresholds in [0, 1]"),
    "int_list": (int_list, "a non-empty list of integers"),
    "families": (_families, "a non-empty mapping of reasoning-gym task names (or <task>:<arm>) to their parameters"),
    "null_or_names": (lambda v: v is None or (_list(v) and len(v) > 0 and all(isinstance(x, str) for x in v)),
                      "null or a non-empty list of names"),
    "starts": (_starts, "a list of base and optionally warmup, base first"),
    "calibration_by_model": (_by_model, "a mapping of model names to {items: int ≥ 1, pool: int ≥ 1, samples: int ≥ 2, "
                                        "budgets: [int ≥ 1, ...], starts: [base, warmup]}"),
    "positive_int_list": (_positive_int_list, "a non-empty list of integers ≥ 1"),
    "selm_alphas": (lambda v: _positive_list(v) and len(set(v)) == len(v),
                    "a non-empty list of distinct numbers > 0 (SELM's α, gentlest first)"),
    "anchor_multipliers": (_positive_list,
                           "a non-empty list of numbers > 0 (anchor counts relative to study.nuggets.anchors.n)"),
    "learning_rates": (_learning_rates, "a list of at least two distinct learning rates > 0"),
    "null_or_learning_rates": (lambda v: v is None or _learning_rates(v),
                               "null (nothing chosen on dev) or a list of at least two distinct learning rates > 0"),
    "nuggets_mode": (one_of("faithful", "clean"), "faithful or clean"),
    "delta_pairs": (one_of(*DELTA_KEEP), "bare_answers, different or all"),
    "scoring_precision": (one_of(*SCORING_PRECISIONS), "float32 (TF32 off) or bfloat16 (autocast)"),
    "anchor_method": (one_of("kmeans", "random"), "kmeans or random"),
    "anchor_embedding": (one_of("model", "minilm"), "model or minilm"),
    "tie_tolerances": (_tie_tolerances, "a non-empty list of golden-score tie tolerances ≥ 0 (nats)"),
    "nuggets_scorer": (_scorer, "policy (the model the study trains) or a model config of conf/model/ (e.g. gemma3_270m)"),
    "subset_conditions": (_subset_conditions,
                          "a mapping of condition names to {rule: all|above|at_most|top_share|size_of, value, "
                          "score: golden|random, stratified: bool}: above/at_most take a threshold in [0, 1], "
                          "top_share a share in (0, 1], size_of the name of an earlier condition"),
    "rewardrank_metric": (one_of("rank_acc", "rank_acc_norm", "reward_acc", "rank_margin", "rank_margin_norm"),
                          "one of rank_acc, rank_acc_norm, reward_acc, rank_margin, rank_margin_norm"),
    "rewardrank_pairs": (one_of("own", "gold_vs_wrong"), "own or gold_vs_wrong"),
    "dpo_pairs": (one_of("own", "gold_vs_wrong", "both"), "own, gold_vs_wrong or both"),
    "objectives": (_objectives, "a mapping of run names to {objective: <a registered objective>, ...}"),
    "transforms": (_transforms, "a subset of grape, ssr, s3ft"),
    "aliases": (_aliases, "a mapping of condition names to the run they are identical to"),
    "preference_loss": (_preference_loss, "one of studykit.registry.PREFERENCE_LOSSES"),
    "preference_losses": (_preference_losses,
                          "a mapping of run names to {loss: <one of studykit.registry.PREFERENCE_LOSSES>, ...}"),
}


def _data_source(v) -> bool:
    return (_mapping(v) and "eval" in v and all(
        _mapping(spec) and spec.get("format") in DATA_FORMATS and isinstance(spec.get("path"), str) and spec["path"]
        and isinstance(spec.get("split", "train"), str) and (spec.get("family_field") is None
                                                             or isinstance(spec.get("family_field"), str))
        for spec in v.values()))


def _null_or_positive_int(v) -> bool:
    return v is None or positive_int(v)


def _peft(v) -> bool:
    if v is None:
        return True
    if not _mapping(v) or v.get("method") not in PEFT_METHODS or not positive_int(v.get("r")):
        return False
    modules = v.get("target_modules", "all-linear")
    return (_number(v.get("lora_alpha", 8)) and v.get("lora_alpha", 8) > 0
            and _number(v.get("lora_dropout", 0.0)) and 0 <= v.get("lora_dropout", 0.0) < 1
            and (modules == "all-linear" or (_list(modules) and len(modules) > 0
                                             and all(isinstance(m, str) for m in modules))))


def _names(v) -> bool:
    return _list(v) and all(isinstance(x, str) and x for x in v)


def _task_folder(v) -> bool:
    return v is None or (isinstance(v, str) and (Path(__file__).resolve().parent.parent / v).is_dir())


RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("seed", _int, "an integer"),
    ("data.seed", _int, "an integer"),
    ("data.families", _families, "a non-empty mapping of reasoning-gym task names (or <task>:<arm>) to their parameters"),
    ("data.pool_per_family", *CHECKS["positive_int"]),
    ("data.eval_per_family", *CHECKS["positive_int"]),
    ("data.preference_per_family", *CHECKS["non_negative_int"]),
    ("data.noise.fraction", *CHECKS["unit_interval"]),
    ("data.noise.kinds", _noise_kinds, "a non-empty subset of wrong_answer, truncated, mismatched, junk"),
    ("data.dev_per_family", *CHECKS["non_negative_int"]),
    ("data.max_answer_share", _max_answer_share, "null or a share in (0, 1]"),
    ("data.source", _data_source, "a mapping with at least eval (and pool, …), each {format: "
                                  f"{'|'.join(DATA_FORMATS)}, "
                                  "path: a local file, hf://datasets/<id>/<file>, a URL or a hub dataset id, "
                                  "split: a name, family_field: a column name}"),
    ("data.pool_size", _null_or_positive_int, "null (every item) or an integer ≥ 1"),
    ("data.eval_size", _null_or_positive_int, "null (every item) or an integer ≥ 1"),
    ("data.dev_size", *CHECKS["non_negative_int"]),
    ("model.chat_template", _chat_template,
     "true (the tokenizer's template), false (plain Question/Answer prompts) or a Jinja chat template string"),
    ("device", _device, "auto, cpu, cuda or cuda:<index>"),
    ("peft", _peft, "null (full fine-tuning) or {method: lora|qlora, r: int ≥ 1, lora_alpha: > 0, lora_dropout in "
                    "[0, 1), target_modules: all-linear or a list of module names}"),
    ("eval.batch_size", *CHECKS["positive_int"]),
    ("eval.max_new_tokens", *CHECKS["positive_int"]),
    ("eval.backend", one_of("hf", "vllm"), "hf (transformers' generate) or vllm (a CUDA GPU with the vllm package)"),
    ("eval.judge", one_of(*EVAL_JUDGES), "verifier or a judge of studykit.judges.JUDGES (reward_model, llm_pairwise, llm_single)"),
    ("eval.lm_eval.tasks", _names, "a list of lm-evaluation-harness task names (empty: none)"),
    ("eval.lm_eval.limit", _null_or_positive_int, "null (every item) or an integer ≥ 1"),
    ("eval.lm_eval.batch_size", *CHECKS["positive_int"]),
    ("eval.lm_eval.include_path", _task_folder, "null or a folder of lm-eval task YAMLs (relative: to the repository)"),
    ("eval.length_controlled", *CHECKS["bool"]),
    ("profile.seeds", *CHECKS["int_list"]),
    ("profile.anchors", *CHECKS["positive_int"]),
    ("train.learning_rate", *CHECKS["positive"]),
    ("train.num_train_epochs", *CHECKS["positive"]),
    ("train.max_steps", *CHECKS["max_steps"]),
    ("train.per_device_train_batch_size", *CHECKS["positive_int"]),
    ("train.gradient_accumulation_steps", *CHECKS["positive_int"]),
    ("train.max_length", *CHECKS["positive_int"]),
    ("dpo.learning_rate", *CHECKS["positive"]),
    ("dpo.beta", *CHECKS["positive"]),
    ("dpo.num_train_epochs", *CHECKS["positive"]),
    ("dpo.max_steps", *CHECKS["max_steps"]),
    ("dpo.per_device_train_batch_size", *CHECKS["positive_int"]),
    ("grpo.learning_rate", *CHECKS["positive"]),
    ("grpo.num_generations", at_least_two, "an integer ≥ 2 (GRPO's group baseline)"),
    ("grpo.per_device_train_batch_size", *CHECKS["positive_int"]),
    ("grpo.max_completion_length", *CHECKS["positive_int"]),
    ("grpo.max_steps", *CHECKS["max_steps"]),
    ("grpo.temperature", *CHECKS["positive"]),
    ("rl.rewards", _rewards, "a mapping of registered reward names (studykit.rewards.REWARDS: verifier, format, …) to numbers, at least one non-zero"),
    ("rl.hpt.switch_gate", non_negative_int, "an integer ≥ 0 (at most num_generations − 1)"),
    ("rl.hpt.sft_coef", *CHECKS["positive"]),
    ("rl.prefix_rft.high", open_unit_interval, "a ratio in (0, 1)"),
    ("rl.prefix_rft.entropy_top_share", *CHECKS["share"]),
    ("rl.dump.window", *CHECKS["positive_int"]),
    ("rl.dump.temperature", *CHECKS["positive"]),
]

# Keys of a study that the framework reads (the runner, the CLI, compose, the session, the tests): no schema entry.
FRAMEWORK_KEYS = ("name", "notebook", "schema", "smoke", "outputs", "deviations", "seed_use")


_MISSING = object()


def _shown(value):
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def _check(key: str, value, check: Callable[[Any], bool], allowed: str) -> None:
    if not check(value):
        raise ConfigError(f"{key}={_shown(value)!r} is not allowed: expected {allowed}")


def validate_study(study: DictConfig) -> None:
    """Check the composed ``study`` node against its own ``study.schema`` (see the module docstring): every key the
    schema names is checked with its :data:`CHECKS` entry; a key it names nothing of is refused."""
    name = study.get("name", "?")
    source = f"conf/study/{name}.yaml"
    schema = study.get("schema", None)
    if schema is None:
        schema = {}
    if not _mapping(schema):
        raise ConfigError(f"study.schema={_shown(schema)!r} is not allowed: expected a mapping of the study's keys "
                          f"(dotted, relative to study.) to names of studykit.validate.CHECKS ({source})")
    schema = _shown(schema)
    for key, check in schema.items():
        if not isinstance(check, str) or check not in CHECKS:
            raise ConfigError(f"study.schema.{key}={check!r} in {source} is not allowed: expected a check of "
                              f"studykit.validate.CHECKS ({', '.join(CHECKS)})")
    for key in ("smoke", "outputs"):
        value = study.get(key, None)
        if value is not None and not (_list(value) and all(isinstance(x, str) for x in value)):
            raise ConfigError(f"study.{key}={_shown(value)!r} is not allowed: expected a list of strings ({source})")

    def walk(node: DictConfig, prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if not prefix and key in FRAMEWORK_KEYS:
                continue
            if path in schema:
                _check(f"study.{path}", value, *CHECKS[schema[path]])
            elif isinstance(value, DictConfig) and any(k.startswith(f"{path}.") for k in schema):
                walk(value, f"{path}.")
            else:
                raise ConfigError(f"study.{path}={_shown(value)!r} is not a key of study {name} ({source} schema: "
                                  f"{', '.join(schema) or 'none'})")

    walk(study, "")


def validate(cfg: DictConfig) -> None:
    """Raise :class:`~studykit.errors.ConfigError` for the first value no rule allows: the general keys by
    :data:`RULES`, the study's keys by its own schema (:func:`validate_study`), then the checks across keys."""
    for key, check, allowed in RULES:
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is not _MISSING:
            _check(key, value, check, allowed)
    study = OmegaConf.select(cfg, "study", default=None)
    if isinstance(study, DictConfig):
        validate_study(study)
    grpo = OmegaConf.select(cfg, "grpo", default=None)
    if grpo is not None and grpo.per_device_train_batch_size % grpo.num_generations:
        raise ConfigError(f"grpo.per_device_train_batch_size={grpo.per_device_train_batch_size} is not allowed: "
                          f"expected a multiple of grpo.num_generations={grpo.num_generations} (whole groups per step)")
    judge = OmegaConf.select(cfg, "eval.judge", default="verifier")
    if judge != "verifier" and not _mapping(OmegaConf.select(cfg, "eval.judge_model", default=None)):
        raise ConfigError(f"eval.judge_model={_shown(OmegaConf.select(cfg, 'eval.judge_model', default=None))!r} is "
                          f"not allowed with eval.judge={judge}: expected a model config (a conf/model entry) that "
                          "runs the judge")
    if OmegaConf.select(cfg, "eval.length_controlled", default=False) and judge not in PAIRWISE_JUDGES:
        raise ConfigError(f"eval.length_controlled=true is not allowed with eval.judge={judge}: expected a pairwise "
                          f"judge ({', '.join(PAIRWISE_JUDGES)}), whose per-item wins the length control refits")
    eval_format = OmegaConf.select(cfg, "data.source.eval.format", default=None)
    if eval_format is not None and eval_format not in VERIFIABLE_FORMATS and judge == "verifier":
        raise ConfigError(f"eval.judge=verifier is not allowed with real data of format {eval_format} "
                          f"(data.source.eval of {cfg.data.name}): its replies have no verifier; expected a judge of "
                          "studykit.judges.JUDGES, or eval data of a verifiable format "
                          f"({', '.join(VERIFIABLE_FORMATS)})")
    steps, sft_steps = (OmegaConf.select(cfg, f"study.{k}", default=None) for k in ("steps", "sft_steps"))
    if sft_steps is not None and not (_int(sft_steps) and 1 <= sft_steps < (steps or 0)):
        raise ConfigError(f"study.sft_steps={sft_steps!r} is not allowed: expected an integer from 1 to "
                          f"study.steps − 1 = {(steps or 0) - 1} (SFT → GRPO takes both stages within study.steps)")
    tasks = [OmegaConf.select(cfg, f"study.{k}", default=None) for k in ("first_task", "second_task")]
    if tasks != [None, None] and (len(set(tasks)) != 2 or not set(tasks) < set(cfg.data.families)):
        raise ConfigError(f"study.first_task={tasks[0]!r} (with study.second_task={tasks[1]!r}) is not allowed: expected "
                          f"two different families of data.families ({', '.join(cfg.data.families)}), some left held out")
    rates = OmegaConf.select(cfg, "study.ingredient_lrs", default=None)
    if rates is not None and float(cfg.train.learning_rate) not in map(float, rates):
        raise ConfigError(f"train.learning_rate={cfg.train.learning_rate!r} is not allowed: expected one of "
                          f"study.ingredient_lrs={list(rates)!r} (that ingredient is the all-data model)")
    groups = {key: OmegaConf.select(cfg, f"study.model_{key}", default=None) for key in ("strong", "weak")}
    if any(v is not None for v in groups.values()):
        families = list(cfg.data.families)
        for key, listed in groups.items():
            listed = OmegaConf.to_container(listed) if isinstance(listed, ListConfig) else listed
            if not (isinstance(listed, list) and len(listed) >= 2 and len(set(listed)) == len(listed)
                    and set(listed) <= set(families)):
                raise ConfigError(f"study.model_{key}={listed!r} is not allowed: expected ≥ 2 distinct families of "
                                  f"data.families ({', '.join(families)}): a verdict one family carries is fragile")
            groups[key] = listed
        if set(groups["strong"]) & set(groups["weak"]) or not set(families) - set(groups["weak"]):
            raise ConfigError(f"study.model_weak={groups['weak']!r} is not allowed: expected families disjoint from "
                              f"study.model_strong={groups['strong']!r}, some of data.families left for the warm-up")
    if OmegaConf.select(cfg, "study.learning_rates", default=None) is not None and cfg.data.dev_per_family < 1:
        raise ConfigError(f"data.dev_per_family={cfg.data.dev_per_family!r} is not allowed: expected ≥ 1 with "
                          "study.learning_rates (each arm's learning rate is chosen on dev items, never on eval items)")
    notebook, name = (OmegaConf.select(cfg, f"study.{k}", default=None) for k in ("notebook", "name"))
    own_notebook = notebook == f"{name}.ipynb"
    if "learning_rates" in (OmegaConf.select(cfg, "study", default=None) or {}) and cfg.study.learning_rates is None \
            and own_notebook:
        raise ConfigError(f"study.learning_rates=None is not allowed: expected a list of at least two learning rates "
                          f"for notebooks/{cfg.study.notebook} (null only under a profile that runs another notebook, "
                          "e.g. paper_math)")
    if OmegaConf.select(cfg, "study.learning_rates", default=None) is not None:
        tuning_seed = OmegaConf.select(cfg, "study.tuning_seed", default=None)
        if not _int(tuning_seed) or tuning_seed in list(cfg.study.seeds):
            raise ConfigError(f"study.tuning_seed={tuning_seed!r} is not allowed: expected an integer not in "
                              f"study.seeds={list(cfg.study.seeds)!r} with study.learning_rates (a setting chosen on "
                              "one run must not be scored again through that same run on eval)")
    heldout = OmegaConf.select(cfg, "study.heldout_pairs_per_family", default=None)
    if heldout is not None and heldout >= cfg.data.preference_per_family:
        raise ConfigError(f"study.heldout_pairs_per_family={heldout!r} is not allowed: expected fewer than "
                          f"data.preference_per_family={cfg.data.preference_per_family} (the rest train every "
                          "preference run)")
    in_domain = OmegaConf.select(cfg, "study.in_domain", default=None)
    if in_domain is not None:
        unknown = set(in_domain) - set(cfg.data.families)
        if unknown or set(in_domain) == set(cfg.data.families):
            raise ConfigError(f"study.in_domain={list(in_domain)!r} is not allowed: expected a proper subset of "
                              f"data.families ({', '.join(cfg.data.families)})")
