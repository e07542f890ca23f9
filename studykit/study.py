"""The Study session: what every study notebook needs, in one object, from the config the runner composed.

    session = Study.open("quickstart", config, output_dir, overrides)   # the notebook's parameters
    model, tokenizer = session.base_model()
    base = session.evaluation(model, "base")                           # evaluated, recorded (untrained)
    with session.run("sft", seed, recipe=session.sft_recipe(pool)) as run:
        if not run.done:                                               # not in the run cache: train it
            run.trainer = train_sft(copy_model(model), tokenizer, pool, session.cfg, run.scratch, seed=seed)
    run.predictions                                                    # evaluated on the eval items, recorded

Under ``studykit run`` the runner passes the composed, validated config (``config``) and the output directory:
nothing is composed twice.  Run interactively (``config=None``) the session composes ``study=<name>`` with
``overrides`` and writes to ``results/<name>/<profile>-interactive/``.

A *run* is one trained model: :meth:`Study.run` looks it up in the run cache (:mod:`studykit.cache`) under the key
of what determines it, so a stopped study resumes at its first unfinished run and studies share identical runs; a
fresh run is timed, evaluated on the eval items and stored.  Every run and evaluation is recorded: the session's
``predictions`` (the long table the claims read) and ``runs`` (name, seed, steps, seconds, cached) tables.  Each
run is a stage of the study's progress (:data:`PROGRESS_FILE`, printed by the runner as it happens).

Seeds: ``data.seed`` draws the testbed's items (pool, dev, eval: the same for every run); ``study.seeds`` (from
``profile.seeds``) are the training seeds of a multi-seed study, one run per seed; ``seed`` is the training seed of
a single-seed study and the seed of the session's own draws.  :attr:`Study.seeds` is the list a study trains.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from transformers import AutoModelForCausalLM

from . import cache, distributed
from .claims import predictions_frame
from .config import compose, device, seed_everything
from .data import load_splits
from .errors import ConfigError
from .evaluate import judge_replies, replies
from .guards import UNTRAINED
from .harness import COLUMNS as HARNESS_COLUMNS, harness_items
from .judges import JUDGES, judge_records
from .models import copy_model, is_qlora, load_judge, load_model_and_tokenizer
from .results import log_to_file, output_directory, save_metrics, save_predictions, save_table
from .testbed import build_testbed
from .train import train_sft
from .tuning import chosen_setting, dev_choice, placebo_of

# Each line a notebook's session appends here (in the run's output directory) is a stage of the study: the runner
# prints it as it happens ("run 3 of 12: sft seed 1 — 4.2 min elapsed, about 13 min to go").
PROGRESS_FILE = "progress.log"


def _last_logged(log: list[dict], key: str) -> float:
    values = [row[key] for row in log if key in row]
    return float(values[-1]) if values else float("nan")


@dataclass
class Run:
    """One trained run inside :meth:`Study.run`.  ``done``: found in the run cache (its predictions, log and extra
    are loaded, its weights load on first use of ``model`` when it kept them).  A fresh run's body sets ``trainer``
    (or ``model`` and ``log``) and may add to ``extra``; the session evaluates ``model`` when the body ends."""
    name: str
    seed: int
    key: str
    scratch: Path
    done: bool = False
    predictions: pd.DataFrame | None = None
    log: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    seconds: float = 0.0
    _model: object = None
    _entry: Path | None = None
    _device: object = None
    _checkpoints: dict = field(default_factory=dict)  # step -> model or directory, stored with a fresh run

    @property
    def model(self):
        if self._model is None and self._entry is not None and (self._entry / "model").is_dir():
            self._model = AutoModelForCausalLM.from_pretrained(self._entry / "model", dtype="float32").to(self._device)
        return self._model

    @model.setter
    def model(self, model) -> None:
        self._model = model

    @property
    def trainer(self):
        raise AttributeError("Run.trainer is write-only: read run.model, run.log and run.steps")

    @trainer.setter
    def trainer(self, trainer) -> None:
        self._model, self.log = trainer.model, list(trainer.state.log_history)
        self.extra.setdefault("steps", trainer.state.global_step)

    @property
    def steps(self) -> int | None:
        return self.extra.get("steps")

    @property
    def tokens(self) -> float:
        """Tokens trained, as the TRL trainer counts them (its last logged ``num_tokens``; NaN if never logged)."""
        return _last_logged(self.log, "num_tokens")

    @property
    def train_seconds(self) -> float:
        """Seconds the trainer spent training (its logged ``train_runtime``, plus an earlier stage's
        ``extra["stage_seconds"]`` in a two-stage run; NaN for a run without a trainer)."""
        return _last_logged(self.log, "train_runtime") + self.extra.get("stage_seconds", 0.0)

    def save_checkpoint(self, step: int, model) -> None:
        """Store ``model`` (a model, or a saved checkpoint's directory: a trainer's ``checkpoint-<step>``) with this
        fresh run as its checkpoint ``step``: a later step reads it with :meth:`checkpoint`, cached or not."""
        if self.done:
            raise RuntimeError(f"run {self.name!r} seed {self.seed} came from the cache with its checkpoints")
        self._checkpoints[int(step)] = model

    @property
    def checkpoints(self) -> list[int]:
        """The steps of the checkpoints stored with this run (once its body has ended)."""
        return cache.checkpoint_steps(self._entry) if self._entry is not None else []

    def checkpoint(self, step: int) -> Path:
        """The stored checkpoint ``step``'s directory (load it with :func:`studykit.models.load_checkpoint`)."""
        if int(step) not in self.checkpoints:
            raise KeyError(f"run {self.name!r} seed {self.seed} has no stored checkpoint {step} "
                           f"(stored: {self.checkpoints})")
        return cache.checkpoint_dir(self._entry, step)


@contextmanager
def _scratch(name: str, key: str):
    """A run's scratch directory: a private temporary one, or under ``accelerate launch`` one shared by the
    processes (the trainer's checkpoints are saved by the main process and read by all), removed by the main
    process once every process is done with it."""
    if distributed.world_size() == 1:
        with tempfile.TemporaryDirectory(prefix=f"{name}-") as scratch:
            yield scratch
        return
    shared = cache.runs_root() / ".scratch" / key
    shared.mkdir(parents=True, exist_ok=True)
    try:
        yield str(shared)
    finally:
        distributed.barrier()
        if distributed.is_main():
            shutil.rmtree(shared, ignore_errors=True)


class Study:
    """A study notebook's session (see the module docstring)."""

    def __init__(self, cfg: DictConfig, out: Path):
        self.cfg, self.out = cfg, out
        self.name = cfg.study.name
        self.log_path = log_to_file(out)
        self.device = device(cfg)
        self.chat = bool(cfg.model.chat_template)
        seed_everything(int(cfg.seed))
        self.timings: dict[str, float] = {}
        self._predictions: list[pd.DataFrame] = []
        self._dev_predictions: list[pd.DataFrame] = []   # runs evaluated on the dev split (Study.tune)
        self._harness: list[pd.DataFrame] = []   # lm-eval per-item scores (Study.harness)
        self._runs: list[dict] = []
        self._planned: int | None = None
        self._started = time.perf_counter()
        self._tokenizer = None
        self._judge = None   # (model, tokenizer) of eval.judge_model, loaded on first use
        if distributed.is_main():
            (out / PROGRESS_FILE).touch()

    @classmethod
    def open(cls, name: str, config: dict | None = None, output_dir: str | None = None,
             overrides: list[str] | tuple[str, ...] = ()) -> "Study":
        """The session of study ``name``: from the runner's composed ``config``, or composed here when run
        interactively."""
        if config is None:
            cfg = compose([f"study={name}", *overrides])
        else:
            cfg = OmegaConf.create(config)
            OmegaConf.set_readonly(cfg, True)
            if name not in (cfg.study.name, Path(cfg.study.notebook).stem):  # a recipe may share a notebook
                raise ConfigError(f"notebook of study '{name}' was given the config of study '{cfg.study.name}'")
        return cls(cfg, output_directory(output_dir, cfg))

    # --- what every notebook reads ------------------------------------------------------------------------------
    @property
    def seeds(self) -> list[int]:
        """The training seeds: ``study.seeds`` of a multi-seed study, else ``[seed]``."""
        seeds = OmegaConf.select(self.cfg, "study.seeds", default=None)
        return [int(s) for s in seeds] if seeds is not None else [int(self.cfg.seed)]

    def testbed(self) -> dict[str, list[dict]]:
        """The study's splits (pool, dev, eval, preference, …), drawn once by ``data.seed``: the testbed's, or real
        data's (``data.source``, :func:`studykit.data.load_splits`)."""
        if not hasattr(self, "_splits"):
            self._splits = load_splits(self.cfg.data) if "source" in self.cfg.data else build_testbed(self.cfg.data)
        return self._splits

    @property
    def eval_records(self) -> list[dict]:
        return self.testbed()["eval"]

    def base_model(self):
        """The study's model and tokenizer, loaded on the study's device."""
        model, self._tokenizer = load_model_and_tokenizer(self.cfg.model, self.device, quantize=is_qlora(self.cfg))
        return model, self._tokenizer

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            raise RuntimeError("load the model first: session.base_model()")
        return self._tokenizer

    @property
    def score(self) -> str:
        """The per-item score column of this study's evaluations: ``lenient`` (the verifier) or the judge's
        (:attr:`studykit.judges.Judge.metric`: ``win``, ``mt_bench_score``)."""
        judge = self.cfg.eval.get("judge", "verifier")
        return "lenient" if judge == "verifier" else JUDGES[judge].metric

    def evaluate(self, model, records: list[dict] | None = None) -> pd.DataFrame:
        """Greedy replies of ``model`` to ``records`` (default: the eval items) by ``eval.backend`` (``hf``, or
        ``vllm`` on a GPU), judged per item by ``eval.judge``:
        the testbed's verifier, or a judge of :data:`studykit.judges.JUDGES` against each item's reference reply
        (its ``response``), run by ``eval.judge_model`` (loaded once, on the study's device)."""
        records = self.eval_records if records is None else records
        own = distributed.shard(records)   # under accelerate launch: this process's share, gathered below
        judge = self.cfg.eval.get("judge", "verifier")
        answers = replies(model, self.tokenizer, [r["prompt"] for r in own], backend=self.cfg.eval.get("backend", "hf"),
                          chat=self.chat, max_new_tokens=int(self.cfg.eval.max_new_tokens),
                          batch_size=int(self.cfg.eval.batch_size))
        if judge == "verifier":
            judged = judge_replies(own, answers)
        else:
            if self._judge is None:
                self._judge = load_judge(self.cfg.eval.judge_model, self.device, reward=judge == "reward_model")
            judged = judge_records(own, answers, [r.get("response") for r in own] if JUDGES[judge].pairwise
                                   else None, judge=judge, model=self._judge[0], tokenizer=self._judge[1],
                                   batch_size=int(self.cfg.eval.batch_size))
        return distributed.gather_frame(judged)

    def evaluation(self, model, condition: str, seed: int = UNTRAINED, records: list[dict] | None = None
                   ) -> pd.DataFrame:
        """Evaluate a model that is not trained by a run of this session (the base model, a merge) on the eval
        items (or ``records``) and record its predictions as ``condition`` (``seed``: :data:`UNTRAINED` for an
        untrained model)."""
        start = time.perf_counter()
        predictions = self.evaluate(model, records)
        self._record_harness(self.harness(model), condition, seed)
        self.timings[f"eval {condition} seed {seed}"] = time.perf_counter() - start
        self._predictions.append(predictions_frame(predictions, condition, seed))
        return predictions

    def record_as(self, source: str, condition: str, seed: int = UNTRAINED) -> None:
        """Record what ``source`` scored on ``seed`` (its predictions and lm-eval scores) again as ``condition``:
        the same weights under another name (the best soup ingredient as best_single) give the same greedy replies,
        so they are not evaluated twice."""
        for frames in (self._predictions, self._harness):
            same = [f[(f["condition"] == source) & (f["seed"] == seed)] for f in frames]
            if frames is self._predictions and not any(len(f) for f in same):
                raise ValueError(f"record_as: no predictions of '{source}' seed {seed} to record as '{condition}'")
            frames.extend(f.assign(condition=condition) for f in same if len(f))

    def harness(self, model) -> pd.DataFrame:
        """``model``'s per-item scores on the lm-evaluation-harness tasks of ``eval.lm_eval``
        (:func:`studykit.harness.harness_items`, with its ``limit``, ``batch_size`` and ``include_path``); an empty
        frame when no tasks are configured.  Every evaluation of the session (:meth:`evaluation`, and each run's
        :meth:`run`, whose cache entry keeps them) records them beside its predictions; :meth:`save` writes them to
        ``harness_predictions.csv``."""
        spec = OmegaConf.select(self.cfg, "eval.lm_eval", default=None) or {}
        if not spec.get("tasks"):
            return pd.DataFrame(columns=HARNESS_COLUMNS)
        return harness_items(model, self.tokenizer, list(spec["tasks"]), limit=spec.get("limit"),
                             batch_size=spec.get("batch_size", 8), include_path=spec.get("include_path"))

    def _record_harness(self, items: pd.DataFrame, condition: str, seed: int) -> None:
        if len(items):
            self._harness.append(predictions_frame(items, condition, seed))

    # --- runs -----------------------------------------------------------------------------------------------------
    def recipe(self, method: str, data, *, start: str = "base", section: str = "train", **overrides) -> dict:
        """What determines a run, for its cache key: ``method`` (a name that says what trains: ``sft``,
        ``dpo:sigmoid``, ``grpo:hpt``, …), its training ``data`` (records, pairs or prompts), its ``start``
        (``"base"`` or the key of the run it starts from: ``run.key``) and the config ``section`` it trains with
        (``train``, ``dpo``, ``grpo``) updated by ``overrides`` (exactly what the notebook passes to the trainer).
        Add anything else that changes the run (``rl``, an objective's parameters) to the returned dict."""
        settings = OmegaConf.to_container(self.cfg[section], resolve=True)
        return {"method": method, "start": start, "data": data, section: {**settings, **overrides}}

    def sft_recipe(self, records: list[dict], start: str = "base", **train) -> dict:
        """:meth:`recipe` of an SFT run on ``records`` with the ``train`` section and ``train`` overrides."""
        return self.recipe("sft", records, start=start, section="train", **train)

    def sft_start(self, name: str, records: list[dict], seed: int, model, **train) -> Run:
        """The one SFT start every arm of a study trains from: run ``name`` on training seed ``seed``, a copy of
        ``model`` (the base model the notebook holds) trained on ``records`` by :func:`studykit.train.train_sft` with
        the ``train`` section and ``train`` overrides, kept (its weights stored with it: ``run.model`` is every arm's
        start).  Its recipe is :meth:`sft_recipe`'s, so the studies that ask for the same one share it through the
        run cache."""
        with self.run(name, seed, recipe=self.sft_recipe(records, **train), keep_model=True) as run:
            if not run.done:
                run.trainer = train_sft(copy_model(model), self.tokenizer, records, self.cfg, run.scratch, seed=seed,
                                        data_seed=seed, **train)
        return run

    def plan(self, n_runs: int) -> None:
        """Say how many runs the study will train (progress lines then read "run k of n" with an estimate)."""
        self._planned = int(n_runs)

    @contextmanager
    def run(self, name: str, seed: int, *, recipe: dict, keep_model: bool = False, evaluate: bool = True,
            eval_records: list[dict] | None = None, split: str = "eval"):
        """One trained run (see :class:`Run`): looked up in the run cache by ``recipe`` (what determines the run:
        the method, its settings, its data and start), the model, ``seed`` and the eval items; trained by the body
        when not found, then evaluated on the eval items, stored (with the weights when ``keep_model``) and
        recorded as condition ``name``, training seed ``seed``.  ``evaluate=False``: not evaluated and no
        predictions recorded (a merge ingredient, or a study that measures its runs itself, into ``run.extra``).
        ``eval_records``: evaluate on these items instead of all eval items (a run whose claims read only some
        families: the in-domain ones, its trained family).  ``split="dev"``: evaluated on the dev items (or
        ``eval_records``) and recorded apart, in :attr:`dev_predictions` (what :meth:`tune` chooses on), never in
        the predictions the claims read."""
        if split not in ("eval", "dev"):
            raise ValueError(f"run {name!r}: split={split!r}; expected 'eval' or 'dev'")
        if eval_records is not None:
            records = eval_records
        elif split == "dev":
            records = self.testbed().get("dev") or []
            if not records:
                raise ConfigError(f"run {name!r} is evaluated on the dev split, but data.dev_per_family="
                                  f"{self.cfg.data.get('dev_per_family')!r}: expected ≥ 1")
        else:
            records = self.eval_records
        spec = {"model": self.cfg.model, **({"peft": self.cfg.peft} if self.cfg.get("peft") is not None else {}),
                "device": self.device.type, "seed": int(seed), "eval": self.cfg.eval,
                "eval_items": [(r["id"], r["prompt"], r["response"]) for r in records], "recipe": recipe,
                **({} if evaluate else {"evaluate": False})}
        key = cache.run_key(spec)
        entry = cache.lookup(key)
        self._progress(f"{name} seed {seed}" + (" (cached)" if entry else ""))
        start = time.perf_counter()
        with _scratch(name, key) as scratch:
            run = Run(name, int(seed), key, Path(scratch), _device=self.device)
            if entry is not None:
                stored = cache.load(entry)
                run.done, run._entry = True, entry
                run.predictions, run.log, run.extra = stored["predictions"], stored["log"], stored["extra"]
                run.seconds = stored["meta"]["seconds"]
            yield run
            if not run.done:
                if run.model is None:
                    raise ValueError(f"run {name!r} seed {seed}: the body trained nothing (set run.trainer or "
                                     "run.model)")
                run.model.eval()
                run.predictions = self.evaluate(run.model, records) if evaluate else pd.DataFrame()
                harness = self.harness(run.model) if evaluate else pd.DataFrame()
                if len(harness):   # lm-eval's per-item scores, kept with the run in the cache
                    run.extra["harness"] = harness.to_dict(orient="records")
                run.seconds = time.perf_counter() - start
                if distributed.is_main():   # every process holds the same run; the main one stores it
                    cache.store(key, {"study": self.name, "name": name, "seed": int(seed), "seconds": run.seconds},
                                run.predictions, run.log, run.extra, run.model if keep_model else None,
                                checkpoints=run._checkpoints)
                distributed.barrier()
                run._entry = cache.runs_root() / key
        if evaluate and split == "dev":
            self._dev_predictions.append(predictions_frame(run.predictions, name, seed))
        elif evaluate:
            self._predictions.append(predictions_frame(run.predictions, name, seed))
            self._record_harness(pd.DataFrame(run.extra.get("harness", []), columns=HARNESS_COLUMNS), name, seed)
        self._runs.append({"run": name, "seed": int(seed), "steps": run.steps, "tokens": run.tokens,
                           "train_seconds": round(run.train_seconds, 1), "seconds": round(run.seconds, 1),
                           "cached": run.done, "key": key[:12]})

    def _progress(self, what: str) -> None:
        k = len(self._runs) + 1
        elapsed = time.perf_counter() - self._started
        line = f"run {k}" + (f" of {self._planned}" if self._planned else "") + f": {what}"
        if self._planned and self._runs:
            remaining = elapsed / len(self._runs) * (self._planned - len(self._runs))
            line += f" (about {remaining / 60:.0f} min to go)"
        if distributed.is_main():
            with open(self.out / PROGRESS_FILE, "a", encoding="utf-8") as progress:
                progress.write(line + "\n")

    # --- what the study found -------------------------------------------------------------------------------------
    @property
    def predictions(self) -> pd.DataFrame:
        """Every recorded evaluation, one row per (condition, seed, item)."""
        return pd.concat(self._predictions, ignore_index=True)

    @property
    def dev_predictions(self) -> pd.DataFrame:
        """Every run evaluated on the dev split (``run(..., split="dev")``), one row per (condition, seed, item)."""
        return pd.concat(self._dev_predictions, ignore_index=True)

    def tune(self, name: str, grid: dict[str, dict], seed: int, *, recipe: Callable[[dict, bool], dict],
             train: Callable[[Run, dict, bool], None], against: str | None = None) -> tuple[dict, pd.DataFrame]:
        """Choose arm ``name``'s setting on the dev split (:mod:`studykit.tuning`): for each ``grid`` entry
        (``{label: settings}``, gentlest first) the arm's run ``<name>@<label>`` and its placebo's
        ``placebo_<name>@<label>`` on training seed ``seed`` — cache key ``recipe(settings, placebo)``, trained by
        ``train(run, settings, placebo)`` when not cached — evaluated on the dev items.  Returns the settings whose
        run beats its placebo on dev by the most, and the table of every setting
        (:func:`studykit.tuning.dev_choice`).  ``against``: a condition already run on the dev items at ``seed``
        that every setting is compared with instead of a placebo of its own (no placebo runs) — for a coefficient
        whose term a placebo would keep (SELM's α: choose it against DPO, the loss without the term)."""
        candidates = {}
        for label, settings in grid.items():
            conditions = (f"{name}@{label}", placebo_of(f"{name}@{label}"))
            for condition, placebo in zip(conditions[:1] if against else conditions, (False, True)):
                with self.run(condition, seed, recipe=recipe(settings, placebo), split="dev") as run:
                    if not run.done:
                        train(run, settings, placebo)
            candidates[label] = (conditions[0], against) if against else conditions
        table = dev_choice(self.dev_predictions, candidates, self.score).assign(arm_name=name)
        return dict(grid[chosen_setting(table)]), table

    @property
    def harness_predictions(self) -> pd.DataFrame:
        """Every recorded lm-eval score (:meth:`harness`), one row per (condition, seed, task item); empty without
        ``eval.lm_eval.tasks``."""
        if not self._harness:
            return pd.DataFrame(columns=[*HARNESS_COLUMNS, "condition", "seed"])
        return pd.concat(self._harness, ignore_index=True)

    @property
    def runs(self) -> pd.DataFrame:
        """One row per run: its steps, tokens trained, training seconds, seconds with evaluation (both as first
        measured: a cached run keeps its stored numbers), whether it came from the cache, and its cache key."""
        return pd.DataFrame(self._runs, columns=["run", "seed", "steps", "tokens", "train_seconds", "seconds",
                                                 "cached", "key"])

    def compute(self, arm=lambda run: run) -> pd.DataFrame:
        """Compute per arm: the runs grouped by ``arm(run name)`` (default: the run name), with the number of runs,
        their mean steps, tokens trained and training seconds, total training seconds and tokens per second."""
        runs = self.runs.assign(arm=lambda t: t["run"].map(arm))
        table = runs.groupby("arm", sort=False).agg(runs=("seed", "size"), steps=("steps", "mean"),
                                                    tokens=("tokens", "mean"), train_seconds=("train_seconds", "mean"),
                                                    total_train_seconds=("train_seconds", "sum")).reset_index()
        table["tokens_per_second"] = table["tokens"] / table["train_seconds"]
        return table

    def deviations(self) -> pd.DataFrame:
        """The study's deviations from the paper, rendered from the ``deviations:`` block of its YAML (each entry:
        ``what``, ``paper``, ``here``, ``why``), so no number is retyped in the notebook."""
        rows = OmegaConf.to_container(OmegaConf.select(self.cfg, "study.deviations", default=[]) or [], resolve=True)
        return pd.DataFrame(rows, columns=["what", "paper", "here", "why"])

    def save(self, metrics: dict | None = None) -> None:
        """Write the recorded predictions, the runs table, ``metrics`` and the timings to the output directory."""
        if self._predictions:
            save_predictions(self.out, self.predictions)
        if self._dev_predictions:
            save_table(self.out, "dev_predictions", self.dev_predictions)
        if self._runs:
            save_table(self.out, "runs", self.runs)
        if self._harness:
            save_table(self.out, "harness_predictions", self.harness_predictions)
        if metrics:
            save_metrics(self.out, metrics)
        save_metrics(self.out, {**self.timings, "total_seconds": time.perf_counter() - self._started}, name="timings")
