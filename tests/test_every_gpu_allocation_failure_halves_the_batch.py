"""Every CUDA allocator failure halves the embedding batch, and the memory is released after the failed batch's
tensors are gone (issue 15.3): cuBLAS ``CUBLAS_STATUS_ALLOC_FAILED`` and cuDNN allocation errors were not
recognised (the job failed instead of halving), and ``empty_cache`` ran inside the ``except`` block while the
traceback still held the failed batch's activations. The GPU branch is reached on the CPU by pretending CUDA."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch

from clipcal.embed import _Encoder, _is_oom

# torch's own wording for each library's failure (RuntimeError unless said otherwise)
OOM = [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.7 GiB total capacity)"),
    RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED"),
    RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED"),
    RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.00 GB)"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 8589934592 bytes. Error code 12 (Cannot allocate memory)"),
]
NOT_OOM = [
    RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"),
    RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, opa, opb, m, n, k)`"),
    RuntimeError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("CUDA error: device-side assert triggered"),
    RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x64 and 128x64)"),
    ValueError("out of memory"),  # not a torch runtime failure
]


@pytest.mark.parametrize("err", OOM, ids=lambda e: str(e)[:40])
def test_allocation_failures_are_recognised(err):
    assert _is_oom(err)


@pytest.mark.parametrize("err", NOT_OOM, ids=lambda e: str(e)[:40])
def test_other_failures_are_not(err):
    assert not _is_oom(err)


class _FakeGpuBackbone:
    """Fails its first call with a cuBLAS allocation error raised from a frame holding a big activation."""

    device = "cuda:0"
    feature_dim = embed_dim = 3

    def __init__(self):
        self.sizes = []
        self.activation = None  # weakref to the failed call's tensor

    def encode_images(self, x):
        self.sizes.append(len(x))
        if len(self.sizes) == 1:
            act = torch.ones(len(x), 1000)  # what a failed forward leaves in its frame
            self.activation = weakref.ref(act)
            raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
        return x[:, :3].clone(), x[:, :3].clone()


def test_cublas_failure_halves_and_releases_memory_after_the_exception_is_gone(monkeypatch):
    bb = _FakeGpuBackbone()
    freed_at_release = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed_at_release.append(bb.activation() is None))
    msgs = []
    x = torch.arange(8 * 5, dtype=torch.float32).reshape(8, 5)
    h, z = _Encoder(bb, 8, msgs.append)(x)
    assert bb.sizes == [8, 4, 4] and msgs == ["out of memory: batch size halved to 4"]
    np.testing.assert_array_equal(h, x[:, :3].numpy())
    assert freed_at_release == [True], "empty_cache ran while the failed batch's tensors were still referenced"


def test_other_errors_propagate(monkeypatch):
    class Broken(_FakeGpuBackbone):
        def encode_images(self, x):
            raise RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR")

    with pytest.raises(RuntimeError, match="INTERNAL_ERROR"):
        _Encoder(Broken(), 8, print)(torch.zeros(2, 5))
