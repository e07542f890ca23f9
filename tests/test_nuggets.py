import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

import studykit.nuggets as nuggets
from studykit.config import compose
from studykit.errors import ConfigError
from studykit.logprobs import pad_token_id
from studykit.nuggets import (CLEAN_SEPARATOR, select_subsets, threshold_table, top_share, FAITHFUL_ANCHOR_MAX_TOKENS, alpaca_query, encode_anchor, encode_demonstration,
                              golden_scores, kmeans_anchors, leading_special_tokens, lm_embeddings, one_shot_scores, random_anchors,
                              reference_one_shot, score_pool, zero_shot_prefix, zero_shot_scores)
from studykit.nuggets import (anchor_robustness, anchor_sets, auroc_table, check_study, golden_from_columns, item_table,
                              not_trained, numeric_items, rescored_differences, score_anchor_sets, scorer_model,
                              scoring_cost, seed_pools, seed_subsets, tie_tolerance_shares, tie_tolerance_table,
                              torch_threads)
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



# ------------------------------------------------------------------------------ the study on the calibrated testbed


@pytest.fixture(scope="module")
def study_cfg():
    """The nuggets study as its smoke test composes it (tiny model, small calibrated pools, 2 seeds)."""
    own = OmegaConf.load(nuggets.CONF_DIR / "study" / "nuggets.yaml").study
    return compose(["study=nuggets", "profile=smoke", *own.smoke])


def test_the_embedded_study_holds_200_items_per_seed_on_the_calibrated_testbed():
    cfg = compose(["study=nuggets"])
    assert cfg.data.name == "reasoning_gym_calibrated_sft" and cfg.study.seeds == [0, 1, 2, 3, 4]
    assert cfg.data.noise.fraction == 0.3
    per_seed = cfg.data.pool_per_family // len(cfg.study.seeds) * len(cfg.data.families)   # seed_pools' k::seeds cut
    assert per_seed >= 200 and round(0.25 * per_seed) >= 50
    check_study(cfg)


def test_every_seed_redraws_its_pool(study_cfg):
    pools, eval_set = seed_pools(study_cfg)
    ids = [{r["id"] for r in pool} for pool in pools.values()]
    assert list(pools) == [0, 1] and not ids[0] & ids[1]                                   # disjoint items
    per_family = study_cfg.data.pool_per_family // 2
    for pool in pools.values():
        assert len(pool) == per_family * len(study_cfg.data.families)                      # every family equally
        assert sum(r["is_noisy"] for r in pool) == round(study_cfg.data.noise.fraction * len(pool))
    assert not {r["id"] for r in eval_set} & set().union(*ids)


def test_study_checks_across_keys(study_cfg):
    check_study(study_cfg)
    for override, message in [("study.nuggets.anchors.n=3", r"one of study.anchor_sizes=\[8, 16\]"),
                              ("study.trained=[full,gs_none]", r"\[.gs_none.\] are not conditions"),
                              ("study.nuggets.tie_tolerance=0.5", "one of study.tie_tolerances")]:
        with pytest.raises(ConfigError, match=message):
            check_study(compose(["study=nuggets", "profile=smoke", override]))
    with pytest.raises(ConfigError, match="study.scorer='nope' is not allowed: expected policy"):
        compose(["study=nuggets", "study.scorer=nope"])
    with pytest.raises(ConfigError, match="study.tie_tolerances=.*tie tolerances ≥ 0"):
        compose(["study=nuggets", "study.tie_tolerances=[0,-1]"])


def test_scorer_is_the_policy_or_a_model_config(tiny, study_cfg):
    model, tok = tiny
    assert scorer_model(study_cfg, model, tok) == (model, tok, study_cfg.model.name)
    other = compose(["study=nuggets", "profile=smoke", "study.scorer=tiny_random"])
    scorer, scorer_tok, name = scorer_model(other, model, tok)
    assert scorer is not model and name == "tiny-random-llama" and scorer_tok.vocab_size == tok.vocab_size


def test_anchor_sets_cluster_one_embedding_pass_at_every_size(tiny, pool, monkeypatch):
    model, tok = tiny
    calls = []
    original = nuggets.lm_embeddings
    monkeypatch.setattr(nuggets, "lm_embeddings", lambda *a, **k: calls.append(1) or original(*a, **k))
    spec = {"method": "kmeans", "embedding": "model", "n": 4}
    sets = anchor_sets(model, tok, pool[:24], spec, [4, 2, 4], "faithful", seed=1)
    assert list(sets) == [2, 4] and [len(v) for v in sets.values()] == [2, 4] and len(calls) == 1
    for n, chosen in sets.items():   # each size as if chosen alone
        assert chosen == nuggets.anchor_indices(model, tok, pool[:24], {**spec, "n": n}, "faithful", seed=1)
    randoms = anchor_sets(model, tok, pool[:24], {**spec, "method": "random"}, [2, 4], "faithful", seed=1)
    assert randoms == {2: random_anchors(24, 2, 1), 4: random_anchors(24, 4, 1)}


def test_scoring_the_anchor_union_equals_a_pass_per_anchor_set(tiny, pool, tmp_path):
    model, tok = tiny
    items = pool[:10]
    sets = {2: [1, 7], 3: [7, 3, 9]}                                        # overlapping: union [1, 3, 7, 9]
    union = score_anchor_sets(model, tok, items, sets, "faithful", pairs_per_batch=5, progress=False,
                              cache_dir=tmp_path, tie_tolerance=1e-3)
    assert union["union"] == [1, 3, 7, 9] and union["scored_pairs"] == 10 * 4 and union["seconds"] > 0
    for n, chosen in sets.items():
        alone = score_pool(model, tok, items, [items[i] for i in chosen], "faithful", pairs_per_batch=5,
                           progress=False)
        np.testing.assert_allclose(union["one_shot"][:, union["columns"][n]], alone["one_shot"], atol=1e-4)
        np.testing.assert_array_equal(union["golden_by_size"][n], golden_scores(alone["one_shot"], alone["zero_shot"], 1e-3))
    again = score_anchor_sets(model, tok, items, sets, "faithful", pairs_per_batch=5, progress=False, cache_dir=tmp_path)
    assert again["scored_pairs"] == 0                                        # all from the cache
    excluded = score_anchor_sets(model, tok, items, sets, "faithful", exclude_from_pool=True, progress=False)
    assert excluded["candidates"] == [0, 2, 4, 5, 6, 8]


def _scored(golden_by_size, candidates, one_shot=None, zero_shot=None, scored_pairs=0, seconds=1.0):
    """A constructed :func:`score_anchor_sets` result: 4 anchors in the union, size n's anchors the first n."""
    return {"candidates": candidates, "union": list(range(4)), "golden_by_size": golden_by_size,
            "anchors": {n: list(range(n)) for n in golden_by_size}, "columns": {n: list(range(n)) for n in golden_by_size},
            "one_shot": one_shot, "zero_shot": zero_shot, "scored_pairs": scored_pairs, "seconds": seconds,
            "anchor_seconds": 0.5}


def test_scoring_cost_counts_pairs_cached_pairs_and_rate():
    scored = {0: _scored({4: np.zeros(10)}, list(range(10)), scored_pairs=40, seconds=4.0),
              1: _scored({4: np.zeros(5)}, list(range(5)), scored_pairs=0, seconds=0.2)}
    cost = scoring_cost(scored)
    assert cost["seed"].tolist() == [0, 1, "all"]
    assert cost["pairs"].tolist() == [40, 20, 60] and cost["cached_pairs"].tolist() == [0, 20, 20]
    assert cost["pairs_per_s"].iloc[0] == 10.0 and np.isnan(cost["pairs_per_s"].iloc[1])
    assert cost["pairs_per_s"].iloc[2] == pytest.approx(40 / 4.2)


def test_auroc_table_overall_per_family_and_per_noise_kind():
    is_clean = np.array([1, 1, 0, 0, 1, 1, 0, 0], bool)
    families = ["a"] * 4 + ["b"] * 4
    kinds = ["clean", "clean", "junk", "truncated", "clean", "clean", "junk", "truncated"]
    golden = np.array([0.9, 0.8, 0.1, 0.2,       # family a: every clean item above every corrupted one → 1
                       0.1, 0.3, 0.6, 0.2])      # family b: clean 0.1, 0.3 vs corrupted 0.6, 0.2 → 1/4
    table = auroc_table({"nuggets": golden}, is_clean, families, kinds, n_boot=200).set_index("slice")
    assert table.loc["all", "auroc"] == pytest.approx(roc_auc_score(is_clean, golden))
    assert table.loc["a", "auroc"] == 1.0 and table.loc["b", "auroc"] == 0.25
    assert table.loc["clean vs junk", "auroc"] == pytest.approx(roc_auc_score([1, 1, 0, 1, 1, 0], [0.9, 0.8, 0.1, 0.1, 0.3, 0.6]))
    assert table.loc["a", "slice_type"] == "family" and (table["n_positive"] + table["n_negative"]).loc["all"] == 8
    one_class = auroc_table({"x": golden[:2]}, is_clean[:2], families[:2], kinds[:2])
    assert one_class.empty                                                   # no slice has both classes


def test_tie_tolerance_shares_on_constructed_scores():
    zero = np.array([0.0, 0.0])
    first = {"one_shot": np.array([[5e-6, 1.0], [5e-4, -1.0], [-1.0, -1.0], [1.0, 1.0]]), "zero_shot": zero}
    # the second pass moves every pair by -3e-5: item 0's first-anchor gain 5e-6 → -2.5e-5 flips at tolerance 0 and
    # 1e-6, not from 1e-5 on; item 1's 5e-4 → 4.7e-4 stays above 1e-4 and below 1e-3 in both passes
    second = {"one_shot": first["one_shot"] - 3e-5, "zero_shot": zero}
    families, conditions = ["a", "a", "b", "b"], {"top": {"rule": "top_share", "value": 0.5},
                                                  "high": {"rule": "above", "value": 0.8}}
    rows = tie_tolerance_shares(first, second, families, conditions, 0, [0, 1e-6, 1e-5, 1e-4, 1e-3])
    assert [r["gs_changed_share"] for r in rows] == [0.25, 0.25, 0.0, 0.0, 0.0]
    # at tolerance 0 item 0 (GS 1 → 0.5) leaves GS > 0.8 and the top half, where the seeded tie-break among the
    # 0.5s puts item 1 in its place
    assert (rows[0]["changed_high"], rows[0]["changed_top"], rows[0]["subset_changed_share"]) == (0.25, 0.5, 0.5)
    assert rows[-1]["subset_changed_share"] == 0.0
    only_high = tie_tolerance_shares(first, second, families, conditions, 0, [0], among=["high"])
    assert only_high[0]["subset_changed_share"] == 0.25 and only_high[0]["changed_top"] == 0.5
    same = tie_tolerance_shares(first, first, families, conditions, 0, [0, 1e-4, 1e-3], first_tolerance=1e-3)
    assert [r["gs_changed_share"] for r in same] == [0.5, 0.25, 0.0]       # items 0 and 1 depend on the tolerance
    assert same[-1]["subset_changed_share"] == 0.0


def test_tie_tolerance_table_reports_both_comparisons_and_marks_the_chosen_one():
    one = np.array([[1.0, 5e-6], [0.5, -1.0], [-1.0, -1.0], [1.0, 1.0]])
    scored = {3: _scored({2: golden_scores(one, np.zeros(2))}, [0, 1, 2, 3], one, np.zeros(2))}
    pools = {3: [{"family": f} for f in "aabb"]}
    check = {"first": {"one_shot": one, "zero_shot": np.zeros(2)},
             "second": {"one_shot": one - 3e-5, "zero_shot": np.zeros(2)}, "families": list("aabb")}
    table = tie_tolerance_table(check, scored, pools, 2, {"top": {"rule": "top_share", "value": 0.5}}, [0, 1e-5], 1e-3)
    assert table["comparison"].tolist() == ["second numeric pass"] * 3 + ["vs the chosen tolerance"] * 3
    assert table["tolerance"].tolist() == [0, 1e-5, 1e-3] * 2 and table["chosen"].tolist() == [False, False, True] * 2
    assert table["gs_changed_share"].tolist() == [0.25, 0.0, 0.0, 0.25, 0.0, 0.0]


def test_rescored_differences_are_second_minus_first_and_tiny(tiny, pool):
    model, tok = tiny
    candidates, anchors = pool[:5], pool[-3:]
    first = score_pool(model, tok, candidates, anchors, "faithful", pairs_per_batch=64, progress=False)
    threads = torch.get_num_threads()
    second = rescored_differences(model, tok, candidates, anchors, "faithful", first, pairs_per_batch=2, threads=1)
    assert torch.get_num_threads() == threads                               # restored
    np.testing.assert_array_equal(second["one_shot_difference"], second["one_shot"] - first["one_shot"])
    np.testing.assert_array_equal(second["gain_difference"],
                                  second["one_shot_difference"] - second["zero_shot_difference"][None, :])
    assert np.abs(second["gain_difference"]).max() < 1e-4 and second["one_shot"].shape == (5, 3)


def test_torch_threads_restores_the_count():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_numeric_items_are_evenly_spaced_and_distinct():
    assert numeric_items(200, 5).tolist() == [0, 50, 100, 149, 199]
    assert numeric_items(3, 8).tolist() == [0, 1, 2]


def test_anchor_robustness_compares_every_size_with_the_headline():
    rng = np.random.default_rng(0)
    headline = rng.random(40)
    noisy = headline + rng.normal(scale=0.05, size=40)
    pools = {0: [{"is_noisy": bool(i % 3 == 0)} for i in range(40)], 1: [{"is_noisy": False}] * 40}
    scored = {0: _scored({8: noisy, 16: headline}, list(range(40))), 1: _scored({16: headline}, list(range(40)))}
    table = anchor_robustness(scored, pools, 16, 0.25).set_index("anchors")
    assert table["seed"].tolist() == [0, 0]                                 # seed 1 has one size only
    assert table.loc[16, "spearman"] == pytest.approx(1.0) and table.loc[16, "top_25%_overlap"] == 1.0
    assert table.loc[16, "headline"] and not table.loc[8, "headline"]
    assert 0.5 < table.loc[8, "spearman"] < 1.0


def test_item_table_and_seed_subsets_follow_the_headline_scores():
    pools = {0: [{"id": f"x{i}", "family": "ab"[i % 2], "noise_kind": "" if i % 3 else "junk", "is_noisy": not i % 3}
                 for i in range(8)]}
    scored = {0: _scored({2: np.array([0.5] * 7), 4: np.linspace(0, 1, 7)}, [0, 1, 2, 3, 4, 5, 7])}
    items = item_table(scored, pools, 4)
    assert items["id"].tolist() == ["x0", "x1", "x2", "x3", "x4", "x5", "x7"]
    assert items["golden"].tolist() == items["golden_4"].tolist() and (items["golden_2"] == 0.5).all()
    assert items["is_anchor"].tolist() == [True] * 4 + [False] * 3 and items["noise_kind"].iloc[0] == "junk"
    subsets = seed_subsets(scored, pools, 4, {"top": {"rule": "top_share", "value": 0.25}})
    assert [subsets[0]["records"][i]["id"] for i in subsets[0]["top"]] == ["x5", "x7"]


def test_golden_from_columns_applies_the_tie_tolerance():
    scores = {"one_shot": np.array([[5e-4, 1.0, -1.0]]), "zero_shot": np.zeros(3)}
    assert golden_from_columns(scores, [0, 1]) == 1.0 and golden_from_columns(scores, [0, 1], 1e-3) == 0.5


def test_untrained_conditions_get_their_reason():
    sizes = pd.DataFrame({"condition": ["full", "top_25", "gs_high", "top_25"], "size": [40, 10, 2, 3]})
    reasons = not_trained({"full": {}, "top_25": {}, "gs_high": {}}, ["full", "top_25"], sizes, 12, budget_note="budget")
    assert reasons == {"gs_high": "selected and tabulated, not trained (budget)",
                       "top_25": "fewer than 12 items on every seed (at most 10)"}


def test_numeric_check_rescores_evenly_spaced_items_against_the_headline_anchors(tiny, pool):
    model, tok = tiny
    items = pool[:12]
    scored = score_anchor_sets(model, tok, items, {2: [3, 8], 3: [0, 3, 6]}, "faithful", progress=False)
    check = nuggets.numeric_check(model, tok, items, scored, 3, OmegaConf.create(
        {"candidates": 4, "pairs_per_batch": 2, "threads": 1}), "faithful")
    rows = [0, 4, 7, 11]                                                     # numeric_items(12, 4)
    np.testing.assert_array_equal(check["first"]["one_shot"], scored["one_shot"][np.ix_(rows, scored["columns"][3])])
    assert check["families"] == [items[i]["family"] for i in rows]
    pairs = check["pairs"]
    assert len(pairs) == 4 * 3 and pairs["anchor"].iloc[:3].tolist() == [items[i]["id"] for i in (0, 3, 6)]
    assert pairs["item"].iloc[::3].tolist() == [items[i]["id"] for i in rows]
    np.testing.assert_allclose(pairs["gain_first"] + pairs["gain_difference"],
                               (check["second"]["one_shot"] - check["second"]["zero_shot"][None, :]).ravel(), atol=1e-9)
    assert pairs["gain_difference"].abs().max() < 1e-4


def test_bf16_scoring_is_a_separate_cached_pass_that_moves_scores(tiny, pool, tmp_path):
    """precision=bfloat16 autocasts the scoring pass (log-probs still summed in fp32): its scores are not the fp32
    ones, and it never reads or writes the fp32 pass's cached chunks."""
    model, tok = tiny
    candidates, anchors = pool[:6], pool[6:10]
    fp32 = nuggets.score_pool(model, tok, candidates, anchors, "faithful", cache_dir=tmp_path, progress=False)
    bf16 = nuggets.score_pool(model, tok, candidates, anchors, "faithful", cache_dir=tmp_path, progress=False,
                              precision="bfloat16")
    assert bf16["scored_pairs"] == fp32["scored_pairs"] == 24          # bf16 rescored everything itself
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2     # two caches
    assert not np.array_equal(fp32["one_shot"], bf16["one_shot"])
    np.testing.assert_allclose(fp32["one_shot"], bf16["one_shot"], atol=2.0)   # the same scores, rounded
    with pytest.raises(ValueError, match="precision must be one of"):
        nuggets.score_pool(model, tok, candidates, anchors, "faithful", progress=False, precision="float16")
