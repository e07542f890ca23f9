"""The embedded testbed: verifiable instruction data from ``reasoning-gym`` task generators.

For each configured task family one seeded generator is drawn once, questions are de-duplicated, and the items
are cut into four disjoint splits:

* ``pool``        – instruction data with gold responses (the data that selection methods score and SFT uses);
* ``preference``  – held-out (prompt, chosen = gold, rejected = a verified-wrong answer) pairs;
* ``eval``        – held-out questions, scored by the family's verifier through :mod:`studykit.answers`;
* ``dev``         – held-out questions for choosing anything (a checkpoint, a threshold, a subset), never scored
  as a result.

Eval and dev are answer-balanced: no gold answer takes more than ``data.max_answer_share`` of a family's items
(a Yes/No family is 50/50), so always giving the most common answer cannot look like skill.

:func:`inject_noise` corrupts a known fraction of pool items (wrong answer, truncated, mismatched, junk) and keeps
the ground truth (``is_noisy``, ``noise_kind``, ``clean_response``), so data-selection methods can be scored on how
well they separate clean from noisy items.

A record is a plain dict: ``id, family, prompt, response, answer, entry`` where ``entry`` is the reasoning-gym
item serialized as JSON (the verifier needs it).

One reasoning-gym task can give several families at different difficulties ("arms"): a family key
``<task>:<arm>`` draws from ``<task>`` with that entry's parameters, e.g. ``knights_knaves:3: {n_people: 3}``;
its verifier and answer format are the task's (:func:`task_of`).
"""
from __future__ import annotations

import json
import random
import string
from functools import lru_cache

import reasoning_gym

from .errors import DataError

NOISE_KINDS = ("wrong_answer", "truncated", "mismatched", "junk")


def task_of(family: str) -> str:
    """The reasoning-gym task of a family key: ``knights_knaves:3`` → ``knights_knaves``."""
    return family.split(":", 1)[0]


@lru_cache(maxsize=None)
def _verifier(task: str):
    return reasoning_gym.create_dataset(task, size=1, seed=0)


def verify(family: str, answer: str, entry: dict | str) -> float:
    """The family's verifier score of ``answer`` (1.0 = correct; reasoning-gym gives partial credit below)."""
    if isinstance(entry, str):
        entry = json.loads(entry)
    return float(_verifier(task_of(family)).score_answer(answer, entry))


def is_correct(family: str, answer: str, entry: dict | str) -> bool:
    return verify(family, answer, entry) >= 1.0


class _Shortfall(DataError):
    """A generator gave fewer items than a split needs (``found`` of ``needed``); :func:`build_testbed` names the
    config key to change."""

    def __init__(self, message: str, found: int, needed: int, draws: int | None = None):
        super().__init__(message)
        self.found, self.needed, self.draws = found, needed, draws


def _generate(family: str, params: dict, n: int, seed: int, minimum: int | None = None) -> list[dict]:
    """Up to ``n`` de-duplicated items of one family (draws up to 4n candidates from one seeded generator); fewer
    than ``minimum`` (default ``n``) is a shortfall."""
    minimum = n if minimum is None else minimum
    dataset = reasoning_gym.create_dataset(task_of(family), size=4 * n, seed=seed, **params)
    seen, items = set(), []
    for i in range(len(dataset)):
        entry = dataset[i]
        if entry["question"] in seen:
            continue
        seen.add(entry["question"])
        items.append(json.loads(json.dumps(entry, default=str)))
        if len(items) == n:
            return items
    if len(items) >= minimum:
        return items
    raise _Shortfall(
        f"data.families.{family}: only {len(items)} distinct questions, {minimum} needed; "
        f"widen the family's parameters or lower the split sizes", len(items), minimum, len(dataset)
    )


def _record(family: str, split: str, index: int, entry: dict, instruction_suffix: str) -> dict:
    prompt = entry["question"].strip()
    if instruction_suffix:
        prompt = f"{prompt}\n{instruction_suffix}"
    answer = str(entry["answer"])
    return {"id": f"{family}/{split}/{index}", "family": family, "prompt": prompt, "response": answer,
            "answer": answer, "entry": json.dumps(entry)}


def _balanced(items: list[dict], size: int, max_share: float | None, where: str) -> tuple[list[dict], list[dict]]:
    """The first ``size`` items (in order) such that no answer exceeds ``max_share`` of them; (chosen, rest)."""
    cap = size if max_share is None else max(1, int(max_share * size))
    counts: dict[str, int] = {}
    chosen, rest = [], []
    for entry in items:
        answer = str(entry["answer"])
        if len(chosen) < size and counts.get(answer, 0) < cap:
            counts[answer] = counts.get(answer, 0) + 1
            chosen.append(entry)
        else:
            rest.append(entry)
    if len(chosen) < size:
        raise _Shortfall(f"{where}: only {len(chosen)} items with no answer over data.max_answer_share={max_share} "
                         f"of {size}; the family's answers are too skewed for this split size", len(chosen), size)
    return chosen, rest


def build_testbed(data_cfg) -> dict[str, list[dict]]:
    """Build ``{"pool", "preference", "eval", "dev"}`` from ``conf/data/testbed.yaml``-style config."""
    sizes = {"pool": int(data_cfg.pool_per_family), "preference": int(data_cfg.preference_per_family),
             "eval": int(data_cfg.eval_per_family), "dev": int(data_cfg.get("dev_per_family", 0))}
    max_share = data_cfg.get("max_answer_share")
    if not data_cfg.families:
        raise ValueError("data.families: at least one reasoning-gym task family is required")
    splits = {name: [] for name in sizes}
    for offset, (family, params) in enumerate(data_cfg.families.items()):
        if task_of(family) not in reasoning_gym.factory.DATASETS:
            raise ValueError(f"data.families: unknown reasoning-gym task '{task_of(family)}' (family '{family}')")
        factor = 1 if max_share is None else 3  # the held-out splits draw up to 3x their size: room to balance answers
        try:
            items = _generate(family, dict(params or {}), sizes["pool"] + sizes["preference"] + factor *
                              (sizes["eval"] + sizes["dev"]), int(data_cfg.seed) + offset, minimum=sum(sizes.values()))
        except _Shortfall as short:
            raise DataError(_too_few_questions(family, short, sizes)) from None
        parts = {"pool": items[:sizes["pool"]],
                 "preference": items[sizes["pool"]:sizes["pool"] + sizes["preference"]]}
        rest = items[sizes["pool"] + sizes["preference"]:]
        for split in ("eval", "dev"):
            held_out = len(rest)
            try:
                parts[split], rest = _balanced(rest, sizes[split], max_share, f"data.families.{family} ({split})")
            except _Shortfall as short:
                raise DataError(f"data.{split}_per_family={sizes[split]} is more than family '{family}' can supply: "
                                f"only {short.found} answer-balanced {split} items (no answer over "
                                f"data.max_answer_share={max_share} of them) among its {held_out} held-out "
                                f"questions; lower data.{split}_per_family, raise data.max_answer_share or widen "
                                f"data.families.{family}") from None
        for split, entries in parts.items():
            for index, entry in enumerate(entries):
                splits[split].append(_record(family, split, index, entry, data_cfg.instruction_suffix))
    rng = random.Random(int(data_cfg.seed))
    by_family = _answers_by_family(splits["pool"] + splits["preference"])
    splits["preference"] = [_preference_pair(r, by_family, rng) for r in splits["preference"]]
    return splits


def _too_few_questions(family: str, short: _Shortfall, sizes: dict[str, int]) -> str:
    """The split size to blame (the largest), its value, what the generator supplied and the largest value that
    would fit."""
    split = max(sizes, key=sizes.get)
    fits = sizes[split] - (short.needed - short.found)
    asked = " + ".join(f"data.{s}_per_family={sizes[s]}" for s in sizes if sizes[s])
    drawn = f" in {short.draws} draws" if short.draws else ""
    return (f"data.{split}_per_family={sizes[split]} is more than family '{family}' can supply: its generator gave "
            f"{short.found} distinct questions{drawn}, {short.needed} are needed ({asked}); "
            + (f"lower data.{split}_per_family to at most {fits} or " if fits > 0 else "lower the split sizes or ")
            + f"widen data.families.{family}")


def _answers_by_family(records: list[dict]) -> dict[str, list[str]]:
    answers: dict[str, list[str]] = {}
    for r in records:
        answers.setdefault(r["family"], []).append(r["answer"])
    return answers


def _wrong_answer(record: dict, by_family: dict[str, list[str]], rng: random.Random) -> str | None:
    """Another item's gold answer from the same family that the verifier rejects for this item."""
    candidates = [a for a in dict.fromkeys(by_family[record["family"]]) if a != record["answer"]]
    rng.shuffle(candidates)
    for candidate in candidates:
        if not is_correct(record["family"], candidate, record["entry"]):
            return candidate
    return None


def _preference_pair(record: dict, by_family: dict[str, list[str]], rng: random.Random) -> dict:
    rejected = _wrong_answer(record, by_family, rng) or _junk(record["answer"], rng)
    return {**record, "chosen": record["answer"], "rejected": rejected}


def _junk(reference: str, rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits + "     .,;!?#"
    return "".join(rng.choice(alphabet) for _ in range(max(8, len(reference))))


def inject_noise(pool: list[dict], fraction: float, kinds=NOISE_KINDS, seed: int = 0) -> list[dict]:
    """Corrupt ``round(fraction * len(pool))`` randomly chosen items, cycling through ``kinds``.

    * ``wrong_answer`` – another same-family item's answer that the verifier rejects;
    * ``truncated``    – the response cut to its first half (single-character answers fall back to wrong_answer);
    * ``mismatched``   – the response of an item from another family;
    * ``junk``         – random characters.

    Every corrupted response is checked to fail the verifier.  Returns new records with ``is_noisy``,
    ``noise_kind`` ('' when clean) and ``clean_response``.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"data.noise.fraction must be in [0, 1], got {fraction}")
    unknown = set(kinds) - set(NOISE_KINDS)
    if unknown:
        raise ValueError(f"data.noise.kinds: unknown kinds {sorted(unknown)}; expected a subset of {NOISE_KINDS}")
    rng = random.Random(seed)
    out = [{**r, "is_noisy": False, "noise_kind": "", "clean_response": r["response"]} for r in pool]
    chosen = rng.sample(range(len(out)), round(fraction * len(out)))
    by_family = _answers_by_family(pool)
    for n, index in enumerate(sorted(chosen)):
        record = out[index]
        kind = kinds[n % len(kinds)]
        kind, noisy = _corrupt(record, kind, out, by_family, rng)
        if noisy is None or is_correct(record["family"], noisy, record["entry"]):
            kind, noisy = "junk", _junk(record["answer"], rng)
        record.update(response=noisy, is_noisy=True, noise_kind=kind)
    return out


def _corrupt(record: dict, kind: str, pool: list[dict], by_family, rng: random.Random) -> tuple[str, str | None]:
    """(kind actually applied, corrupted response or None)."""
    if kind == "truncated" and len(record["response"]) >= 2:
        return kind, record["response"][: len(record["response"]) // 2]
    if kind in ("wrong_answer", "truncated"):
        return "wrong_answer", _wrong_answer(record, by_family, rng)
    if kind == "mismatched":
        others = [r["clean_response"] for r in pool if r["family"] != record["family"]]
        return kind, (rng.choice(others) if others else None)
    return kind, _junk(record["answer"], rng)


def interleave_families(records: list[dict]) -> list[dict]:
    """Round-robin over task families (order within a family kept), so any prefix is family-balanced."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["family"], []).append(r)
    longest = max((len(g) for g in groups.values()), default=0)
    return [g[i] for i in range(longest) for g in groups.values() if i < len(g)]
