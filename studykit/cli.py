"""``studykit`` command line.

    studykit list                         studies and the config groups they compose with
    studykit run <study> [overrides ...]  execute notebooks/<study>.ipynb into results/<study>/<profile>/
    studykit run all [overrides ...]      every study (but hub-only ones), in order, stopping at the first failure
    studykit run ... --allow-dirty        run from a git tree with uncommitted changes (recorded in the manifest)
    studykit analyze <study> [profile]    recompute a result's guarded claims table, guard tables and figure from
                                          its committed evidence (no training); ``all`` for every study

Overrides are Hydra's: ``profile=smoke``, ``model=qwen2_5_0_5b``, ``train.learning_rate=1e-5``, ``seed=1``.
Exit status: 0 success, 1 a notebook failed, 2 bad study / override / input, 143 stopped by SIGTERM (cleaned up).
"""
from __future__ import annotations

import argparse
import signal
import sys
from typing import Callable

from .analysis import analyze, result_directories, verdict_counts
from .config import CONF_DIR, compose, list_studies, study_overrides
from .errors import INPUT_ERRORS
from .provenance import write_results_index
from .runner import StudyError, run_study


def _list() -> None:
    print("studies:", ", ".join(list_studies()))
    for group in ("model", "data", "profile"):
        print(f"{group}:", ", ".join(sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))))


def _runnable_studies() -> list[str]:
    """Studies for `run all`: those that need a hub (``study.hub_only``) only run when named."""
    return [s for s in list_studies() if not compose(study_overrides(s)).study.get("hub_only", False)]


def _analyze(study: str, profile: str) -> int:
    try:
        for directory in result_directories(study, profile):
            table = analyze(directory)["claims"]
            counts = ", ".join(f"{n} {label}" for label, n in verdict_counts(table).items())
            print(f"[studykit] analyzed {directory.parent.name}/{directory.name}: {counts}", flush=True)
    except INPUT_ERRORS as err:
        print(f"studykit: error: {err}", file=sys.stderr)
        return 2
    write_results_index()
    return 0


def _exit_on_sigterm(signum, frame):
    """SIGTERM (``kill``, ``timeout``, batch schedulers) as an exception, so the runner's cleanup still runs and a
    stopped run leaves no half-written ``.tmp-*`` directory in ``results/``."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="studykit", description="Run studykit study notebooks with papermill.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list studies and config options")
    run = sub.add_parser("run", help="run a study notebook (or 'all')")
    run.add_argument("study")
    run.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. profile=smoke seed=1")
    run.add_argument("--allow-dirty", action="store_true",
                     help="run from a git tree with uncommitted changes (recorded in the manifest)")
    analyze = sub.add_parser("analyze", help="recompute a study's analysis from its committed evidence (or 'all')")
    analyze.add_argument("study")
    analyze.add_argument("profile", nargs="?", default="embedded")
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("-")]
    if unknown or (rest and args.command != "run"):
        parser.error(f"unrecognized arguments: {' '.join(unknown or rest)}")
    if rest:  # overrides after --allow-dirty
        args.overrides = [*args.overrides, *rest]

    if args.command == "list":
        _list()
        return 0
    if args.command == "analyze":
        return _analyze(args.study, args.profile)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        studies = _runnable_studies() if args.study == "all" else [args.study]
        for study in studies:
            print(f"[studykit] running {study} {' '.join(args.overrides)}", flush=True)
            path = run_study(study, args.overrides, allow_dirty=args.allow_dirty)
            print(f"[studykit] {study}: results in {path}", flush=True)
    except INPUT_ERRORS as err:
        print(f"studykit: error: {err}", file=sys.stderr)
        return 2
    except StudyError as err:
        print(f"studykit: error: {err}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
