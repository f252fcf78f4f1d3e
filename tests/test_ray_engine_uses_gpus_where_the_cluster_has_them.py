"""Issue 14 — the Ray engine's GPU branch, checked on the CPU: one actor per GPU with ``num_gpus=1`` and the node's
other CPUs decoding; CPU actors otherwise; ``cuda`` on a cluster without GPUs refused; each actor loads the model
on its own GPU at the driver's precision and refuses weights other than the driver's. No cluster is started: a
stand-in for the Ray module records what would be created.
"""

from __future__ import annotations

import pytest

from clipcal.embed_ray import _Job, _ShardWorker
from clipcal.errors import BackboneError


class _FakeCluster:
    def __init__(self, resources: dict):
        self._res = resources
        self.ray = self  # stands in for the ray module: .remote(cls) is all _Job uses at construction

    def resources(self) -> dict:
        return self._res

    def remote(self, cls):
        return cls


def _job(resources: dict, device: str, emb_tiny, num_workers=None) -> _Job:
    return _Job(_FakeCluster(resources), emb_tiny, [], [], "/nowhere", 8, num_workers, lambda *a, **k: None, None,
                2, device, None)


def test_one_actor_per_gpu_with_the_node_cpus_decoding(emb_tiny):
    job = _job({"CPU": 32.0, "GPU": 4.0}, "auto", emb_tiny)
    assert job.use_gpu and job.pool_size == 4
    assert job.options["num_gpus"] == 1 and job.options["num_cpus"] == 8
    assert job.options["max_restarts"] == 0 and job.options["max_task_retries"] == 0  # retries are counted here
    assert job.args[3] is True and job.args[4] == 7  # use_gpu, DataLoader workers = its other CPUs
    assert job.args[1] == emb_tiny.precision and job.args[2] == emb_tiny.identity()


def test_cpu_actors_without_gpus_or_when_asked(emb_tiny):
    for res, device in (({"CPU": 2.0}, "auto"), ({"CPU": 16.0, "GPU": 2.0}, "cpu")):
        job = _job(res, device, emb_tiny)
        assert not job.use_gpu and job.pool_size == int(res["CPU"])
        assert job.options["num_gpus"] == 0 and job.options["num_cpus"] == 1 and job.args[4] == 0
    assert _job({"CPU": 2.0}, "auto", emb_tiny, num_workers=3).args[4] == 3  # --workers is per actor


def test_cuda_on_a_cluster_without_gpus_is_refused(emb_tiny):
    with pytest.raises(BackboneError, match="has no GPU"):
        _job({"CPU": 8.0}, "cuda", emb_tiny)


def test_gpu_actor_loads_on_its_gpu_at_the_driver_precision(emb_tiny, monkeypatch):
    import clipcal.backbones as B

    asked = []

    def fake_load(spec, device="auto", precision="auto"):
        asked.append((spec, device, precision))
        return emb_tiny

    monkeypatch.setattr(B, "load_backbone", fake_load)
    w = _ShardWorker(emb_tiny.spec, "bf16", emb_tiny.identity(), True, 3)
    assert asked == [(emb_tiny.spec, "cuda", "bf16")] and w.num_workers == 3
    with pytest.raises(BackboneError, match="other weights or settings than on the driver"):
        _ShardWorker(emb_tiny.spec, "fp32", {**emb_tiny.identity(), "weights": {"sha256": "other"}}, False, 0)
