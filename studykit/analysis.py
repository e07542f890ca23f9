"""The analysis step: a study's guarded claims table, per-family guard table, accuracy table and figure, recomputed
from its committed evidence without training anything (``studykit analyze <study> [profile]``).

Evidence is what a run wrote and only a run can write: per-item predictions (``predictions/``), training logs (the
RL signal ``rl_signal.csv``), and ``analysis_inputs.json`` — the run's family groups, same-run aliases, conditions
not run and why, trained conditions with their evaluated starts and placebos, and our regime (:func:`save_inputs`;
``extra_predictions`` names per-item tables saved beside ``predictions/``, ``picks`` the models a selection rule
picked per seed).  Analysis is everything computed from it: ``claims.csv``, the result's page ``README.md`` (the
guarded claims table, verdict counts, figures, commits and the study's hand-written interpretation from its claims
file) and ``analysis/`` — ``families.csv`` (the degenerate-arm guard per condition × family), ``identical.csv``
(conditions with the same reply on every item-seed), ``accuracy.csv``, ``accuracy.png`` and ``manifest.json`` (the
analysis commit beside the evidence commit).  The notebook shows the same table (:func:`claims_section`); the runner
writes the analysis with :func:`analyze` after each run, and ``studykit analyze`` recomputes it whenever the analysis
code changes.  Outputs are written to a temporary folder and swapped in, so a failed analysis leaves the previous
one whole.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from . import guards
from .claims import (Evidence, auroc_claims_table, claims_table, conclusions, load_claims, load_interpretation,
                     metric_label)
from .config import results_root
from .errors import ClaimsError
from .provenance import git_state
from .report import condition_accuracy
from .results import load_predictions

INPUTS, SIGNAL, FOLDER, PAGE = "analysis_inputs.json", "rl_signal.csv", "analysis", "README.md"
INPUT_KEYS = {"study", "profile", "family_groups", "aliases", "not_run", "trained", "starts", "placebos", "regime",
              "rl_signal", "auroc", "extra_predictions", "picks"}


def inputs_of(study: str, profile: str, *, family_groups=None, aliases=None, not_run=None, trained=None,
              starts=None, placebos=None, regime=None, rl_signal: pd.DataFrame | None = None, auroc: dict | None = None,
              extra_predictions: list[str] | None = None, picks: dict[str, list[str]] | None = None) -> dict:
    """A run's analysis inputs as the JSON object :func:`save_inputs` writes (``trained=None``: undeclared, every
    condition with a training seed counts as trained)."""
    inputs = {"study": study, "profile": profile, "family_groups": family_groups or {}, "aliases": aliases or {},
              "not_run": not_run or {}, "trained": None if trained is None else list(trained),
              "starts": starts or {}, "placebos": placebos or {}, "regime": regime or {}}
    if rl_signal is not None:
        inputs["rl_signal"] = SIGNAL
    if auroc is not None:
        inputs["auroc"] = auroc
    if extra_predictions:
        inputs["extra_predictions"] = list(extra_predictions)  # per-item tables saved beside predictions/
    if picks:
        inputs["picks"] = picks  # a condition that is, per seed, an evaluated model picked by a rule
    return _plain(inputs)


def save_inputs(output_dir: Path, study: str, profile: str, *, rl_signal: pd.DataFrame | None = None,
                **inputs) -> Path:
    """Write a run's ``analysis_inputs.json`` (:func:`inputs_of`) and its RL signal log as ``rl_signal.csv``
    (columns ``condition, seed, step, signal_share``) — the evidence :func:`analyze` needs besides the predictions."""
    return _write_inputs(output_dir, inputs_of(study, profile, rl_signal=rl_signal, **inputs), rl_signal)


def _write_inputs(output_dir: Path, inputs: dict, rl_signal: pd.DataFrame | None) -> Path:
    if rl_signal is not None:
        rl_signal[["condition", "seed", "step", "signal_share"]].to_csv(Path(output_dir) / SIGNAL, index=False)
    path = Path(output_dir) / INPUTS
    path.write_text(json.dumps(inputs, indent=2, sort_keys=True) + "\n")
    return path


def claims_section(study: str, predictions: pd.DataFrame, out: Path | None = None, profile: str | None = None, *,
                   rl_signal: pd.DataFrame | None = None, **inputs) -> tuple[pd.DataFrame, list[str]]:
    """What a notebook shows at the end of a run: the study's guarded claims table and its conclusions, computed
    in memory from the same inputs (:func:`inputs_of`: family groups, aliases, not_run, trained, starts, placebos,
    regime, extra predictions, picks) that — with ``out`` — are saved as the run's analysis inputs; the runner then
    writes the analysis itself with :func:`analyze`, so notebook and ``studykit analyze`` cannot disagree."""
    run_inputs = inputs_of(study, profile or "interactive", rl_signal=rl_signal, **inputs)
    if out is not None:
        _write_inputs(out, run_inputs, rl_signal)
    table = claims_table(load_claims(study), predictions, _evidence(run_inputs, rl_signal))
    return table, conclusions(table)


def picked(predictions: pd.DataFrame, picks: dict[str, list[str]]) -> pd.DataFrame:
    """The predictions of rule-picked conditions: ``{rule: [the condition it picked on each seed]}`` → the picked
    models' rows relabelled with the rule's name (e.g. the SFT checkpoint each selection rule chose per seed)."""
    return pd.concat([predictions[predictions["condition"] == condition].assign(condition=rule)
                      for rule, conditions in picks.items() for condition in conditions], ignore_index=True)


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def load_inputs(result_dir: Path) -> dict:
    """The run's analysis inputs, checked: one clear error naming the file, the key and what was expected."""
    path = Path(result_dir) / INPUTS
    if not path.is_file():
        raise ClaimsError(f"{path}: no analysis inputs (a run writes them with studykit.analysis.save_inputs)")
    try:
        inputs = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ClaimsError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    unknown = set(inputs) - INPUT_KEYS
    if not isinstance(inputs, dict) or unknown or "study" not in inputs:
        raise ClaimsError(f"{path}: expected an object with 'study' and keys among {sorted(INPUT_KEYS)}, "
                          f"got unknown {sorted(unknown)}")
    return inputs


def _evidence(inputs: dict, rl_signal: pd.DataFrame | None) -> Evidence:
    """The :class:`Evidence` of an analysis-inputs object (:func:`inputs_of`) and its RL signal log."""
    return Evidence(family_groups=inputs.get("family_groups", {}), aliases=inputs.get("aliases", {}),
                    not_run=inputs.get("not_run", {}), trained=inputs.get("trained"), starts=inputs.get("starts", {}),
                    placebos=inputs.get("placebos", {}), regime=inputs.get("regime", {}), rl_signal=rl_signal)


def _auroc_table(result_dir: Path, study: str, spec: dict) -> pd.DataFrame:
    frame = pd.read_csv(Path(result_dir) / spec["file"])
    labels = (frame[spec["label"]["column"]] == spec["label"]["positive"]).to_numpy()
    scores = {name: frame[column].to_numpy(float) for name, column in spec["scores"].items()}
    families = frame["family"].to_numpy() if "family" in frame.columns else None
    return auroc_claims_table(load_claims(study), scores, labels, families)


def analyze(result_dir: str | Path) -> dict:
    """Recompute a result directory's analysis from its evidence and write it (``claims.csv``, ``README.md``,
    ``analysis/``).  Returns the tables and the generated conclusions."""
    result_dir = Path(result_dir)
    inputs = load_inputs(result_dir)
    signal = pd.read_csv(result_dir / inputs["rl_signal"]) if inputs.get("rl_signal") else None
    study, evidence = inputs["study"], _evidence(inputs, signal)
    tables: dict[str, pd.DataFrame] = {}
    if "auroc" in inputs:
        claims = _auroc_table(result_dir, study, inputs["auroc"])
    else:
        predictions = pd.concat([load_predictions(result_dir), *(pd.read_csv(result_dir / name)
                                 for name in inputs.get("extra_predictions", []))], ignore_index=True)
        if inputs.get("picks"):
            predictions = picked(predictions, inputs["picks"])
        claims = claims_table(load_claims(study), predictions, evidence)
        tables["families"] = guards.family_profile(predictions)
        tables["identical"] = guards.identical_conditions(predictions)
        score = next((m for m in guards.SCORES if m in predictions.columns), None)
        if score is not None:
            scored = predictions[predictions[score].notna()]
            tables["accuracy"] = pd.concat([condition_accuracy(frame, score)  # each on the items it was evaluated on
                                            for _, frame in scored.groupby("condition", sort=False)], ignore_index=True)
    if evidence.regime:
        claims.insert(claims.columns.get_loc("paper_regime") + 1, "our_regime",
                      ", ".join(f"{k} {evidence.regime[k]}" for k in ("model", "data", "steps") if k in evidence.regime))
    sentences = conclusions(claims)
    _write(result_dir, study, claims, tables, sentences)
    return {"claims": claims, **tables, "conclusions": sentences}


def verdict_counts(table: pd.DataFrame) -> dict[str, int]:
    """How many rows carry each verdict class (the text before its first ':' or '(')."""
    labels = table["verdict"].astype(str).str.split(r"[:(]", n=1, regex=True).str[0].str.strip()
    return {k: int(v) for k, v in labels.value_counts().sort_index().items()}


def _write(result_dir: Path, study: str, claims: pd.DataFrame, tables: dict, sentences: list[str]) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{FOLDER}-", dir=result_dir))
    try:
        for name, table in tables.items():
            table.to_csv(staging / f"{name}.csv", index=False, float_format="%.6g")
        if "accuracy" in tables:
            _figure(tables["accuracy"], tables.get("families"), study).savefig(staging / "accuracy.png", dpi=110,
                                                                                bbox_inches="tight")
        claims.to_csv(staging / "claims.csv", index=False, float_format="%.6g")
        manifest = _manifest(result_dir, claims)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        figures = sorted(p.name for p in result_dir.glob("*.png")) + sorted(
            f"{FOLDER}/{p.name}" for p in staging.glob("*.png"))
        (staging / PAGE).write_text(_page(study, result_dir.name, claims, sentences, manifest, figures))
        final = result_dir / FOLDER
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging / "claims.csv", result_dir / "claims.csv")
        os.replace(staging / PAGE, result_dir / PAGE)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _manifest(result_dir: Path, claims: pd.DataFrame) -> dict:
    run = json.loads((result_dir / "manifest.json").read_text()) if (result_dir / "manifest.json").is_file() else {}
    metrics = json.loads((result_dir / "metrics.json").read_text()) if (result_dir / "metrics.json").is_file() else {}
    at_run = pd.DataFrame(metrics.get("claims", []))
    git = git_state()
    return {"analysis_commit": git["commit"], "analysis_dirty": git["dirty"],
            "evidence_commit": run.get("git", {}).get("commit"), "analyzed_at": datetime.now(timezone.utc).isoformat(),
            "verdicts": verdict_counts(claims),
            "verdicts_at_run": verdict_counts(at_run) if "verdict" in at_run.columns else {}}


def _signed(value) -> str:
    return f"{value:+.3f}" if pd.notna(value) else ""


def _claims_markdown(claims: pd.DataFrame) -> str:
    """The guarded claims table as the page shows it: the comparison, its difference with the 95% interval, the
    evidence behind it, the guards' findings (e.g. each arm against its placebo) and the verdict."""
    table = pd.DataFrame({"id": claims["id"], "comparison": claims.get("comparison")})
    if "difference" in claims.columns:
        table["difference [95% CI]"] = [f"{_signed(d)} [{_signed(lo)}, {_signed(hi)}]" if pd.notna(d) else ""
                                        for d, lo, hi in zip(claims["difference"], claims["ci_low"], claims["ci_high"])]
    for column in ("seeds", "items", "mde", "p_holm", "guards"):
        if column in claims.columns:
            table[column] = claims[column].round(3) if claims[column].dtype.kind == "f" else claims[column]
    table["verdict"] = claims["verdict"]
    return table.fillna("").to_markdown(index=False)


def _page(study: str, profile: str, claims: pd.DataFrame, sentences: list[str], manifest: dict,
          figures: list[str]) -> str:
    """The result's page: verdict counts, commits, the hand-written interpretation, figures, the guarded claims
    table and the generated conclusions."""
    def commit(key: str) -> str:
        return f"`{(manifest[key] or 'unknown')[:7]}`"

    counts = ", ".join(f"{n} {label}" for label, n in manifest["verdicts"].items())
    interpretation = load_interpretation(study) or f"None yet: add `interpretation:` to `conf/claims/{study}.yaml`."
    images = "\n\n".join(f"![{Path(name).stem}]({name})" for name in figures) or "No figure."
    bullets = "\n".join(f"- {s}" for s in sentences)
    return (f"# {study} — {profile}\n\n"
            f"Generated by `studykit analyze` from the committed evidence; do not edit.  Evidence commit "
            f"{commit('evidence_commit')}, analysis commit {commit('analysis_commit')}"
            f"{' (uncommitted analysis code)' if manifest['analysis_dirty'] else ''}; full hashes in `manifest.json` "
            f"and `{FOLDER}/manifest.json`.\n\n**Verdicts:** {counts}.\n\n"
            f"## Interpretation\n\n*Hand-written in `conf/claims/{study}.yaml` about the committed embedded result; "
            f"check it against the table below after a re-run.*\n\n{interpretation.strip()}\n\n"
            f"## Figures\n\n{images}\n\n"
            f"## Claims (guarded; full table in `claims.csv`, guard tables in `{FOLDER}/`)\n\n"
            f"{_claims_markdown(claims)}\n\n## Conclusions\n\n{bullets}\n")


def _figure(accuracy: pd.DataFrame, families: pd.DataFrame | None, study: str):
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(accuracy) + 1.6))
    y = np.arange(len(accuracy))
    column = next(c for c in accuracy.columns if c in ("lenient_accuracy", *guards.SCORES))
    value = accuracy[column]
    ax.errorbar(value, y, xerr=[value - accuracy["ci_low"], accuracy["ci_high"] - value], fmt="o", capsize=3)
    ax.set_yticks(y, [f"{c} ({s} seed{'s' if s > 1 else ''})" for c, s in zip(accuracy["condition"], accuracy["seeds"])])
    if families is not None and not families.empty and families["best_constant"].notna().any():
        best = families.drop_duplicates("family")["best_constant"].mean()
        ax.axvline(best, ls="--", c="gray", label=f"best constant answer per family {best:.2f}")
        ax.legend(loc="lower right", fontsize=8)
    if column != "mt_bench_score":
        ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric_label(column.removesuffix('_accuracy'))} (95% t interval, seeds and items random)")
    ax.set_title(f"{study}: {'accuracy' if column == 'lenient_accuracy' else metric_label(column)} per condition")
    fig.tight_layout()
    return fig


def result_directories(study: str, profile: str = "embedded", root: Path | None = None) -> list[Path]:
    """The committed result directories ``analyze`` works on: one study's, or every study's (``all``)."""
    root = Path(root or results_root())
    pattern = f"*/{profile}" if study == "all" else f"{study}/{profile}"
    found = sorted(p for p in root.glob(pattern) if (p / INPUTS).is_file())
    if not found:
        raise ClaimsError(f"{root}/{pattern}: no result directory with {INPUTS}")
    return found
