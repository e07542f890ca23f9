"""The reproduction report compares a committed result with its re-run: per claim row, per item, per package."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from studykit import reproduce

COMMITTED = Path(__file__).resolve().parent.parent / "results" / "quickstart" / "embedded"


@pytest.fixture
def pair(tmp_path):
    a, b = tmp_path / "a" / "quickstart" / "embedded", tmp_path / "b" / "quickstart" / "embedded"
    for d in (a, b):
        shutil.copytree(COMMITTED, d, ignore=shutil.ignore_patterns("*.ipynb", "*.png"))
    return a, b


def test_an_identical_rerun_agrees_everywhere(pair):
    a, b = pair
    claims = reproduce.claims_agreement(a, b)
    assert claims["verdicts agree"].all() and (claims["row"] == "both").all()
    items = reproduce.prediction_agreement(a, b)
    assert items["same reply"] == 1.0 and items["items"] > 0
    assert reproduce.environment_difference(a, b)["packages changed"] == {}


def test_a_changed_reply_verdict_and_package_are_reported(pair):
    a, b = pair
    path = sorted((b / "predictions").glob("*.csv"))[0]
    frame = pd.read_csv(path, keep_default_na=False)
    frame.loc[0, "reply"] = frame.loc[0, "reply"] + " (changed)"
    frame.to_csv(path, index=False)
    claims = pd.read_csv(b / "claims.csv", keep_default_na=False)
    claims.loc[0, "verdict"] = "supported"
    claims.to_csv(b / "claims.csv", index=False)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["packages"]["torch"] = "0.0"
    (b / "manifest.json").write_text(json.dumps(manifest))

    items = reproduce.prediction_agreement(a, b)
    assert items["same reply"] == pytest.approx(1 - 1 / items["items"])
    assert list(reproduce.claims_agreement(a, b)["verdicts agree"]) == [False] + [True] * (len(claims) - 1)
    assert reproduce.environment_difference(a, b)["packages changed"]["torch"][1] == "0.0"
    text = reproduce.report([(a, b)])
    assert "verdicts agree on 1 of 2 claim rows" in text and "torch" in text


def test_reproduce_reruns_each_committed_result_once_and_writes_the_report(tmp_path, monkeypatch):
    committed = tmp_path / "results" / "quickstart" / "embedded"
    shutil.copytree(COMMITTED, committed, ignore=shutil.ignore_patterns("*.ipynb", "*.png"))
    monkeypatch.setenv("STUDYKIT_RESULTS", str(tmp_path / "results"))
    calls = []

    def fake_run(study, overrides, allow_dirty=False):
        import os
        calls.append((study, overrides, os.environ["STUDYKIT_RESULTS"]))
        target = Path(os.environ["STUDYKIT_RESULTS"]) / study / "embedded"
        shutil.copytree(committed, target)
        return target

    monkeypatch.setattr(reproduce, "run_study", fake_run)
    scratch = tmp_path / "scratch"
    for _ in range(2):  # the second call finds the re-run and only rewrites the report
        path = reproduce.reproduce(scratch=scratch, say=lambda line: None)
    manifest = json.loads((committed / "manifest.json").read_text())
    assert calls == [("quickstart", manifest["overrides"], str(scratch))]
    assert "verdicts agree on 2 of 2 claim rows" in path.read_text()


def test_a_measurement_without_claims_is_compared_on_its_replies(tmp_path):
    rows = pd.DataFrame({"start": ["base"] * 3, "id": ["a", "b", "c"], "kind": ["greedy"] * 3, "sample": [0] * 3,
                         "budget": [16] * 3, "reply": ["1", "2", "3"], "lenient": [True, False, True]})
    manifest = {"git": {"commit": "abc1234"}, "packages": {}, "hardware": {}}
    dirs = [tmp_path / side / "calibration" / "embedded" for side in ("a", "b")]
    for d, replies in zip(dirs, (rows, rows.assign(reply=["1", "2", "4"]))):
        d.mkdir(parents=True)
        replies.to_parquet(d / "replies.parquet")
        (d / "manifest.json").write_text(json.dumps(manifest))
    assert reproduce.measurement_agreement(*dirs)["same reply"] == pytest.approx(2 / 3)
    assert "a measurement (no claims): identical replies on 66.7% of 3 shared rows" in reproduce.report([tuple(dirs)])
