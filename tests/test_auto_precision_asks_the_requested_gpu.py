"""``--precision auto`` picks bf16 only where the requested GPU computes it natively (issue 15): it used
``torch.cuda.is_bf16_supported()``, which says yes where bf16 is only emulated (T4, V100; slower than fp16) and
asks the current device, not the one requested (``cuda:1``). GPUs are pretended on the CPU."""

from __future__ import annotations

import pytest
import torch

from clipcal.backbones import resolve_precision


@pytest.fixture
def two_gpus(monkeypatch):
    """cuda:0 is a T4 (7.5), cuda:1 an A100 (8.0); the current device is 0; both 'support' bf16 (emulated)."""
    caps = {0: (7, 5), 1: (8, 0)}
    asked = []

    def capability(index=None):
        asked.append(index)
        return caps[index]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    return asked


def test_emulated_bf16_gets_fp16_and_native_bf16_gets_bf16(two_gpus):
    assert resolve_precision("auto", "cuda:0") == "fp16"  # T4: bf16 only emulated
    assert resolve_precision("auto", "cuda") == "fp16"  # the current device, 0
    assert resolve_precision("auto", "cuda:1") == "bf16"  # A100
    assert two_gpus == [0, 0, 1]  # cuda:1 asked device 1, not the current one
    assert resolve_precision("bf16", "cuda:0") == "bf16"  # asked for explicitly: kept
    assert resolve_precision("auto", "cpu") == "fp32"
