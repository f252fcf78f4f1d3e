"""Calibration precision (issue 13.2): ``precision="bf16"`` runs the training projections' matrix products in bf16
(autocast) with fp32 master weights, fp32 losses and fp32 evaluation; ``"auto"`` is fp32 until the fidelity check
passes; the precision is recorded and part of the run key (tests/test_run_records_the_device_used.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipcal.errors import MethodError
from clipcal.methods import _train as T
from clipcal.methods.cfr import CFR
from clipcal.methods.erm import ERM
from clipcal.synthetic import generate


def test_bf16_projection_in_training_only_with_fp32_master_weights():
    rng = np.random.default_rng(0)
    W, head = rng.standard_normal((64, 32)).astype(np.float32), rng.standard_normal((2, 32)).astype(np.float32)
    h = torch.as_tensor(rng.standard_normal((50, 64)), dtype=torch.float32)
    model = T.LastLayer(W, head, dropout=0.0)
    model.bf16 = True
    model.train()
    z = model.project(h)
    ref = torch.nn.functional.normalize(h @ model.weight, dim=-1)
    assert z.dtype == torch.float32 and not torch.equal(z, ref)       # the product ran in bf16 …
    torch.testing.assert_close(z, ref, atol=3e-2, rtol=0)           # … and is close to fp32
    z.sum().backward()
    assert model.weight.dtype == model.weight.grad.dtype == torch.float32
    model.eval()
    assert torch.equal(model.project(h), ref.detach())              # evaluation stays fp32


def test_methods_record_the_precision_that_ran_and_refuse_unknown_ones():
    data = generate(n_train=160, n_val=60, n_test=60, dim=16, seed=2).data
    assert ERM(epochs=1).fit(data).result_.record["precision"] == "fp32"
    assert CFR(erm_epochs=1, epochs=1).fit(data).result_.record["precision"] == "fp32"  # auto
    r = CFR(erm_epochs=1, epochs=1, precision="bf16", calibration_errors="train").fit(data).result_
    assert r.record["precision"] == "bf16"
    assert np.isfinite(r.probs).all()
    with pytest.raises(MethodError, match="precision"):
        CFR(precision="fp16").fit(data)


def test_bf16_native_asks_the_device(monkeypatch):
    import clipcal.backbones.devices as devices

    monkeypatch.setattr(devices, "cpu_bf16_native", lambda: True)
    assert T.bf16_native("cpu")
    monkeypatch.setattr(devices, "cpu_bf16_native", lambda: False)
    assert not T.bf16_native("cpu")
    monkeypatch.setattr(devices, "cuda_bf16_native", lambda d: d == "cuda:1")
    assert T.bf16_native("cuda:1") and not T.bf16_native("cuda:0")
