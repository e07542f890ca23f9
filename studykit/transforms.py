"""SFT data transforms: which response an instruction is trained on (METHODS.md, "SFT objectives").

Each transform maps pool records (``prompt``, ``response``, ``family``, ``entry``) to new records of the same shape,
marking what it changed in ``source``; training is then plain SFT.  The judge of verifiable tasks is the kit's one
answer extractor (:func:`accepted`, lenient accuracy of :mod:`studykit.answers`): the SSR / S3FT judges check whether
the model's answer is *right*, not whether it is formatted like the gold one — by the rule the evaluator reports.
"""
from __future__ import annotations

import numpy as np

from .answers import judge
from .evaluate import generate
from .logprobs import sequence_logprobs

PARAPHRASE_INSTRUCTION = ("Rewrite the answer below in your own words without changing what it says. "
                          "Reply with only the rewritten answer.")


def accepted(record: dict, response: str) -> bool:
    """The judge of SSR / S3FT / GRAPE candidates: the kit's one answer extractor, lenient accuracy
    (:func:`studykit.answers.judge`) — the same rule the evaluator reports."""
    return judge(record, response).lenient


def grape(records: list[dict], candidates: list[list[str]], model, tokenizer, *, chat: bool,
          batch_size: int = 16) -> list[dict]:
    """GRAPE (Zhang et al., arXiv 2502.04194): for each instruction keep, among its candidate responses, the one with
    the highest length-normalized log-probability under the target model; then plain SFT.  ``candidates[i]`` are the
    responses gathered for ``records[i]`` (the paper: from several LLMs / humans); one batched scoring pass."""
    if len(candidates) != len(records):
        raise ValueError(f"GRAPE: {len(candidates)} candidate lists for {len(records)} records")
    flat = [(i, c) for i, options in enumerate(candidates) for c in options]
    if any(not options for options in candidates):
        raise ValueError("GRAPE: every record needs at least one candidate response")
    scores = sequence_logprobs(model, tokenizer, [records[i]["prompt"] for i, _ in flat], [c for _, c in flat],
                               chat=chat, batch_size=batch_size)["mean"]
    best: dict[int, tuple[float, str]] = {}
    for (i, response), score in zip(flat, np.asarray(scores)):
        if i not in best or score > best[i][0]:
            best[i] = (float(score), response)
    return [{**r, "response": best[i][1], "source": "gold" if best[i][1] == r["response"] else "candidate",
             "grape_score": best[i][0]} for i, r in enumerate(records)]


def self_generated(records: list[dict], own: list[str], paraphrases: list[str] | None = None) -> list[dict]:
    """SSR and S3FT (Gupta et al., IBM, "Selective Self-to-Supervised Fine-Tuning"): train on the model's own
    response when the judge accepts it; S3FT (``paraphrases`` given) otherwise on the model's paraphrase
    of the gold response when accepted; else on the gold response.  Own-distribution targets move the model less,
    which is how both papers argue they reduce forgetting."""
    if len(own) != len(records) or (paraphrases is not None and len(paraphrases) != len(records)):
        raise ValueError("self_generated: one own response (and paraphrase) per record expected")
    out = []
    for i, record in enumerate(records):
        if accepted(record, own[i]):
            response, source = own[i].strip(), "own"
        elif paraphrases is not None and accepted(record, paraphrases[i]):
            response, source = paraphrases[i].strip(), "paraphrase"
        else:
            response, source = record["response"], "gold"
        out.append({**record, "response": response, "source": source})
    return out


def own_responses(records: list[dict], model, tokenizer, *, chat: bool, max_new_tokens: int, batch_size: int = 16,
                  paraphrase: bool = False) -> list[str]:
    """The model's greedy responses to the instructions, or (``paraphrase=True``) its rewrites of the gold responses
    (S3FT's second source)."""
    if paraphrase:
        prompts = [f"{PARAPHRASE_INSTRUCTION}\n\nQuestion: {r['prompt']}\nAnswer: {r['response']}" for r in records]
    else:
        prompts = [r["prompt"] for r in records]
    return generate(model, tokenizer, prompts, chat=chat, max_new_tokens=max_new_tokens, batch_size=batch_size)


def verified_samples(records: list[dict], model, tokenizer, *, samples: int, chat: bool, max_new_tokens: int,
                     batch_size: int = 16, temperature: float = 1.0) -> list[dict]:
    """Rejection sampling from a data-generating policy πβ (``model`` at ``temperature``): ``samples`` replies per
    instruction, the judge-accepted ones kept (each distinct reply once) as new records with ``source="sampled"``
    and ``sample_of`` = the instruction's id.  With ``temperature=1`` the replies are samples of the model's own
    distribution, so its log-probs of them are πβ's (PEAR's importance weights)."""
    prompts = [r["prompt"] for r in records for _ in range(samples)]
    replies = generate(model, tokenizer, prompts, chat=chat, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       do_sample=True, temperature=temperature)
    out, seen = [], set()
    for k, reply in enumerate(replies):
        record = records[k // samples]
        response = reply.strip()
        if response and (record["id"], response) not in seen and accepted(record, response):
            seen.add((record["id"], response))
            out.append({**record, "response": response, "source": "sampled", "sample_of": record["id"]})
    return out


def critique_format(records: list[dict]) -> list[dict]:
    """CFT (Critique Fine-Tuning, Wang et al., arXiv 2501.17703): train on [query; noisy response] → critique, the
    loss on the critique only.  Needs records from :func:`studykit.testbed.inject_noise`; the critique is written from
    the verifier's ground truth (the paper's critiques come from GPT-4o): correct responses are confirmed, corrupted
    ones rejected with the correct answer."""
    missing = [r.get("id", "?") for r in records if "is_noisy" not in r]
    if missing:
        raise ValueError(f"critique_format needs noise-injected records (field 'is_noisy'); missing on {missing[:3]}")
    out = []
    for r in records:
        prompt = (f"Question: {r['prompt']}\nProposed answer: {r['response']}\n"
                  "Critique the proposed answer: is it correct?")
        if r["is_noisy"]:
            critique = f"Incorrect. The correct answer is {r['clean_response']}."
        else:
            critique = f"Correct. The answer is {r['response']}."
        out.append({**r, "prompt": prompt, "response": critique, "source": "critique"})
    return out
