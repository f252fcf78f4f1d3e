"""FeatureData's check for broken feature rows (NaN, inf, |value| > MAX_ABS_FEATURE) reads the rows in blocks
(issue 14 item 3): ``np.abs`` of all of CelebA's [202,599, 1,024] float32 features was an 830 MB temporary plus an
[N, d] bool mask on every dashboard start. Same rows found, block boundaries included; peak measured with
tracemalloc (numpy's allocations are traced)."""

from __future__ import annotations

import tracemalloc

import numpy as np

from clipcal import rowblocks
from clipcal.methods.base import MAX_ABS_FEATURE, _bad_rows


def _reference(arr):
    with np.errstate(invalid="ignore"):
        return np.flatnonzero(~(np.abs(arr) <= MAX_ABS_FEATURE).all(axis=1))


def test_bad_rows_are_the_rows_the_whole_array_check_finds(monkeypatch):
    monkeypatch.setattr(rowblocks, "BLOCK_BYTES", 4 * 16 * 7)  # 7 rows a block: boundaries fall among bad rows
    x = np.random.default_rng(0).normal(size=(100, 16)).astype(np.float32)
    for row, col, value in ((0, 3, np.nan), (6, 0, np.inf), (7, 15, -np.inf), (13, 2, 3e38), (99, 9, -2e18)):
        x[row, col] = value
    x[50, 4] = MAX_ABS_FEATURE  # the limit itself is allowed
    got = _bad_rows(x)
    np.testing.assert_array_equal(got, _reference(x))
    np.testing.assert_array_equal(got, [0, 6, 7, 13, 99])
    assert got.dtype == np.int64
    assert len(_bad_rows(np.zeros((0, 16), np.float32))) == 0


def test_no_temporary_of_the_array_size_is_allocated(monkeypatch):
    monkeypatch.setattr(rowblocks, "BLOCK_BYTES", 1 << 20)
    x = np.ones((40_000, 256), np.float32)  # 40 MB
    _bad_rows(x[:10])  # imports outside the measurement
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        assert len(_bad_rows(x)) == 0
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < x.nbytes / 8, f"peak {peak / 1e6:.1f} MB for a {x.nbytes / 1e6:.0f} MB array"
