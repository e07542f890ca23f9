import numpy as np
import pytest

import studykit.nuggets as nuggets
from studykit.logprobs import pad_token_id
from studykit.nuggets import (CLEAN_SEPARATOR, select_subsets, threshold_table, top_share, FAITHFUL_ANCHOR_MAX_TOKENS, alpaca_query, encode_anchor, encode_demonstration,
                              golden_scores, kmeans_anchors, leading_special_tokens, lm_embeddings, one_shot_scores, random_anchors,
                              reference_one_shot, score_pool, zero_shot_prefix, zero_shot_scores)
from studykit.testbed import build_testbed


@pytest.fixture(scope="module")
def pool(smoke_cfg):
    return build_testbed(smoke_cfg.data)["pool"]


def test_official_template_drops_empty_input():
    assert alpaca_query("Add.", "2 and 3") == "Instruction:\nAdd.\nInput:\n2 and 3\nResponse:\n"
    assert alpaca_query("Add 2 and 3.") == "Instruction:\nAdd 2 and 3.\nResponse:\n"


def _text(record):
    return alpaca_query(record["prompt"].strip()) + record["response"].strip()


def test_faithful_adds_only_the_tokens_the_tokenizer_adds_itself(tiny, gemma_tokenizer, pool):
    """The official code tokenizes the demonstration with ``tok(text)`` and the anchor without special tokens: for
    SmolLM2 (no BOS added) both start with text; for Gemma the demonstration gets ``<bos>``, the anchor does not."""
    record = pool[0]
    smol = tiny[1]
    assert leading_special_tokens(smol) == []
    assert encode_demonstration(smol, record, "faithful") == smol(_text(record), add_special_tokens=False)["input_ids"]
    assert smol.bos_token_id not in encode_demonstration(smol, record, "faithful")   # no <|im_start|> confound
    assert zero_shot_prefix(smol, "faithful") == zero_shot_prefix(smol, "clean") == []

    gemma = gemma_tokenizer
    assert leading_special_tokens(gemma) == [gemma.bos_token_id]
    demo = encode_demonstration(gemma, record, "faithful")
    assert demo == gemma(_text(record))["input_ids"] and demo[0] == gemma.bos_token_id
    query, response = encode_anchor(gemma, record, "faithful")
    assert gemma.bos_token_id not in query                       # the official quirk: anchors get no BOS …
    assert zero_shot_prefix(gemma, "faithful") == []             # … not even when scored alone
    assert zero_shot_prefix(gemma, "clean") == [gemma.bos_token_id]   # clean: BOS at the start of every sequence
    assert encode_demonstration(gemma, record, "clean")[0] == gemma.bos_token_id


@pytest.mark.parametrize("which", ["smollm2", "gemma"])
def test_anchor_is_tokenized_jointly_and_truncated_in_faithful_mode(tiny, gemma_tokenizer, pool, which):
    tok = tiny[1] if which == "smollm2" else gemma_tokenizer
    record = pool[0]
    for mode in ("faithful", "clean"):
        query, response = encode_anchor(tok, record, mode)
        assert query + response == tok(_text(record), add_special_tokens=False)["input_ids"]
        assert query == tok(alpaca_query(record["prompt"].strip()), add_special_tokens=False)["input_ids"]
    sep = tok(CLEAN_SEPARATOR, add_special_tokens=False)["input_ids"]
    assert encode_demonstration(tok, record, "clean")[-len(sep):] == sep   # clean separates demonstration and anchor
    long = {**record, "response": "word " * 400}
    q, r = encode_anchor(tok, long, "faithful")
    assert len(q) + len(r) == FAITHFUL_ANCHOR_MAX_TOKENS    # official truncation at 200 tokens
    q, r = encode_anchor(tok, long, "clean")
    assert len(q) + len(r) > FAITHFUL_ANCHOR_MAX_TOKENS


@pytest.mark.parametrize("mode", ["faithful", "clean"])
@pytest.mark.parametrize("pairs_per_batch", [1, 3, 64])
def test_vectorized_one_shot_equals_per_pair_loop(tiny, pool, mode, pairs_per_batch):
    model, tok = tiny
    demos = [encode_demonstration(tok, r, mode) for r in pool[:6]]
    anchors = [encode_anchor(tok, r, mode) for r in pool[-5:]]
    want = reference_one_shot(model, demos, anchors)
    got = one_shot_scores(model, demos, anchors, pad_token_id(tok), pairs_per_batch=pairs_per_batch)
    assert np.abs(got - want).max() < 1e-3


@pytest.mark.parametrize("mode", ["faithful", "clean"])
def test_zero_shot_equals_unbatched_anchor_alone(tiny, pool, mode):
    model, tok = tiny
    anchors = [encode_anchor(tok, r, mode) for r in pool[-5:]]
    prefix = zero_shot_prefix(tok, mode)
    # the reference loop with the zero-shot prefix as "demonstration" is the anchor scored alone
    want = reference_one_shot(model, [prefix], anchors)[0]
    np.testing.assert_allclose(zero_shot_scores(model, tok, anchors, mode, batch_size=2), want, atol=1e-3)


def test_golden_score_counts_strict_improvements_only():
    zero = np.array([-5.0, -3.0, -1.0, -2.0])
    one = np.array([[-4.0, -3.0, -2.0, -1.0],     # better, tie, worse, better → 2/4
                    [-5.0, -3.0, -1.0, -2.0]])    # all ties → 0
    np.testing.assert_allclose(golden_scores(one, zero), [0.5, 0.0])


def test_tie_tolerance_counts_gains_up_to_it_as_no_gain():
    zero = np.array([-5.0, -3.0, -1.0])
    one = np.array([[-4.9995, -2.5, -1.00001]])           # gains 5e-4, 0.5, -1e-5
    np.testing.assert_allclose(golden_scores(one, zero), [2 / 3])
    np.testing.assert_allclose(golden_scores(one, zero, tie_tolerance=1e-3), [1 / 3])


def test_cache_resumes_without_rescoring(tiny, pool, tmp_path, monkeypatch):
    model, tok = tiny
    candidates, anchors = pool[:9], pool[-3:]
    first = score_pool(model, tok, candidates, anchors, "faithful", cache_dir=tmp_path, pairs_per_batch=6,
                       progress=False)
    chunks = sorted(tmp_path.rglob("chunk-*.npz"))
    assert len(chunks) == 5  # 6 pairs per pass, 3 anchors → 2 candidates per chunk
    with np.load(chunks[0]) as lost:
        n_lost = len(lost["rows"])
    chunks[0].unlink()       # as if the run had been killed before writing this chunk
    scored = []
    original = nuggets.one_shot_scores
    monkeypatch.setattr(nuggets, "one_shot_scores", lambda m, demos, *a, **k: scored.append(len(demos)) or original(m, demos, *a, **k))
    again = score_pool(model, tok, candidates, anchors, "faithful", cache_dir=tmp_path, pairs_per_batch=6,
                       progress=False)
    assert scored == [n_lost]  # only the lost chunk is rescored
    for key in ("zero_shot", "one_shot", "golden"):
        np.testing.assert_allclose(again[key], first[key], atol=1e-6)
    scored.clear()
    score_pool(model, tok, candidates, anchors, "faithful", cache_dir=tmp_path, pairs_per_batch=6, progress=False)
    assert scored == []


def test_kmeans_anchors_are_distinct_real_examples_nearest_each_centroid():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], dtype=float)
    points = np.concatenate([c + rng.normal(scale=0.1, size=(5, 2)) for c in centres])
    chosen = kmeans_anchors(points, 3, seed=0)
    assert len(set(chosen)) == 3 and sorted(i // 5 for i in chosen) == [0, 1, 2]
    assert kmeans_anchors(points, 3, seed=0) == chosen
    with pytest.raises(ValueError, match="exceeds the 15 available"):
        kmeans_anchors(points, 16)
    assert len(set(random_anchors(15, 4, seed=1))) == 4


def test_official_embedding_pools_padding_and_clean_does_not(tiny):
    model, tok = tiny
    texts = ["short", "a much longer text that forces padding of the short one"]
    masked_alone = lm_embeddings(model, tok, texts[:1], include_padding=False)
    masked_batched = lm_embeddings(model, tok, texts, include_padding=False)
    padded_batched = lm_embeddings(model, tok, texts, include_padding=True)
    np.testing.assert_allclose(masked_batched[0], masked_alone[0], atol=1e-5)
    assert np.abs(padded_batched[0] - masked_alone[0]).max() > 1e-3


def test_sharded_scoring_over_two_processes_equals_one_process(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from studykit.config import CONF_DIR

    def run(cmd):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    args = ["-m", "studykit.nuggets", "profile=smoke"]
    run([sys.executable, *args, "--output", str(tmp_path / "one.npz"), "--cache-dir", str(tmp_path / "c1")])
    accelerate = Path(sys.executable).with_name("accelerate")
    run([str(accelerate), "launch", "--config_file", str(CONF_DIR / "accelerate" / "cpu_2proc.yaml"), *args,
         "--output", str(tmp_path / "two.npz"), "--cache-dir", str(tmp_path / "c2")])
    assert len(list((tmp_path / "c2").rglob("chunk-r1-*.npz"))) > 0  # the second process really scored a shard
    with np.load(tmp_path / "one.npz") as one, np.load(tmp_path / "two.npz") as two:
        np.testing.assert_array_equal(one["candidates"], two["candidates"])
        np.testing.assert_allclose(one["one_shot"], two["one_shot"], atol=1e-4)
        np.testing.assert_allclose(one["zero_shot"], two["zero_shot"], atol=1e-4)


def test_minilm_embeddings_load_offline_from_their_pypi_package():
    from studykit.nuggets import minilm_embeddings

    emb = minilm_embeddings(["Add 2 and 3.", "Add two and three.", "Spell 'cat' backward."], "cpu")
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]  # paraphrases are closer than unrelated instructions
    from studykit.nuggets import minilm_encoder
    loads = minilm_encoder.cache_info().misses
    np.testing.assert_allclose(minilm_embeddings(["Add 2 and 3."], "cpu")[0], emb[0], atol=1e-5)
    assert minilm_encoder.cache_info().misses == loads       # the encoder is loaded once per device, not per call


CONDITIONS = {"full": {"rule": "all"}, "high": {"rule": "above", "value": 0.5}, "low": {"rule": "at_most", "value": 0.5},
              "random_high": {"rule": "size_of", "value": "high", "score": "random"},
              "top": {"rule": "top_share", "value": 0.25}, "top_strat": {"rule": "top_share", "value": 0.5, "stratified": True},
              "random_top": {"rule": "top_share", "value": 0.25, "score": "random"},
              "random_half": {"rule": "top_share", "value": 0.5, "score": "random"}}


def test_subsets_follow_their_rules():
    golden = np.array([1.0, 0.75, 0.5, 0.25, 0.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.5, 0.5])
    families = ["a"] * 6 + ["b"] * 6
    subsets = select_subsets(golden, families, CONDITIONS, seed=0)
    assert subsets["full"].tolist() == list(range(12))
    assert subsets["high"].tolist() == [0, 1, 5, 6]                        # strict ">" as the paper's GS > τ
    assert subsets["low"].tolist() == [2, 3, 4, 7, 8, 9, 10, 11]
    assert len(subsets["random_high"]) == 4 and len(subsets["random_top"]) == 3
    assert set(subsets["top"]) == {0, 5, 1} or set(subsets["top"]) == {0, 5, 6}   # 3 best, the 0.75 tie broken at random
    assert [families[i] for i in subsets["top_strat"]].count("a") == [families[i] for i in subsets["top_strat"]].count("b")
    assert set(subsets["random_top"]) <= set(subsets["random_half"])      # one random ranking per seed: nested


def test_global_top_share_breaks_ties_at_random_not_by_family_order():
    golden = np.full(60, 0.5)                                              # every item ties
    families = [f for f in "abcdef" for _ in range(10)]
    picks = [select_subsets(golden, families, {"top": {"rule": "top_share", "value": 0.1}}, seed)["top"]
             for seed in range(20)]
    chosen_families = {families[i] for pick in picks for i in pick}
    assert chosen_families == set("abcdef")                                # not only the family listed first
    assert len({tuple(p) for p in picks}) > 1


def test_stratified_top_share_keeps_the_same_share_of_every_family():
    rng = np.random.default_rng(0)
    families = np.repeat(list("abc"), [8, 12, 20])
    golden = np.where(families == "a", 0.0, rng.random(40))               # family a scores lowest throughout
    kept = top_share(golden, 0.25, seed=0, groups=families)
    assert [int((families[kept] == f).sum()) for f in "abc"] == [2, 3, 5]
    assert not (families[top_share(golden, 0.25, seed=0)] == "a").any()  # the global cut empties family a


def test_threshold_table_counts_and_corrupted_share():
    rows = threshold_table(np.array([0.9, 0.85, 0.6, 0.2]), np.array([True, False, False, True]), [0.5, 0.8, 0.95])
    assert [r["size"] for r in rows] == [3, 2, 0]
    assert rows[1]["corrupted_share"] == 0.5 and np.isnan(rows[2]["corrupted_share"])


def test_stratified_and_global_top_share_have_the_same_size():
    families = np.repeat(list("abcdef"), 6)                                # 0.25 × 6 = 1.5 per family
    golden = np.random.default_rng(1).random(36)
    for share in (0.1, 0.25, 0.5):
        assert len(top_share(golden, share, 0, groups=families)) == len(top_share(golden, share, 0)) == round(share * 36)


@pytest.mark.slow
def test_vectorized_scoring_equals_the_loop_on_gemma(pool):
    """Gemma-3 (sliding-window layers, a real BOS): the KV-cache broadcast scorer still equals the per-pair loop."""
    from studykit.config import compose
    from studykit.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(compose(["profile=smoke", "model=gemma3_270m"]).model, "cpu")
    demos = [encode_demonstration(tok, r, "faithful") for r in pool[:2]]
    anchors = [encode_anchor(tok, r, "faithful") for r in pool[-2:]]
    want = reference_one_shot(model, demos, anchors)
    assert np.abs(one_shot_scores(model, demos, anchors, pad_token_id(tok), pairs_per_batch=3) - want).max() < 1e-3
