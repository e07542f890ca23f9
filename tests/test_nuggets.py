import numpy as np
import pytest

import studykit.nuggets as nuggets
from studykit.logprobs import pad_token_id
from studykit.nuggets import (FAITHFUL_ANCHOR_MAX_TOKENS, alpaca_query, encode_anchor, encode_demonstration,
                              golden_scores, kmeans_anchors, lm_embeddings, one_shot_scores, random_anchors,
                              reference_one_shot, score_pool, zero_shot_prefix, zero_shot_scores)
from studykit.testbed import build_testbed


@pytest.fixture(scope="module")
def pool(smoke_cfg):
    return build_testbed(smoke_cfg.data)["pool"]


def test_official_template_drops_empty_input():
    assert alpaca_query("Add.", "2 and 3") == "Instruction:\nAdd.\nInput:\n2 and 3\nResponse:\n"
    assert alpaca_query("Add 2 and 3.") == "Instruction:\nAdd 2 and 3.\nResponse:\n"


def test_faithful_quirks_and_clean_framing(tiny, pool):
    _, tok = tiny
    record = pool[0]
    faithful_demo, clean_demo = (encode_demonstration(tok, record, m) for m in ("faithful", "clean"))
    sep = tok("\n\n", add_special_tokens=False)["input_ids"]
    assert faithful_demo[0] == tok.bos_token_id            # the demonstration gets BOS …
    assert encode_anchor(tok, record, "faithful")[0][0] != tok.bos_token_id  # … the anchor does not
    assert zero_shot_prefix(tok, "faithful") == [] and zero_shot_prefix(tok, "clean") == [tok.bos_token_id]
    assert clean_demo == faithful_demo + sep                # clean separates demonstration and anchor
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

    emb = minilm_embeddings(["Add 2 and 3.", "Add two and three.", "Spell 'cat' backward."])
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]  # paraphrases are closer than unrelated instructions
