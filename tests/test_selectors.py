import numpy as np
import pytest

from studykit.selectors import SELECTORS, keep_scores, pool_statistics, top_k

STATS = {"nll": np.array([0.5, 2.0, 1.0, 3.0]), "nll_alone": np.array([1.0, 1.0, 4.0, 6.0]),
         "n_tokens": np.array([3, 1, 7, 2]), "golden": np.array([0.9, 0.1, 0.6, 0.3])}


def test_registry_holds_every_selector_of_the_study():
    assert {"random", "full", "perplexity_low", "perplexity_high", "ifd", "grape", "length", "nuggets"} <= set(SELECTORS)
    with pytest.raises(ValueError, match="unknown selector 'magic'"):
        keep_scores("magic", STATS)


def test_ifd_is_a_ratio_of_losses_and_discards_ifd_at_least_one():
    # IFD = [0.5, 2.0, 0.25, 0.5]; item 1 has IFD ≥ 1 and ranks last
    np.testing.assert_allclose(keep_scores("ifd", STATS), [0.5, -1.0, 0.25, 0.5])
    assert top_k(keep_scores("ifd", STATS), 3).tolist() == [0, 2, 3]


def test_rankings():
    assert top_k(keep_scores("perplexity_low", STATS), 2).tolist() == [0, 2]
    assert top_k(keep_scores("perplexity_high", STATS), 2).tolist() == [1, 3]
    assert top_k(keep_scores("length", STATS), 2).tolist() == [0, 2]
    assert top_k(keep_scores("nuggets", STATS), 2).tolist() == [0, 2]
    np.testing.assert_array_equal(keep_scores("grape", STATS), keep_scores("perplexity_low", STATS))
    assert len(top_k(keep_scores("full", STATS), 4)) == 4
    r0, r1 = keep_scores("random", STATS, seed=0), keep_scores("random", STATS, seed=1)
    assert not np.array_equal(r0, r1) and np.array_equal(r0, keep_scores("random", STATS, seed=0))


def test_pool_statistics_match_direct_scoring(tiny):
    from studykit.logprobs import sequence_logprobs

    model, tok = tiny
    pool = [{"prompt": "What is 2+2?", "response": "4"}, {"prompt": "Say hi.", "response": "hi there"}]
    stats = pool_statistics(model, tok, pool, chat=True)
    direct = sequence_logprobs(model, tok, ["What is 2+2?", "Say hi."], ["4", "hi there"], chat=True)
    np.testing.assert_allclose(stats["nll"], -direct["mean"], rtol=1e-6)
    assert (stats["nll_alone"] > 0).all() and stats["n_tokens"].tolist() == direct["n_tokens"].tolist()
