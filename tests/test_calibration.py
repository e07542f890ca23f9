"""Calibration: the measures are checked on constructed replies (exact counts), the settings' errors name the key."""
from __future__ import annotations

import hashlib
import math

import pandas as pd
import pytest
from omegaconf import OmegaConf

from studykit import models
from studykit.calibration import candidate_splits, gold_profile, judged_replies, qualify, settings, summarize
from studykit.config import compose
from studykit.errors import DataError, ModelSourceError
from studykit.evaluate import generate, generate_ids


def _replies(family: str, solved_per_item: list[int], samples: int, greedy: list[bool], budget: int = 16):
    rows = []
    for item, (solved, right) in enumerate(zip(solved_per_item, greedy)):
        rows.append({"family": family, "id": f"{family}/{item}", "kind": "greedy", "sample": 0, "budget": budget,
                     "reply": "x", "extracted": "7" if not right else str(item), "strict": right, "lenient": right,
                     "tokens": 3, "cut": item == 0})
        for sample in range(samples):
            ok = sample < solved
            rows.append({"family": family, "id": f"{family}/{item}", "kind": "sampled", "sample": sample,
                         "budget": budget, "reply": "y", "extracted": "", "strict": ok, "lenient": ok, "tokens": 5,
                         "cut": False})
    return pd.DataFrame(rows)


def test_summarize_counts_pass_at_k_and_signal_share_exactly():
    # 4 items, 4 samples: solved 0, 1, 4, 3 of 4 -> pass@4 = 3/4, signal share (1..3 of 4) = 2/4
    replies = _replies("chain_sum", [0, 1, 4, 3], 4, [False, False, True, True])
    row = summarize(replies, 4).iloc[0]
    assert row["pass_at_4"] == 0.75 and row["signal_share"] == 0.5
    assert row["sample_lenient"] == 8 / 16 and row["greedy_lenient"] == 0.5
    # greedy answers "7", "7", "2", "3": the modal answer holds half of them
    assert row["reply_modal_share"] == 0.5 and row["reply_cut_share"] == 0.25 and row["reply_tokens"] == 3


def test_gold_profile_entropy_and_modal_share(smoke_cfg):
    records = [{"family": "chain_sum", "answer": a, "entry": '{"answer": "%s", "question": "", "metadata": {}}' % a}
               for a in ["1", "1", "2", "3"]]
    tokenizer = models.load_tokenizer(smoke_cfg.model)
    row = gold_profile(records, tokenizer).iloc[0]
    assert row["distinct_answers"] == 3 and row["gold_modal_share"] == 0.5
    assert math.isclose(row["gold_entropy_bits"], 1.5)  # -(1/2 log 1/2 + 2 * 1/4 log 1/4)


def _table(family, start, gold_modal, greedy, signal, reply_modal=0.2):
    return {"start": start, "family": family, "budget": 16, "gold_modal_share": gold_modal, "gold_verified": 1.0,
            "greedy_lenient": greedy, "signal_share": signal, "reply_modal_share": reply_modal}


def test_qualify_applies_each_criterion():
    criteria = OmegaConf.create({"budget": 16, "max_gold_modal_share": 0.2, "min_sft_gain": 0.15,
                                 "max_sft_accuracy": 0.85, "max_reply_modal_share": 0.5, "min_signal_share": 0.5,
                                 "min_pair_share": 0.3})
    table = pd.DataFrame([
        _table("good", "base", 0.1, 0.1, 0.6), _table("good", "warmup", 0.1, 0.5, 0.4),
        _table("skewed", "base", 0.5, 0.5, 0.9), _table("skewed", "warmup", 0.5, 0.9, 0.9),
        _table("constant", "base", 0.1, 0.0, 0.0), _table("constant", "warmup", 0.1, 0.3, 0.1, reply_modal=0.9),
        _table("saturated", "base", 0.1, 0.5, 0.2), _table("saturated", "warmup", 0.1, 0.95, 0.1),
    ])
    out = qualify(table, criteria, 8).set_index("family")
    assert out.loc["good", ["constant_free", "sft", "rl_base", "rl_warmup", "preference"]].tolist() == \
        [True, True, True, False, True]
    assert not out.loc["skewed", ["constant_free", "sft", "rl_base", "rl_warmup", "preference"]].any()
    assert out.loc["constant", "constant_free"] and not out.loc["constant", "sft"]   # answers one string
    assert out.loc["saturated", "constant_free"] and not out.loc["saturated", "sft"]  # no room above 0.85


def test_settings_take_the_models_overrides_and_name_bad_keys():
    gemma = settings(compose(["study=calibration", "profile=embedded_gemma"]))
    assert (gemma["items"], gemma["pool"], gemma["budgets"]) == (12, 8, [16, 32])
    assert len(gemma["candidates"]) == len(compose(["study=calibration"]).study.candidates)
    only = settings(compose(["study=calibration", "study.only=['chain_sum:2',syllogism]"]))
    assert list(only["candidates"]) == ["chain_sum:2", "syllogism"]
    with pytest.raises(DataError, match=r"study.only=.*\['nope'\] are not candidates"):
        settings(compose(["study=calibration", "study.only=[nope]"]))
    with pytest.raises(DataError, match="study.criteria.budget=12 is not one of the measured budgets"):
        settings(compose(["study=calibration", "study.criteria.budget=12"]))


def test_a_candidate_the_generator_rejects_is_refused_with_its_key():
    data = compose(["study=calibration"]).data
    splits = candidate_splits(data, {"chain_sum:2": {"min_terms": 2, "max_terms": 2}}, 3, 2)
    assert list(splits) == ["chain_sum:2"] and [len(s) for s in splits["chain_sum:2"].values()] == [3, 2]
    with pytest.raises(DataError, match=r"study.candidates.gcd=\{'min_value': 50, 'max_value': 10\}: .*max_value"):
        candidate_splits(data, {"gcd": {"min_value": 50, "max_value": 10}}, 3, 2)


def test_one_continuation_serves_every_smaller_budget(tiny, smoke_cfg):
    model, tokenizer = tiny
    prompts = ["Calculate 2 + 3.", "Spell this word backward: cat"]
    long = generate_ids(model, tokenizer, prompts, chat=True, max_new_tokens=8)
    short = generate(model, tokenizer, prompts, chat=True, max_new_tokens=4)
    assert [tokenizer.decode(ids[0][:4], skip_special_tokens=True) for ids in long] == short
    record = {"family": "chain_sum", "id": "c/0", "answer": "5",
              "entry": '{"answer": "5", "question": "", "metadata": {}}'}
    judged = judged_replies([record], [long[0]], tokenizer, [4, 8], "greedy")
    assert judged["budget"].tolist() == [4, 8] and judged["tokens"].tolist() == [min(4, len(long[0][0])),
                                                                                 min(8, len(long[0][0]))]


def test_sampling_returns_samples_per_prompt(tiny):
    model, tokenizer = tiny
    ids = generate_ids(model, tokenizer, ["a", "bb", "ccc"], chat=True, max_new_tokens=3, batch_size=2, samples=4,
                       do_sample=True)
    assert [len(s) for s in ids] == [4, 4, 4] and all(len(x) <= 3 for s in ids for x in s)


def test_concatenated_gguf_is_checked(tmp_path, monkeypatch):
    parts = [tmp_path / "a.bin", tmp_path / "b.bin"]
    parts[0].write_bytes(b"GGUF-part-one-")
    parts[1].write_bytes(b"part-two")
    located = dict(zip(["pkg-a", "pkg-b"], parts))
    monkeypatch.setattr(models, "_locate_gguf", lambda package, file: located[package])
    monkeypatch.setenv("STUDYKIT_CACHE", str(tmp_path / "cache"))
    good = hashlib.sha256(b"GGUF-part-one-part-two").hexdigest()
    cfg = OmegaConf.create({"name": "m", "parts": {"pkg-a": "a.bin", "pkg-b": "b.bin"}, "sha256": good})
    assert models._concat_gguf(cfg).read_bytes() == b"GGUF-part-one-part-two"
    bad = OmegaConf.create({"name": "n", "parts": {"pkg-b": "b.bin", "pkg-a": "a.bin"}, "sha256": good})
    with pytest.raises(ModelSourceError, match="expected model.sha256="):
        models._concat_gguf(bad)
    assert not list((tmp_path / "cache" / "gguf" / "n").iterdir())  # nothing half-written left
