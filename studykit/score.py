"""Sharded response scoring over a JSONL file: a plain module for ``accelerate launch``.

    python -m studykit.score --input pairs.jsonl --output scores.jsonl [hydra overrides ...]
    accelerate launch --config_file conf/accelerate/cpu_2proc.yaml -m studykit.score --input … --output …

Input rows: ``{"id", "prompt", "response"}`` (raw strings; the model's chat template is applied as in training).
Output rows, in input order: ``{"id", "logprob_sum", "logprob_mean", "n_tokens"}``.  Each process scores a
contiguous shard; the main process gathers the shards and writes the output atomically.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import gather_object

from .config import compose, device
from .errors import one_line_errors
from .data import DataError, read_jsonl, write_jsonl
from .logprobs import sequence_logprobs
from .models import load_model_and_tokenizer, resolve_model_path


def _validated(rows: list[dict], path: str) -> list[dict]:
    if not rows:
        raise DataError(f"{path}: no examples (the file is empty)")
    for i, row in enumerate(rows, 1):
        for field in ("prompt", "response"):
            if not isinstance(row.get(field), str) or not row[field]:
                raise DataError(f"{path}: row {i}: field '{field}' must be a non-empty string")
    return rows


def _check_output(output: str) -> None:
    """The output's directory exists (checked before any model is loaded, not after the scoring)."""
    directory = Path(output).parent
    if not directory.is_dir():
        raise DataError(f"--output {output}: directory {directory} does not exist")


def score_rows(model, tokenizer, rows: list[dict], *, chat: bool, batch_size: int) -> list[dict]:
    scores = sequence_logprobs(model, tokenizer, [r["prompt"] for r in rows], [r["response"] for r in rows],
                               chat=chat, batch_size=batch_size)
    return [{"id": r.get("id", i), "logprob_sum": float(s), "logprob_mean": float(m), "n_tokens": int(n)}
            for i, (r, s, m, n) in enumerate(zip(rows, scores["sum"], scores["mean"], scores["n_tokens"]))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m studykit.score", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. profile=smoke model=qwen2_5_0_5b")
    args = parser.parse_intermixed_args(argv)
    _check_output(args.output)

    cfg = compose(args.overrides)
    state = PartialState(cpu=device(cfg).type == "cpu")  # gloo backend on CPU-only runs
    rows = _validated(read_jsonl(args.input), args.input)
    for i, row in enumerate(rows):
        row.setdefault("id", i)
    if state.is_main_process:  # materialize the converted-model cache once, before the other ranks read it
        resolve_model_path(cfg.model)
    state.wait_for_everyone()
    model, tokenizer = load_model_and_tokenizer(cfg.model, device(cfg))
    with state.split_between_processes(rows) as shard:
        scored = score_rows(model, tokenizer, shard, chat=bool(cfg.model.chat_template), batch_size=args.batch_size)
    print(f"[rank {state.process_index}/{state.num_processes}] scored {len(scored)} rows", flush=True)
    scored = gather_object(scored)
    if state.is_main_process:
        output = Path(args.output)
        tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
        write_jsonl(scored, tmp)
        tmp.replace(output)
    state.wait_for_everyone()


if __name__ == "__main__":
    sys.exit(one_line_errors(main, "python -m studykit.score"))
