"""SFT data transforms: GRAPE's choice, SSR / S3FT replacement by the verifier, CFT's critique format."""
from __future__ import annotations

import numpy as np
import pytest

from studykit.logprobs import sequence_logprobs
from studykit.testbed import build_testbed, inject_noise
from studykit.transforms import accepted, critique_format, grape, own_responses, self_generated


@pytest.fixture(scope="module")
def pool(smoke_cfg):
    return build_testbed(smoke_cfg.data)["pool"][:6]


def test_grape_keeps_the_candidate_with_the_highest_length_normalized_log_prob(tiny, pool):
    model, tokenizer = tiny
    candidates = [[r["response"], "I do not know.", r["response"] + " " + r["response"]] for r in pool]
    chosen = grape(pool, candidates, model, tokenizer, chat=True)
    for record, options, picked in zip(pool, candidates, chosen):
        scores = sequence_logprobs(model, tokenizer, [record["prompt"]] * 3, options, chat=True)["mean"]
        assert picked["response"] == options[int(np.argmax(scores))]
        assert picked["grape_score"] == pytest.approx(float(np.max(scores)), rel=1e-5)
        assert picked["source"] == ("gold" if picked["response"] == record["response"] else "candidate")
    with pytest.raises(ValueError, match="at least one candidate"):
        grape(pool[:1], [[]], model, tokenizer, chat=True)


def test_self_generated_prefers_own_then_paraphrase_then_gold(pool):
    own = [r["answer"] if i % 3 == 0 else "no idea" for i, r in enumerate(pool)]
    paraphrases = [r["answer"] if i % 3 == 1 else "still no idea" for i, r in enumerate(pool)]
    ssr = self_generated(pool, own)
    assert [r["source"] for r in ssr] == ["own" if i % 3 == 0 else "gold" for i in range(len(pool))]
    s3ft = self_generated(pool, own, paraphrases)
    assert [r["source"] for r in s3ft] == [["own", "paraphrase", "gold"][i % 3] for i in range(len(pool))]
    assert all(r["response"] == p["response"] for r, p in zip(s3ft, pool) if r["source"] == "gold")
    with pytest.raises(ValueError, match="one own response"):
        self_generated(pool, own[:-1])


def test_the_judge_reads_the_answer_out_of_a_sentence_and_still_rejects_wrong_ones(pool):
    record = next(r for r in pool if r["family"] == "chain_sum")
    gold = record["answer"]
    assert accepted(record, f"The final answer to this arithmetic problem is {gold}.")
    assert accepted(record, f"Let me see.\nAnswer: {gold}")
    assert not accepted(record, f"The final answer to this arithmetic problem is {int(gold) + 1}.")


def test_own_responses_generate_one_answer_per_record(tiny, pool):
    model, tokenizer = tiny
    assert len(own_responses(pool, model, tokenizer, chat=True, max_new_tokens=3)) == len(pool)
    assert len(own_responses(pool, model, tokenizer, chat=True, max_new_tokens=3, paraphrase=True)) == len(pool)


def test_critique_format_confirms_clean_and_corrects_noisy_items(pool):
    noisy = inject_noise(pool, 0.5, seed=0)
    critiques = critique_format(noisy)
    for source, target in zip(noisy, critiques):
        assert source["response"] in target["prompt"] and source["prompt"] in target["prompt"]
        if source["is_noisy"]:
            assert target["response"] == f"Incorrect. The correct answer is {source['clean_response']}."
        else:
            assert target["response"].startswith("Correct.")
    with pytest.raises(ValueError, match="is_noisy"):
        critique_format(pool)


def test_verified_samples_keep_each_accepted_distinct_reply_of_the_data_policy(tiny, pool, monkeypatch):
    """Rejection sampling: ``samples`` temperature-1 replies per prompt; the verifier-accepted ones, each distinct
    reply once, become the SFT records (``source = sampled``, ``sample_of`` = the prompt's id)."""
    import studykit.transforms as transforms

    model, tokenizer = tiny
    calls = {}

    def fake_generate(model, tokenizer, prompts, **kwargs):
        calls.update(kwargs, prompts=prompts)
        # per prompt 3 samples: the gold answer twice (one duplicate), then a wrong one; the last prompt fails
        return [("no" if i // 3 == len(pool) - 1 or i % 3 == 2 else pool[i // 3]["answer"] + (" " if i % 3 else ""))
                for i in range(len(prompts))]

    monkeypatch.setattr(transforms, "generate", fake_generate)
    out = transforms.verified_samples(pool, model, tokenizer, samples=3, chat=True, max_new_tokens=8)
    assert calls["do_sample"] is True and calls["temperature"] == 1.0
    assert calls["prompts"] == [r["prompt"] for r in pool for _ in range(3)]
    assert [r["sample_of"] for r in out] == [r["id"] for r in pool[:-1]]   # one record per distinct accepted reply
    assert all(r["source"] == "sampled" and r["response"] == r["answer"] for r in out)
