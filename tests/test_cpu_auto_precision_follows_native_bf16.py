"""``--precision auto`` on the CPU (issue 13 item 1): bf16 autocast only where the CPU computes bf16 natively
(AVX-512 BF16 / AMX; elsewhere torch emulates it, slower than fp32) and only if the fidelity rule allowed it
(``CPU_AUTO_BF16``, decided by bench/precision_fidelity.py); fp32 otherwise."""

from __future__ import annotations

import pytest
import torch

from clipcal.backbones import devices, resolve_precision


@pytest.mark.parametrize("allowed", [True, False])
@pytest.mark.parametrize("native", [True, False])
def test_cpu_auto_is_bf16_only_where_native_and_allowed(monkeypatch, allowed, native):
    caps = {**torch.cpu.get_capabilities(), "avx512_bf16": native, "amx_bf16": False}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    monkeypatch.setattr(devices, "CPU_AUTO_BF16", allowed)
    assert devices.cpu_bf16_native() is native
    assert resolve_precision("auto", "cpu") == ("bf16" if native and allowed else "fp32")
    assert resolve_precision("bf16", "cpu") == "bf16"  # asked for explicitly: always allowed


def test_the_help_states_the_cpu_default_and_its_trade_off():
    text = devices.PRECISION_HELP
    assert ("bf16 on a CPU with native bf16" in text) is devices.CPU_AUTO_BF16
    assert "cosine" in text  # the measured trade-off is stated either way
