"""Device strings are checked once, the same way for embedding and for every method (issue 15.5): ``cudax`` and
``cuda:7`` on a one-GPU machine were accepted and failed later with a raw traceback, ``CUDA`` passed validation
but every method recorded "failed", and ``mps`` was offered without checking it exists. The GPU branches are
reached on the CPU by pretending CUDA is present."""

from __future__ import annotations

import pytest
import torch

from clipcal.backbones import resolve_device
from clipcal.errors import BackboneError
from clipcal.methods._train import resolve_device as method_device


@pytest.fixture
def one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_device_strings_on_a_one_gpu_machine(one_gpu):
    assert resolve_device("auto") == "cuda" and resolve_device("CUDA") == "cuda"
    assert resolve_device(" cuda:0 ") == "cuda:0" and resolve_device("CPU") == "cpu"
    with pytest.raises(BackboneError, match="has 1 CUDA device") as e:
        resolve_device("cuda:7")
    assert "cuda:0" in e.value.hint
    for bad in ("cudax", "gpu", "cuda:-1", "xla", ""):
        if bad == "":
            assert resolve_device(bad) == "cuda"  # empty = auto
            continue
        with pytest.raises(BackboneError, match="unknown device"):
            resolve_device(bad)


def test_methods_take_the_same_rule(one_gpu):
    assert method_device("CUDA") == torch.device("cuda")  # the methods recorded "failed" for this
    assert method_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(BackboneError, match="has 1 CUDA device"):
        method_device("cuda:7")


def test_cuda_and_mps_where_they_are_not_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(BackboneError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(BackboneError, match="mps"):
        resolve_device("mps")
