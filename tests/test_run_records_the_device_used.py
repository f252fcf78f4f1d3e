"""A run's key holds the device each method ran on, resolved (issue 15.5): ``"cpu"`` / ``"cuda:0"``, never
``"auto"`` — a CPU and a GPU run of the same request differ in the last bits and were stored under one key — and
its manifest the GPU's name, CUDA / cuDNN versions and the TF32 / determinism flags. GPU branches reached on the
CPU with a pretended GPU; stored runs from before still load."""

from __future__ import annotations

import torch

from clipcal import runs
from clipcal.methods import _train as T
from clipcal.store import Store
from clipcal.synthetic import generate


def _pretend_gpu(monkeypatch, name="NVIDIA Pretend 80GB"):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: name)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))


def test_auto_resolves_to_the_indexed_gpu_and_the_manifest_names_it(monkeypatch):
    _pretend_gpu(monkeypatch)
    full = {"erm": {"device": "auto", "lr": 0.01, "precision": "auto"}, "cfr": {"device": "cuda", "precision": "bf16"},
            "dfr": {"C": 1.0}}
    requested = runs.resolve_devices(full)
    assert requested == {"erm": "auto", "cfr": "cuda"}
    assert full["erm"]["device"] == full["cfr"]["device"] == "cuda:0"
    assert (full["erm"]["precision"], full["cfr"]["precision"]) == ("fp32", "bf16")   # part of the key
    assert "device" not in full["dfr"]
    meta = runs._device_meta(full, requested)
    assert meta["methods"]["erm"] == {"requested": "auto", "resolved": "cuda:0", "precision": "fp32"}
    gpu = meta["used"]["cuda:0 bf16"]
    assert gpu["gpu"] == "NVIDIA Pretend 80GB" and gpu["cudnn"] == "90100" and gpu["device"] == "cuda:0"
    assert gpu["precision"] == "bf16" and isinstance(gpu["tf32_matmul"], bool)
    assert set(gpu) >= {"deterministic_algorithms", "cudnn_deterministic", "capability"}


def test_a_stored_run_keys_the_resolved_device_and_old_auto_runs_still_load(tmp_path):
    ds = generate(n_train=120, n_val=60, n_test=60, dim=8, seed=1)
    store = Store(tmp_path)
    run = runs.run_calibration(ds.benchmark(), ds.embedding_set(), ["erm"], store=store,
                               hparams={"erm": {"epochs": 1}})
    kf = run.manifest["key_fields"]
    assert kf["hparams"]["erm"]["device"] == "cpu"            # was "auto"
    assert run.manifest["meta"]["devices"]["methods"]["erm"] == {"requested": "auto", "resolved": "cpu",
                                                                 "precision": "fp32"}
    assert run.manifest["meta"]["devices"]["used"]["cpu fp32"]["gpu"] == "n/a"
    # a run stored before (its key says "auto") is still found and read
    old_fields = {**kf, "hparams": {"erm": {**kf["hparams"]["erm"], "device": "auto"}}}
    arrays = {n: store.get(runs.KIND, kf).array(n, mmap=False) for n in store.get(runs.KIND, kf).names}
    meta = {k: v for k, v in run.manifest["meta"].items() if k != "devices"}
    old = store.put(runs.KIND, old_fields, arrays, meta)
    assert runs.load_run(old.key, store).results["erm"].probs.shape == run.results["erm"].probs.shape


def test_the_recorded_name_carries_the_cuda_index(monkeypatch):
    _pretend_gpu(monkeypatch)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert T.resolved_device_name("auto") == T.resolved_device_name("CUDA") == "cuda:1"
    assert T.resolved_device_name("cuda:0") == "cuda:0" and T.resolved_device_name("cpu") == "cpu"
