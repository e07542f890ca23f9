"""``make study`` as a reproduction check: re-run the committed ledger into a scratch directory and compare.

Every committed result ``results/<study>/<profile>/`` is re-run with the configuration its manifest records (the
same study, profile and overrides) into ``runs/reproduce/<study>/<profile>/``; trained runs come from the run cache
when present (:mod:`studykit.cache`), so a stopped check resumes where it stopped.  The report compares, per claim,
the committed and the re-run estimate (difference and 95% CI of each, and their gap) and verdict, and per result
the share of per-item predictions (condition, seed, item) whose reply is identical, with the machine and the
package versions of both runs.  This is what a researcher who cites a result runs.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from .config import ROOT, results_root
from .results import load_predictions
from .runner import run_study

SCRATCH = ROOT / "runs" / "reproduce"
ESTIMATE = ["treatment", "control", "difference", "ci_low", "ci_high"]


def committed_results(root: Path | None = None) -> list[Path]:
    """Every committed result directory (one with a manifest), in study order."""
    root = root or results_root()
    return sorted(p.parent for p in root.glob("*/*/manifest.json") if not p.parent.name.startswith("."))


def claims_agreement(committed: Path, rerun: Path) -> pd.DataFrame:
    """Per claim row: committed vs re-run estimate (difference [CI]), their gap, both verdicts and whether they
    agree.  Rows are matched on claim id and comparison (a claim split per family group has one row per group)."""
    keys = ["id", "comparison", "families"]
    a, b = (pd.read_csv(d / "claims.csv", keep_default_na=False) for d in (committed, rerun))
    for frame in (a, b):
        for column in ESTIMATE:
            frame[column] = pd.to_numeric(frame[column], errors="coerce") if column in frame else float("nan")
    table = a[keys + ESTIMATE + ["verdict"]].merge(b[keys + ESTIMATE + ["verdict"]], on=keys, how="outer",
                                                   suffixes=(" committed", " re-run"), indicator=True)
    table["gap"] = table["difference re-run"] - table["difference committed"]
    table["verdicts agree"] = table["verdict committed"] == table["verdict re-run"]
    table["row"] = table.pop("_merge").map({"both": "both", "left_only": "committed only", "right_only": "re-run only"})
    return table


def prediction_agreement(committed: Path, rerun: Path) -> dict:
    """Share of per-item predictions present in both runs whose reply (and lenient judgement) is identical."""
    try:
        a, b = load_predictions(committed), load_predictions(rerun)
    except FileNotFoundError:
        return {"items": 0, "same reply": float("nan"), "same lenient": float("nan")}
    keys = ["condition", "seed", "id"]
    both = a.merge(b, on=keys, suffixes=("_a", "_b"))
    return {"items": len(both), "only committed": len(a) - len(both), "only re-run": len(b) - len(both),
            "same reply": float((both["reply_a"].astype(str) == both["reply_b"].astype(str)).mean()),
            "same lenient": float((both["lenient_a"] == both["lenient_b"]).mean())}


def measurement_agreement(committed: Path, rerun: Path) -> dict:
    """A measurement without claims (the calibration): the share of its per-reply rows (``replies.parquet``) whose
    reply and judgement are identical in both runs."""
    a, b = (pd.read_parquet(d / "replies.parquet") for d in (committed, rerun))
    keys = [c for c in ("start", "id", "kind", "sample", "budget") if c in a.columns]
    both = a.merge(b, on=keys, suffixes=("_a", "_b"))
    return {"rows": len(both), "only committed": len(a) - len(both), "only re-run": len(b) - len(both),
            "same reply": float((both["reply_a"] == both["reply_b"]).mean()) if len(both) else float("nan"),
            "same lenient": float((both["lenient_a"] == both["lenient_b"]).mean()) if len(both) else float("nan")}


def environment_difference(committed: Path, rerun: Path) -> dict:
    """The machines of both runs and every package whose version differs between them."""
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (committed, rerun))

    def machine(m):
        h = m.get("hardware", {})
        return f"{h.get('cpu_model')} ×{h.get('cpu_count')}" + (f", {', '.join(h['gpus'])}" if h.get("gpus") else "")

    pa, pb = a.get("packages", {}), b.get("packages", {})
    changed = {name: (pa.get(name), pb.get(name)) for name in sorted(set(pa) | set(pb)) if pa.get(name) != pb.get(name)}
    return {"machine committed": machine(a), "machine re-run": machine(b),
            "commit committed": (a.get("git", {}).get("commit") or "")[:7],
            "commit re-run": (b.get("git", {}).get("commit") or "")[:7], "packages changed": changed}


def report(pairs: list[tuple[Path, Path]]) -> str:
    """The reproduction report (markdown) of (committed, re-run) result directories."""
    lines = ["# Reproduction report", ""]
    for committed, rerun in pairs:
        name = f"{committed.parent.name}/{committed.name}"
        env = environment_difference(committed, rerun)
        if not (committed / "claims.csv").is_file():  # a measurement: compare its replies
            rows = measurement_agreement(committed, rerun)
            lines += [f"## {name}", "", f"- a measurement (no claims): identical replies on {rows['same reply']:.1%} "
                      f"of {rows['rows']} shared rows of replies.parquet (judgement identical on "
                      f"{rows['same lenient']:.1%})",
                      f"- committed: {env['commit committed']} on {env['machine committed']}; re-run: "
                      f"{env['commit re-run']} on {env['machine re-run']}", ""]
            continue
        claims = claims_agreement(committed, rerun)
        items = prediction_agreement(committed, rerun)
        agree = int(claims["verdicts agree"].sum())
        lines += [f"## {name}", "",
                  f"- verdicts agree on {agree} of {len(claims)} claim rows; identical replies on "
                  f"{items['same reply']:.1%} of {items['items']} shared item predictions "
                  f"(lenient judgement identical on {items['same lenient']:.1%})",
                  f"- committed: {env['commit committed']} on {env['machine committed']}; re-run: "
                  f"{env['commit re-run']} on {env['machine re-run']}",
                  "- packages that differ: " + (", ".join(f"{k} {a} → {b}" for k, (a, b) in
                                                           env["packages changed"].items()) or "none"), ""]
        claims["verdict committed"] = claims["verdict committed"].str.split(":").str[0]
        claims["verdict re-run"] = claims["verdict re-run"].str.split(":").str[0]
        shown = claims[["id", "comparison", "difference committed", "ci_low committed", "ci_high committed",
                        "difference re-run", "ci_low re-run", "ci_high re-run", "gap", "verdict committed",
                        "verdict re-run", "verdicts agree", "row"]]
        lines += [shown.to_markdown(index=False, floatfmt="+.3f"), ""]
    return "\n".join(lines)


@contextmanager
def _results_in(directory: Path):
    previous = os.environ.get("STUDYKIT_RESULTS")
    os.environ["STUDYKIT_RESULTS"] = str(directory)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("STUDYKIT_RESULTS")
        else:
            os.environ["STUDYKIT_RESULTS"] = previous


def reproduce(studies: list[str] | None = None, *, scratch: Path = SCRATCH, allow_dirty: bool = False,
              say=print) -> Path:
    """Re-run the committed results of ``studies`` (default: all) into ``scratch`` with the overrides their
    manifests record, then write ``scratch/report.md``; returns its path.  Finished re-runs are kept (a stopped
    check resumes at the first result not re-run, and within it at the first run not in the run cache)."""
    pairs = []
    chosen = [d for d in committed_results() if studies is None or d.parent.name in studies]
    for k, committed in enumerate(chosen, 1):
        manifest = json.loads((committed / "manifest.json").read_text())
        rerun = scratch / committed.parent.name / committed.name
        if not (rerun / "manifest.json").is_file():
            say(f"[studykit] reproduce {k} of {len(chosen)}: {committed.parent.name}/{committed.name} "
                f"{' '.join(manifest['overrides'])}")
            with _results_in(scratch):
                rerun = run_study(manifest["study"], manifest["overrides"], allow_dirty=allow_dirty)
        pairs.append((committed, rerun))
    path = scratch / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report(pairs) + "\n")
    return path
