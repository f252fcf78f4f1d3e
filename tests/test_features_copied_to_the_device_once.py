"""One device copy of the features per dataset and device (issue 15.6): every evaluator, training loop and stage
of a method shares :meth:`FeatureData.device_features` — CFR with the cross-fit rule used to copy all N × d
features four times (stage 1, two folds, stage 2). Counted with a patched ``torch.Tensor.to``: on the CPU it
returns the same storage, on a GPU each call with an N × d tensor is a full copy."""

from __future__ import annotations

import pickle

import numpy as np
import torch

from clipcal.methods.cfr import CFR
from clipcal.synthetic import generate


def _count_feature_copies(monkeypatch, data):
    calls = []
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        if tuple(self.shape) == data.features.shape:
            calls.append(args or tuple(kwargs.values()))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    return calls


def test_a_cross_fit_cfr_fit_copies_the_features_to_the_device_once(monkeypatch):
    data = generate(n_train=200, n_val=80, n_test=80, dim=16, seed=4).data
    calls = _count_feature_copies(monkeypatch, data)
    m = CFR(erm_epochs=2, epochs=2, calibration_errors="cross-fit", seed=0, device="cpu").fit(data)
    assert m.result_.record["calibration_rule"]["used"] == "cross-fit"   # stage 1, 2 folds and stage 2 ran
    assert len(calls) == 1, calls
    assert data._device_copies == {}  # released when fit returns


def test_a_callers_own_copy_is_reused_and_kept(monkeypatch):
    data = generate(n_train=120, n_val=60, n_test=60, dim=8, seed=1).data
    h = data.device_features("cpu")
    assert np.shares_memory(h.numpy(), data.features)  # the CPU "copy" is a view
    calls = _count_feature_copies(monkeypatch, data)
    CFR(erm_epochs=1, epochs=1, device="cpu").fit(data)
    assert calls == []
    assert data.device_features("cpu") is h
    assert pickle.loads(pickle.dumps(data))._device_copies == {}  # a pickled FeatureData carries no tensor
