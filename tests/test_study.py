"""The Study session and the run cache: a run trained once is found again (same predictions, no training),
whatever study asks for it; what determines a run changes its key; progress lines and records are written."""
from __future__ import annotations

import pandas as pd
import pytest
from omegaconf import OmegaConf

from studykit import cache
from studykit.config import compose
from studykit.errors import ConfigError
from studykit.models import copy_model
from studykit.study import PROGRESS_FILE, Study
from studykit.train import train_sft


@pytest.fixture
def session(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDYKIT_CACHE", str(tmp_path / "cache"))
    config = OmegaConf.to_container(compose(["study=quickstart", "profile=smoke"]), resolve=True)
    return Study.open("quickstart", config, str(tmp_path / "out"))


def _sft(session, model, records, seed, trained: list):
    with session.run("sft", seed, recipe=session.sft_recipe(records)) as run:
        if not run.done:
            trained.append(seed)
            run.trainer = train_sft(copy_model(model), session.tokenizer, records, session.cfg, run.scratch,
                                    seed=seed, data_seed=seed)
    return run


def test_a_finished_run_is_found_in_the_cache_with_the_same_predictions(session, tmp_path):
    model, _ = session.base_model()
    pool, trained = session.testbed()["pool"], []
    first = _sft(session, model, pool, 0, trained)
    again = _sft(session, model, pool, 0, trained)
    assert trained == [0] and not first.done and again.done
    assert again.steps == first.steps == session.cfg.train.max_steps
    pd.testing.assert_frame_equal(first.predictions.reset_index(drop=True), again.predictions.reset_index(drop=True))
    assert list(session.runs["cached"]) == [False, True]
    # the compute of a run (steps, tokens trained, training seconds) comes back with it from the cache
    assert first.tokens == again.tokens > 0 and first.train_seconds == again.train_seconds > 0
    compute = session.compute().set_index("arm")
    assert compute.loc["sft", "runs"] == 2 and compute.loc["sft", "tokens"] == first.tokens
    assert compute.loc["sft", "total_train_seconds"] == pytest.approx(2 * round(first.train_seconds, 1))
    assert len(session.predictions) == 2 * len(session.eval_records)
    lines = (session.out / PROGRESS_FILE).read_text().splitlines()
    assert lines == ["run 1: sft seed 0", "run 2: sft seed 0 (cached)"]

    # another study asking for the same run (same model, data, settings, seed, eval items) shares the entry
    other_config = OmegaConf.to_container(compose(["study=quickstart", "profile=smoke"]), resolve=True)
    other = Study.open("quickstart", other_config, str(tmp_path / "other"))
    other.base_model()
    assert _sft(other, model, pool, 0, trained).done and trained == [0]
    assert len(cache.list_entries()) == 1


def test_what_determines_a_run_changes_its_key(session):
    pool = session.testbed()["pool"]
    recipe = session.sft_recipe(pool)
    base = cache.run_key({"seed": 0, "recipe": recipe})
    assert cache.run_key({"seed": 0, "recipe": session.sft_recipe(pool)}) == base
    assert cache.run_key({"seed": 1, "recipe": recipe}) != base
    assert cache.run_key({"seed": 0, "recipe": session.sft_recipe(pool[1:])}) != base
    assert cache.run_key({"seed": 0, "recipe": session.sft_recipe(pool, learning_rate=1e-5)}) != base


def test_a_run_that_trains_nothing_is_an_error(session):
    session.base_model()
    with pytest.raises(ValueError, match="trained nothing"):
        with session.run("sft", 0, recipe={"method": "nothing"}):
            pass


def test_the_sft_start_is_kept_and_is_the_run_of_its_sft_recipe(session):
    model, _ = session.base_model()
    pool = session.testbed()["pool"]
    first, again = (session.sft_start("sft", pool, 0, model, max_steps=3) for _ in range(2))
    assert not first.done and again.done and first.steps == again.steps == 3   # the overrides train it
    trained_weight = next(again.model.parameters())   # the kept weights, from the cache
    assert not (trained_weight == next(model.parameters())).all()
    # its cache entry is the run of sft_recipe: shared with every study that asks for it, by hand or not
    with session.run("sft", 0, recipe=session.sft_recipe(pool, max_steps=3), keep_model=True) as run:
        assert run.done and run.key == first.key


def test_a_run_without_evaluation_is_stored_and_listed_but_records_no_predictions(session):
    model, _ = session.base_model()
    pool = session.testbed()["pool"]
    session.evaluation(model, "base")
    for expected_done in (False, True):
        with session.run("part", 0, recipe=session.sft_recipe(pool), keep_model=True, evaluate=False) as run:
            if not run.done:
                run.trainer = train_sft(copy_model(model), session.tokenizer, pool, session.cfg, run.scratch, seed=0)
                run.extra["measured"] = 1.5
        assert run.done is expected_done and run.extra["measured"] == 1.5 and run.model is not None
    assert list(session.runs["cached"]) == [False, True]
    assert set(session.predictions["condition"]) == {"base"}  # only the evaluation: the run recorded nothing
    # the same recipe asked for with evaluation is another entry (the stored run has no predictions to give)
    assert not _sft(session, model, pool, 0, []).done and len(cache.list_entries()) == 2


def test_record_as_gives_the_same_predictions_under_another_name(session):
    model, _ = session.base_model()
    session.evaluation(model, "lr_a", 0)
    session.record_as("lr_a", "best_single", 0)
    frame = session.predictions
    a, b = (frame[frame["condition"] == c].drop(columns="condition").reset_index(drop=True) for c in ("lr_a", "best_single"))
    assert len(a) == len(session.eval_records) and a.equals(b)
    with pytest.raises(ValueError, match="no predictions of 'lr_a' seed 1"):
        session.record_as("lr_a", "best_single", 1)


def test_prune_removes_stale_and_all_entries(session, monkeypatch):
    model, _ = session.base_model()
    _sft(session, model, session.testbed()["pool"], 0, [])
    assert cache.prune(stale=True) == []
    monkeypatch.setattr(cache, "code_fingerprint", lambda: "other code")
    assert bool(cache.list_entries()["stale"].all())
    assert len(cache.prune(stale=True)) == 1 and cache.list_entries().empty


def test_the_session_refuses_another_studys_config(tmp_path):
    config = OmegaConf.to_container(compose(["study=nuggets", "profile=smoke"]), resolve=True)
    with pytest.raises(ConfigError, match="study 'quickstart' was given the config of study 'nuggets'"):
        Study.open("quickstart", config, str(tmp_path))


def test_seeds_are_the_studys_training_seeds(tmp_path):
    single = Study.open("quickstart", OmegaConf.to_container(compose(["study=quickstart", "profile=smoke", "seed=3"]),
                                                              resolve=True), str(tmp_path / "a"))
    multi = Study.open("nuggets", OmegaConf.to_container(compose(["study=nuggets", "study.seeds=[4,5]"]),
                                                          resolve=True), str(tmp_path / "b"))
    assert single.seeds == [3] and multi.seeds == [4, 5]


def test_checkpoints_are_stored_with_the_run_and_come_back_from_the_cache(session):
    from studykit.models import load_checkpoint
    from studykit.train import train_sft_with_checkpoints

    model, _ = session.base_model()
    pool = session.testbed()["pool"]
    for expected_done in (False, True):
        with session.run("sft", 0, recipe=session.sft_recipe(pool[2:])) as run:
            assert run.checkpoints == ([0, 1, 2] if run.done else [])  # a fresh run's: when its body ends
            if not run.done:
                trainer, table = train_sft_with_checkpoints(copy_model(model), session.tokenizer, pool[2:], pool[:2],
                                                            session.cfg, run.scratch, n_checkpoints=2, seed=0)
                run.trainer = trainer
                for step, path in zip(table["step"], table["path"]):
                    run.save_checkpoint(step, path)  # a trainer's checkpoint directory, copied
                run.save_checkpoint(0, model)  # or a model, saved
            else:
                with pytest.raises(RuntimeError, match="came from the cache"):
                    run.save_checkpoint(3, model)
        assert run.done is expected_done and run.checkpoints == [0, 1, 2]
        weights = {step: next(load_checkpoint(run.checkpoint(step), model).parameters()) for step in run.checkpoints}
        assert (weights[0] == next(model.parameters())).all()
        assert not (weights[2] == weights[1]).all()  # (step 1 trained at lr 0: the warm-up's first step)
        if not run.done:
            assert (weights[2] == next(run.model.parameters()).cpu()).all()  # the last checkpoint: the final model
    with pytest.raises(KeyError, match="no stored checkpoint 5"):
        run.checkpoint(5)


def test_a_run_evaluated_on_some_items_is_keyed_and_recorded_on_those(session):
    model, _ = session.base_model()
    pool = session.testbed()["pool"]
    family = session.eval_records[0]["family"]
    some = [r for r in session.eval_records if r["family"] == family]
    keys = []
    for records in (some, None):
        with session.run("sft", 0, recipe=session.sft_recipe(pool), eval_records=records) as run:
            if not run.done:
                run.trainer = train_sft(copy_model(model), session.tokenizer, pool, session.cfg, run.scratch, seed=0)
        keys.append(run.key)
        assert set(run.predictions["id"]) == {r["id"] for r in (records or session.eval_records)}
    assert keys[0] != keys[1]


def test_tune_trains_each_setting_and_its_placebo_on_the_dev_items_and_records_them_apart(session):
    from studykit.tuning import dev_choice

    model, _ = session.base_model()
    pool, dev = session.testbed()["pool"], session.testbed()["dev"]
    grid = {"lr=1e-4": {"learning_rate": 1e-4}, "lr=1e-3": {"learning_rate": 1e-3}}
    trained = []

    def train(run, settings, placebo):
        trained.append((run.name, settings["learning_rate"], placebo))
        records = [{**r, "response": "0"} for r in pool] if placebo else pool   # any signal-free stand-in
        run.trainer = train_sft(copy_model(model), session.tokenizer, records, session.cfg, run.scratch,
                                seed=run.seed, **settings)

    recipe = lambda settings, placebo: {**session.sft_recipe(pool, **settings), "placebo": placebo}
    chosen, table = session.tune("sft", grid, 0, recipe=recipe, train=train)
    assert trained == [("sft@lr=1e-4", 1e-4, False), ("placebo_sft@lr=1e-4", 1e-4, True),
                       ("sft@lr=1e-3", 1e-3, False), ("placebo_sft@lr=1e-3", 1e-3, True)]
    dev_rows = session.dev_predictions
    assert set(dev_rows["id"]) == {r["id"] for r in dev} and len(dev_rows) == 4 * len(dev)
    assert not session._predictions   # nothing the claims read
    expected = dev_choice(dev_rows, {label: (f"sft@{label}", f"placebo_sft@{label}") for label in grid})
    assert chosen == grid[expected.loc[expected["chosen"], "setting"].iloc[0]]
    assert table.drop(columns="arm_name").equals(expected) and set(table["arm_name"]) == {"sft"}
    # asked again, every run comes from the cache; the dev table is saved with the session
    again, _ = session.tune("sft", grid, 0, recipe=recipe, train=train)
    assert again == chosen and len(trained) == 4
    session.save()
    assert len(pd.read_csv(session.out / "dev_predictions.csv")) == 8 * len(dev)
    # against a condition already run on dev (SELM's α against DPO): no placebo runs, each setting compared with it
    chosen, table = session.tune("other", {"lr=5e-4": {"learning_rate": 5e-4}}, 0, recipe=recipe, train=train,
                                 against="sft@lr=1e-4")
    assert trained[4:] == [("other@lr=5e-4", 5e-4, False)] and chosen == {"learning_rate": 5e-4}
    assert table[["arm", "placebo"]].values.tolist() == [["other@lr=5e-4", "sft@lr=1e-4"]]


def test_a_run_on_an_unknown_split_is_an_error(session):
    with pytest.raises(ValueError, match="split='test'"):
        with session.run("sft", 0, recipe=session.sft_recipe([]), split="test"):
            pass
