"""A stored run's ``embeddings_after`` (622 MB at CelebA size) is a plain ndarray over a store memory map
(``MethodResult`` takes ``np.asarray`` of it), so ``store.release_pages`` of the array itself did nothing; the
Representations page's readers — the map's key hash, the purity's split rows, the per-row movement, the group
centroid shifts and the map job's input check — read it in blocks and release the map's pages after each (``store.release_pages`` finds
the map behind the view), so reading it does not leave the whole file resident. Numbers unchanged: the hash equals
sha256 of the whole array's bytes."""

from __future__ import annotations

import hashlib

import numpy as np

from clipcal import projection, rowblocks, views
from clipcal.projection import array_digest, group_centroid_shifts
from clipcal.separation import neighbourhood_purity
from clipcal.store import Store, release_pages
from tests.test_store_maps_release_their_pages import _resident_kb

N, E = 4096, 256  # 4 MiB of float32


def _stored_view(tmp_path):
    x = np.random.default_rng(0).normal(size=(N, E)).astype(np.float32)
    entry = Store(tmp_path / "store").put("t", {"k": 1}, {"x": x})
    view = np.asarray(entry.array("x"), dtype=np.float32)  # what MethodResult keeps
    return view, x, entry.path / entry.manifest["arrays"]["x"]["file"]


def test_the_map_behind_a_view_is_found_and_released(tmp_path):
    view, x, file = _stored_view(tmp_path)
    assert not isinstance(view, np.memmap) and isinstance(rowblocks.mapped_base(view), np.memmap)
    assert rowblocks.mapped_base(x) is None and not release_pages(x)
    float(view.sum())
    assert _resident_kb(file) >= 4000
    assert release_pages(view) == 1
    assert _resident_kb(file) == 0
    np.testing.assert_array_equal(view[5], x[5])


def test_take_rows_equals_fancy_indexing_and_leaves_nothing_resident(tmp_path, monkeypatch):
    monkeypatch.setattr(rowblocks, "BLOCK_BYTES", 1 << 16)
    view, x, file = _stored_view(tmp_path)
    rows = np.flatnonzero(np.arange(N) % 7 == 3)  # scattered rows touch nearly every page
    got = rowblocks.take_rows(view, rows)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, x[rows].astype(np.float64))
    np.testing.assert_array_equal(rowblocks.take_rows(view, np.arange(N) % 2 == 0, np.float32), x[::2])
    assert _resident_kb(file) < 200


def test_dashboard_readers_release_the_after_map(tmp_path, monkeypatch):
    monkeypatch.setattr(rowblocks, "BLOCK_BYTES", 1 << 18)
    view, x, file = _stored_view(tmp_path)
    g = np.arange(N) % 4
    y = g % 2
    xy = np.zeros((N, 2))
    readers = {
        "array_digest": lambda: array_digest(x[:10], view),
        "neighbourhood_purity": lambda: neighbourhood_purity(x, view, y, g, rows=np.arange(0, N, 3)),
        "group_centroid_shifts": lambda: group_centroid_shifts(xy, xy, x, view, g),
        "run_points movement": lambda: views._row_movement((xy, xy), x, view),
        "joint_umap's input check": lambda: projection._check("after", view),
    }
    for name, read in readers.items():
        release_pages(view)
        read()
        assert _resident_kb(file) < 1100, f"{name} left {_resident_kb(file)} kB of the 4 MiB map resident"


def test_array_digest_is_the_sha256_of_the_whole_arrays():
    a = np.arange(3 * 5 * 7, dtype=np.float32).reshape(3, 5, 7)
    b = np.arange(10.0)
    h = hashlib.sha256()
    for arr in (a, None, b, np.zeros((0, 4), np.float32)):
        if arr is None:
            h.update(b"<none>")
            continue
        h.update(f"{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    assert array_digest(a, None, b, np.zeros((0, 4), np.float32)) == h.hexdigest()


def test_a_large_map_job_leaves_no_page_of_the_after_map_resident(tmp_path, monkeypatch):
    """The sampled map's passes over ``after`` (fit sample, duplicate check, digests, placement chunks) release the
    map's pages: at CelebA size they left 600 MB of the 622 MB file resident during placement (the server's cold
    map peaked at 4.8 GB)."""
    from clipcal import sampled_map as S
    from tests.test_large_maps_fit_a_sample_and_place_the_rest import _small_limits

    _small_limits(monkeypatch, threshold=1000, fit=300, floor=20, chunk=1024)
    view, x, file = _stored_view(tmp_path)
    before = np.ascontiguousarray(x[:, ::-1])  # in memory, as FeatureData's embeddings
    seen = []
    real = S.P._fit

    def fit_spy(*a, **k):  # the fit sample's rows were read: their pages must already be gone
        seen.append(_resident_kb(file))
        return real(*a, **k)

    monkeypatch.setattr(S.P, "_fit", fit_spy)
    xy, info = S.sampled_map(before, view, strata=np.arange(N) % 4, seed=0)
    assert info["placed_points"] > 0 and np.isfinite(xy).all()
    assert seen == [0]
    assert _resident_kb(file) == 0
