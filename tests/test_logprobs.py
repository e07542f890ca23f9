import math

import numpy as np
import pytest
import torch

from studykit.logprobs import (collate_left, encode_pair, format_pair, pad_token_id, response_logprobs, sequence_logprobs,
                               shared_prompt_logprobs, token_logprobs)

PROMPTS = ["What is 2+3?", "Spell this word backward: cat.", "Hi", "Reverse this list of words: a, b, c, d, e",
           "A much longer prompt about nothing in particular, " * 4]
RESPONSES = ["5", "tac", "Hello! How can I help you today?", "e, d, c, b, a", "ok"]


def reference_loop(model, tokenizer, prompt_texts, response_texts):
    """Straightforward per-example, unpadded computation: log_softmax over every position, then slice."""
    out = []
    for prompt, response in zip(prompt_texts, response_texts):
        p, r = encode_pair(tokenizer, prompt, response)
        with torch.no_grad():
            logits = model(torch.tensor([p + r])).logits[0].float()
        logp = torch.log_softmax(logits, -1)[len(p) - 1:-1]
        out.append(logp.gather(-1, torch.tensor(r)[:, None]).squeeze(-1).numpy())
    return out


def formatted(tokenizer):
    pairs = [format_pair(tokenizer, p, r, chat=True) for p, r in zip(PROMPTS, RESPONSES)]
    return [p for p, _ in pairs], [r for _, r in pairs]


def test_chat_response_text_carries_the_templates_end_of_turn(tiny):
    _, tokenizer = tiny
    prompt, response = format_pair(tokenizer, "Hi", "Hello", chat=True)
    assert prompt.endswith("<|im_start|>assistant\n") and response == "Hello<|im_end|>\n"
    assert format_pair(tokenizer, "Hi", "Hello", chat=False) == ("Question: Hi\nAnswer:", " Hello<|im_end|>")


def test_token_logprobs_of_uniform_logits_is_minus_log_vocab():
    logits = torch.zeros(2, 3, 50)
    assert torch.allclose(token_logprobs(logits, torch.zeros(2, 3, dtype=torch.long)), torch.full((2, 3), -math.log(50)))


def test_collate_left_aligns_responses_and_rebuilds_positions():
    batch = collate_left([([1, 2, 3], [4]), ([5], [6, 7])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [0, 5, 6, 7]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3], [0, 0, 1, 2]]
    assert batch["response_ids"].tolist() == [[0, 4], [6, 7]]
    assert batch["response_mask"].tolist() == [[False, True], [True, True]]


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_batched_equals_unpadded_loop_for_any_batch_size(tiny, batch_size):
    model, tokenizer = tiny
    prompts, responses = formatted(tokenizer)
    batched = response_logprobs(model, tokenizer, prompts, responses, batch_size=batch_size)
    for got, want in zip(batched, reference_loop(model, tokenizer, prompts, responses)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_prompt_tokens_are_masked(tiny):
    """Changing the prompt changes the scores, but the count of scored tokens is the response's alone."""
    model, tokenizer = tiny
    prompts, responses = formatted(tokenizer)
    scores = sequence_logprobs(model, tokenizer, PROMPTS, RESPONSES, chat=True)
    n_response = [len(encode_pair(tokenizer, p, r)[1]) for p, r in zip(prompts, responses)]
    assert scores["n_tokens"].tolist() == n_response
    np.testing.assert_allclose(scores["mean"], scores["sum"] / scores["n_tokens"])


def test_mismatched_lengths_rejected(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        response_logprobs(model, tokenizer, ["a", "b"], ["c"])


def shared_prompt_case(tokenizer):
    """Two responses per prompt (each prompt's own and the next prompt's), token ids."""
    prompts, responses = formatted(tokenizer)
    ids = [encode_pair(tokenizer, p, r) for p, r in zip(prompts, responses)]
    prompt_ids = [p for p, _ in ids]
    response_ids = [[r, ids[(i + 1) % len(ids)][1]] for i, (_, r) in enumerate(ids)]
    texts = [[responses[i], responses[(i + 1) % len(ids)]] for i in range(len(ids))]
    return prompts, prompt_ids, response_ids, texts


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_shared_prompt_scoring_equals_the_unpadded_loop(tiny, batch_size):
    model, tokenizer = tiny
    prompts, prompt_ids, response_ids, texts = shared_prompt_case(tokenizer)
    got = shared_prompt_logprobs(model, prompt_ids, response_ids, pad_token_id(tokenizer), batch_size=batch_size)
    for j in range(2):
        want = reference_loop(model, tokenizer, prompts, [t[j] for t in texts])
        for i in range(len(prompts)):
            np.testing.assert_allclose(got[i][j], want[i], atol=1e-5)


def test_shared_prompt_scoring_rejects_ragged_or_one_token_prompts(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="same number of responses"):
        shared_prompt_logprobs(model, [[1, 2], [3, 4]], [[[5]], [[6], [7]]], 0)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        shared_prompt_logprobs(model, [[1]], [[[5]]], 0)


@pytest.mark.slow
def test_real_embedded_model_batched_equals_loop(embedded):
    model, tokenizer = embedded
    prompts, responses = formatted(tokenizer)
    batched = response_logprobs(model, tokenizer, prompts, responses, batch_size=5)
    for got, want in zip(batched, reference_loop(model, tokenizer, prompts, responses)):
        np.testing.assert_allclose(got, want, atol=1e-4)
    prompts, prompt_ids, response_ids, texts = shared_prompt_case(tokenizer)
    shared = shared_prompt_logprobs(model, prompt_ids, response_ids, pad_token_id(tokenizer), batch_size=3)
    for j in range(2):
        for i, want in enumerate(reference_loop(model, tokenizer, prompts, [t[j] for t in texts])):
            np.testing.assert_allclose(shared[i][j], want, atol=1e-4)
    # a trained instruct model prefers the right answer to a wrong one
    right, wrong = sequence_logprobs(model, tokenizer, ["What is 2+3? Reply with a number."] * 2, ["5", "banana"],
                                     chat=True)["sum"]
    assert right > wrong


def test_chat_pairs_tokenize_the_same_jointly_and_separately(tiny, smoke_cfg):
    """With SmolLM2's chat template the prompt ends on the assistant header, so TRL's joint tokenization (what
    encode_pair does) splits exactly where tokenizing prompt and response separately does."""
    from studykit.testbed import build_testbed

    _, tokenizer = tiny
    for record in build_testbed(smoke_cfg.data)["pool"]:
        prompt_text, response_text = format_pair(tokenizer, record["prompt"], record["response"], chat=True)
        assert encode_pair(tokenizer, prompt_text, response_text) == (
            tokenizer(prompt_text)["input_ids"], tokenizer(response_text, add_special_tokens=False)["input_ids"])


@pytest.mark.slow
def test_plain_prompts_score_the_tokens_trl_trains_on_and_generation_continues(gemma_tokenizer, tmp_path):
    """A SentencePiece tokenizer with a real BOS and no chat template (Gemma-3): the scored prompt and response
    tokens are exactly TRL SFT's input and completion tokens, and the prompt generation starts from is the same
    token sequence (no trailing-space token that training never sees)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    from studykit.logprobs import format_prompt
    from studykit.trainers import sft_dataset

    tok = gemma_tokenizer
    records = [{"prompt": "What is 2+3?", "response": "5"}, {"prompt": "Spell cat backward.", "response": "tac"},
               {"prompt": "Say hello", "response": "Hello there, friend"}]
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=sft_dataset(records, chat=False),
                         args=SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True))
    for record, row in zip(records, trainer.train_dataset):
        prompt_text, response_text = format_pair(tok, record["prompt"], record["response"], chat=False)
        assert not prompt_text.endswith(" ") and prompt_text == format_prompt(tok, record["prompt"], chat=False)
        prompt_ids, response_ids = encode_pair(tok, prompt_text, response_text)
        assert prompt_ids[0] == tok.bos_token_id and response_ids[-1] == tok.eos_token_id
        assert prompt_ids + response_ids == row["input_ids"]
        assert [t for t in row["labels"] if t != -100] == response_ids          # the loss covers the response
        assert tok(prompt_text)["input_ids"] == prompt_ids


def test_gold_token_scores_are_teacher_forced_argmax_agreement_and_mean_logprob_over_the_answer_tokens(tiny):
    from studykit.evaluate import gold_token_scores

    model, tokenizer = tiny
    records = [{"id": f"r{i}", "family": "f", "prompt": p, "response": r}
               for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES))]
    table = gold_token_scores(model, tokenizer, records, chat=True, batch_size=2)
    for record, row in zip(records, table.to_dict(orient="records")):   # one unpadded forward per record
        prompt_ids, answer_ids = encode_pair(tokenizer, *format_pair(tokenizer, record["prompt"], record["response"],
                                                                     True, add_eos=False))
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt_ids + answer_ids])).logits[0, len(prompt_ids) - 1:-1]
        targets = torch.tensor(answer_ids)
        assert row["id"] == record["id"]
        assert row["gold_token_accuracy"] == pytest.approx((logits.argmax(-1) == targets).float().mean().item())
        assert row["gold_logprob"] == pytest.approx(torch.log_softmax(logits, -1)[range(len(answer_ids)), targets]
                                                    .mean().item(), abs=1e-4)
