"""Diversity metrics on hand-made sample sets with known values (the formulas of the official code)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from studykit import diversity


def test_ead_counts_distinct_word_ngrams_against_their_expectation_under_uniform_draws():
    replies = ["a b c.", "a b\nd", "a b"]   # as the official code, "." and newlines are deleted: a b c | a bd | a b
    v = 10
    expected = v * (1 - (9 / 10) ** 7)       # distinct count expected among 7 uniform draws from 10
    assert diversity.ead(replies, 1, v) == pytest.approx(4 / expected)
    # bigrams: (a b) (b c) (a bd) (a b) → 3 distinct of 4
    assert diversity.ead(replies, 2, v) == pytest.approx(3 / (v * (1 - 0.9 ** 4)))
    assert diversity.ead(replies, 4, v) == 0.0                           # no reply has 4 words
    assert diversity.ead(["x y"], 1, 2) == 1.0                           # clipped to 1 (2 distinct, 1.5 expected)
    assert diversity.mean_ead(replies, v, orders=(1, 2)) == pytest.approx(
        (diversity.ead(replies, 1, v) + diversity.ead(replies, 2, v)) / 2)
    with pytest.raises(ValueError, match="vocab_size must be ≥ 2"):
        diversity.ead(replies, 1, 1)


def test_repeating_one_reply_lowers_ead_but_not_for_short_outputs_alone():
    """EAD's point: more copies of the same words lower it, while a single short reply is not favoured."""
    v = 49152
    assert diversity.ead(["the cat sat"] * 4, 1, v) < diversity.ead(["the cat sat", "a dog ran", "one bird flew",
                                                                        "two fish swam"], 1, v)


def test_embedding_diversity_is_one_minus_the_mean_pairwise_cosine():
    assert diversity.embedding_diversity(np.ones((3, 4))) == pytest.approx(0.0)
    assert diversity.embedding_diversity(np.eye(3)) == pytest.approx(1.0)
    angle = np.array([[1.0, 0.0], [math.cos(math.pi / 3), math.sin(math.pi / 3)]])   # cosine 0.5, any scale
    assert diversity.embedding_diversity(angle * [[2.0], [5.0]]) == pytest.approx(0.5)
    assert diversity.embedding_diversity(np.ones((1, 4))) == 0.0


def test_vendi_counts_the_effective_number_of_distinct_replies():
    assert diversity.vendi(np.ones((4, 3))) == pytest.approx(1.0)
    assert diversity.vendi(np.eye(4)) == pytest.approx(4.0)
    two_modes = np.array([[1.0, 0.0]] * 2 + [[0.0, 1.0]] * 2)
    assert diversity.vendi(two_modes) == pytest.approx(2.0)


def test_per_prompt_table_judges_quality_on_the_same_samples(monkeypatch):
    records = [{"id": "a", "family": "chain_sum", "answer": "3", "entry": None},
               {"id": "b", "family": "chain_sum", "answer": "5", "entry": None}]
    replies = [["3", "4"], ["5", "5"]]
    def embed(texts):
        return np.array([[1.0, 0.0] if t == "3" or t == "5" else [0.0, 1.0] for t in texts])

    judged = {("a", "3"): True, ("a", "4"): False, ("b", "5"): True}
    monkeypatch.setattr(diversity, "judge", lambda record, text: SimpleNamespace(lenient=judged[(record["id"], text)]))
    table = diversity.diversity_per_prompt(records, replies, embed, vocab_size=100)
    assert table["quality"].tolist() == [0.5, 1.0]
    assert table["embedding_diversity"].tolist() == pytest.approx([1.0, 0.0])
    assert table["vendi"].tolist() == pytest.approx([2.0, 1.0])
    with pytest.raises(ValueError, match="same number of replies"):
        diversity.diversity_per_prompt(records, [["3"], ["5", "5"]], embed, vocab_size=100)


def test_open_ended_prompts_have_no_quality():
    records = [{"id": "q", "family": "mt_bench_writing", "prompt": "Write a poem."}]
    table = diversity.diversity_per_prompt(records, [["a b", "c d"]], lambda t: np.eye(2), vocab_size=10)
    assert np.isnan(table["quality"].iloc[0]) and table["embedding_diversity"].iloc[0] == pytest.approx(1.0)


def test_crc_counts_valid_and_distinct_valid_samples():
    records = diversity.crc_prompts(3, seed=0, split="dev")
    assert len({r["alphabet"] for r in records}) == 3 and all(len(r["alphabet"]) == 8 for r in records)
    assert records == diversity.crc_prompts(3, seed=0, split="dev")                      # seeded
    assert "one letter" in records[0]["prompt"] and all(c in records[0]["prompt"] for c in records[0]["alphabet"])
    record = {"id": "c", "family": "crc", "alphabet": "behkmqtw", "length": 1}
    replies = ["B.", "b", "m, because", "“t”", "The letter b", "z", "", "bb"]
    assert [diversity.crc_answer(record, r) for r in replies] == ["b", "b", "m", "t", None, None, None, None]
    row = diversity.crc_scores([record], [replies]).iloc[0]
    assert row["crc_valid"] == pytest.approx(4 / 8)          # z is not allowed; "The" and "bb" are not one letter
    assert row["crc_distinct"] == pytest.approx(3 / 8)       # b (twice), m, t
    assert row["crc_distinct_valid"] == pytest.approx(3 / 4)  # 3 distinct among the 4 valid
    assert np.isnan(diversity.crc_scores([record], [["z", "The"]]).iloc[0]["crc_distinct_valid"])  # none valid
    pair = {"id": "p", "family": "crc", "alphabet": "ab", "length": 2}
    assert diversity.crc_answer(pair, "ab!") == "ab" and diversity.crc_answer(pair, "a b") is None
    with pytest.raises(ValueError, match="alphabet_size"):
        diversity.crc_prompts(2, seed=0, split="dev", alphabet_size=1)


def test_mt_bench_prompts_are_balanced_over_the_open_ended_categories():
    from studykit.data import OPEN_ENDED_CATEGORIES, DataError, load_mt_bench

    records = load_mt_bench(8)
    assert [r["family"] for r in records[:4]] == [f"mt_bench_{c}" for c in OPEN_ENDED_CATEGORIES]
    assert len({r["id"] for r in records}) == 8 and all(r["prompt"].strip() for r in records)
    with pytest.raises(DataError, match="asked for 1000"):
        load_mt_bench(1000)


def test_one_word_replies_have_only_a_unigram_ead_term_reported_beside_the_mean():
    """Replies of one word have no 2–5-grams: the paper's averaged EAD is a fifth of the unigram EAD, which is
    reported beside it per prompt and across prompts."""
    records = [{"id": "a", "family": "open"}, {"id": "b", "family": "open"}]
    replies = [["yes", "no", "maybe"], ["yes", "yes", "yes"]]
    embed = lambda texts: np.eye(len(texts))   # noqa: E731 — orthogonal embeddings
    table = diversity.diversity_per_prompt(records, replies, embed, vocab_size=50)
    for row, group in zip(table.itertuples(), replies):
        assert row.ead_unigram == diversity.ead(group, 1, 50) and row.ead == pytest.approx(row.ead_unigram / 5)
    assert table["ead_unigram"].iloc[0] > table["ead_unigram"].iloc[1]
    across = diversity.diversity_across_prompts(replies, embed, vocab_size=50)
    assert across["ead_unigram"] == diversity.ead(["yes", "yes"], 1, 50) and across["ead"] == pytest.approx(
        across["ead_unigram"] / 5)


def test_measure_diversity_samples_each_group_at_its_budget_and_tags_its_rows(monkeypatch):
    budgets = []

    def sampled(model, tokenizer, prompts, samples, *, max_new_tokens, **_):
        budgets.append((len(prompts), max_new_tokens))
        return [[f"{p} reply {j}" for j in range(samples)] for p in prompts]

    monkeypatch.setattr(diversity, "sample_replies", sampled)
    groups = {"verifiable": ([{"id": "a", "family": "f", "prompt": "x"}], 16),
              "open_ended": ([{"id": "b", "family": "g", "prompt": "y"},
                              {"id": "c", "family": "g", "prompt": "z"}], 40)}
    model = SimpleNamespace(eval=lambda: None)
    measured = diversity.measure_diversity(model, None, groups, 3, temperature=1.0, embed=lambda t: np.eye(len(t)),
                                           vocab_size=100, chat=True, batch_size=4, seed=0)
    assert budgets == [(1, 16), (2, 40)]
    rows = measured["per_prompt"]
    assert [(r["id"], r["group"]) for r in rows] == [("a", "verifiable"), ("b", "open_ended"), ("c", "open_ended")]
    assert all(r["embedding_diversity"] == pytest.approx(1.0) for r in rows)   # orthogonal embeddings
    assert all(np.isnan(r["quality"]) for r in rows)                            # no verifier entry: no quality
    assert measured["replies"][2] == ["z reply 0", "z reply 1", "z reply 2"]
    assert [a["group"] for a in measured["across"]] == ["verifiable", "open_ended"]
