"""Everything served from the store is verified by content, at the granularity it was written (issue 10, item 5).

Each test builds its fault from scratch: (a) a finished embedding shard corrupted before a resume, (b) an array
edited in place with its modification time restored, (c) an edited ``manifest.json`` ``meta``, (d) an image
replaced by another of the same byte size. In every case the store must not serve the old or corrupt numbers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest

from clipcal.errors import Cancelled
from clipcal.store import MANIFEST, Store

F32_MAX = np.float32(3.4028235e38)


def _overwrite_in_place(path, offset: int, data: bytes, keep_mtime: bool = True) -> None:
    """Write ``data`` at ``offset`` into the same file (same inode, same size); restore atime/mtime."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_ino) == (st.st_size, st.st_ino)
    assert not keep_mtime or after.st_mtime_ns == st.st_mtime_ns


def _npy_data_offset(path) -> int:
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


# ---------------------------------------------------------------------------------------------------------------
# (a) shards
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("part", ["features", "embeddings", "rows", "json"])
def test_a_finished_shard_is_verified_by_checksum_before_it_is_reused(tmp_path, emb_tiny, emb_make_benchmark, part):
    """Kind: resume reused finished shards unchecked, so corrupt values were sealed into a 'valid' entry. Every
    shard file carries a checksum written with it and checked when the shard is reused; a corrupt shard is
    embedded again, so the resumed entry equals an uninterrupted one."""
    from clipcal.embed import KIND, embed_benchmark, embedding_key

    bench = emb_make_benchmark(tmp_path / "data", n=24)
    store = Store(tmp_path / "store")
    ev = threading.Event()

    def stop_after_first_shard(p):
        if p.message == "embedding" and p.done >= 8:
            ev.set()

    with pytest.raises(Cancelled):
        embed_benchmark(bench, emb_tiny, store=store, batch_size=8, shard_size=8, num_workers=0,
                        progress=stop_after_first_shard, cancel=ev)
    folder = store.partial_dir(KIND, embedding_key(bench, emb_tiny.identity()))
    assert (folder / "shard-00000.json").is_file()
    if part == "json":  # a careless edit of the shard's record: it now claims one image was skipped
        info = json.loads((folder / "shard-00000.json").read_text())
        info["skipped"] = [[0, "s0000", "edited"]]
        (folder / "shard-00000.json").write_text(json.dumps(info))
    elif part == "rows":  # rows 0 and 1 swapped: every feature would be served for the wrong sample
        f = folder / "shard-00000.rows.npy"
        rows = np.load(f)
        rows[[0, 1]] = rows[[1, 0]]
        _overwrite_in_place(f, _npy_data_offset(f), rows.tobytes())
    else:  # 4 KB of float32 max, as in the report (|h| ≈ 3.4e38)
        f = folder / f"shard-00000.{part}.npy"
        off = _npy_data_offset(f)
        n = min(4096, f.stat().st_size - off) // 4
        _overwrite_in_place(f, off, np.full(n, F32_MAX, np.float32).tobytes())

    resumed = embed_benchmark(bench, emb_tiny, store=store, batch_size=8, shard_size=8, num_workers=0)
    ref = embed_benchmark(bench, emb_tiny, store=Store(tmp_path / "ref"), batch_size=8, shard_size=8,
                          num_workers=0)
    assert resumed.n_computed == 24  # the corrupt first shard was embedded again with the other two
    assert float(np.abs(resumed.features).max()) < 1e6
    np.testing.assert_array_equal(resumed.sample_ids, ref.sample_ids)
    np.testing.assert_allclose(resumed.features, ref.features, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(resumed.embeddings, ref.embeddings, rtol=1e-5, atol=1e-5)
    assert len(resumed.skipped) == 0


# ---------------------------------------------------------------------------------------------------------------
# (b) in-place edit with the modification time restored
# ---------------------------------------------------------------------------------------------------------------
def test_an_in_place_edit_with_restored_mtime_is_not_served(tmp_path, monkeypatch):
    """Kind: the verification shortcut trusted (size, mtime, inode), which a careless edit can keep (``cp -p``,
    ``touch -r``, an editor restoring times). The shortcut now also needs an unchanged st_ctime_ns (set by the
    kernel on any write, not settable by users): an edited file is hashed again and the entry is refused."""
    import clipcal.integrity as integrity

    monkeypatch.setattr(integrity, "RACY_NS", 0)  # record the stamp at once (the racy-clock guard is tested below)
    st = Store(tmp_path)
    emb = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)
    st.put("embeddings", {"k": 1}, {"embeddings": emb})
    time.sleep(0.05)  # past the file system's timestamp granularity
    assert st.get("embeddings", {"k": 1}) is not None  # hashed in full; its stamp is recorded
    recorded = json.loads((st.entry_path("embeddings", {"k": 1}) / ".verified.json").read_text())
    assert "embeddings" in recorded
    time.sleep(0.05)
    f = st.entry_path("embeddings", {"k": 1}) / "embeddings.npy"
    _overwrite_in_place(f, _npy_data_offset(f), np.full(16, F32_MAX, np.float32).tobytes())
    assert st.get("embeddings", {"k": 1}) is None  # refused (and moved to .trash), not served
    reasons = [(p / "TRASHED_BECAUSE.txt").read_text() for p in (tmp_path / ".trash").iterdir()]
    assert any("sha256" in r for r in reasons)


def test_a_file_verified_within_the_clock_granularity_is_hashed_again(tmp_path, monkeypatch):
    """Kind (racy stamps, as git's "racily clean" index entries): file times are coarse (a few ms), so a stamp
    taken right after a write could match a later same-size write. A stamp younger than ``RACY_NS`` is never
    trusted: the next open hashes the file again."""
    import clipcal.integrity as integrity

    st = Store(tmp_path)
    st.put("runs", {"k": 1}, {"x": np.arange(10.0)})
    calls = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda p, *a, **k: calls.append(p) or real(p, *a, **k))
    assert st.get("runs", {"k": 1}) is not None and st.get("runs", {"k": 1}) is not None
    assert len(calls) == 2  # written just now: both opens hashed
    monkeypatch.setattr(integrity, "RACY_NS", 0)
    assert st.get("runs", {"k": 1}) is not None and st.get("runs", {"k": 1}) is not None
    assert len(calls) == 3  # once no longer racy, the stamp is recorded and trusted


def test_a_copied_store_opens_elsewhere(tmp_path):
    """The verification cache depends on inode/ctime, the entry does not: a copied store re-verifies by content
    once and is served (its keys and manifests are unchanged)."""
    st = Store(tmp_path / "a")
    x = np.arange(12.0).reshape(3, 4)
    st.put("runs", {"k": 1}, {"x": x}, meta={"note": "copied"})
    assert st.get("runs", {"k": 1}) is not None
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    got = Store(tmp_path / "b").get("runs", {"k": 1})
    assert got is not None and got.meta == {"note": "copied"}
    np.testing.assert_array_equal(got.array("x"), x)


# ---------------------------------------------------------------------------------------------------------------
# (c) the manifest itself
# ---------------------------------------------------------------------------------------------------------------
def test_an_edited_manifest_meta_is_refused_by_list_and_get(tmp_path, syn_small_ds):
    """Kind: checksums covered the arrays but not ``manifest.json`` — an edited worst-group value in ``meta``
    changed the dashboard's run list while ``report`` (which reads the arrays) showed the true one. The whole
    manifest is now covered by one checksum, checked by ``get`` and by ``list``: an edited entry is moved aside
    and never listed."""
    from clipcal.runs import list_runs, load_run, run_calibration

    store = Store(tmp_path)
    bench, es = syn_small_ds.benchmark(), syn_small_ds.embedding_set()
    run = run_calibration(bench, es, "erm", hparams={"erm": {"epochs": 2}}, store=store)
    true_wg = list_runs(store)["test_worst_group"].iloc[0]["erm"]
    mf = store.root / "runs" / run.key / MANIFEST
    m = json.loads(mf.read_text())
    for r in m["meta"]["metrics"]:
        if r.get("split") == "test" and r.get("method") == "erm":
            r["worst_group"] = 0.987654
    mf.write_text(json.dumps(m, indent=1))

    listed = list_runs(store)
    assert all(row.get("erm") != 0.987654 for row in listed["test_worst_group"])
    assert run.key not in set(listed["key"])  # refused, not shown with either value
    assert store.list("runs") == []
    assert any(p.name.startswith(f"runs-{run.key}") for p in (tmp_path / ".trash").iterdir())
    with pytest.raises(Exception, match="no calibration run"):
        load_run(run.key, store)
    assert true_wg != 0.987654


@pytest.mark.parametrize("edit", ["meta", "key_fields", "arrays", "created"])
def test_any_edit_of_a_manifest_is_refused(tmp_path, edit):
    """Kind-level: no field of a manifest is trusted without the checksum over all of it."""
    st = Store(tmp_path)
    st.put("projections", {"k": 1}, {"xy": np.zeros((3, 2), np.float32)}, meta={"n_points": 3})
    assert st.get("projections", {"k": 1}) is not None
    mf = st.entry_path("projections", {"k": 1}) / MANIFEST
    m = json.loads(mf.read_text())
    if edit == "meta":
        m["meta"]["n_points"] = 4
    elif edit == "key_fields":
        m["key_fields"]["extra"] = True
    elif edit == "arrays":
        m["arrays"]["xy"]["shape"] = [3, 2]  # unchanged value, reordered dict below: still the same content
        m["arrays"]["xy"]["sha256"] = "0" * 64
    else:
        m["created"] = "1999-01-01T00:00:00+00:00"
    mf.write_text(json.dumps(m))
    assert st.list("projections") == []
    assert st.get("projections", {"k": 1}) is None


def test_a_reformatted_but_unchanged_manifest_is_still_served(tmp_path):
    """The checksum is over the manifest's content (canonical JSON), not its bytes: re-indenting is no edit."""
    st = Store(tmp_path)
    st.put("runs", {"k": 1}, {"x": np.arange(3)}, meta={"a": [1, 2.5, None], "b": "é"})
    mf = st.entry_path("runs", {"k": 1}) / MANIFEST
    mf.write_text(json.dumps(json.loads(mf.read_text()), indent=4, sort_keys=True, ensure_ascii=True))
    got = st.get("runs", {"k": 1})
    assert got is not None and got.meta == {"a": [1, 2.5, None], "b": "é"}
    assert len(st.list("runs")) == 1


# ---------------------------------------------------------------------------------------------------------------
# (d) the benchmark fingerprint
# ---------------------------------------------------------------------------------------------------------------
def _bmp_benchmark(folder, n=6):
    from PIL import Image

    import pandas as pd

    from clipcal.data.base import Benchmark

    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        Image.new("RGB", (24, 24), (40 * i, 20, 200 - 30 * i)).save(folder / f"img/{i}.bmp")
        rows.append((f"s{i}", f"img/{i}.bmp", ("train", "val", "test")[i % 3], i % 2, (i // 2) % 2))
    table = pd.DataFrame(rows, columns=["sample_id", "path", "split", "y", "a"])
    return Benchmark(name="csv", root=folder, table=table, class_names=["blue", "red"], attr_names=["p", "q"])


@pytest.mark.parametrize("how", ["new file", "in place, mtime restored"])
def test_an_image_replaced_by_one_of_the_same_size_changes_the_fingerprint(tmp_path, monkeypatch, how):
    """Kind: the benchmark fingerprint used file sizes, so a replaced image of the same byte size (BMPs,
    fixed-size PNG/NPY exports) served the old embedding. It now hashes each image's bytes, recorded once and
    re-hashed only for files whose (size, mtime_ns, ctime_ns, inode) changed."""
    from PIL import Image

    import clipcal.integrity as integrity

    monkeypatch.setattr(integrity, "RACY_NS", 0)  # let the file-hash cache record stamps at once
    bench = _bmp_benchmark(tmp_path / "data")
    before = bench.fingerprint()
    time.sleep(0.05)
    again = dataclasses.replace(bench, table=bench.table.copy())
    assert again.fingerprint() == before  # unchanged files: same fingerprint (now from the cache)
    path = bench.image_path("img/2.bmp")
    size = path.stat().st_size
    time.sleep(0.05)
    if how == "new file":
        Image.new("RGB", (24, 24), (255, 255, 0)).save(path)
    else:
        raw = bytearray(path.read_bytes())
        raw[-3:] = b"\x00\xff\x00"
        _overwrite_in_place(path, 0, bytes(raw))
    assert path.stat().st_size == size
    changed = dataclasses.replace(bench, table=bench.table.copy())
    assert changed.fingerprint() != before


def test_an_image_replaced_by_one_of_the_same_size_is_embedded_again(tmp_path, emb_tiny):
    """The same kind, end to end: the embedding of the new picture is served, not the old one."""
    from PIL import Image

    from clipcal.embed import embed_benchmark

    bench = _bmp_benchmark(tmp_path / "data")
    store = Store(tmp_path / "store")
    first = embed_benchmark(bench, emb_tiny, store=store, num_workers=0)
    Image.new("RGB", (24, 24), (255, 255, 0)).save(bench.image_path("img/2.bmp"))
    changed = dataclasses.replace(bench, table=bench.table.copy())
    es = embed_benchmark(changed, emb_tiny, store=store, num_workers=0)
    assert es.n_computed == 6
    assert not np.allclose(es.embeddings[2], first.embeddings[2])
    np.testing.assert_allclose(es.embeddings[0], first.embeddings[0], atol=1e-5)


def test_the_fingerprint_of_copied_images_is_the_same(tmp_path):
    """A copied benchmark (other inodes, other times) keeps its fingerprint, so a copied store is reused."""
    bench = _bmp_benchmark(tmp_path / "data")
    shutil.copytree(tmp_path / "data", tmp_path / "copy")
    copy = dataclasses.replace(bench, root=tmp_path / "copy", table=bench.table.copy())
    assert copy.fingerprint() == bench.fingerprint()
    (tmp_path / "copy" / "img" / "5.bmp").unlink()
    gone = dataclasses.replace(bench, root=tmp_path / "copy", table=bench.table.copy())
    assert gone.fingerprint() != bench.fingerprint()
