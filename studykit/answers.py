"""One answer extractor for the whole kit: what a reply answers, judged by the family's verifier.

Every place that decides whether a reply is right — the evaluator, the SSR / S3FT / GRAPE judges, verifier win
rates — calls :func:`judge`, so a training target and an evaluated answer are held to the same standard.

Two accuracies, reported side by side:

* **strict**  – the reply's first non-empty line, as it is, gets the verifier's full score: the answer *and* the
  format the prompt asks for ("Reply with only the final answer.");
* **lenient** – the final answer stated anywhere in the reply, extracted by the family's answer format
  (:data:`FAMILY_FORMATS`), then verified: ``"The answer is 42."``, ``"Yes."``, ``"1."`` and ``**"nus"**`` count.

Adding a task family is one entry in :data:`FAMILY_FORMATS`; adding an answer format is one function and its line
in :data:`FORMATS`.  Families without an entry use ``"phrase"``.

Math records (:func:`studykit.data.load_math`: MATH, MATH-500, GSM8K) carry a gold final answer instead of a
reasoning-gym item; their entry (:func:`math_entry`) routes them to Hugging Face's Math-Verify
(:func:`judge_math`, github.com/huggingface/Math-Verify), which parses LaTeX and plain expressions into SymPy and
compares them symbolically and numerically (``1/2`` = ``0.5`` = ``\\frac{1}{2}``): the rule-based answer reward of
DeepSeekMath (shao2024deepseekmath, §4.1) with a verifier that accepts equivalent forms.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from .testbed import task_of, verify

_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)*")
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_MARKER = re.compile(r"(?:final answer|answer)\s*(?:is|:|=)\s*", re.IGNORECASE)
_QUOTED = re.compile(r"[\"“”'`]([^\"“”'`\n]+)[\"“”'`]")
_STRIP = " \t\"'“”‘’`*_.,;:!?()[]{}"

FAMILY_FORMATS = {
    "chain_sum": "number",
    "basic_arithmetic": "number",
    "letter_counting": "number",
    "syllogism": "yes_no",
    "spell_backward": "word",
    "family_relationships": "word",
    "figlet_font": "word",
    "word_sequence_reversal": "word_list",
    "knights_knaves": "sentence",
    "products": "number",
    "leg_counting": "number",
    "count_bits": "number",
    "gcd": "number",
    "lcm": "number",
    "simple_equations": "number",
    "base_conversion": "word",
    "letter_jumble": "word",
    "word_sorting": "word_list",
    "caesar_cipher": "sentence",
    "sentence_reordering": "sentence",
    "fraction_simplification": "phrase",   # "3/7"
    "calendar_arithmetic": "phrase",       # a weekday, a date or a count of days
}


def first_line(reply: str) -> str:
    """The reply's first non-empty line, stripped (what the strict accuracy verifies)."""
    for line in reply.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _after_marker(reply: str) -> str | None:
    """What follows the last "answer is" / "answer:" in the reply, up to the end of that line."""
    matches = list(_MARKER.finditer(reply))
    if not matches:
        return None
    rest = reply[matches[-1].end():]
    return first_line(rest) or None


def _clean(span: str) -> str:
    return span.strip().strip(_STRIP).strip()


def _number(reply: str) -> str:
    """The number after the last "answer is", else the last number in the reply ("3 + 4 = 7" → 7)."""
    marked = _NUMBER.findall(_after_marker(reply) or "")
    numbers = marked[:1] or _NUMBER.findall(reply)[-1:]
    return numbers[0].replace(",", "") if numbers else ""


def _yes_no(reply: str) -> str:
    """Yes or No, capitalized: after the last "answer is" if present, else the first yes/no word of the reply."""
    for span in (_after_marker(reply), reply):
        if span:
            found = _YES_NO.search(span)
            if found:
                return found.group(1).capitalize()
    return ""


def _word(reply: str) -> str:
    """A one-word answer: after the last "answer is", else a quoted string, else the first line; a multi-word
    span keeps its last word ("The word backward is nus" → nus)."""
    span = _after_marker(reply)
    if span is None:
        quoted = _QUOTED.findall(reply)
        span = quoted[-1] if quoted else first_line(reply)
    words = [_clean(w) for w in _clean(span).split()]
    words = [w for w in words if w]
    return words[-1] if words else ""


def _word_list(reply: str) -> str:
    """A comma-separated list: after the last "answer is", else the first line that contains a comma (after its
    last colon: "The reversed list is: a, b, c")."""
    span = _after_marker(reply)
    if span is None:
        lines = [line for line in reply.splitlines() if "," in line]
        span = lines[0].rsplit(":", 1)[-1] if lines else first_line(reply)
    return ", ".join(_clean(w) for w in _clean(span).split(",") if _clean(w))


def _sentence(reply: str) -> str:
    """A sentence answer (e.g. knights and knaves): after the last "answer is", else the whole first line."""
    return (_after_marker(reply) or first_line(reply)).strip()


def _phrase(reply: str) -> str:
    """Default: after the last "answer is", else the first line, surrounding quotes and punctuation removed."""
    return _clean(_after_marker(reply) or first_line(reply))


FORMATS: dict[str, Callable[[str], str]] = {
    "number": _number,
    "yes_no": _yes_no,
    "word": _word,
    "word_list": _word_list,
    "sentence": _sentence,
    "phrase": _phrase,
}


def extract_answer(family: str, reply: str) -> str:
    """The final answer ``reply`` states, by the family's answer format."""
    return FORMATS[FAMILY_FORMATS.get(task_of(family), "phrase")](reply)


@dataclass(frozen=True)
class Judgement:
    first_line: str
    extracted: str
    strict: bool
    lenient: bool


MATH_VERIFY = "math_verify"   # the ``verifier`` of a math record's entry
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def math_entry(answer: str) -> str:
    """The verifier entry of a math record: its gold final answer, judged by Math-Verify (:func:`judge_math`)."""
    return json.dumps({"verifier": MATH_VERIFY, "answer": answer})


def boxed_answer(text: str) -> str | None:
    """The contents of the last ``\\boxed{…}`` (or ``\\fbox{…}``) of ``text``, nested braces balanced — MATH's final
    answer, as its reference code's ``last_boxed_only_string`` reads it (Hendrycks et al., 2021); None without one."""
    found = list(_BOXED.finditer(text))
    if not found:
        return None
    depth, start = 1, found[-1].end()
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i].strip()
    return None


def _boxed_alone(line: str) -> str | None:
    """The answer of a line that is one ``\\boxed{…}`` and nothing else (enclosing ``$`` and a final period aside)."""
    bare = line.strip().rstrip(".").strip("$ ")
    inner = boxed_answer(bare)
    whole = inner is not None and re.fullmatch(r"\\(?:boxed|fbox)\s*\{\s*" + re.escape(inner) + r"\s*\}", bare)
    return inner if whole else None


@lru_cache(maxsize=4096)
def _parsed_answer(answer: str) -> list:
    """``math_verify.parse`` of ``answer`` taken whole as the answer (inside ``\\boxed{}``, where Math-Verify's LaTeX
    extraction looks first: a bare ``(3, \\frac{\\pi}{2})`` would parse as its first number)."""
    import math_verify

    return math_verify.parse(f"\\boxed{{{answer}}}")


def judge_math(answer: str, reply: str) -> Judgement:
    """Strict and lenient correctness of ``reply`` against the gold final ``answer`` (parsed as a whole answer), by
    Math-Verify's ``verify``: **lenient** – the final answer ``math_verify.parse`` extracts from the whole reply (the
    last ``\\boxed{}``, else the last LaTeX or plain expression, as its docs say); **strict** – the first line as it
    is: the boxed answer the prompt asks for and nothing else (``\\boxed{1/2}`` and ``$\\boxed{0.5}$.`` pass;
    ``0.5``, ``The answer is \\boxed{0.5}`` and a first line of reasoning do not).  Math-Verify times its parsing out
    with ``signal.alarm``: call it from the main thread."""
    import math_verify

    gold, line, parsed = _parsed_answer(answer), first_line(reply), math_verify.parse(reply)
    alone = _boxed_alone(line)
    strict = alone is not None and math_verify.verify(gold, _parsed_answer(alone))
    lenient = strict or (bool(parsed) and math_verify.verify(gold, parsed))
    return Judgement(first_line=line, extracted=str(parsed[-1]) if parsed else "", strict=strict, lenient=lenient)


def judge(record: dict, reply: str) -> Judgement:
    """Strict and lenient correctness of ``reply`` for ``record`` (``family``, ``entry``): by the family's
    reasoning-gym verifier, or — for a math record (:func:`math_entry`) — by Math-Verify (:func:`judge_math`).  A
    reply the strict rule accepts is always accepted leniently too."""
    entry = json.loads(record["entry"]) if isinstance(record["entry"], str) else record["entry"]
    if entry.get("verifier") == MATH_VERIFY:
        return judge_math(entry["answer"], reply)
    line = first_line(reply)
    extracted = extract_answer(record["family"], reply)
    strict = bool(line) and verify(record["family"], line, entry) >= 1.0
    lenient = strict or (bool(extracted) and verify(record["family"], extracted, entry) >= 1.0)
    return Judgement(first_line=line, extracted=extracted, strict=strict, lenient=lenient)
