"""Issue 14 — embedding on a Ray cluster writes the local engine's store entry, survives a killed worker or driver,
caps retries, takes turns with a local run on the same key, and leaves no Ray process behind.

One local cluster (``ray.init(num_cpus=2)``) is shared by the module; runs inside this process reuse it, CLI runs
in a subprocess join it with ``--address`` (one starts its own, to check that it is shut down after an error).
Skipped only when the optional extra (requirements-scale.txt) is not installed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the optional extra is not installed: pip install -r requirements-scale.txt")
psutil = pytest.importorskip("psutil")

from clipcal.embed import _read_shard, embed_benchmark  # noqa: E402
from clipcal import embed_ray  # noqa: E402
from clipcal.embed_ray import FAULT_ENV, ShardFailedError  # noqa: E402
from clipcal.errors import Cancelled  # noqa: E402
from clipcal.store import Store  # noqa: E402
from tests.fixtures_data import make_csv_dataset  # noqa: E402
from tests.fixtures_embed import make_image_benchmark  # noqa: E402

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]
SHARD = 8  # 43 rows → 6 shards
RAY_PROCESS_WORDS = ("raylet", "gcs_server", "ray::", "ray/_private", "ray/dashboard", "ray/autoscaler")


def _ray_processes() -> dict[int, str]:
    out = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if any(w in cmd for w in RAY_PROCESS_WORDS):
            out[p.info["pid"]] = cmd.strip()[:160]
    return out


@pytest.fixture(scope="module")
def cluster():
    """A 2-CPU local cluster for the module; at the end, none of its processes may be left (its own: those started
    under its temp folder or below this process — other Ray clusters on the machine are not its business)."""
    temp = tempfile.mkdtemp(prefix="cr", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR", _temp_dir=temp,
             object_store_memory=256 * 2**20)
    yield ray.get_runtime_context().gcs_address
    ours = {p.pid for p in psutil.Process().children(recursive=True)}  # gcs, raylet, its workers and actors
    embed_ray.shutdown(ray)  # and Python's print put back (numba-compiled code after this needs it)
    left = {}
    for _ in range(40):
        left = {p: c for p, c in _ray_processes().items() if p in ours or temp in c}
        if not left:
            break
        time.sleep(0.5)
    assert not left, f"Ray processes left after the cluster was shut down: {left}"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """43 rows (3 unreadable) → 6 shards of 8."""
    return make_image_benchmark(tmp_path_factory.mktemp("raybench"), n=40, bad=3)


@pytest.fixture(scope="module")
def local(bench, emb_tiny, tmp_path_factory):
    """The local engine's entry (the reference)."""
    return embed_benchmark(bench, emb_tiny, store=Store(tmp_path_factory.mktemp("local-store")), shard_size=SHARD,
                           batch_size=4, num_workers=0)


def _same_entry(a, b) -> None:
    assert a.key == b.key
    for name in ("sample_ids", "features", "embeddings", "proj_weight"):
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), name
    assert a.skipped.equals(b.skipped) and len(a.skipped) == 3
    assert a.manifest["meta"]["skipped"] == b.manifest["meta"]["skipped"]


def test_ray_entry_equals_local_bit_for_bit(cluster, bench, emb_tiny, local, tmp_path):
    reports = []
    es = embed_benchmark(bench, emb_tiny, store=Store(tmp_path), shard_size=SHARD, batch_size=4, engine="ray",
                         progress=reports.append)
    _same_entry(local, es)
    assert es.n_computed == local.n_computed == 40
    done = [r.done for r in reports if r.message == "embedding"]
    assert len(done) == 6 and done == sorted(done) and done[-1] == 43  # one report per shard
    assert not (Store(tmp_path).root / ".partial" / "embeddings" / es.key).exists()  # shards removed


def _kill_busy_worker_at_first_shard(reports: list, killed: list):
    """Progress callback: at the first finished shard, SIGKILL a worker process that is running a shard."""
    def progress(p):
        reports.append(p)
        if p.message != "embedding" or killed:
            return
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if " ".join(proc.info["cmdline"] or []).startswith("ray::_ShardWorker.embed"):
                os.kill(proc.info["pid"], signal.SIGKILL)
                killed.append(proc.info["pid"])
                return
    return progress


def test_worker_killed_mid_run_is_replaced_and_the_job_completes(cluster, bench, emb_tiny, local, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "sleep4@1")  # a shard is still running when shard 0 reports
    reports, killed = [], []
    es = embed_benchmark(bench, emb_tiny, store=Store(tmp_path), shard_size=SHARD, batch_size=4, engine="ray",
                         max_retries=2, progress=_kill_busy_worker_at_first_shard(reports, killed))
    assert killed, "no worker was running a shard when the first shard finished"
    retried = [r.message for r in reports if "failed" in r.message]
    assert len(retried) == 1 and "its worker process died" in retried[0] and "retry 1 of 2" in retried[0], retried
    _same_entry(local, es)


def test_shard_that_always_fails_stops_at_the_cap_and_keeps_the_others(cluster, bench, emb_tiny, local, tmp_path,
                                                                       monkeypatch):
    store = Store(tmp_path)
    monkeypatch.setenv(FAULT_ENV, "sleep1@2,raise@2")  # the others finish while shard 2 keeps failing
    with pytest.raises(ShardFailedError) as err:
        embed_benchmark(bench, emb_tiny, store=store, shard_size=SHARD, batch_size=4, engine="ray", max_retries=1)
    msg = str(err.value)
    assert "shard 2" in msg and "failed 2 time(s)" in msg and "--max-retries 1" in msg and "fault injected" in msg
    from clipcal.embed import KIND

    key_fields = {"format": 1, "benchmark": bench.fingerprint(), "backbone": emb_tiny.identity()}
    assert store.get(KIND, key_fields) is None  # no entry from a failed job
    folder = store.partial_dir(KIND, key_fields)
    d, e = emb_tiny.feature_dim, emb_tiny.embed_dim
    kept = [i for i in range(6) if _read_shard(folder, i, i * SHARD, min(43, (i + 1) * SHARD), d, e) is not None]
    assert 2 not in kept and kept, kept
    monkeypatch.delenv(FAULT_ENV)
    es = embed_benchmark(bench, emb_tiny, store=store, shard_size=SHARD, batch_size=4, engine="ray")
    row_of = {sid: i for i, sid in enumerate(bench.table["sample_id"])}
    assert es.n_computed == sum(row_of[s] // SHARD not in kept for s in local.sample_ids)  # only missing shards
    _same_entry(local, es)


def test_cancel_stops_the_job_and_keeps_finished_shards(cluster, bench, emb_tiny, local, tmp_path):
    cancel = threading.Event()
    store = Store(tmp_path)

    def progress(p):
        if p.message == "embedding":
            cancel.set()

    with pytest.raises(Cancelled, match="finished shards are stored"):
        embed_benchmark(bench, emb_tiny, store=store, shard_size=SHARD, batch_size=4, engine="ray", cancel=cancel,
                        progress=progress)
    assert not list(store.root.glob("embeddings/*/manifest.json"))
    kept = list(store.root.glob(".partial/embeddings/*/shard-*.json"))
    assert 1 <= len(kept) < 6
    again = embed_benchmark(bench, emb_tiny, store=store, shard_size=SHARD, batch_size=4, engine="ray")
    assert again.n_computed < 40  # resumed from the kept shards
    _same_entry(local, again)


def test_local_and_ray_run_on_one_key_take_turns(cluster, bench, emb_tiny, local, tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "sleep3@0")
    store = Store(tmp_path)
    started, out = threading.Event(), {}

    def ray_run():
        try:
            out["ray"] = embed_benchmark(bench, emb_tiny, store=store, shard_size=SHARD, batch_size=4, engine="ray",
                                         progress=lambda p: started.set())
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            out["ray_error"] = err
            started.set()

    t = threading.Thread(target=ray_run)
    t.start()
    assert started.wait(120)  # the Ray run holds the lock from its first report on
    messages = []
    second = embed_benchmark(bench, emb_tiny, store=store, shard_size=SHARD, batch_size=4, num_workers=0,
                             progress=lambda p: messages.append(p.message))
    t.join(300)
    assert "ray_error" not in out, out.get("ray_error")
    assert "waiting for another process embedding the same images" in messages
    assert second.n_computed == 0 and out["ray"].n_computed == 40  # the second reused the first one's entry
    _same_entry(local, out["ray"])
    _same_entry(local, second)


@pytest.fixture(scope="module")
def csv_root(tmp_path_factory):
    """A CSV benchmark of 1,100 tiny images: 2 shards at the CLI's shard size (1,024)."""
    root = tmp_path_factory.mktemp("raycsv")
    rows = [{"id": f"s{i:05d}", "filename": f"img/{i:05d}.jpg", "split": ("train", "val", "test")[i % 3],
             "y": i % 2, "a": (i // 2) % 2} for i in range(1100)]
    make_csv_dataset(root, rows)
    return root


def _cli(args: list[str], store: Path, **env) -> subprocess.Popen:
    e = {**os.environ, "CLIPCAL_CACHE": str(store), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **env}
    return subprocess.Popen([sys.executable, "-m", "clipcal", "embed", "--benchmark", "csv", "--root", *args,
                             "--backbone", "tiny:clip", "--device", "cpu", "--engine", "ray"],
                            cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_driver_killed_then_rerun_embeds_only_missing_shards(cluster, csv_root, emb_tiny, tmp_path):
    store = tmp_path / "store"
    first = _cli([str(csv_root), "--address", cluster], store, **{FAULT_ENV: "sleep300@1"})
    deadline = time.monotonic() + 240
    shard0 = None
    while time.monotonic() < deadline and first.poll() is None:
        found = list(store.glob(".partial/embeddings/*/shard-00000.json"))
        if found:
            shard0 = found[0]
            break
        time.sleep(0.05)
    assert shard0 is not None, f"shard 0 never appeared: {first.communicate(timeout=30)[0][-3000:]}"
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    assert not list(store.glob("embeddings/*/manifest.json"))  # killed before the entry was written
    second = _cli([str(csv_root), "--address", cluster], store)
    text = second.communicate(timeout=600)[0]
    assert second.returncode == 0, text[-3000:]
    assert "resuming: 1 of 2 shards already done" in text
    assert "embedded 76 images in this run (1,024 more from an earlier, interrupted run)" in text
    from clipcal.data import load_benchmark
    from clipcal.embed import load_embeddings

    b = load_benchmark("csv", csv_root)
    ref = embed_benchmark(b, emb_tiny, store=Store(tmp_path / "local"), num_workers=0)
    got = load_embeddings(b, emb_tiny, store=Store(store))
    assert got.key == ref.key
    for name in ("features", "embeddings", "sample_ids"):
        assert np.asarray(getattr(got, name)).tobytes() == np.asarray(getattr(ref, name)).tobytes(), name


def test_cli_started_cluster_is_shut_down_after_a_failed_job(cluster, csv_root, tmp_path):
    """Without --address the CLI starts its own cluster; a job that fails still leaves no Ray process."""
    temp = tempfile.mkdtemp(prefix="cl", dir="/tmp")
    before = set(_ray_processes())
    ours = {p.pid for p in psutil.Process().children(recursive=True)}  # the module cluster's processes
    proc = _cli([str(csv_root), "--max-retries", "0"], tmp_path / "store", RAY_TMPDIR=temp,
                **{FAULT_ENV: "raise@0"})
    text = proc.communicate(timeout=600)[0]
    assert proc.returncode == 2, text[-3000:]
    assert "error: embedding shard 0" in text and "more than --max-retries 0 allows" in text
    left = {}
    for _ in range(40):
        left = {p: c for p, c in _ray_processes().items()
                if p not in before and p not in ours and (temp in c or "_ShardWorker" in c)}
        if not left:
            break
        time.sleep(0.5)
    assert not left, f"left behind by the CLI's own cluster: {left}"
