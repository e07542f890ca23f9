import copy

import numpy as np
import pytest
import torch

from studykit.logprobs import sequence_logprobs
from studykit.testbed import build_testbed
from studykit.models import copy_model
from studykit.trainers import dpo_dataset, hardware_args, memory_estimate, sft_dataset
from studykit.train import (build_sft_trainer, checkpoint_every, train_dpo,
                            train_sft)


@pytest.fixture(scope="module")
def splits(smoke_cfg):
    return build_testbed(smoke_cfg.data)


def test_cpu_settings_override_trls_gpu_defaults():
    args = hardware_args(torch.device("cpu"))
    assert args["use_cpu"] and not args["bf16"] and not args["activation_checkpointing"]
    assert args["optim"] == "adamw_torch"


def _perturbed(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def test_a_deep_copy_of_a_model_a_trl_trainer_has_seen_computes_with_the_original_weights(tiny, smoke_cfg, splits,
                                                                                           tmp_path):
    """Why :func:`studykit.models.copy_model` exists: TRL patches the model's forward with a closure over that
    object, which ``copy.deepcopy`` keeps, so the copy's own weights are ignored.  ``copy_model`` is a real copy."""
    model, tokenizer = tiny
    seen = copy.deepcopy(model)
    build_sft_trainer(seen, tokenizer, splits["pool"][:8], smoke_cfg, tmp_path)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(_perturbed(copy.deepcopy(seen))(ids).logits, seen(ids).logits)   # the hazard
        assert not torch.allclose(_perturbed(copy_model(seen))(ids).logits, seen(ids).logits)


def test_a_copy_of_a_trained_model_trains_and_answers_with_its_own_weights(tiny, smoke_cfg, splits, tmp_path):
    """A pipeline's next stage (SFT → more SFT, SFT → GRPO) starts from a copy of the trained model: after the kit's
    training helpers no module keeps TRL's patched forward, so the copy's training moves the weights the copy
    computes with.  (Regression: rl_post_training's continued-SFT and GRPO runs once evaluated their warm-up.)"""
    model, tokenizer = tiny
    records, ids = splits["pool"][:8], torch.tensor([[1, 2, 3, 4]])
    fast = dict(max_steps=2, learning_rate=1e-3, lr_scheduler_type="constant", warmup_steps=0)
    warm = train_sft(copy_model(model), tokenizer, records, smoke_cfg, tmp_path / "warm", **fast).model
    assert not any("forward" in module.__dict__ for module in warm.modules())
    with torch.no_grad():
        warm_logits = warm(ids).logits
    for start in (copy.deepcopy(warm), copy_model(warm)):
        second = train_sft(start, tokenizer, records, smoke_cfg, tmp_path / "second", **fast).model
        with torch.no_grad():
            assert not torch.allclose(second(ids).logits, warm_logits)
            assert torch.equal(warm(ids).logits, warm_logits)   # the warm-up itself is untouched


def test_training_refuses_bf16_master_weights(tiny, smoke_cfg, splits, tmp_path):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="fp32 master weights, got trainable parameters in torch.bfloat16"):
        train_dpo(copy.deepcopy(model).to(torch.bfloat16), copy.deepcopy(model), tokenizer, splits["preference"],
                  smoke_cfg, tmp_path)


def test_a_dpo_step_at_lr_5e_7_under_bf16_autocast_changes_the_fp32_weights(tiny, smoke_cfg, splits, tmp_path,
                                                                             monkeypatch):
    """bf16 autocast with fp32 master weights (what the GPU profile runs; here on the CPU's bf16 autocast): the
    Zephyr DPO learning rate moves the weights, where pure-bf16 AdamW would round most updates away."""
    import studykit.trainers as trainers

    monkeypatch.setattr(trainers, "hardware_args", lambda device: {"use_cpu": True, "bf16": True})
    model, tokenizer = tiny
    policy = copy.deepcopy(model)
    before = {k: v.clone() for k, v in policy.named_parameters()}
    trainer = train_dpo(policy, copy.deepcopy(model), tokenizer, splits["preference"], smoke_cfg, tmp_path,
                        learning_rate=5e-7, max_steps=1, lr_scheduler_type="constant", warmup_steps=0)
    assert trainer.accelerator.mixed_precision == "bf16"
    after = dict(trainer.model.named_parameters())
    assert all(p.dtype == torch.float32 for p in after.values())
    changed = [name for name, p in after.items() if not torch.equal(p, before[name])]
    assert len(changed) > 0.9 * len(after)
    bf16_rounded = [name for name, p in after.items()
                    if not torch.equal(p.to(torch.bfloat16), before[name].to(torch.bfloat16))]
    assert len(bf16_rounded) < len(changed)   # in bf16 weights most of these updates would not exist


def test_datasets_are_conversational_prompt_completion(splits):
    sft = sft_dataset(splits["pool"], chat=True)
    assert set(sft.column_names) == {"prompt", "completion"}
    assert sft[0]["completion"] == [{"role": "assistant", "content": splits["pool"][0]["response"]}]
    dpo = dpo_dataset(splits["preference"], chat=True)
    assert set(dpo.column_names) == {"prompt", "chosen", "rejected"}
    with pytest.raises(ValueError, match="at least one training record"):
        sft_dataset([], chat=True)


def test_sft_loss_at_zero_lr_equals_mean_response_nll(tiny, smoke_cfg, splits, tmp_path):
    """With lr=0 and the whole pool in one batch, TRL's logged loss must be the token-mean NLL of the responses
    as studykit.logprobs scores them: the same tokens (prompt masked, template end-of-turn included)."""
    model, tokenizer = tiny
    records = splits["pool"]
    trainer = train_sft(copy.deepcopy(model), tokenizer, records, smoke_cfg, tmp_path, learning_rate=0.0,
                        max_steps=1, per_device_train_batch_size=len(records), logging_steps=1)
    logged = trainer.state.log_history[0]["loss"]
    scores = sequence_logprobs(model, tokenizer, [r["prompt"] for r in records], [r["response"] for r in records],
                               chat=True)
    assert logged == pytest.approx(-scores["sum"].sum() / scores["n_tokens"].sum(), rel=1e-4)


def test_sft_updates_weights_and_is_seed_deterministic(tiny, smoke_cfg, splits, tmp_path):
    model, tokenizer = tiny
    runs = [train_sft(copy.deepcopy(model), tokenizer, splits["pool"], smoke_cfg, tmp_path / str(i)) for i in range(2)]
    losses = [[row["loss"] for row in t.state.log_history if "loss" in row] for t in runs]
    assert losses[0] == losses[1] and all(np.isfinite(losses[0]))
    before, after = model.model.embed_tokens.weight, runs[0].model.model.embed_tokens.weight
    assert not torch.equal(before, after.cpu())
    for p, q in zip(runs[0].model.parameters(), runs[1].model.parameters()):
        assert torch.equal(p, q)


def test_dpo_runs_from_a_given_reference(tiny, smoke_cfg, splits, tmp_path):
    model, tokenizer = tiny
    trainer = train_dpo(copy.deepcopy(model), copy.deepcopy(model), tokenizer, splits["preference"], smoke_cfg,
                        tmp_path)
    logs = [row for row in trainer.state.log_history if "loss" in row]
    assert trainer.state.global_step == smoke_cfg.dpo.max_steps
    # policy == reference at the first step: every implicit reward is 0, so the loss is log 2
    assert logs[0]["loss"] == pytest.approx(np.log(2), abs=1e-4)


@pytest.mark.slow
def test_embedded_model_takes_a_real_sft_step(embedded, embedded_cfg, tmp_path):
    model, tokenizer = embedded
    records = build_testbed(embedded_cfg.data)["pool"][:4]
    trainer = train_sft(copy.deepcopy(model), tokenizer, records, embedded_cfg, tmp_path, max_steps=1,
                        per_device_train_batch_size=4, logging_steps=1)
    assert np.isfinite(trainer.state.log_history[0]["loss"]) and trainer.state.global_step == 1


def test_train_module_entry_point_saves_a_loadable_model(tmp_path):
    """`python -m studykit.train` is the accelerate-launchable entry point."""
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM

    done = subprocess.run([sys.executable, "-m", "studykit.train", "sft", "--output-dir", str(tmp_path),
                           "profile=smoke", "data.noise.fraction=0.25"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "final").config.num_hidden_layers == 2


def test_checkpoint_spacing_counts_every_process_batch():
    """RewardRank's embedded SFT: 36 items, batch 9, 6 epochs = 24 steps, 8 checkpoints -> every 3 steps; on 2
    processes a step takes 18 items: 12 steps -> every step; batch 3 on 2 processes: 36 steps -> every 4."""
    train = {"per_device_train_batch_size": 9, "gradient_accumulation_steps": 1, "max_steps": -1, "num_train_epochs": 6}
    assert checkpoint_every(36, train, 8) == 3
    assert checkpoint_every(36, train, 8, num_processes=2) == 1
    assert checkpoint_every(36, {**train, "per_device_train_batch_size": 3}, 8, num_processes=2) == 4
    assert checkpoint_every(36, {**train, "max_steps": 40}, 8, num_processes=2) == 5   # max_steps are global steps


def test_memory_estimate_counts_master_weights_gradients_adam_and_the_reference():
    assert memory_estimate(1e9) == {"sft_gb": pytest.approx(16.0), "dpo_gb": pytest.approx(20.0)}
    assert memory_estimate(7e9, shards=8)["dpo_gb"] == pytest.approx(7 * 20 / 8)


@pytest.mark.slow
def test_embedded_models_parameter_count_in_its_config_is_the_real_one(embedded, embedded_cfg):
    model, _ = embedded
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(embedded_cfg.model.n_params_billion, rel=1e-3)


def test_fsdp_recipe_shards_fp32_masters_under_bf16_autocast():
    from accelerate.commands.config.config_args import load_config_from_file

    from studykit.config import CONF_DIR

    fsdp = load_config_from_file(str(CONF_DIR / "accelerate" / "fsdp_zephyr.yaml"))
    assert fsdp.distributed_type == "FSDP" and fsdp.mixed_precision == "bf16" and fsdp.num_processes == 8
    assert fsdp.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "MistralDecoderLayer"
    assert fsdp.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"   # checkpoints reload as plain models
