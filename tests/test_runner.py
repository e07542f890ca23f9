"""End-to-end: `studykit run` executes the quickstart notebook with papermill on the smoke profile."""
import json

import nbformat
import pytest

from studykit.cli import main

EXPECTED_FILES = {"quickstart.ipynb", "manifest.json", "metrics.json", "timings.json", "accuracy_by_family.csv",
                  "train_log.csv", "predictions", "accuracy_before_after.png"}
SMOKE = ["profile=smoke", "--allow-dirty"]


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDYKIT_RESULTS", str(tmp_path))
    return tmp_path


def leftovers(root):
    return [p for p in root.rglob(".tmp-*")]


def test_run_writes_complete_results_with_manifest(results):
    assert main(["run", "quickstart", *SMOKE]) == 0
    out = results / "quickstart" / "smoke"
    assert EXPECTED_FILES <= {p.name for p in out.iterdir()}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["study"] == "quickstart" and manifest["profile"] == "smoke" and manifest["seed"] == 0
    assert manifest["config"]["model"]["source"] == "tiny_random"
    assert manifest["packages"]["trl"] == "1.16.0" and manifest["hardware"]["cpu_count"] >= 1
    assert manifest["wall_time_s"] > 0 and "commit" in manifest["git"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"]["lenient"]["base"] <= 1.0 and metrics["train_steps"] == 2
    executed = nbformat.read(out / "quickstart.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    assert not leftovers(results)

    # same seed ⇒ identical metrics and predictions
    first = {name: (out / name).read_text() for name in ("metrics.json", "predictions/sft-seed0.csv", "train_log.csv")}
    assert main(["run", "quickstart", *SMOKE]) == 0
    assert {name: (out / name).read_text() for name in first} == first

    # a failing run exits non-zero, keeps the previous results and leaves nothing half-written
    assert main(["run", "quickstart", *SMOKE, "data.families={chain_sum: {min_terms: 2, max_terms: 2, "
                 "min_digits: 1, max_digits: 1}}", "data.pool_per_family=300"]) == 1
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

    proc = subprocess.Popen([sys.executable, "-m", "studykit.cli", "run", "quickstart", *SMOKE],
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


def test_a_dirty_tree_is_refused_unless_allowed(results, capsys, monkeypatch):
    from studykit import runner

    monkeypatch.setattr(runner, "git_state", lambda: {"commit": "abc1234", "dirty": True})
    assert main(["run", "quickstart", "profile=smoke"]) == 2
    assert "uncommitted changes" in capsys.readouterr().err and not any(results.iterdir())


def test_leftovers_of_killed_runs_are_swept_and_live_ones_kept(tmp_path):
    import os
    import subprocess
    import sys

    from studykit.runner import sweep_dead_runs

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".tmp-embedded-{dead.pid}-abc").mkdir()
    (tmp_path / f".tmp-old-{dead.pid}-embedded").mkdir()
    (tmp_path / f".tmp-embedded-{os.getpid()}-xyz").mkdir()
    removed = sweep_dead_runs(tmp_path)
    assert len(removed) == 2 and [p.name for p in tmp_path.iterdir()] == [f".tmp-embedded-{os.getpid()}-xyz"]


@pytest.mark.parametrize("argv, message", [
    (["studykit.score", "--input", "{bad}", "--output", "{out}", "profile=smoke"], "not UTF-8 text"),
    (["studykit.score", "--input", "{empty}", "--output", "{out}", "profile=smoke"], "no examples"),
    (["studykit.score", "--input", "{missing}", "--output", "{out}", "profile=smoke"], "file not found"),
    (["studykit.score", "--input", "{malformed}", "--output", "{out}", "profile=smoke"], "malformed JSON"),
    (["studykit.train", "sft", "profile=smoke", "eval.batch_size=0"], "eval.batch_size=0 is not allowed"),
])
def test_module_entry_points_print_one_line_errors(tmp_path, argv, message):
    import subprocess
    import sys

    files = {"bad": tmp_path / "bad.jsonl", "empty": tmp_path / "empty.jsonl", "malformed": tmp_path / "m.jsonl",
             "missing": tmp_path / "missing.jsonl", "out": tmp_path / "out.jsonl"}
    files["bad"].write_bytes(b"\xff\xfe{}")
    files["empty"].write_text("")
    files["malformed"].write_text('{"prompt": "a", ')
    argv = [a.format(**files) for a in argv]
    run = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_only_code_changes_make_the_tree_dirty_not_results(tmp_path, monkeypatch):
    """`run all` writes each study's results before the next one starts: that must not count as uncommitted code."""
    import subprocess

    from studykit import provenance, runner

    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "studykit").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "studykit" / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "metrics.json").write_text("{}\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "init")
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    assert runner.git_state()["dirty"] is False
    (tmp_path / "results" / "metrics.json").write_text('{"accuracy": 0.5}\n')
    assert runner.git_state()["dirty"] is False
    (tmp_path / "studykit" / "code.py").write_text("x = 2\n")
    assert runner.git_state()["dirty"] is True


def test_gpu_check_plumbing_runs_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.py end to end with --device cpu on the smoke profile (one study): the report has the
    study row, the throughput fractions and no CPU-vs-GPU section."""
    import importlib.util
    import json

    from studykit.config import ROOT

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = gpu_check.main(["--device", "cpu", "--profile", "smoke", "--studies", "quickstart", "--out", str(tmp_path)])
    report = json.loads((out / "report.json").read_text())
    assert [row["study"] for row in report["studies"]] == ["quickstart"] and report["studies"][0]["ok"]
    assert 0 < report["throughput"]["scoring_fraction_of_fp32_peak"] and 0 < report["throughput"]["sft_fraction_of_peak"]
    assert report["cpu_vs_gpu"] is None and "| quickstart | yes |" in (out / "report.md").read_text()
