"""The command line without running a notebook: bad inputs fail before any work with one line and exit 2 (an
unavailable device, an eval split the generator cannot supply, a directory another run is writing, a missing
output directory), and the ``cache`` subcommand."""
import os
import subprocess
import sys
import time

import pytest

from studykit import cli
from studykit.cli import main

SMOKE = ["profile=smoke", "--allow-dirty"]


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDYKIT_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("STUDYKIT_RUNS", str(tmp_path / "runs"))
    return tmp_path


@pytest.fixture
def no_notebook(monkeypatch):
    """Any notebook execution fails the test: these refusals come before any work."""
    import papermill

    def execute_notebook(*args, **kwargs):
        raise AssertionError("a notebook was started")

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("studykit: error: ")
    return err.strip()


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_gpu_device_without_a_gpu_fails_before_any_work(results, no_notebook, capsys, monkeypatch, device):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["run", "quickstart", *SMOKE, f"device={device}"]) == 2
    assert f"device={device!r} is not available: torch sees no CUDA device" in one_error_line(capsys)
    assert not results.joinpath("results").exists() and not results.joinpath("runs").exists()


@pytest.mark.parametrize("overrides, key", [
    # a family with 200 distinct questions cannot give 1000 eval items
    (["data=testbed", "data.families={chain_sum: {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}}",
      "data.eval_per_family=1000"], "data.eval_per_family=1000"),
    # Yes/No answers cannot fill 4 eval items with no answer above 10% of them
    (["data=testbed", "data.max_answer_share=0.1"], "data.eval_per_family=4"),
])
def test_an_eval_split_the_generator_cannot_supply_fails_before_any_work(results, no_notebook, capsys, overrides,
                                                                          key):
    assert main(["run", "quickstart", *SMOKE, *overrides]) == 2
    line = one_error_line(capsys)
    assert f"{key} is more than family" in line and "can supply" in line
    assert not results.joinpath("results").exists() and not results.joinpath("runs").exists()


def test_a_directory_another_run_is_writing_is_refused_at_once(results, no_notebook, capsys):
    from studykit.runner import exclusive_lock, lock_path

    target = results / "results" / "quickstart" / "smoke"
    with exclusive_lock(lock_path(target), "x"):
        started = time.monotonic()
        assert main(["run", "quickstart", *SMOKE]) == 2
        assert time.monotonic() - started < 30  # no wait: the preflight's compose and testbed only
    line = one_error_line(capsys)
    assert line.startswith(f"studykit: error: another run is writing {target} (pid {os.getpid()}, started ")
    assert "wait for it to finish" in line
    assert not target.exists() and not list(target.parent.glob(".tmp-*"))


def test_a_bad_tag_is_exit_2(results, no_notebook, capsys):
    assert main(["run", "quickstart", *SMOKE, "--tag", "../escape"]) == 2
    assert "--tag '../escape'" in one_error_line(capsys)


def test_score_refuses_a_missing_output_directory_before_loading_the_model(tmp_path, monkeypatch, capsys):
    from studykit import score
    from studykit.errors import one_line_errors

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(score, "load_model_and_tokenizer", load)
    monkeypatch.setattr(score, "resolve_model_path", load)
    missing = tmp_path / "missing" / "dir"
    argv = ["--input", str(tmp_path / "x.jsonl"), "--output", str(missing / "out.jsonl"), "profile=smoke"]
    assert one_line_errors(lambda: score.main(argv), "python -m studykit.score") == 2
    assert capsys.readouterr().err == (f"python -m studykit.score: error: --output {missing / 'out.jsonl'}: "
                                       f"directory {missing} does not exist\n")


def test_score_entry_point_prints_the_missing_directory_in_one_line():
    run = subprocess.run([sys.executable, "-m", "studykit.score", "--input", "x.jsonl", "--output",
                          "/missing/dir/out.jsonl"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert run.stderr == ("python -m studykit.score: error: --output /missing/dir/out.jsonl: "
                          "directory /missing/dir does not exist\n")


def test_cache_list_and_prune_call_the_cache(monkeypatch, capsys):
    import pandas as pd

    calls = []
    table = pd.DataFrame([{"key": "0123456789ab", "study": "quickstart", "run": "sft", "seed": 0,
                           "created": pd.Timestamp("2025-01-01"), "seconds": 12.0, "size_mb": 1.5,
                           "has_model": False, "stale": True}])
    monkeypatch.setattr(cli.cache, "list_entries", lambda: table)
    monkeypatch.setattr(cli.cache, "prune", lambda **kwargs: calls.append(kwargs) or [])
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert "0123456789ab" in out and "quickstart" in out and "1 cached runs, 1.5 MB, 1 stale" in out
    assert main(["cache", "prune", "--stale", "--older-than", "7"]) == 0
    assert main(["cache", "prune", "--all"]) == 0
    assert main(["cache", "prune"]) == 0
    assert calls == [{"stale": True, "older_than_days": 7.0, "everything": False},
                     {"stale": False, "older_than_days": None, "everything": True},
                     {"stale": False, "older_than_days": None, "everything": False}]
    assert "removed 0 entries" in capsys.readouterr().out


def test_cache_list_on_an_empty_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STUDYKIT_CACHE", str(tmp_path))
    assert main(["cache", "list"]) == 0
    assert "no cached runs" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["cache"])  # a cache subcommand is required


def test_run_flags_mix_with_overrides_and_the_usage_names_them(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "run_study", lambda study, overrides, **kwargs: seen.append((overrides, kwargs)) or study)
    assert main(["run", "quickstart", "--tag", "probe", "seed=1", "--wait", "profile=smoke", "--allow-dirty"]) == 0
    assert seen == [(["seed=1", "profile=smoke"], {"allow_dirty": True, "tag": "probe", "wait": True})]
    for flag in ("--tag NAME", "--wait", "--allow-dirty", "studykit cache list", "studykit cache prune",
                 "--older-than DAYS", "runs/<study>/<profile>/"):
        assert flag in cli.__doc__
