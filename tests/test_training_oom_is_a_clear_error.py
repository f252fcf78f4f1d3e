"""Out of device memory while a method trains (issue 15.6): a DeviceOutOfMemoryError naming the method, the stage
and what to do — raised after the failed step's tensors, the method's device copies of the features and the
allocator's cache are released (outside the ``except``, whose traceback would keep the tensors alive). A real
CUDA OOM is pretended on the CPU by raising ``torch.cuda.OutOfMemoryError`` from inside a step."""

from __future__ import annotations

import sys
import weakref

import pytest
import torch

from clipcal.methods import _train as T
from clipcal.methods import cfr as cfr_module
from clipcal.methods.base import DeviceOutOfMemoryError
from clipcal.methods.cfr import CFR
from clipcal.methods.erm import ERM
from clipcal.runs import run_calibration
from clipcal.synthetic import generate


@pytest.fixture
def release_log(monkeypatch):
    """What held when torch.cuda.empty_cache ran: (inside an except?, the failed step's tensor still alive?)."""
    log = {"calls": [], "tensor": None}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def empty_cache():
        ref = log["tensor"]
        log["calls"].append((sys.exc_info()[0] is not None, ref is not None and ref() is not None))

    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    return log


def _oom(log):
    big = torch.ones(1000, 100)          # a tensor of the failed step
    log["tensor"] = weakref.ref(big)
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")


def test_cfr_stage_2_oom_names_the_stage_and_releases_memory_first(monkeypatch, release_log):
    data = generate(n_train=200, n_val=80, n_test=80, dim=16, seed=4).data
    monkeypatch.setattr(cfr_module, "cfr_step_loss", lambda *a, **k: _oom(release_log))
    with pytest.raises(DeviceOutOfMemoryError) as err:
        CFR(erm_epochs=1, epochs=2, calibration_errors="train", device="cpu").fit(data)
    assert "cfr: out of memory on cpu in stage 'cfr', epoch 1" in err.value.message
    assert "batch_size" in err.value.hint and "device='cpu'" in err.value.hint
    assert release_log["calls"] == [(False, False)]  # emptied once, outside the except, the tensor already gone
    assert data._device_copies == {}


def test_erm_oom_outside_the_epoch_loop_is_recognised_too(monkeypatch, release_log):
    data = generate(n_train=120, n_val=60, n_test=60, dim=8, seed=1).data
    monkeypatch.setattr(T.Evaluator, "evaluate", lambda *a, **k: _oom(release_log))
    with pytest.raises(DeviceOutOfMemoryError, match="erm: out of device memory while fitting"):
        ERM(epochs=1, device="cpu").fit(data)
    assert release_log["calls"] == [(False, False)]


def test_a_run_records_the_oom_as_failed_and_keeps_the_other_methods(monkeypatch, tmp_path, release_log):
    from clipcal.store import Store

    ds = generate(n_train=200, n_val=80, n_test=80, dim=16, seed=4)
    monkeypatch.setattr(cfr_module, "cfr_step_loss", lambda *a, **k: _oom(release_log))
    run = run_calibration(ds.benchmark(), ds.embedding_set(), ["erm", "cfr"], store=Store(tmp_path),
                          hparams={"erm": {"epochs": 1, "device": "cpu"},
                                   "cfr": {"erm_epochs": 1, "epochs": 1, "device": "cpu"}})
    assert "erm" in run.results
    assert run.not_applicable["cfr"].startswith("failed: cfr: out of memory on cpu in stage 'cfr'")
