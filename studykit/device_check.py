"""The device rule, checked: ``STUDYKIT_DEVICE_CHECK=<device>`` makes every Hugging Face model call fail unless the
model was explicitly placed on ``<device>`` (``.to`` by the kit, a trainer or accelerate) and its parameters and
input tensors are there.

It catches the bug the device rule is about — a model loaded, copied or restored without being moved to the
study's device — even on a CPU-only machine, where every tensor is on the CPU anyway: a model that never went
through ``.to(<device>)`` fails.  ``studykit`` installs it on import when the variable is set, so a notebook run by
papermill (its kernel inherits the environment) is checked end to end; the smoke runs of every notebook in
``tests/test_notebooks.py`` do that.
"""
from __future__ import annotations

import torch
from transformers import PreTrainedModel


class DevicePlacementError(RuntimeError):
    """A model or batch that is not on the configured device."""


def _same(device: torch.device, expected: torch.device) -> bool:
    return device.type == expected.type and (expected.index is None or device.index in (None, expected.index))


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def install(expected: str | torch.device) -> None:
    """Patch ``nn.Module.to`` (to record placements) and ``PreTrainedModel.__call__`` (to check them)."""
    expected = torch.device(expected)
    if getattr(PreTrainedModel, "_studykit_device_check", None) is not None:
        PreTrainedModel._studykit_device_check = expected
        return
    module_to, module_call = torch.nn.Module.to, torch.nn.Module.__call__

    def to(self, *args, **kwargs):
        result = module_to(self, *args, **kwargs)
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None:
            for module in self.modules():
                module._studykit_placed = torch.device(device)
        return result

    def call(self, *args, **kwargs):
        want = PreTrainedModel._studykit_device_check
        name = type(self).__name__
        placed = getattr(self, "_studykit_placed", None)
        if placed is None or not _same(placed, want):
            raise DevicePlacementError(f"{name} was called without being placed on the configured device {want} "
                                       f"(placed: {placed}); load models with studykit.device(cfg)")
        for param in self.parameters():
            if not _same(param.device, want):
                raise DevicePlacementError(f"{name} has a parameter on {param.device}, not on {want}")
        for tensor in _tensors((args, kwargs)):
            if not _same(tensor.device, want):
                raise DevicePlacementError(f"{name} got an input tensor on {tensor.device}, not on {want}")
        return module_call(self, *args, **kwargs)

    torch.nn.Module.to = to
    PreTrainedModel.__call__ = call
    PreTrainedModel._studykit_device_check = expected
