"""Judges of open-ended replies (studykit.judges): analytic checks on a tiny random reward model, canned LLM
judgments, the verdict parsers, the cache, and the claims metrics they feed."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

from studykit import judges
from studykit.claims import Evidence, claims_table, load_claims, predictions_frame
from studykit.errors import ConfigError, DataError
from studykit.judges import (JUDGES, judge_message, judge_prompts, judge_records, pair_verdict, pair_win, rating,
                             reward_scores, reward_text)

RECORDS = [{"id": f"q{i}", "prompt": p, "family": "mt_bench_writing" if i % 2 else "mt_bench_stem"}
           for i, p in enumerate(["Write a haiku about rain.", "What is 2 + 2?", "Name three primary colours.",
                                  "Explain photosynthesis in one sentence.", "Say hello."])]
POLICY = ["Rain taps the roof / soft and slow", "4", "Red, yellow and blue, the classic painter's primaries.",
          "Plants turn light, water and carbon dioxide into sugar and oxygen.", "Hello!"]
REFERENCE = ["Grey clouds weep", "Four.", "red green blue", "It is how plants make food.",
             "Hi there, how can I help you today?"]


@pytest.fixture(scope="module")
def reward_model(tiny, tmp_path_factory):
    """(model, tokenizer): a 2-layer random one-logit Llama classifier on SmolLM2's tokenizer, saved and reloaded
    through AutoModelForSequenceClassification."""
    _, tokenizer = tiny
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1, initializer_range=0.5,
                         pad_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("reward_model")
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval(), tokenizer


def counting(monkeypatch, model) -> list:
    """Count the model's forward passes (every reward score and every generated token runs one)."""
    calls, forward = [], model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    return calls


def test_identical_replies_tie_and_swapping_the_sides_mirrors_the_win(reward_model, tmp_path):
    model, tokenizer = reward_model
    same = judge_records(RECORDS, POLICY, POLICY, judge="reward_model", model=model, tokenizer=tokenizer,
                         cache_dir=tmp_path / "a")
    assert same["win"].tolist() == [0.5] * len(RECORDS)
    forward = judge_records(RECORDS, POLICY, REFERENCE, judge="reward_model", model=model, tokenizer=tokenizer,
                            cache_dir=tmp_path / "b", batch_size=2)
    swapped = judge_records(RECORDS, REFERENCE, POLICY, judge="reward_model", model=model, tokenizer=tokenizer,
                            cache_dir=tmp_path / "c", batch_size=3)
    assert set(forward["win"]) <= {0.0, 1.0} and len(set(forward["win"])) == 2   # random rewards: no exact ties
    assert (swapped["win"] == 1 - forward["win"]).all()
    np.testing.assert_allclose(swapped["judge_score"], forward["judge_reference_score"], atol=1e-5)
    assert list(forward.columns[:4]) == ["id", "family", "reply", "reference_reply"]
    assert forward["family"].tolist() == [r["family"] for r in RECORDS]
    wide = judge_records(RECORDS, POLICY, REFERENCE, judge="reward_model", model=model, tokenizer=tokenizer,
                         cache_dir=tmp_path / "b", tie_tolerance=1e9)
    assert wide["win"].tolist() == [0.5] * len(RECORDS)   # the same cached rewards, every difference within tolerance


def test_batched_padded_rewards_equal_unbatched_forward_passes(reward_model):
    model, tokenizer = reward_model
    prompts = [r["prompt"] for r in RECORDS] * 2
    replies = POLICY + REFERENCE
    batched = reward_scores(model, tokenizer, prompts, replies, batch_size=4)
    with torch.no_grad():
        direct = [model(**tokenizer(reward_text(tokenizer, p, r), return_tensors="pt", add_special_tokens=False)
                        ).logits[0, 0].item() for p, r in zip(prompts, replies)]
    np.testing.assert_allclose(batched, direct, atol=1e-5)
    assert reward_text(tokenizer, "Q", "R").count("<|im_start|>") == 3   # system, user, assistant turns


def test_a_second_call_reads_the_cache_and_makes_no_model_call(reward_model, tmp_path, monkeypatch):
    model, tokenizer = reward_model
    calls = counting(monkeypatch, model)
    first = judge_records(RECORDS, POLICY, REFERENCE, judge="reward_model", model=model, tokenizer=tokenizer,
                          cache_dir=tmp_path, batch_size=4)
    assert len(calls) == 3   # 10 distinct (prompt, reply) rewards in batches of 4
    again = judge_records(RECORDS, POLICY, REFERENCE, judge="reward_model", model=model, tokenizer=tokenizer,
                          cache_dir=tmp_path, batch_size=4)
    assert len(calls) == 3
    pd.testing.assert_frame_equal(first, again)
    assert len((tmp_path / "reward_model.jsonl").read_text().splitlines()) == 10
    judge_records(RECORDS[:2], ["new reply", POLICY[1]], REFERENCE[:2], judge="reward_model", model=model,
                  tokenizer=tokenizer, cache_dir=tmp_path)
    assert len(calls) == 4 and len((tmp_path / "reward_model.jsonl").read_text().splitlines()) == 11   # only the new one


@pytest.mark.parametrize("judgment, verdict", [
    ("Assistant A is more detailed. [[A]]", "A"), ("Final verdict: [[B]]", "B"), ("Both are equal. [[C]]", "tie"),
    ("I prefer A.", "error"), ("[A] is better", "error"), ("[[A]] ... on reflection [[B]]", "A"),
])
def test_pair_verdicts_are_parsed_as_fastchat_does(judgment, verdict):
    assert pair_verdict(judgment) == verdict


@pytest.mark.parametrize("judgment, score", [
    ("Good answer. Rating: [[7]]", 7.0), ("Rating: [8.5]", 8.5), ("[[9.0]] and later [3]", 9.0),
    ("I would give it a seven.", math.nan), ("Rating: 6", math.nan),
])
def test_single_ratings_are_parsed_as_fastchat_does(judgment, score):
    assert rating(judgment) == score or (math.isnan(score) and math.isnan(rating(judgment)))


def test_both_orders_cancel_position_bias():
    assert pair_win("A", "B") == 1.0 and pair_win("B", "A") == 0.0      # consistent win / loss
    assert pair_win("A", "A") == 0.5 and pair_win("B", "B") == 0.5      # a judge that always picks one position
    assert pair_win("tie", "tie") == 0.5 and pair_win("error", "error") == 0.5
    assert pair_win("A", "tie") == 0.75


def test_templates_are_filled_with_the_question_and_both_answers():
    prompts = judge_prompts()
    pair = judge_message(prompts["pair-v2"], "QUESTION {x}", "FIRST ANSWER", "SECOND ANSWER")
    assert pair.startswith("[Instruction]\n" + prompts["pair-v2"]["system_prompt"] + "\n\n[User Question]\nQUESTION {x}")
    assert pair.index("FIRST ANSWER") < pair.index("SECOND ANSWER")
    assert "[The Start of Assistant A's Answer]\nFIRST ANSWER\n[The End of Assistant A's Answer]" in pair
    single = judge_message(prompts["single-v1"], "QUESTION", "THE ANSWER")
    assert single.startswith("[Instruction]\nPlease act as an impartial judge")   # system "You are a helpful assistant."
    assert "[Question]\nQUESTION\n\n[The Start of Assistant's Answer]\nTHE ANSWER\n" in single


def canned(monkeypatch, answer) -> list:
    """Replace the judge model's generation with ``answer(judge message)``; returns the messages it was asked."""
    asked = []
    monkeypatch.setattr(judges, "generate", lambda model, tokenizer, messages, **_: asked.extend(messages) or
                        [answer(m) for m in messages])
    return asked


def test_llm_pairwise_judges_both_orders_and_reports_unparsed_verdicts(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny
    # a judge that prefers the answer containing "!" and otherwise always says A (position bias) or nothing
    def answer(message):
        a = message.split("[The Start of Assistant A's Answer]\n")[1].split("\n[The End")[0]
        b = message.split("[The Start of Assistant B's Answer]\n")[1].split("\n[The End")[0]
        return "[[A]]" if "!" in a else "[[B]]" if "!" in b else "no verdict" if "4" in (a, b) else "[[A]]"
    asked = canned(monkeypatch, answer)
    frame = judge_records(RECORDS, POLICY, REFERENCE, judge="llm_pairwise", model=model, tokenizer=tokenizer,
                          cache_dir=tmp_path)
    assert len(asked) == 2 * len(RECORDS)
    assert frame["win"].tolist() == [0.5, 0.5, 0.5, 0.5, 1.0]
    assert frame["judge_parsed"].tolist() == [True, False, True, True, True]
    assert frame["verdict_policy_first"].tolist() == ["A", "error", "A", "A", "A"]
    swapped = judge_records(RECORDS, REFERENCE, POLICY, judge="llm_pairwise", model=model, tokenizer=tokenizer,
                            cache_dir=tmp_path)
    assert len(asked) == 2 * len(RECORDS)   # the same calls in the other order: all cached
    assert (swapped["win"] == 1 - frame["win"]).all()
    same = judge_records(RECORDS, POLICY, POLICY, judge="llm_pairwise", model=model, tokenizer=tokenizer,
                         cache_dir=tmp_path)
    assert same["win"].tolist() == [0.5] * len(RECORDS)


def test_llm_single_scores_and_a_real_tiny_judge_runs_end_to_end(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny
    frame = judge_records(RECORDS[:2], POLICY[:2], None, judge="llm_single", model=model, tokenizer=tokenizer,
                          cache_dir=tmp_path / "real", max_new_tokens=3)   # random weights: no rating in 3 tokens
    assert frame["mt_bench_score"].isna().all() and not frame["judge_parsed"].any()
    canned(monkeypatch, lambda message: "Rating: [[8]]" if "Hello!" in message else "Rating: [2.5]")
    frame = judge_records(RECORDS, POLICY, None, judge="llm_single", model=model, tokenizer=tokenizer,
                          cache_dir=tmp_path / "canned")
    assert frame["mt_bench_score"].tolist() == [2.5, 2.5, 2.5, 2.5, 8.0] and frame["judge_parsed"].all()
    assert frame["reference_reply"].isna().all()


@pytest.mark.parametrize("kwargs, error, message", [
    ({"judge": "gpt4"}, ConfigError, r"judge 'gpt4' is not one of JUDGES \['llm_pairwise', 'llm_single', 'reward_model'\]"),
    ({"records": []}, DataError, "no records"),
    ({"replies": POLICY[:2]}, DataError, "5 records but 2 replies"),
    ({"reference_replies": None}, DataError, "compares against reference replies"),
    ({"reference_replies": [*REFERENCE[:4], None]}, DataError, r"reference_replies\[4\] must be a string"),
    ({"records": [{"id": "x"}] * 5}, DataError, "record 0 field 'prompt'"),
    ({"records": [RECORDS[0]] * 5}, DataError, "duplicate record ids, e.g. 'q0'"),
    ({"tie_tolerance": -1.0}, DataError, "tie_tolerance must be ≥ 0"),
])
def test_bad_inputs_are_one_clear_error_before_any_model_call(kwargs, error, message):
    args = {"records": RECORDS, "replies": POLICY, "reference_replies": REFERENCE, "judge": "reward_model", **kwargs}
    with pytest.raises(error, match=message):
        judge_records(args.pop("records"), args.pop("replies"), args.pop("reference_replies"), model=None,
                      tokenizer=None, **args)


def test_judged_frames_feed_a_win_rate_claim(tmp_path):
    path = tmp_path / "claims.yaml"
    path.write_text("- {id: a.wins, paper: studykit, source: s, claim: A wins more often, kind: kit,\n"
                    "   test: {treatment: a, control: b, metric: win, direction: greater}}\n")
    claims = load_claims(path)
    rng = np.random.default_rng(0)
    records = [{"id": f"p{i}", "prompt": "p", "family": "f" if i < 30 else "g"} for i in range(60)]
    frames = []
    for condition, chance in (("a", 0.8), ("b", 0.3)):
        for seed in range(5):
            win = rng.choice([0.0, 0.5, 1.0], size=60, p=[(1 - chance) * 0.8, 0.2, chance * 0.8])
            frame = pd.DataFrame({"id": [r["id"] for r in records], "family": [r["family"] for r in records],
                                  "reply": [f"{condition}{seed}{i}" for i in range(60)], "reference_reply": "ref",
                                  "win": win})
            frames.append(predictions_frame(frame, condition, seed))
    row = claims_table(claims, pd.concat(frames), Evidence(trained=[])).iloc[0]
    assert row["metric"] == "win rate vs reference" and row["verdict"] == "kit: treatment higher"
    assert JUDGES["llm_single"].pairwise is False


DF_GAMED = Path(__file__).parent / "fixtures" / "paper" / "alpaca_eval_df_gamed.csv"   # AlpacaEval's format, 10 rows


def _lc_predictions(win_when_longer: bool) -> pd.DataFrame:
    """Ten AlpacaEval items where the model's reply is longer than the reference on half of them and wins exactly
    there (or exactly where it is shorter)."""
    longer = np.arange(10) % 2 == 0
    return pd.DataFrame({"condition": "m", "seed": 0, "id": [f"eval/{i}" for i in range(10)],
                         "reference_reply": ["r" * 40] * 10,
                         "reply": ["x" * (120 + 7 * i) if l else "x" * (10 + i) for i, l in enumerate(longer)],
                         "win": np.where(longer == win_when_longer, 1.0, 0.0)})


def test_length_control_discounts_wins_bought_with_length(monkeypatch):
    """AlpacaEval's own GLM (Dubois et al., 2024) read at zero length difference: a model that wins only where it is
    longer than the reference gets a lower length-controlled win rate than one that wins only where it is shorter,
    at the same raw win rate — and the raw win rate is the mean per-item win, as alpaca-eval counts it."""
    from alpaca_eval.metrics import glm_winrate as glm
    monkeypatch.setattr(glm, "hf_hub_download", lambda **kwargs: str(DF_GAMED))   # offline: AlpacaEval's file format
    verbose = judges.length_controlled_win_rates(_lc_predictions(win_when_longer=True)).iloc[0]
    concise = judges.length_controlled_win_rates(_lc_predictions(win_when_longer=False)).iloc[0]
    assert verbose["win_rate"] == concise["win_rate"] == 0.5 and verbose["items"] == 10
    assert verbose["lc_win_rate"] < 0.5 < concise["lc_win_rate"]
    raw = glm.get_winrate(pd.DataFrame({"preference": 1.0 + _lc_predictions(True)["win"]}))
    assert raw["win_rate"] / 100 == pytest.approx(verbose["win_rate"])


def test_length_control_needs_alpaca_eval_items_and_pairwise_judgments():
    with pytest.raises(DataError, match=r"item id 'eval/805' does not end in an AlpacaEval row"):
        judges.length_controlled_win_rates(_lc_predictions(True).assign(id=[f"eval/{i}" for i in range(796, 806)]))
    with pytest.raises(DataError, match=r"lack columns \['win'\]"):
        judges.length_controlled_win_rates(_lc_predictions(True).drop(columns="win"))
