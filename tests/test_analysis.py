"""The analysis step: from a result directory's evidence to its guarded claims table, guard tables, figure, manifest
and page, the results index with evidence and analysis staleness and the ledger's BH q-values, and the studies table
of the repository README."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from studykit.analysis import INPUTS, analyze, claims_section, save_inputs
from studykit.claims import ClaimsError, load_claims, load_interpretation
from studykit.config import ROOT
from studykit.provenance import (BEGIN, END, analysis_changed_since, evidence_changed_since, evidence_paths,
                                  git_state, write_results_index, _cached_runs)
from studykit.results import save_predictions


def quickstart_evidence(directory, seeds=5):
    """A quickstart-like run: an untrained base and an SFT arm that learns two families (no constant answers)."""
    rng = np.random.default_rng(0)
    rows = []
    for family in ("add", "reverse"):
        gold = [f"{family}{i}" for i in range(30)]
        for condition, seed_list, p in (("base", [-1], 0.2), ("sft", range(seeds), 0.7)):
            for seed in seed_list:
                right = rng.random(30) < p
                for i, ok in enumerate(right):
                    answer = gold[i] if ok else f"wrong{i}"
                    rows.append({"condition": condition, "seed": seed, "id": f"{family}/eval/{i}", "family": family,
                                 "gold": gold[i], "reply": answer, "extracted": answer, "strict": bool(ok),
                                 "lenient": bool(ok)})
    frame = pd.DataFrame(rows)
    save_predictions(directory, frame)
    (directory / "manifest.json").write_text(json.dumps({
        "study": "quickstart", "profile": "embedded", "wall_time_s": 600, "started_at": "2026-12-01T00:00:00+00:00",
        "git": {"commit": git_state()["commit"], "dirty": False}}))
    (directory / "metrics.json").write_text(json.dumps({"claims": [{"id": "quickstart.sft_raises_accuracy",
                                                                    "verdict": "supported"}]}))
    return frame


def test_analyze_rebuilds_the_claims_and_guard_tables_from_evidence_like_the_notebook(tmp_path):
    out = tmp_path / "quickstart" / "embedded"
    out.mkdir(parents=True)
    frame = quickstart_evidence(out)
    shown, _ = claims_section("quickstart", frame, out, "embedded", trained=["sft"], starts={"sft": "base"},
                              placebos={"sft": "base"}, regime={"model": "m", "data": "d", "steps": "s"})
    result = analyze(out)
    claims = result["claims"]
    pd.testing.assert_frame_equal(claims.drop(columns="our_regime"), shown)   # the notebook's table, recomputed
    assert (out / "claims.csv").is_file() and (out / "analysis" / "accuracy.png").is_file()
    families = pd.read_csv(out / "analysis" / "families.csv")
    assert {"modal_share", "best_constant", "accuracy_off_majority", "degenerate"} <= set(families.columns)
    manifest = json.loads((out / "analysis" / "manifest.json").read_text())
    assert manifest["evidence_commit"] == git_state()["commit"] and manifest["verdicts_at_run"] == {"supported": 1}
    assert sum(manifest["verdicts"].values()) == len(claims)
    assert "our_regime" in claims.columns and claims["our_regime"].iloc[0] == "model m, data d, steps s"
    assert not list(out.glob(".analysis-*"))   # no staging folder left behind


def test_analyze_writes_the_result_page_with_the_claims_table_and_the_interpretation(tmp_path):
    out = tmp_path / "quickstart" / "embedded"
    out.mkdir(parents=True)
    quickstart_evidence(out)
    save_inputs(out, "quickstart", "embedded", trained=[])
    (out / "accuracy_before_after.png").write_bytes(b"")   # a figure of the study's own
    claims = analyze(out)["claims"]
    page = (out / "README.md").read_text()
    assert not (out / "analysis" / "README.md").exists()   # one page, at the result root
    for row in claims.itertuples():
        assert f"| {row.id} " in page and row.verdict in page
    assert "| verdict" in page and "difference [95% CI]" in page
    assert " ".join(load_interpretation("quickstart").split()) in " ".join(page.split())
    assert "](accuracy_before_after.png)" in page and "](analysis/accuracy.png)" in page
    assert f"Evidence commit `{git_state()['commit'][:7]}`" in page and "**Verdicts:** " in page


def test_a_claims_file_takes_an_interpretation_and_no_other_top_level_key(tmp_path):
    entry = "- {id: x, paper: studykit, source: s, claim: c, kind: kit, not_tested: t}\n"
    path = tmp_path / "study.yaml"
    path.write_text("interpretation: >-\n  What it shows.\nclaims:\n" + entry)
    assert load_interpretation(path) == "What it shows." and [c["id"] for c in load_claims(path)] == ["x"]
    path.write_text(entry)
    assert load_interpretation(path) is None
    for text, message in (("notes: n\nclaims:\n" + entry, r"unknown top-level keys \['notes'\]"),
                          ("interpretation: ''\nclaims:\n" + entry, "interpretation must be"),
                          ("interpretation: i\n", "non-empty list")):
        path.write_text(text)
        with pytest.raises(ClaimsError, match=message):
            load_claims(path)


def test_the_results_index_splits_evidence_and_analysis_staleness_and_adds_bh_q_values(tmp_path):
    out = tmp_path / "quickstart" / "embedded"
    out.mkdir(parents=True)
    frame = quickstart_evidence(out)
    save_inputs(out, "quickstart", "embedded", trained=[])   # nothing trained here: the placebo guard is moot
    analyze(out)
    text = write_results_index(tmp_path).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| [quickstart](quickstart/embedded/README.md)"))
    assert "1 supported" in row                        # verdicts at run
    assert row.count("| no ") == 2                     # evidence and analysis current at HEAD
    ledger = text.split("## Ledger")[1]
    assert "quickstart.sft_raises_accuracy" in ledger and "q_bh" in ledger
    assert evidence_changed_since("0" * 40, "quickstart") == "unknown" == analysis_changed_since("0" * 40)
    assert frame["seed"].nunique() == 6


def test_the_index_counts_the_runs_a_resumed_study_read_from_the_cache(tmp_path):
    assert _cached_runs(tmp_path) == "—"
    pd.DataFrame({"run": ["full", "top_25", "placebo"], "cached": [True, True, False]}).to_csv(tmp_path / "runs.csv")
    assert _cached_runs(tmp_path) == "2 of 3"


def test_evidence_depends_on_the_studys_own_yamls_only():
    nuggets, rewardrank = evidence_paths("nuggets"), evidence_paths("rewardrank")
    assert ":(exclude)conf/study/rewardrank.yaml" in nuggets and ":(exclude)conf/study/nuggets.yaml" not in nuggets
    assert ":(exclude)conf/study/nuggets.yaml" in rewardrank and "conf" in rewardrank and "studykit" in rewardrank


@pytest.mark.parametrize("text, message", [
    (None, "no analysis inputs"),
    ("{not json", "not valid JSON"),
    ('{"study": "quickstart", "placebo": {}}', r"unknown \['placebo'\]"),
])
def test_bad_analysis_inputs_get_one_clear_error_before_any_work(tmp_path, text, message):
    if text is not None:
        (tmp_path / INPUTS).write_text(text)
    with pytest.raises(ClaimsError, match=message):
        analyze(tmp_path)
    assert not (tmp_path / "claims.csv").exists() and not (tmp_path / "analysis").exists()


def test_undeclared_trained_conditions_mean_the_same_on_disk_as_in_the_notebook(tmp_path):
    out = tmp_path / "quickstart" / "embedded"
    out.mkdir(parents=True)
    frame = quickstart_evidence(out)
    shown, _ = claims_section("quickstart", frame, out, "embedded")   # no trained=: every seeded condition
    assert json.loads((out / INPUTS).read_text())["trained"] is None
    claims = analyze(out)["claims"]
    pd.testing.assert_frame_equal(claims, shown)
    assert claims["verdict"].str.contains("no placebo yet").all()



def analyzed_results(tmp_path):
    """A results root beside a README: one analyzed quickstart-like result (its verdict: 1 kit)."""
    out = tmp_path / "results" / "quickstart" / "embedded"
    out.mkdir(parents=True)
    quickstart_evidence(out)
    save_inputs(out, "quickstart", "embedded", trained=[])
    analyze(out)
    return tmp_path / "results"


def test_the_results_index_rewrites_only_the_studies_table_of_a_copy_of_the_readme(tmp_path):
    results = analyzed_results(tmp_path)
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    before = readme.read_text()
    write_results_index(results)   # the README beside the results root is the default
    after = readme.read_text()
    assert before.split(BEGIN)[0] == after.split(BEGIN)[0] and before.split(END)[1] == after.split(END)[1]
    table = after.split(BEGIN)[1].split(END)[0].strip().splitlines()
    assert len(table) == 3   # header, rule, one study
    cells = [cell.strip() for cell in table[2].strip("|").split("|")]
    assert cells == ["[quickstart](results/quickstart/embedded/README.md)", "embedded", "0", "0", "0", "0", "1 kit"]


def test_a_readme_without_both_markers_is_left_alone(tmp_path):
    results = analyzed_results(tmp_path)
    other = tmp_path / "notes.md"
    other.write_text(f"# Notes\n\n{BEGIN}\nno end marker\n")
    write_results_index(results, readme=other)
    assert other.read_text() == f"# Notes\n\n{BEGIN}\nno end marker\n"
