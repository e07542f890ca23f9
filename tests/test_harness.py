"""lm-evaluation-harness tasks as an extra evaluation: lm-eval's own per-item scores, one row per item, on a local
multiple-choice task (nothing from the hub); its multiple-choice ``acc`` is 1 exactly where the gold choice has the
highest summed log-likelihood; bad input is one clear error before any work; the session records and writes them."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from studykit.config import compose
from studykit.errors import ConfigError, ModelSourceError
from studykit import harness
from studykit.harness import COLUMNS, harness_items, harness_table
from studykit.stats import paired_difference
from studykit.study import Study

TASK = "studykit_tiny_mc"
ITEMS = Path(__file__).parent / "fixtures" / "lm_eval" / "tiny_mc.jsonl"


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A folder with one local lm-eval task over the fixture's items.  lm-eval hands ``data_files`` to
    ``datasets.load_dataset`` as they are (a relative path is relative to the working directory, not the YAML), so
    the YAML is written here with the items' absolute path."""
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    (folder / f"{TASK}.yaml").write_text(yaml.safe_dump({
        "task": TASK, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(ITEMS)}},
        "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{label}}", "doc_to_choice": "{{choices}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}))
    return str(folder)


@pytest.fixture(scope="module")
def scored(tiny, task_dir):
    model, tokenizer = tiny
    return harness_items(model, tokenizer, [TASK], include_path=task_dir, batch_size=4)


def test_one_row_per_item_whose_mean_is_lm_evals_own_accuracy(tiny, task_dir, scored):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    docs = ITEMS.read_text().splitlines()
    assert list(scored.columns) == COLUMNS and len(scored) == len(docs) and scored["id"].is_unique
    assert list(scored["id"]) == [f"{TASK}/{i}" for i in range(len(docs))]
    assert set(scored["family"]) == {TASK} and set(scored["metric"]) == {"acc"}
    # lm-eval's own aggregate, from a run of its own (on the same index of task YAMLs: it takes seconds to build)
    model, tokenizer = tiny
    results = simple_evaluate(HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4), tasks=[TASK],
                              task_manager=harness._task_manager(task_dir), bootstrap_iters=0)
    assert scored["harness_score"].mean() == pytest.approx(results["results"][TASK]["acc,none"])


@torch.no_grad()
def test_scoring_leaves_the_sessions_random_draws_as_they_were(tiny, task_dir):
    import random

    model, tokenizer = tiny
    draws = []
    for score in (False, True):
        random.seed(7), np.random.seed(7), torch.manual_seed(7)
        if score:
            harness_items(model, tokenizer, [TASK], include_path=task_dir, limit=2)
        draws.append((random.random(), float(np.random.rand()), float(torch.rand(1))))
    assert draws[0] == draws[1]


def test_multiple_choice_accuracy_is_the_gold_choice_having_the_highest_log_likelihood(tiny, scored):
    """Independently of lm-eval: each choice's summed log-probability after the prompt, from one forward pass."""
    model, tokenizer = tiny
    expected = []
    for line in ITEMS.read_text().splitlines():
        doc = json.loads(line)
        context = f"Question: {doc['question']}\nAnswer:"
        likelihoods = []
        for choice in doc["choices"]:
            prefix, full = tokenizer.encode(context), tokenizer.encode(f"{context} {choice}")
            assert full[:len(prefix)] == prefix
            logprobs = model(torch.tensor([full], device=model.device)).logits[0].float().log_softmax(-1)
            likelihoods.append(sum(logprobs[i - 1, full[i]].item() for i in range(len(prefix), len(full))))
        expected.append(float(np.argmax(likelihoods) == doc["label"]))
    assert set(expected) == {0.0, 1.0}   # the random model gets some right and some wrong: the check has teeth
    assert list(scored["harness_score"]) == expected


@pytest.mark.parametrize("kwargs, message", [
    ({"tasks": []}, "eval.lm_eval.tasks=[] is not allowed"),
    ({"tasks": TASK}, "expected a non-empty list of lm-eval task names"),
    ({"tasks": [TASK], "limit": 0}, "eval.lm_eval.limit=0"),
    ({"tasks": [TASK], "batch_size": 0}, "eval.lm_eval.batch_size=0"),
    ({"tasks": [TASK], "include_path": "no/such/folder"}, "eval.lm_eval.include_path='no/such/folder'"),
])
def test_bad_input_is_one_clear_error_before_any_work(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        harness_items(None, None, **kwargs)   # no model: an evaluation would fail otherwise


def test_an_unknown_task_is_one_clear_error_before_any_work(task_dir):
    with pytest.raises(ConfigError, match=r"no_such_task is not a task \(or group, or tag\) lm-eval knows"):
        harness_items(None, None, [TASK, "no_such_task"], include_path=task_dir)


def test_under_a_launch_only_the_main_process_scores(monkeypatch, task_dir):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    frame = harness_items(None, None, [TASK], include_path=task_dir)   # checked, then nothing evaluated
    assert frame.empty and list(frame.columns) == COLUMNS
    with pytest.raises(ConfigError, match="no_such_task"):
        harness_items(None, None, ["no_such_task"], include_path=task_dir)   # every process checks the input


def test_without_lm_eval_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ModelSourceError, match=r'pip install -e "\.\[lm-eval\]"'):
        harness_items(None, None, [TASK])


@pytest.mark.parametrize("override, key", [
    ("eval.lm_eval.limit=0", "eval.lm_eval.limit"),
    ("eval.lm_eval.batch_size=0", "eval.lm_eval.batch_size"),
    ("eval.lm_eval.tasks=[1]", "eval.lm_eval.tasks"),
    ("eval.lm_eval.include_path=no/such/folder", "eval.lm_eval.include_path"),
])
def test_bad_lm_eval_settings_are_refused_when_composing(override, key):
    with pytest.raises(ConfigError, match=f"{key}=.* is not allowed"):
        compose(["profile=smoke", override])


def test_lm_eval_settings_compose():
    cfg = compose(["profile=smoke", "eval.lm_eval.tasks=[arc_easy]", "eval.lm_eval.limit=10",
                   "eval.lm_eval.include_path=tests/fixtures/lm_eval"])
    assert list(cfg.eval.lm_eval.tasks) == ["arc_easy"] and cfg.eval.lm_eval.limit == 10


def _session(tmp_path, monkeypatch, **lm_eval):
    """A smoke quickstart session with its own run cache."""
    monkeypatch.setenv("STUDYKIT_CACHE", str(tmp_path / "cache"))
    config = OmegaConf.to_container(compose(["study=quickstart", "profile=smoke"]), resolve=True)
    config["eval"]["lm_eval"].update(lm_eval)
    return Study.open("quickstart", config, str(tmp_path / "out"))


def test_a_session_without_tasks_scores_and_writes_nothing(tmp_path, monkeypatch):
    session = _session(tmp_path, monkeypatch)
    frame = session.harness(None)
    assert frame.empty and list(frame.columns) == COLUMNS
    session.save()
    assert not (session.out / "harness_predictions.csv").exists()


def _untrained_run(session, model):
    """A run whose body trains nothing (its model is the start): evaluated, and stored in the run cache."""
    with session.run("copy", 0, recipe={"method": "copy"}) as run:
        if not run.done:
            run.model = model
    return run


def test_every_evaluation_and_run_records_its_items_and_a_cached_run_keeps_them(tmp_path, monkeypatch, task_dir,
                                                                                scored):
    settings = dict(tasks=[TASK], limit=4, batch_size=2, include_path=task_dir)
    session = _session(tmp_path, monkeypatch, **settings)
    model, _ = session.base_model()
    session.evaluation(model, "base")
    first = _untrained_run(session, model)
    again = _untrained_run(_session(tmp_path, monkeypatch, **settings), model)
    assert not first.done and again.done and again.extra["harness"] == first.extra["harness"]
    session.save()
    written = pd.read_csv(session.out / "harness_predictions.csv")
    assert list(written["condition"]) == ["base"] * 4 + ["copy"] * 4 and list(written["seed"]) == [-1] * 4 + [0] * 4
    # the same model as the fixture's (tiny_random, init_seed 0): the same scores on the first 4 items, each time
    for _, part in written.groupby("condition"):
        assert list(part["harness_score"]) == list(scored["harness_score"][:4])
        assert list(part["id"]) == list(scored["id"][:4])


def test_harness_table_is_the_paired_difference_against_the_control_on_the_same_items():
    items = [f"t/{i}" for i in range(6)]
    base = [0, 1, 0, 0, 1, 0]
    trained = {0: [1, 1, 0, 1, 1, 0], 1: [1, 1, 1, 1, 1, 0]}
    rows = [{"condition": "base", "seed": -1, "id": i, "score": s} for i, s in zip(items, base)]
    rows += [{"condition": "sft", "seed": seed, "id": i, "score": s} for seed, scores in trained.items()
             for i, s in zip(items, scores)]
    frame = pd.DataFrame(rows).assign(family="t", metric="acc").rename(columns={"score": "harness_score"})
    table = harness_table(frame.sample(frac=1, random_state=0), control="base").set_index("condition")
    assert table.loc["base", "mean"] == pytest.approx(2 / 6) and np.isnan(table.loc["base", "difference"])
    assert table.loc["sft", "mean"] == pytest.approx(9 / 12) and table.loc["sft", "seeds"] == 2
    # the untrained control is compared with every seed: (9 − 2·2) / 12 more items right
    assert table.loc["sft", "difference"] == pytest.approx(5 / 12)
    reference = paired_difference(np.array(list(trained.values())), np.array(base))
    assert (table.loc["sft", "ci_low"], table.loc["sft", "ci_high"]) == pytest.approx((reference.ci_low,
                                                                                        reference.ci_high))
    with pytest.raises(ValueError, match="no prediction for 1 eval items"):
        harness_table(frame.drop(index=0), control="base")
