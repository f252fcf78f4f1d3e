"""The keyed store: round trip, manifest written last, corruption detected, one writer per key."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import clipcal.store as store_mod
from clipcal.errors import StoreError
from clipcal.store import MANIFEST, Store, canonical_json, make_key

KF = {"benchmark": "abc123", "backbone": {"spec": "tiny:clip", "precision": "fp32"}}


def _arrays():
    rng = np.random.default_rng(0)
    return {
        "features": rng.standard_normal((50, 8)).astype(np.float32),
        "labels": np.arange(50, dtype=np.int64),
        "sample_ids": np.array([f"id-{i}" for i in range(50)], dtype=object),
    }


def test_round_trip_and_manifest(tmp_path):
    st = Store(tmp_path)
    arrays = _arrays()
    entry = st.put("embeddings", KF, arrays, meta={"note": "hello", "n": 50})
    got = st.get("embeddings", KF)
    assert got is not None and got.path == entry.path == tmp_path / "embeddings" / make_key(KF)
    np.testing.assert_array_equal(got.array("features"), arrays["features"])
    np.testing.assert_array_equal(got.array("labels", mmap=False), arrays["labels"])
    ids = got.array("sample_ids")
    assert ids.dtype == np.dtype("<U5") and list(ids[:2]) == ["id-0", "id-1"]
    m = json.loads((entry.path / MANIFEST).read_text())
    assert m["kind"] == "embeddings" and m["key"] == make_key(KF) and m["key_fields"] == KF
    assert m["meta"] == {"note": "hello", "n": 50}
    assert m["arrays"]["features"]["shape"] == [50, 8] and m["arrays"]["features"]["dtype"] == "<f4"
    assert len(m["arrays"]["labels"]["sha256"]) == 64
    assert {"numpy", "python", "format"} <= set(m["versions"]) and m["created"].startswith("20")
    assert got.meta["note"] == "hello" and got.key == make_key(KF)
    # never pickled: loading with allow_pickle=False works for every file
    for rec in m["arrays"].values():
        np.load(entry.path / rec["file"], allow_pickle=False)


def test_key_is_canonical():
    a = {"x": 1, "y": [1, 2], "p": Path("/a/b")}
    b = {"p": "/a/b", "y": (1, 2), "x": np.int64(1)}
    assert make_key(a) == make_key(b) and len(make_key(a)) == 16
    assert canonical_json(a) == '{"p":"/a/b","x":1,"y":[1,2]}'
    assert make_key({"x": 2}) != make_key({"x": 1})
    with pytest.raises(StoreError, match="not JSON-serialisable"):
        make_key({"f": object()})


def test_object_arrays_are_refused(tmp_path):
    st = Store(tmp_path)
    with pytest.raises(StoreError, match="pickling"):
        st.put("runs", KF, {"bad": np.array([{"a": 1}, 2], dtype=object)})
    assert st.get("runs", KF) is None
    assert not any((tmp_path / ".tmp").iterdir())  # the failed write left nothing behind


def test_manifest_is_written_last_and_failed_put_leaves_nothing(tmp_path, monkeypatch):
    st = Store(tmp_path)
    seen = []
    real_save = store_mod.save_npy
    current = {"kf": KF, "listed": 0}

    def spy(path, arr):
        seen.append((Path(path).name, (Path(path).parent / MANIFEST).exists()))
        # while arrays are written, nothing is visible under <root>/<kind>/ (temp folders stay hidden)
        assert st.get("embeddings", current["kf"]) is None and len(st.list("embeddings")) == current["listed"]
        assert not st.entry_path("embeddings", current["kf"]).exists()
        return real_save(path, arr)

    monkeypatch.setattr(store_mod, "save_npy", spy)
    st.put("embeddings", KF, _arrays())
    assert [s[0] for s in seen] == ["features.npy", "labels.npy", "sample_ids.npy"]
    assert not any(has_manifest for _, has_manifest in seen)

    # a crash while writing the manifest: no entry appears, the temp folder is gone
    def boom(path, obj):
        raise OSError("disk full")

    kf2 = {**KF, "benchmark": "other"}
    current.update(kf=kf2, listed=1)
    monkeypatch.setattr(store_mod, "_write_json_atomic", boom)
    with pytest.raises(StoreError, match="disk full"):
        st.put("embeddings", kf2, _arrays())
    assert st.get("embeddings", kf2) is None
    assert not (tmp_path / "embeddings" / make_key(kf2)).exists()
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_folder_without_manifest_is_not_an_entry(tmp_path):
    st = Store(tmp_path)
    p = st.entry_path("embeddings", KF)
    p.mkdir(parents=True)
    np.save(p / "features.npy", np.zeros(3))
    assert st.get("embeddings", KF) is None
    assert not p.exists()
    trashed = list((tmp_path / ".trash").iterdir())
    assert len(trashed) == 1 and "no manifest" in (trashed[0] / "TRASHED_BECAUSE.txt").read_text()
    assert st.list("embeddings") == []


def _flip_byte(path: Path, offset_from_end: int = 5) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_npy_is_detected_and_rebuilt(tmp_path):
    st = Store(tmp_path)
    arrays = _arrays()
    st.put("embeddings", KF, arrays)
    assert st.get("embeddings", KF) is not None  # first full verification, recorded in .verified.json
    assert (st.entry_path("embeddings", KF) / ".verified.json").is_file()
    _flip_byte(st.entry_path("embeddings", KF) / "features.npy")  # same size, new bytes, new mtime
    assert st.get("embeddings", KF) is None  # re-hashed because the file changed since verification
    reason = next((tmp_path / ".trash").iterdir()) / "TRASHED_BECAUSE.txt"
    assert "sha256" in reason.read_text()
    st.put("embeddings", KF, arrays)  # the caller rebuilds
    got = st.get("embeddings", KF, verify="full")
    np.testing.assert_array_equal(got.array("features"), arrays["features"])


def test_truncated_npy_and_shape_only_verification(tmp_path):
    st = Store(tmp_path)
    st.put("embeddings", KF, _arrays())
    f = st.entry_path("embeddings", KF) / "labels.npy"
    f.write_bytes(f.read_bytes()[:-16])
    assert st.get("embeddings", KF, verify="shape") is None  # size check catches truncation without hashing
    st.put("embeddings", KF, _arrays())
    _flip_byte(st.entry_path("embeddings", KF) / "labels.npy")
    # documented trade-off: "shape" never hashes, so same-size corruption passes it …
    assert st.get("embeddings", KF, verify="shape") is not None
    # … while "full" (and "auto", as the file changed) catch it
    assert st.get("embeddings", KF, verify="full") is None


def test_list_delete_and_hidden_folders(tmp_path):
    st = Store(tmp_path)
    for i in range(3):
        st.put("runs", {"i": i}, {"x": np.full(2, i)}, meta={"i": i})
    (tmp_path / "runs" / ".scratch").mkdir()
    part = st.partial_dir("runs", {"i": 0})
    (part / "shard-00000.json").write_text("{}")
    listed = st.list("runs")
    assert sorted(m["meta"]["i"] for m in listed) == [0, 1, 2]
    assert all(Path(m["path"]).parent == tmp_path / "runs" for m in listed)
    assert st.delete("runs", {"i": 0}) is True and not part.exists()
    assert st.delete("runs", {"i": 0}) is False
    assert sorted(m["meta"]["i"] for m in st.list("runs")) == [1, 2]
    assert st.list("projections") == []


_WRITER = textwrap.dedent("""
    import sys, time, numpy as np
    sys.path.insert(0, {repo!r})
    from clipcal.store import Store
    st = Store({root!r})
    kf = {{"k": 1}}
    with st.lock("runs", kf):
        t0 = time.time()
        time.sleep(0.6)
        st.put("runs", kf, {{"x": np.full(1000, {val})}}, meta={{"writer": {val}}})
        t1 = time.time()
    print(t0, t1)
""")


def test_two_processes_never_write_one_key_at_once(tmp_path):
    repo = str(Path(__file__).resolve().parent.parent)
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER.format(repo=repo, root=str(tmp_path), val=v)],
                              stdout=subprocess.PIPE, text=True) for v in (1, 2)]
    spans = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        spans.append(tuple(map(float, out.split())))
    (a0, a1), (b0, b1) = sorted(spans)
    assert a1 <= b0, f"critical sections overlap: {spans}"
    got = Store(tmp_path).get("runs", {"k": 1}, verify="full")
    assert got is not None and int(got.array("x")[0]) == got.meta["writer"]


def test_lock_is_reentrant_in_one_thread_and_exclusive_across_threads(tmp_path):
    st = Store(tmp_path)
    order = []
    with st.lock("runs", KF):
        st.put("runs", KF, {"x": np.zeros(1)})  # put takes the same lock again: no deadlock

        def other():
            with st.lock("runs", KF):
                order.append("other")

        t = threading.Thread(target=other)
        t.start()
        t.join(0.3)
        order.append("first")
    t.join(5)
    assert order == ["first", "other"]
