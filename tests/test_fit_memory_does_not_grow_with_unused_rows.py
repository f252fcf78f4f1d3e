"""Methods that fit on a fixed subset of rows must not copy every row's features to do it (issue 14.4).

DFR fits on the validation split only; zero-shot reads each row once. Adding rows to the test split (as CelebA
adds 200,000 rows to a Waterbirds-sized validation set) may grow the fit's peak memory by what the *output*
needs per row ([N, K] probabilities), not by a float64 copy of the [N, e] embeddings: DFR used to standardise all
N rows in float64 (two copies, 1.7 GB at CelebA size) to fit on 20,000 of them.

Measured with ``tracemalloc`` (numpy's allocations are traced) on the same validation split with two sizes of
test split; only the growth of the peak between the two is compared, so fixed costs (sklearn's own) cancel.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from clipcal.methods import AFR, DFR, ZeroShot
from clipcal.methods.base import FeatureData

E = 256


def _data(n_test: int, seed: int = 0) -> FeatureData:
    """2 classes × 2 attributes, 400 train / 400 val rows, ``n_test`` test rows; features = embeddings (e = 256)."""
    rng = np.random.default_rng(seed)
    sizes = {"train": 400, "val": 400, "test": n_test}
    split = np.concatenate([[s] * n for s, n in sizes.items()])
    n = len(split)
    y, a = rng.integers(0, 2, n), rng.integers(0, 2, n)
    x = rng.standard_normal((n, E), dtype=np.float32)
    x[:, 0] += 2 * y - 1
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    head = np.zeros((2, E), np.float32)
    head[0, 0], head[1, 0] = -1, 1
    return FeatureData(features=x, embeddings=x, y=y, a=a, group=2 * y + a, split=split,
                       sample_ids=np.arange(n).astype(str), class_names=["c0", "c1"], attr_names=["a0", "a1"],
                       text_head=head, has_text=True)


def _fit_peak(method, data) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        method.fit(data)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("make", [lambda: DFR(Cs=[1.0, 0.1], n_retrain=2), lambda: ZeroShot()],
                         ids=["dfr", "zeroshot"])
def test_peak_grows_by_the_output_per_row_not_by_a_copy_of_the_features(make):
    small, large = _data(5_000), _data(35_000)
    added = large.n - small.n
    make().fit(small)                               # first fit imports sklearn / torch: not part of the peak
    growth = _fit_peak(make(), large) - _fit_peak(make(), small)
    float64_copy = added * E * 8                    # one float64 copy of the added rows' embeddings: 61 MB
    assert growth < 0.15 * float64_copy, f"peak grew by {growth / 2**20:.1f} MiB for {added} rows"


def test_afr_applies_its_head_without_a_float64_copy_of_every_embedding():
    """AFR's final ``z @ Vᵀ`` (z float32, V float64) upcast all N rows of z; it is applied in blocks now. The
    bound leaves room for what the shared ERM stage returns (clipcal.methods._train: the [N, e] float32
    embeddings, concatenated from blocks: half a float64 copy) — not for a float64 copy on top of it."""
    small, large = _data(5_000), _data(35_000)
    added = large.n - small.n
    make = lambda: AFR(epochs=1, gammas=[0.0], regs=[0.1])  # noqa: E731
    make().fit(small)
    growth = _fit_peak(make(), large) - _fit_peak(make(), small)
    float64_copy = added * E * 8
    assert growth < 0.8 * float64_copy, f"peak grew by {growth / 2**20:.1f} MiB for {added} rows"
