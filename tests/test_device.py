"""The one device rule: ``device`` in the config, resolved by ``studykit.device``, and the check that every model
call runs there (``STUDYKIT_DEVICE_CHECK``)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from studykit.config import ConfigError, compose, device


def test_auto_is_cuda_when_available_else_cpu(smoke_cfg):
    assert smoke_cfg.device == "auto"
    assert device(smoke_cfg).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert device(compose(["profile=smoke", "device=cpu"])) == torch.device("cpu")


def test_bad_or_missing_device_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"device='gpu' is not allowed: expected auto, cpu, cuda or cuda:<index>"):
        compose(["device=gpu"])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device='cuda' is not available: torch sees no CUDA device"):
            device(compose(["device=cuda"]))


class _FakeCuda:
    """Two CUDA devices as torch.cuda would report them; records set_device calls."""

    def __init__(self):
        self.current, self.calls = 0, []

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "set_device", self.set_device)
        return self

    def set_device(self, index):
        self.calls.append(index)
        self.current = index


def test_explicit_gpu_index_becomes_the_current_device_the_trainers_use(monkeypatch):
    """TRL trains one process on torch's current CUDA device (accelerate: torch.device("cuda")), so cuda:1 must
    make GPU 1 current or the kit would load and generate on GPU 1 while training ran on GPU 0."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    fake = _FakeCuda().install(monkeypatch)
    assert device(compose(["device=cuda:1"])) == torch.device("cuda", 1)
    assert fake.calls == [1] and torch.cuda.current_device() == 1
    assert device(compose(["device=auto"])) == torch.device("cuda", 1)  # auto and cuda follow the current device
    assert device(compose(["device=cuda"])) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"device='cuda:2' is not available: torch sees 2 CUDA device\(s\)"):
        device(compose(["device=cuda:2"]))


def test_multi_process_launch_gives_each_process_its_local_gpu(monkeypatch):
    fake = _FakeCuda().install(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert device(compose(["device=auto"])) == torch.device("cuda", 1)
    assert device(compose(["device=cuda"])) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="a multi-process launch gives each process its own GPU"):
        device(compose(["device=cuda:0"]))
    assert fake.calls == []


CHECKED = textwrap.dedent('''
    import copy, tempfile, torch
    import studykit
    from studykit.config import compose, device
    from studykit.device_check import DevicePlacementError
    from studykit.models import load_checkpoint, load_model_and_tokenizer
    from transformers import AutoModelForCausalLM

    cfg = compose(["profile=smoke"])
    model, _ = load_model_and_tokenizer(cfg.model, device(cfg))
    ids = torch.tensor([[1, 2, 3]])
    model(input_ids=ids)                                   # placed by the kit: runs
    copy.deepcopy(model)(input_ids=ids)                    # a copy keeps its placement
    with tempfile.TemporaryDirectory() as path:
        model.save_pretrained(path)
        load_checkpoint(path, model)(input_ids=ids)        # restored through the kit: runs
        raw = AutoModelForCausalLM.from_pretrained(path)   # restored without a device
        try:
            raw(input_ids=ids)
        except DevicePlacementError as err:
            print("CAUGHT", err)
''')


def test_device_check_fails_a_model_that_was_never_placed_on_the_configured_device(tmp_path):
    env = {**os.environ, "STUDYKIT_DEVICE_CHECK": "cpu"}
    out = subprocess.run([sys.executable, "-c", CHECKED], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CAUGHT LlamaForCausalLM was called without being placed on the configured device cpu" in out.stdout
