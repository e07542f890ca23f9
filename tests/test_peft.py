"""LoRA / QLoRA through peft as an option of every trainer: what trains is the adapter (in fp32), what a run returns is
the merged model, and only the adapted modules move."""
from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf
from peft import LoraConfig, get_peft_model

from studykit.config import compose
from studykit.errors import ModelSourceError
from studykit.preference import train_preference
from studykit.rl import build_grpo_trainer, train_grpo
from studykit.runner import preflight
from studykit.testbed import build_testbed
from studykit.train import build_sft_trainer, train_sft
from studykit.trainers import peft_config, prepare_trainable

RANK = 4
TARGETS = ["q_proj", "v_proj"]


@pytest.fixture(scope="module")
def lora_cfg():
    return compose(["profile=smoke", f"peft={{method: lora, r: {RANK}, lora_alpha: 8, target_modules: {TARGETS}}}"])


@pytest.fixture(scope="module")
def splits(lora_cfg):
    return build_testbed(lora_cfg.data)


def _moved(before: dict, model) -> set[str]:
    return {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}


def _adapted(name: str) -> bool:
    return any(f".{target}." in name for target in TARGETS)


def test_the_lora_config_is_the_peft_section_and_none_means_full_fine_tuning(lora_cfg, smoke_cfg):
    adapter = peft_config(lora_cfg)
    assert isinstance(adapter, LoraConfig)
    assert (adapter.r, adapter.lora_alpha, set(adapter.target_modules)) == (RANK, 8, set(TARGETS))
    assert peft_config(smoke_cfg) is None


def test_sft_with_lora_trains_only_the_adapter_r_times_in_plus_out_per_target(tiny, lora_cfg, splits, tmp_path):
    model, tokenizer = tiny
    trainer = build_sft_trainer(copy.deepcopy(model), tokenizer, splits["pool"][:8], lora_cfg, tmp_path)
    trainable = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    config = model.config
    per_layer = sum(RANK * (config.hidden_size + out) for out in
                    (config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim))
    assert sum(p.numel() for p in trainable.values()) == config.num_hidden_layers * per_layer
    assert all("lora_" in n and p.dtype == torch.float32 for n, p in trainable.items())


def test_a_lora_sft_run_returns_the_merged_model_moved_only_in_the_adapted_modules(tiny, lora_cfg, splits, tmp_path):
    model, tokenizer = tiny
    before = {k: v.clone() for k, v in model.named_parameters()}
    trained = train_sft(copy.deepcopy(model), tokenizer, splits["pool"], lora_cfg, tmp_path, learning_rate=1e-2,
                        max_steps=2).model
    assert type(trained) is type(model)                       # merged: a plain model, no adapter left
    moved = _moved(before, trained)
    assert moved and all(_adapted(name) for name in moved)    # q/v projections moved, nothing else
    assert {n for n in before if _adapted(n)} == moved


def test_dpo_with_lora_uses_the_start_as_reference_and_moves_only_the_adapted_modules(tiny, lora_cfg, splits,
                                                                                       tmp_path):
    model, tokenizer = tiny
    before = {k: v.clone() for k, v in model.named_parameters()}
    trainer = train_preference(copy.deepcopy(model), copy.deepcopy(model), tokenizer, splits["preference"], lora_cfg,
                               tmp_path, learning_rate=1e-2, max_steps=2)
    assert trainer.ref_model is None          # TRL's reference under an adapter: the start, adapters disabled
    moved = _moved(before, trainer.model)
    assert moved and all(_adapted(name) for name in moved)


def test_grpo_with_lora_trains_an_fp32_adapter_and_returns_a_merged_model(tiny, lora_cfg, splits, tmp_path):
    model, tokenizer = tiny
    start = copy.deepcopy(model)
    trainer = build_grpo_trainer(start, tokenizer, splits["pool"][:4], lora_cfg, tmp_path / "built")
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    trained = train_grpo(copy.deepcopy(model), tokenizer, splits["pool"][:4], lora_cfg, tmp_path / "trained").model
    assert type(trained) is type(model)


def test_an_adapter_trl_casts_to_bf16_is_trained_in_fp32(tiny):
    """TRL casts a QLoRA adapter to bf16; the kit's fp32-master rule casts what trains back to fp32."""
    model, _ = tiny
    wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=TARGETS))
    for param in wrapped.parameters():
        if param.requires_grad:
            param.data = param.data.to(torch.bfloat16)
    prepared = prepare_trainable(type("Trainer", (), {"model": wrapped})())
    assert {p.dtype for p in prepared.model.parameters() if p.requires_grad} == {torch.float32}


def test_full_fine_tuning_still_refuses_bf16_master_weights(tiny, smoke_cfg, splits, tmp_path):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="fp32 master weights"):
        build_sft_trainer(copy.deepcopy(model).to(torch.bfloat16), tokenizer, splits["pool"][:4], smoke_cfg, tmp_path)


def test_qlora_without_cuda_is_one_clear_error_before_any_work():
    cfg = compose(["profile=smoke", "peft={method: qlora, r: 8}"])
    with pytest.raises(ModelSourceError, match="peft.method=qlora .* needs a CUDA device and the bitsandbytes"):
        preflight(cfg)


@pytest.mark.parametrize("bad", ["{method: dora, r: 4}", "{method: lora, r: 0}", "{method: lora, r: 4, lora_dropout: 1}",
                                 "{method: lora, r: 4, target_modules: []}"])
def test_a_bad_peft_section_is_refused_naming_the_key(bad):
    with pytest.raises(Exception, match=r"^peft=.* is not allowed: expected null \(full fine-tuning\)"):
        compose(["profile=smoke", f"peft={bad}"])


def test_the_adapter_is_part_of_a_runs_cache_key(tmp_path, monkeypatch):
    """A LoRA run and a full fine-tuning run of the same recipe are different runs of the run cache."""
    from studykit import cache
    from studykit.study import Study

    monkeypatch.setenv("STUDYKIT_CACHE", str(tmp_path / "cache"))
    keys = []
    monkeypatch.setattr(cache, "lookup", lambda key: keys.append(key))
    for name, extra in (("full", []), ("lora", ["peft={method: lora, r: 4}"])):
        config = OmegaConf.to_container(compose(["study=quickstart", "profile=smoke", *extra]), resolve=True)
        session = Study.open("quickstart", config, str(tmp_path / name))
        with pytest.raises(KeyboardInterrupt):
            with session.run("sft", 0, recipe=session.sft_recipe(session.testbed()["pool"]), evaluate=False):
                raise KeyboardInterrupt   # stop before training: only the key is wanted
    assert len(keys) == 2 and keys[0] != keys[1]


def test_a_lora_checkpoint_loads_as_its_base_with_the_adapter_merged(tiny, lora_cfg, splits, tmp_path):
    """A checkpoint of a LoRA run holds only the adapter; the last one loads as the run's final merged model."""
    from studykit.models import load_checkpoint
    from studykit.train import train_sft_with_checkpoints

    model, tokenizer = tiny
    pool = splits["pool"]
    trainer, table = train_sft_with_checkpoints(copy.deepcopy(model), tokenizer, pool, splits["eval"][:4], lora_cfg,
                                                tmp_path, n_checkpoints=2, learning_rate=1e-2)
    last = table.iloc[-1]
    assert int(last["step"]) == trainer.state.global_step
    loaded = load_checkpoint(last["path"], model)
    final = dict(trainer.model.named_parameters())
    for name, param in loaded.named_parameters():
        torch.testing.assert_close(param, final[name], rtol=0, atol=1e-6)


def test_the_estimates_adapter_size_is_peft_s_count_on_every_linear_layer():
    """benchmarks/memory_estimate.py sizes a LoRA adapter from the architecture: r·(in + out) per projection."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from studykit.trainers import lora_params, memory_estimate

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2)
    wrapped = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=RANK, target_modules="all-linear"))
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    assert lora_params({"hidden": 32, "kv": 16, "intermediate": 48, "layers": 3}, RANK) == trainable
    # an adapter: the frozen base at its dtype plus 16 B per adapter parameter, and no separate DPO reference
    assert memory_estimate(1e9, dtype_bytes=2, adapter_params=1e7) == {"sft_gb": pytest.approx(2.16),
                                                                        "dpo_gb": pytest.approx(2.16)}
