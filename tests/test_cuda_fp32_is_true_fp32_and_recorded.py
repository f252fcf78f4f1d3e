"""TF32 is decided explicitly and is part of an embedding's identity (issue 15.2 / 15.5): torch's default keeps
cuDNN convolutions in TF32, so a CUDA "fp32" embedding differed from the CPU one while sharing its store key, and
the manifest recorded no GPU name, versions or flags. Now ``fp32`` is IEEE fp32 on CUDA too, ``tf32`` is its own
precision (own key), and ``meta["compute"]`` says how a set was computed. GPUs are pretended on the CPU."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from clipcal.backbones import backbone_identity, resolve_precision
from clipcal.backbones.devices import compute_line, fp32_math, tf32_flags
from clipcal.embed import KIND, _usable, embed_benchmark, embedding_key, load_embeddings
from clipcal.errors import BackboneError
from clipcal.store import Store


@pytest.fixture
def one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "Pretend A100")


@pytest.fixture
def tiny_on_gpu(emb_tiny, one_gpu, monkeypatch):
    """``tiny:clip`` claiming to be on cuda:0 (tensors stay on the CPU), recording TF32 during its forward."""
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):  # moves to "cuda…" stay on the CPU
        args = tuple(a for a in args if not str(a).startswith("cuda"))
        if str(kwargs.get("device", "")).startswith("cuda"):
            kwargs.pop("device")
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    bb = copy.copy(emb_tiny)
    bb.device, bb.seen = "cuda:0", []
    real = bb._features
    bb._features = lambda x: (bb.seen.append(tf32_flags()), real(x))[1]
    return bb


def test_fp32_on_cuda_runs_without_tf32_and_tf32_with_it(tiny_on_gpu):
    bb = tiny_on_gpu
    before = tf32_flags()
    x = torch.rand(2, 3, 64, 64)
    bb.encode_images(x)
    assert bb.seen[-1] == {"matmul": False, "cudnn": False}  # torch's default had cudnn TF32 on
    bb.precision = "tf32"
    bb.encode_images(x)
    assert bb.seen[-1] == {"matmul": True, "cudnn": True}
    assert tf32_flags() == before  # restored after the forward


def test_the_compute_record_names_the_gpu_and_flags(tiny_on_gpu):
    bb = tiny_on_gpu
    bb.device = "cuda"  # the current device gets its index
    rec = bb.compute_record()
    assert rec["device"] == "cuda:0" and rec["gpu"] == "Pretend A100" and rec["capability"] == "8.0"
    assert rec["tf32_matmul"] is False and rec["tf32_cudnn"] is False and rec["precision"] == "fp32"
    assert rec["torch"] == torch.__version__ and {"cuda", "cudnn", "cudnn_deterministic", "cudnn_benchmark"} <= set(rec)
    assert "Pretend A100" in compute_line(rec) and "TF32 matmul off, conv off" in compute_line(rec)


def test_tf32_is_its_own_key_and_cuda_fp32_shares_the_cpu_key(one_gpu):
    fp32_cpu = backbone_identity("tiny:clip", device="cpu", precision="fp32")
    assert backbone_identity("tiny:clip", device="cuda", precision="fp32") == fp32_cpu
    tf32 = backbone_identity("tiny:clip", device="cuda:0", precision="tf32")
    assert tf32 != fp32_cpu and tf32["precision"] == "tf32"
    with pytest.raises(BackboneError, match="tf32 is a CUDA precision"):
        resolve_precision("tf32", "cpu")
    with fp32_math("cpu", "tf32"):  # a no-op off CUDA
        pass


def test_cpu_sets_record_cpu_and_old_cuda_fp32_sets_are_not_served(tmp_path, emb_tiny, emb_make_benchmark):
    bench = emb_make_benchmark(tmp_path / "data", n=6)
    store = Store(tmp_path / "s")
    es = embed_benchmark(bench, emb_tiny, store=store, num_workers=0)
    rec = es.manifest["meta"]["compute"]
    assert rec["device"] == "cpu" and rec["gpu"] == rec["cuda"] == rec["tf32_cudnn"] == "n/a"

    key = embedding_key(bench, emb_tiny.identity())
    arrays = {"features": np.asarray(es.features), "embeddings": np.asarray(es.embeddings),
              "sample_ids": np.asarray(es.sample_ids)}
    old = {k: v for k, v in es.manifest["meta"].items() if k != "compute"}  # as versions before wrote it
    store.put(KIND, key, arrays, meta={**old, "device": "cpu"})
    assert _usable(store.get(KIND, key)) is not None  # an old CPU set stays readable
    store.put(KIND, key, arrays, meta={**old, "device": "cuda"})
    assert _usable(store.get(KIND, key)) is None  # an old CUDA "fp32" set was TF32 convolutions
    assert load_embeddings(bench, emb_tiny, store=store) is None
    again = embed_benchmark(bench, emb_tiny, store=store, num_workers=0)  # embedded again, replacing it
    assert again.n_computed == 6 and again.manifest["meta"]["compute"]["device"] == "cpu"
