"""Representations at CelebA size (issue 14 item 3): the per-group centroid shifts and the neighbourhood class
purity give the numbers of the straightforward formulas, without their full-size temporaries — the centroid shifts
made float64 unit copies of both [N, e] embeddings plus a fancy-index copy per group (+3.6 GB at 202,599 × 768);
the purity let sklearn compute 1 GB chunks of the distance matrix (+3.2 GB on CelebA's 19,962 test images).
Peaks measured with tracemalloc (numpy's allocations are traced)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from clipcal import rowblocks, separation
from clipcal.projection import group_centroid_shifts


def _peak(fn):
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _shifts_reference(xb, xa, eb, ea, g):
    """The formula written out on whole arrays: per group, map centroids and 1 − cos of the mean unit vectors."""
    ub, ua = _unit(eb), _unit(ea)
    rows = []
    for lab in sorted(pd.unique(g)):
        m = g == lab
        mb, ma = ub[m].mean(0), ua[m].mean(0)
        cos = 1 - mb @ ma / (np.linalg.norm(mb) * np.linalg.norm(ma))
        rows.append((lab, m.sum(), *xb[m].mean(0), *xa[m].mean(0), cos))
    return pd.DataFrame(rows, columns=["group", "n", "x_before", "y_before", "x_after", "y_after", "cos_shift"])


def _data(n, e, seed=0):
    rng = np.random.default_rng(seed)
    eb = rng.normal(size=(n, e)).astype(np.float32)
    ea = eb + rng.normal(scale=0.3, size=(n, e)).astype(np.float32)
    g = rng.integers(-1, 4, n)
    ea[g == 2] = eb[g == 2]  # group 2 unchanged: its shift must be exactly 0
    xb, xa = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    return xb, xa, eb, ea, g


def test_centroid_shifts_equal_the_whole_array_formula(monkeypatch):
    monkeypatch.setattr(rowblocks, "BLOCK_BYTES", 8 * 24 * 37)  # 37 rows a block
    xb, xa, eb, ea, g = _data(1_000, 24)
    got = group_centroid_shifts(xb, xa, eb, ea, g, ["a", "b", "c", "d"])
    ref = _shifts_reference(xb, xa, eb, ea, g)
    assert got["group"].tolist() == ref["group"].tolist() == [-1, 0, 1, 2, 3]
    assert got["name"].tolist() == ["unknown", "a", "b", "c", "d"]
    assert got["n"].tolist() == ref["n"].tolist()
    for col in ("x_before", "y_before", "x_after", "y_after", "cos_shift"):
        np.testing.assert_allclose(got[col], ref[col], rtol=1e-9, atol=1e-12, err_msg=col)
    assert got.loc[got["group"] == 2, "cos_shift"].item() == 0.0


def test_centroid_shifts_hold_no_full_float64_copy(monkeypatch):
    monkeypatch.setattr(rowblocks, "BLOCK_BYTES", 1 << 20)
    xb, xa, eb, ea, g = _data(40_000, 128)  # one float64 copy of an embedding array: 41 MB
    group_centroid_shifts(xb[:50], xa[:50], eb[:50], ea[:50], g[:50])  # imports outside the measurement
    got, peak = _peak(lambda: group_centroid_shifts(xb, xa, eb, ea, g))
    assert len(got) == 5
    assert peak < 40_000 * 128 * 8 / 4, f"peak {peak / 1e6:.1f} MB"


def _purity_reference(x, y, k):
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(np.asarray(x, np.float64)
                                                                                  ).kneighbors(return_distance=False)
    return (y[idx] == y[:, None]).mean(1)


def test_purity_equals_the_unchunked_neighbour_search(monkeypatch):
    monkeypatch.setattr(separation, "KNN_WORKING_MEMORY_MB", 0.05, raising=False)  # chunks of a few rows
    xb, xa, eb, ea, g = _data(600, 16, seed=1)
    y = (g % 2).astype(np.int64)
    rows = np.flatnonzero(np.arange(600) % 3 != 0)
    got = separation.neighbourhood_purity(eb, ea, y, g, k=7, rows=rows)
    pb, pa = _purity_reference(eb[rows], y[rows], 7), _purity_reference(ea[rows], y[rows], 7)
    for lab, row in zip(got["group"], got.itertuples()):
        m = g[rows] == lab
        assert row.n == m.sum()
        assert row.purity_before == pytest.approx(pb[m].mean(), abs=1e-12)
        assert row.purity_after == pytest.approx(pa[m].mean(), abs=1e-12)


def test_purity_does_not_hold_a_large_chunk_of_the_distance_matrix(monkeypatch):
    monkeypatch.setattr(separation, "KNN_WORKING_MEMORY_MB", 4, raising=False)
    xb, xa, eb, ea, g = _data(4_000, 32, seed=2)
    y = (g % 2).astype(np.int64)
    separation.neighbourhood_purity(eb[:50], ea[:50], y[:50], g[:50])  # imports outside the measurement
    # sklearn's default chunk (1 GB) holds all 4,000 × 4,000 float64 distances (128 MB) and their ranking
    got, peak = _peak(lambda: separation.neighbourhood_purity(eb, ea, y, g))
    assert len(got) == 5
    assert peak < 4_000 * 4_000 * 8 / 4, f"peak {peak / 1e6:.1f} MB"
