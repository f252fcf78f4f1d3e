"""An unwritable store is a clear error (issue 10, item 8).

Kind: every path that writes under the store (the root itself, locks, temporary folders, shards, entries,
the Numba cache, the demo's datasets folder, projections, runs) raised a raw ``OSError`` / ``FileExistsError``
traceback. Each now raises one :class:`~clipcal.errors.StoreError` naming the folder and saying what to do
(set ``CLIPCAL_CACHE`` to a writable folder), while reading an intact entry from a read-only store still works.

Tests run as root here, and root ignores permission bits, so a read-only store is simulated: every os-level
write under the folder fails with ``EROFS``, as on a read-only mount (checked by hand with ``mount -o ro``).
"""

from __future__ import annotations

import builtins
import errno
import io
import os
from pathlib import Path

import numpy as np
import pytest

from clipcal.errors import StoreError
from clipcal.store import Store


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)``: from now on, writes under ``folder`` fail with EROFS; reads work."""
    folders: list[str] = []

    def under(p) -> bool:
        try:
            s = os.path.abspath(os.fspath(p))
        except TypeError:  # a file descriptor
            return False
        return any(s == f or s.startswith(f + os.sep) for f in folders)

    def refuse(p):
        raise OSError(errno.EROFS, "Read-only file system", os.fspath(p))

    def wrap1(fn):
        return lambda p, *a, **k: refuse(p) if under(p) else fn(p, *a, **k)

    def wrap2(fn):
        return lambda s, d, *a, **k: refuse(s if under(s) else d) if under(s) or under(d) else fn(s, d, *a, **k)

    real_os_open, real_open = os.open, builtins.open

    def os_open(p, flags, *a, **k):
        if under(p) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
            refuse(p)
        return real_os_open(p, flags, *a, **k)

    def py_open(p, mode="r", *a, **k):
        if under(p) and any(c in mode for c in "wax+"):
            refuse(p)
        return real_open(p, mode, *a, **k)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", py_open)
    monkeypatch.setattr(io, "open", py_open)
    for name in ("mkdir", "unlink", "remove", "rmdir"):
        monkeypatch.setattr(os, name, wrap1(getattr(os, name)))
    for name in ("replace", "rename"):
        monkeypatch.setattr(os, name, wrap2(getattr(os, name)))
    return lambda folder: folders.append(os.path.abspath(folder))


def _assert_clear(err: StoreError, folder: Path) -> None:
    text = str(err)
    assert str(folder) in text, text
    assert "CLIPCAL_CACHE" in text and "writable" in text, text
    assert "Traceback" not in text


def test_the_simulation_really_refuses_writes(tmp_path, read_only):
    """The fixture does what a read-only mount does (so the tests below test something)."""
    read_only(tmp_path)
    with pytest.raises(OSError):
        (tmp_path / "x").write_text("x")
    with pytest.raises(OSError):
        (tmp_path / "d").mkdir()
    assert os.listdir(tmp_path) == []


def test_cache_pointing_at_a_file_is_a_store_error(tmp_path, monkeypatch):
    """``CLIPCAL_CACHE`` naming a file (a typo, a swapped argument) gave ``FileExistsError``."""
    from clipcal.paths import cache_dir, configure_numba_cache

    f = tmp_path / "not-a-folder"
    f.write_text("hello")
    monkeypatch.setenv("CLIPCAL_CACHE", str(f))
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    for call in (cache_dir, Store, configure_numba_cache):
        with pytest.raises(StoreError) as info:
            call()
        _assert_clear(info.value, f)
        assert "file" in info.value.message
    monkeypatch.setenv("CLIPCAL_CACHE", str(f / "below"))  # a path through a file: NotADirectoryError
    with pytest.raises(StoreError) as info:
        Store()
    assert str(f) in str(info.value)


def test_every_write_to_a_read_only_store_is_a_store_error(tmp_path, read_only):
    """Locks, temporary folders, shards, entries, deletion: one StoreError each, naming the folder."""
    root = tmp_path / "store"
    st = Store(root)
    st.put("runs", {"k": 1}, {"x": np.arange(3)})
    st.get("runs", {"k": 1})  # verified once (the cache of that check is best-effort)
    st.check_writable()  # writable now: no error
    read_only(root)
    st2 = Store(root)  # opening a read-only store is fine …
    got = st2.get("runs", {"k": 1})  # … and so is reading an intact entry
    assert got is not None and list(got.array("x")) == [0, 1, 2]
    assert st2.list("runs")[0]["key"] == got.key
    attempts = {
        "check_writable (up front, for pages and the CLI)": st2.check_writable,
        "lock": lambda: st2.lock("runs", {"k": 2}).acquire(),
        "lock as context": lambda: st2.lock("runs", {"k": 1}).__enter__(),
        "put": lambda: st2.put("runs", {"k": 2}, {"x": np.arange(3)}),
        "partial_dir": lambda: st2.partial_dir("embeddings", {"k": 3}),
        "delete": lambda: st2.delete("runs", {"k": 1}),
    }
    for what, call in attempts.items():
        with pytest.raises(StoreError) as info:
            call()
        _assert_clear(info.value, root)
        assert "read-only" in info.value.message, (what, info.value.message)


def test_a_corrupt_entry_in_a_read_only_store_is_not_served_and_not_a_traceback(tmp_path, read_only):
    root = tmp_path / "store"
    st = Store(root)
    st.put("runs", {"k": 1}, {"x": np.arange(3)})
    f = st.entry_path("runs", {"k": 1}) / "x.npy"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    read_only(root)
    assert st.get("runs", {"k": 1}) is None  # cannot be moved aside, but it is not served either


def test_embedding_into_a_read_only_store_is_a_store_error(tmp_path, read_only, emb_tiny, emb_make_benchmark):
    from clipcal.embed import embed_benchmark

    bench = emb_make_benchmark(tmp_path / "data", n=6)
    root = tmp_path / "store"
    Store(root)
    read_only(root)
    with pytest.raises(StoreError) as info:
        embed_benchmark(bench, emb_tiny, store=Store(root), num_workers=0)
    _assert_clear(info.value, root)


def test_runs_and_projections_into_a_read_only_store_are_store_errors(tmp_path, read_only, syn_small_ds):
    from clipcal.projection import joint_umap
    from clipcal.runs import run_calibration

    root = tmp_path / "store"
    Store(root)
    read_only(root)
    seen = []
    with pytest.raises(StoreError) as info:
        run_calibration(syn_small_ds.benchmark(), syn_small_ds.embedding_set(), "erm",
                        hparams={"erm": {"epochs": 1}}, store=Store(root), progress=seen.append)
    _assert_clear(info.value, root)
    assert seen == []  # refused before any training, not after it
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    with pytest.raises(StoreError) as info:
        joint_umap(x, store=Store(root))
    _assert_clear(info.value, root)


def test_numba_cache_and_demo_datasets_under_a_read_only_cache(tmp_path, monkeypatch, read_only):
    """The Numba JIT cache and the demo's datasets folder live under the cache too."""
    from clipcal.data.demo import build_demo
    from clipcal.paths import configure_numba_cache

    root = tmp_path / "cache"
    root.mkdir()
    monkeypatch.setenv("CLIPCAL_CACHE", str(root))
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    read_only(root)
    with pytest.raises(StoreError) as info:
        configure_numba_cache()
    _assert_clear(info.value, root / "numba")
    assert "NUMBA_CACHE_DIR" not in os.environ  # not left pointing at a folder that cannot be used
    with pytest.raises(StoreError) as info:
        build_demo(n_train=8, n_val=4, n_test=4)
    _assert_clear(info.value, root / "datasets")
