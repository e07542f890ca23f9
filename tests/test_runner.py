"""End-to-end: `studykit run` executes the quickstart notebook with papermill on the smoke profile."""
import json

import nbformat
import pytest

from studykit.cli import main

EXPECTED_FILES = {"quickstart.ipynb", "manifest.json", "metrics.json", "timings.json", "accuracy_by_family.csv",
                  "train_log.csv", "predictions.csv", "accuracy_before_after.png"}


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDYKIT_RESULTS", str(tmp_path))
    return tmp_path


def leftovers(root):
    return [p for p in root.rglob(".tmp-*")]


def test_run_writes_complete_results_with_manifest(results):
    assert main(["run", "quickstart", "profile=smoke"]) == 0
    out = results / "quickstart" / "smoke"
    assert EXPECTED_FILES <= {p.name for p in out.iterdir()}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["study"] == "quickstart" and manifest["profile"] == "smoke" and manifest["seed"] == 0
    assert manifest["config"]["model"]["source"] == "tiny_random"
    assert manifest["packages"]["trl"] == "1.16.0" and manifest["hardware"]["cpu_count"] >= 1
    assert manifest["wall_time_s"] > 0 and "commit" in manifest["git"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy_before"] <= 1.0 and metrics["train_steps"] == 2
    executed = nbformat.read(out / "quickstart.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    assert not leftovers(results)

    # same seed ⇒ identical metrics and predictions
    first = {name: (out / name).read_text() for name in ("metrics.json", "predictions.csv", "train_log.csv")}
    assert main(["run", "quickstart", "profile=smoke"]) == 0
    assert {name: (out / name).read_text() for name in first} == first

    # a failing run exits non-zero, keeps the previous results and leaves nothing half-written
    assert main(["run", "quickstart", "profile=smoke", "data.pool_per_family=0"]) == 1
    assert {name: (out / name).read_text() for name in first} == first
    assert not leftovers(results)


@pytest.mark.parametrize("argv, message", [
    (["run", "nope"], "unknown study 'nope'"),
    (["run", "quickstart", "profile=smoke", "train.bogus=1"], "Could not override 'train.bogus'"),
    (["run", "quickstart", "profile=smoke", "model.tokenizer_from.package=no-such-pkg"],
     "model package 'no-such-pkg' is not installed"),
])
def test_bad_study_override_or_model_is_exit_2_and_writes_nothing(results, capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not any(results.iterdir())


def test_list_names_studies_and_groups(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "quickstart" in out and "smoke" in out and "smollm2_135m" in out


def test_sigterm_mid_run_removes_the_temporary_directory(results):
    """`kill` / `timeout` on a running study: exit 143, no `.tmp-*` directory and no result directory left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "studykit.cli", "run", "quickstart", "profile=smoke"],
                            env={**os.environ, "STUDYKIT_RESULTS": str(results)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not leftovers(results) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftovers(results), "the run never created its temporary directory"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    assert leftovers(results) == []
    assert not (results / "quickstart" / "smoke").exists()
