"""``studykit`` command line.

    studykit list                         studies and the config groups they compose with
    studykit run <study> [overrides ...]  execute notebooks/<study>.ipynb into results/<study>/<profile>/; a run
                                          whose config differs from the study's canonical one (any override but
                                          profile= and device=) is a sweep: it writes runs/<study>/<profile>/<tag>/
                                          and leaves results/ alone
    studykit run all [overrides ...]      every study (but hub-only ones), in order, stopping at the first failure
    studykit run ... --tag NAME           name the sweep's directory runs/<study>/<profile>/NAME/ (default: a slug of
                                          the overrides and a hash of the config); with no override, a named re-run
                                          that leaves results/ alone
    studykit run ... --wait               wait for another run writing the same directory instead of refusing
    studykit run ... --allow-dirty        run from a git tree with uncommitted changes (recorded in the manifest)
    studykit analyze <study> [profile]    recompute a result's guarded claims table, guard tables and figure from
                                          its committed evidence (no training); ``all`` for every study
    studykit reproduce [study ...]        the reproduction check (``make study``): re-run every committed result (or
                                          those of the named studies) with its manifest's overrides into
                                          runs/reproduce/ (resumable: finished results and cached runs are reused)
                                          and write runs/reproduce/report.md against results/
    studykit cache list                   the run cache: one row per cached run (key, study, run, seed, size, stale)
    studykit cache prune [--stale] [--older-than DAYS] [--all]
                                          remove cached runs made by other code / library versions, older than DAYS
                                          days, or all of them (with no flag: only leftovers of killed writers)

Overrides are Hydra's: ``profile=smoke``, ``model=qwen2_5_0_5b``, ``train.learning_rate=1e-5``, ``seed=1``.
Exit status: 0 success, 1 a notebook failed, 2 bad study / override / input or the target directory is being
written by another run, 143 stopped by SIGTERM (cleaned up).
"""
from __future__ import annotations

import argparse
import signal
import sys

from . import cache
from .analysis import analyze, result_directories, verdict_counts
from .config import CONF_DIR, list_studies
from .distributed import is_main
from .errors import INPUT_ERRORS
from .reproduce import reproduce
from .runner import RunLocked, StudyError, display_path, exclusive_lock, lock_path, run_study, write_index


def _list() -> None:
    print("studies:", ", ".join(list_studies()))
    for group in ("model", "data", "profile"):
        print(f"{group}:", ", ".join(sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))))


def _analyze(study: str, profile: str) -> int:
    try:
        for directory in result_directories(study, profile):
            with exclusive_lock(lock_path(directory), display_path(directory)):  # not while a run replaces it
                table = analyze(directory)["claims"]
            counts = ", ".join(f"{n} {label}" for label, n in verdict_counts(table).items())
            print(f"[studykit] analyzed {directory.parent.name}/{directory.name}: {counts}", flush=True)
    except (*INPUT_ERRORS, RunLocked) as err:
        print(f"studykit: error: {err}", file=sys.stderr)
        return 2
    write_index()
    return 0


def _cache(args) -> int:
    if args.cache_command == "list":
        table = cache.list_entries()
        if table.empty:
            print(f"no cached runs in {cache.runs_root()}")
        else:
            print(table.to_string(index=False))
            print(f"{len(table)} cached runs, {table['size_mb'].sum():.1f} MB, {int(table['stale'].sum())} stale "
                  f"({cache.runs_root()})")
        return 0
    if args.older_than is not None and args.older_than < 0:
        print(f"studykit: error: --older-than {args.older_than:g}: a number of days ≥ 0", file=sys.stderr)
        return 2
    removed = cache.prune(stale=args.stale, older_than_days=args.older_than, everything=args.everything)
    for path in removed:
        print(f"removed {path}")
    print(f"[studykit] cache: removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}", flush=True)
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
    run.add_argument("--tag", metavar="NAME",
                     help="write to runs/<study>/<profile>/NAME/ (a sweep; default name: the overrides and a hash)")
    run.add_argument("--wait", action="store_true",
                     help="wait for another run writing the same directory instead of refusing")
    analyze = sub.add_parser("analyze", help="recompute a study's analysis from its committed evidence (or 'all')")
    analyze.add_argument("study")
    analyze.add_argument("profile", nargs="?", default="embedded")
    cache_parser = sub.add_parser("cache", help="list or prune the run cache")
    cache_sub = cache_parser.add_subparsers(dest="cache_command", required=True)
    cache_sub.add_parser("list", help="one row per cached run")
    prune = cache_sub.add_parser("prune", help="remove cached runs")
    prune.add_argument("--stale", action="store_true",
                       help="entries made by other training/evaluation code or library versions than the installed")
    prune.add_argument("--older-than", type=float, metavar="DAYS", help="entries created more than DAYS days ago")
    prune.add_argument("--all", dest="everything", action="store_true", help="every entry")
    again = sub.add_parser("reproduce", help="re-run the committed results into runs/reproduce/ and compare")
    again.add_argument("studies", nargs="*", help="default: every committed result")
    again.add_argument("--allow-dirty", action="store_true",
                       help="re-run from a git tree with uncommitted changes (recorded in the manifests)")
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
    if args.command == "cache":
        return _cache(args)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        if args.command == "reproduce":
            report = reproduce(args.studies or None, allow_dirty=args.allow_dirty)
            print(report.read_text(), flush=True)
            print(f"[studykit] reproduction report: {display_path(report)}", flush=True)
            return 0
        studies = list_studies() if args.study == "all" else [args.study]
        for study in studies:   # under accelerate launch only the main process speaks
            if is_main():
                print(f"[studykit] running {study} {' '.join(args.overrides)}", flush=True)
            path = run_study(study, args.overrides, allow_dirty=args.allow_dirty, tag=args.tag, wait=args.wait)
            if is_main():
                print(f"[studykit] {study}: results in {path}", flush=True)
    except (*INPUT_ERRORS, RunLocked) as err:
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
