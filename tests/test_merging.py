"""SLR, soups and DTM's split: exact identities on the tiny model."""
from __future__ import annotations

import pytest
import torch

from studykit import merging
from studykit.models import copy_model


def _perturbed_layers(model, layers, scale=0.1):
    out = copy_model(model)
    with torch.no_grad():
        for i in layers:
            for p in merging.decoder_layers(out)[i].parameters():
                p.add_(torch.randn_like(p) * scale)
    return out


def _equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_restoring_every_layer_returns_the_base_model_exactly(tiny):
    base, _ = tiny
    n = len(merging.decoder_layers(base))
    post = _perturbed_layers(base, range(n))
    assert not _equal(post, base)
    assert _equal(merging.restore_layers(post, base, 0, n), base)


def test_restoring_a_range_touches_only_those_layers(tiny):
    base, _ = tiny
    n = len(merging.decoder_layers(base))
    post = _perturbed_layers(base, range(n))
    restored = merging.restore_layers(post, base, 1, n)
    for i, layer in enumerate(merging.decoder_layers(restored)):
        source = merging.decoder_layers(base if i >= 1 else post)[i]
        assert all(torch.equal(p, q) for p, q in zip(layer.parameters(), source.parameters()))
    with pytest.raises(ValueError, match="0 ≤ start < end"):
        merging.restore_layers(post, base, 1, 1)


def test_a_uniform_soup_of_identical_models_is_the_model_and_of_two_is_their_mean(tiny):
    model, _ = tiny
    assert _equal(merging.uniform_soup([model, copy_model(model), copy_model(model)]), model)
    other = _perturbed_layers(model, [0])
    soup = merging.uniform_soup([model, other])
    for (n, p), q, r in zip(soup.named_parameters(), model.parameters(), other.parameters()):
        assert torch.allclose(p, (q + r) / 2, atol=1e-7), n


def test_the_greedy_soup_keeps_a_model_only_when_the_dev_score_strictly_improves(tiny):
    model, _ = tiny
    a, b, c = model, _perturbed_layers(model, [0]), _perturbed_layers(model, [1])
    # dev score: +0.5 when layer 0 carries b's change, minus c's change in layer 1 (×10)
    def score(m):
        first = merging.decoder_layers(m)[0].self_attn.q_proj.weight
        second = merging.decoder_layers(m)[1].self_attn.q_proj.weight
        base0 = merging.decoder_layers(a)[0].self_attn.q_proj.weight
        base1 = merging.decoder_layers(a)[1].self_attn.q_proj.weight
        return 1.0 - float((second - base1).abs().mean().detach()) * 10 + (0.5 if not torch.equal(first, base0) else 0.0)
    soup, chosen = merging.greedy_soup([a, b, c], score)
    assert chosen == [1]   # b ranks first (1.5); b+a ties at 1.5 (not a strict gain), b+c scores lower
    assert _equal(soup, merging.uniform_soup([[a, b, c][i] for i in chosen]))


def test_disperse_deals_the_records_into_disjoint_portions_of_nearly_equal_size():
    records = [{"id": i} for i in range(10)]
    parts = merging.disperse(records, 3, seed=1)
    assert sorted(len(p) for p in parts) == [3, 3, 4]
    assert sorted(r["id"] for p in parts for r in p) == list(range(10))
    assert merging.disperse(records, 3, seed=1) == parts
    with pytest.raises(ValueError, match="portions must be in"):
        merging.disperse(records, 11)


def test_layer_ranges_are_every_contiguous_range_of_whole_blocks():
    assert merging.layer_ranges(30, 6) == [(a, b) for a in range(0, 30, 6) for b in range(a + 6, 31, 6)]
    assert len(merging.layer_ranges(30, 6)) == 15                       # 5 blocks: 5·6/2 ranges
    assert merging.layer_ranges(5, 2) == [(0, 2), (0, 4), (0, 5), (2, 4), (2, 5), (4, 5)]   # a short last block
    assert merging.layer_ranges(2, 6) == [(0, 2)]
    with pytest.raises(ValueError, match="block ≥ 1"):
        merging.layer_ranges(30, 0)
