"""Testbed calibration: which reasoning-gym families, at which difficulty, let each method act on a model.

A miniature is only a test of a paper when the method can act in it: a family whose gold answer is one constant
on half the items rewards a constant, a family the model never solves gives GRPO no reward variance, a family SFT
cannot learn in the budget makes every data-selection arm equal.  For every candidate family (``<task>`` or a
difficulty arm ``<task>:<arm>``, ``study.candidates``) on the session's model this module measures

* **gold**: items, distinct answers, answer entropy (bits) and modal share (the best constant's accuracy), and
  that the verifier accepts every gold answer;
* for each **start** — ``base`` (the model as shipped) and ``warmup`` (after one fixed short SFT on all candidates'
  pools together, which is also the learnability test) — and each **token budget**: greedy lenient and strict
  accuracy, the replies' modal share (a start that answers one string is a constant), reply length and the share
  cut at the budget; ``samples`` replies at temperature 1: pass@k, mean sample accuracy and the **RL signal
  share** (prompts with 1 … k−1 of k solved: the prompt groups that give GRPO a gradient, and a model's own
  verifier-ranked preference pairs);
* seconds per item of each pass.

:func:`qualify` applies ``study.criteria`` and says which study kinds (SFT / data selection, RL, preference from
own samples) each family can serve on this model.  One continuation at the largest budget serves every smaller
budget: its first ``b`` tokens are the continuation at budget ``b`` (:func:`studykit.evaluate.generate_ids`).
"""
from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from scipy.stats import entropy

from .answers import judge
from .config import ROOT, seed_everything
from .errors import DataError
from .evaluate import generate_ids
from .testbed import build_testbed, is_correct

STARTS = ("base", "warmup")


def candidate_splits(data_cfg, candidates: dict, items: int, pool: int) -> dict[str, dict]:
    """Per candidate family, its calibration items (``eval``, the generator's own answer distribution: no
    balancing) and its warm-up ``pool``, drawn one family at a time with ``data_cfg``'s seed and instruction.  A
    candidate whose generator rejects its parameters or cannot supply the items is refused before any work, with
    the key named."""
    splits = {}
    for family, params in candidates.items():
        params = OmegaConf.to_container(params, resolve=True) if OmegaConf.is_config(params) else dict(params or {})
        one = OmegaConf.create({**OmegaConf.to_container(data_cfg, resolve=True), "families": {family: params},
                                "pool_per_family": pool, "eval_per_family": items, "preference_per_family": 0,
                                "dev_per_family": 0, "max_answer_share": None})
        try:
            drawn = build_testbed(one)
        except (DataError, ValueError, TypeError, AssertionError) as err:  # reasoning-gym validates by assert
            raise DataError(f"study.candidates.{family}={params}: the generator cannot supply {items} calibration "
                            f"+ {pool} warm-up items: {type(err).__name__}: {err}") from None
        splits[family] = {"eval": drawn["eval"], "pool": drawn["pool"]}
    return splits


def gold_profile(records: list[dict], tokenizer) -> pd.DataFrame:
    """Per family: items, distinct gold answers, answer entropy in bits, modal share, mean gold length in tokens,
    and the share of gold answers the family's verifier accepts (1.0 unless the family is mis-specified)."""
    rows = []
    for family in dict.fromkeys(r["family"] for r in records):
        mine = [r for r in records if r["family"] == family]
        counts = Counter(r["answer"] for r in mine)
        rows.append({"family": family, "items": len(mine), "distinct_answers": len(counts),
                     "gold_entropy_bits": float(entropy(list(counts.values()), base=2)),
                     "gold_modal_share": counts.most_common(1)[0][1] / len(mine),
                     "gold_tokens": float(np.mean([len(tokenizer(r["answer"], add_special_tokens=False)["input_ids"])
                                                  for r in mine])),
                     "gold_verified": float(np.mean([is_correct(family, r["answer"], r["entry"]) for r in mine]))})
    return pd.DataFrame(rows)


def judged_replies(records: list[dict], ids: list[list[list[int]]], tokenizer, budgets: list[int], kind: str
                   ) -> pd.DataFrame:
    """One row per (item, continuation, budget): the continuation's first ``budget`` tokens decoded and judged
    (:func:`studykit.answers.judge`), its length in tokens and whether the budget cut it."""
    rows = []
    for record, continuations in zip(records, ids, strict=True):
        for sample, tokens in enumerate(continuations):
            for budget in budgets:
                reply = tokenizer.decode(tokens[:budget], skip_special_tokens=True)
                verdict = judge(record, reply)
                rows.append({"family": record["family"], "id": record["id"], "kind": kind, "sample": sample,
                             "budget": int(budget), "reply": reply, "extracted": verdict.extracted,
                             "strict": verdict.strict, "lenient": verdict.lenient,
                             "tokens": min(len(tokens), budget), "cut": len(tokens) >= budget})
    return pd.DataFrame(rows)


def measure(model, tokenizer, records: list[dict], *, chat: bool, budgets: list[int], samples: int,
            temperature: float, batch_size: int, seed: int) -> tuple[pd.DataFrame, dict[str, float]]:
    """Greedy and ``samples`` temperature-``temperature`` continuations of every record at the largest budget,
    judged at every budget (:func:`judged_replies`).  Returns (replies, seconds per item of each pass)."""
    prompts, top = [r["prompt"] for r in records], max(budgets)
    start = time.perf_counter()
    greedy = generate_ids(model, tokenizer, prompts, chat=chat, max_new_tokens=top, batch_size=batch_size)
    seconds = {"greedy": (time.perf_counter() - start) / len(records)}
    seed_everything(seed)
    start = time.perf_counter()
    sampled = generate_ids(model, tokenizer, prompts, chat=chat, max_new_tokens=top,
                           batch_size=max(1, batch_size // samples), samples=samples, do_sample=True,
                           temperature=temperature)
    seconds["sampled"] = (time.perf_counter() - start) / len(records)
    replies = pd.concat([judged_replies(records, greedy, tokenizer, budgets, "greedy"),
                         judged_replies(records, sampled, tokenizer, budgets, "sampled")], ignore_index=True)
    return replies, seconds


def _modal_share(answers: pd.Series) -> float:
    return float(answers.fillna("").astype(str).str.strip().value_counts(normalize=True).iloc[0])


def summarize(replies: pd.DataFrame, samples: int) -> pd.DataFrame:
    """Per (family, budget): greedy lenient and strict accuracy, the greedy answers' modal share, mean reply tokens
    and the share cut at the budget; over the sampled continuations: mean accuracy, pass@k and the RL signal share
    (prompts with 1 … k−1 of k solved)."""
    rows = []
    for (family, budget), group in replies.groupby(["family", "budget"], sort=False):
        greedy, sampled = group[group["kind"] == "greedy"], group[group["kind"] == "sampled"]
        solved = sampled.groupby("id")["lenient"].sum()
        rows.append({"family": family, "budget": int(budget),
                     "greedy_lenient": greedy["lenient"].mean(), "greedy_strict": greedy["strict"].mean(),
                     "reply_modal_share": _modal_share(greedy["extracted"]),
                     "reply_tokens": greedy["tokens"].mean(), "reply_cut_share": greedy["cut"].mean(),
                     "sample_lenient": sampled["lenient"].mean(), f"pass_at_{samples}": (solved > 0).mean(),
                     "signal_share": ((solved > 0) & (solved < samples)).mean()})
    return pd.DataFrame(rows)


def qualify(table: pd.DataFrame, criteria, samples: int) -> pd.DataFrame:
    """Which study kinds each family can serve, by ``criteria`` (``study.criteria``), at the budget
    ``criteria.budget``: one row per family with the numbers the rules read and a boolean per kind.

    * ``constant_free`` – gold modal share ≤ ``max_gold_modal_share`` and the verifier accepts every gold answer;
    * ``sft``  – constant-free, the warm-up (a fixed short SFT) raises greedy accuracy by ≥ ``min_sft_gain`` over
      the base, stays ≤ ``max_sft_accuracy`` (room for a data-selection effect), and its replies are not a
      constant (modal share ≤ ``max_reply_modal_share``);
    * ``rl_base`` / ``rl_warmup`` – constant-free and RL signal share ≥ ``min_signal_share`` from that start;
    * ``preference`` – constant-free and signal share from the warm-up ≥ ``min_pair_share`` (the share of prompts
      whose own samples give a verifier-ranked chosen/rejected pair).
    """
    at = table[table["budget"] == int(criteria.budget)]
    base = at[at["start"] == "base"].set_index("family")
    rows = []
    for family, b in base.iterrows():
        w = at[(at["start"] == "warmup") & (at["family"] == family)]
        w = w.iloc[0] if len(w) else None
        constant_free = (b["gold_modal_share"] <= criteria.max_gold_modal_share) and b["gold_verified"] == 1.0
        row = {"family": family, "gold_modal_share": b["gold_modal_share"], "base_greedy": b["greedy_lenient"],
               "base_signal_share": b["signal_share"], "constant_free": bool(constant_free),
               "rl_base": bool(constant_free and b["signal_share"] >= criteria.min_signal_share)}
        if w is not None:
            gain = w["greedy_lenient"] - b["greedy_lenient"]
            row.update({"warmup_greedy": w["greedy_lenient"], "sft_gain": gain,
                        "warmup_reply_modal_share": w["reply_modal_share"], "warmup_signal_share": w["signal_share"],
                        "sft": bool(constant_free and gain >= criteria.min_sft_gain
                                    and w["greedy_lenient"] <= criteria.max_sft_accuracy
                                    and w["reply_modal_share"] <= criteria.max_reply_modal_share),
                        "rl_warmup": bool(constant_free and w["signal_share"] >= criteria.min_signal_share),
                        "preference": bool(constant_free and w["signal_share"] >= criteria.min_pair_share)})
        rows.append(row)
    return pd.DataFrame(rows)


def settings(cfg) -> dict:
    """The study's measurement settings for the session's model: ``study.items``, ``pool``, ``samples``,
    ``budgets`` and ``starts``, overridden by ``study.by_model.<model.name>`` where the model is slower, and the ``candidates``
    to measure (``study.only`` of them, or all)."""
    study = OmegaConf.to_container(cfg.study, resolve=True)
    own = (study.get("by_model") or {}).get(cfg.model.name, {})
    chosen = {key: own.get(key, study[key]) for key in ("items", "pool", "samples", "budgets", "starts")}
    only = study.get("only")
    unknown = sorted(set(only or []) - set(study["candidates"]))
    if unknown:
        raise DataError(f"study.only={only}: {unknown} are not candidates (study.candidates: "
                        f"{', '.join(study['candidates'])})")
    chosen["candidates"] = {name: study["candidates"][name] for name in (only or study["candidates"])}
    if int(cfg.study.criteria.budget) not in chosen["budgets"]:
        raise DataError(f"study.criteria.budget={cfg.study.criteria.budget} is not one of the measured budgets "
                        f"{chosen['budgets']} (study.budgets, or study.by_model.{cfg.model.name}.budgets)")
    return chosen


def calibration_table(gold: pd.DataFrame, measured: dict[str, pd.DataFrame], samples: int,
                      seconds: dict[str, dict[str, float]]) -> pd.DataFrame:
    """One row per (start, family, budget): the gold profile beside :func:`summarize` of that start's replies and
    the start's seconds per item (greedy, sampled)."""
    frames = []
    for start, replies in measured.items():
        summary = summarize(replies, samples).assign(start=start, greedy_s_per_item=seconds[start]["greedy"],
                                                     sampled_s_per_item=seconds[start]["sampled"])
        frames.append(gold.merge(summary, on="family"))
    table = pd.concat(frames, ignore_index=True)
    first = ["start", "family", "budget"]
    return table[first + [c for c in table.columns if c not in first]]


def calibration_figure(table: pd.DataFrame, budget: int, samples: int, title: str):
    """Per family at ``budget``: gold modal share (the best constant), greedy accuracy and RL signal share of each
    start, as horizontal bars."""
    import matplotlib.pyplot as plt

    at = table[table["budget"] == budget]
    families = list(dict.fromkeys(at["family"]))
    starts = list(dict.fromkeys(at["start"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.28 * len(families) + 1.5), sharey=True)
    y = np.arange(len(families))
    height = 0.8 / (len(starts) + 1)
    for ax, column, label in ((axes[0], "greedy_lenient", "greedy accuracy"),
                              (axes[1], "signal_share", f"RL signal share (1–{samples - 1} of {samples} solved)")):
        if column == "greedy_lenient":
            gold = at.drop_duplicates("family").set_index("family").loc[families, "gold_modal_share"]
            ax.barh(y, gold, height, color="0.75", label="best constant (gold modal share)")
        for k, start in enumerate(starts):
            values = at[at["start"] == start].set_index("family").reindex(families)[column]
            ax.barh(y + (k + 1) * height, values, height, label=start)
        ax.set_xlabel(label)
        ax.set_xlim(0, 1)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_yticks(y + height * len(starts) / 2, families, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


KIND_RULES = {
    "constant_free": "gold modal share ≤ {max_gold_modal_share} (a constant answer scores at most this) and the "
                     "verifier accepts every gold answer",
    "sft": "constant-free; the warm-up SFT raises greedy accuracy by ≥ {min_sft_gain} over the base, to ≤ "
           "{max_sft_accuracy}, with replies whose modal share is ≤ {max_reply_modal_share} (SFT and data selection: "
           "learnable in the budget, with room above)",
    "rl_base": "constant-free; RL signal share from the base model ≥ {min_signal_share} (GRPO from the base)",
    "rl_warmup": "constant-free; RL signal share from the warm-up ≥ {min_signal_share} (GRPO after an SFT stage)",
    "preference": "constant-free; signal share from the warm-up ≥ {min_pair_share} (DPO on the model's own "
                  "verifier-ranked samples, RewardRank's metric pairs)",
}


def calibration_page(cfg, table: pd.DataFrame, selection: pd.DataFrame, chosen: dict) -> str:
    """The result's page (``README.md``): the model and its weights, the criteria, which families qualify for each
    study kind, and the numbers the criteria read at the criteria's budget."""
    criteria = OmegaConf.to_container(cfg.study.criteria, resolve=True)
    kinds = [k for k in KIND_RULES if k in selection]
    lines = [f"# Calibration: {cfg.model.name}", "",
             f"Weights: {cfg.model.weights}. Settings: {chosen['items']} items per family, {chosen['samples']} "
             f"samples at temperature {cfg.study.temperature}, budgets {chosen['budgets']} new tokens, starts "
             f"{', '.join(chosen['starts'])} (warm-up: {chosen['pool']} SFT items per family, all families together, "
             f"the `train` section). Commit, command and machine: `manifest.json`; every reply: `replies.parquet`; "
             "the full table: `calibration.csv`. Generated by `studykit run calibration` "
             "(`notebooks/calibration.ipynb`, `studykit/calibration.py`).", "",
             f"## Criteria (at {criteria['budget']} new tokens, `conf/study/calibration.yaml`)", ""]
    lines += [f"- **{kind}**: {KIND_RULES[kind].format(**criteria)}" for kind in kinds]
    lines += ["", "## Families that qualify", ""]
    lines += [f"- **{kind}** ({int(selection[kind].sum())}): "
              f"{', '.join(selection.loc[selection[kind], 'family']) or 'none'}" for kind in kinds]
    lines += ["", "## The numbers the criteria read", "", selection.round(3).to_markdown(index=False), ""]
    return "\n".join(lines)


def committed_selection(profile: str) -> pd.DataFrame:
    """The committed calibration's per-family table with each criterion's verdict (the repository's
    ``results/calibration/<profile>/selection.csv``, an input, wherever a run writes its outputs): what a study
    reads to say which families its model qualifies on."""
    path = ROOT / "results" / "calibration" / profile / "selection.csv"
    if not path.is_file():
        raise DataError(f"{path}: no committed calibration for profile {profile!r}; expected the selection table of "
                        f"`studykit run calibration profile={profile}`")
    return pd.read_csv(path)
