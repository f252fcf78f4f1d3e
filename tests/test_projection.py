"""clipcal.projection: joint UMAP (one fit on [before; after], cached, one at a time) and displacement views."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest

from clipcal import projection as P
from clipcal.errors import MethodError
from clipcal.store import Store


def _blobs(n_per=60, dim=24, seed=0, shift=0.0):
    """Two well separated Gaussian blobs (classes 0/1); ``shift`` moves class 1 along another axis."""
    rng = np.random.default_rng(seed)
    c0, c1 = np.zeros(dim), np.zeros(dim)
    c0[0], c1[1] = 6.0, 6.0
    x = np.concatenate([c0 + rng.normal(size=(n_per, dim)), c1 + rng.normal(size=(n_per, dim))])
    y = np.repeat([0, 1], n_per)
    after = x.copy()
    after[y == 1, 2] += shift
    return x.astype(np.float32), after.astype(np.float32), y


class _FakeFit:
    """Stand-in for ``_fit``: records inputs and the largest number of fits running at once."""

    def __init__(self, delay=0.0):
        self.calls, self.active, self.max_active, self.delay = [], 0, 0, delay
        self._guard = threading.Lock()

    def __call__(self, x, seed, n_neighbors, min_dist, metric, force_approximation=False):
        with self._guard:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.calls.append(x.copy())
        time.sleep(self.delay)
        with self._guard:
            self.active -= 1
        return np.column_stack([x[:, 0], x[:, 1]]).astype(np.float32)


@pytest.mark.slow  # first UMAP fit in a process pays numba JIT (15-60 s on 2 shared cores)
def test_joint_umap_shapes_separation_and_determinism():
    assert P.warm_up() >= 0.0
    assert P.warm_up() == 0.0  # compiled once per process
    before, after, y = _blobs(shift=3.0)
    xb, xa = P.joint_umap(before, after, store=None, seed=0, n_neighbors=10)
    assert xb.shape == (120, 2) and xa.shape == (120, 2)
    assert xb.dtype == np.float32 and np.isfinite(xb).all() and np.isfinite(xa).all()
    # the two classes stay apart in the map: centroid gap much larger than the within-class spread
    gap = np.linalg.norm(xb[y == 0].mean(0) - xb[y == 1].mean(0))
    spread = max(xb[y == 0].std(0).max(), xb[y == 1].std(0).max())
    assert gap > 2 * spread
    xb2, xa2 = P.joint_umap(before, after, store=None, seed=0, n_neighbors=10)
    np.testing.assert_array_equal(xb, xb2)
    np.testing.assert_array_equal(xa, xa2)
    only, none = P.joint_umap(before, None, seed=0, n_neighbors=10)
    assert only.shape == (120, 2) and none is None


def test_fit_is_on_the_concatenation_before_then_after(monkeypatch):
    fake = _FakeFit()
    monkeypatch.setattr(P, "_fit", fake)
    before, after, _ = _blobs(n_per=5, dim=4, shift=1.0)
    xb, xa = P.joint_umap(before, after)
    assert len(fake.calls) == 1
    np.testing.assert_array_equal(fake.calls[0], np.concatenate([before, after]))
    np.testing.assert_array_equal(xb, before[:, :2])
    np.testing.assert_array_equal(xa, after[:, :2])


def test_store_serves_the_second_call_and_keys_on_content_and_params(tmp_path, monkeypatch):
    fake = _FakeFit()
    monkeypatch.setattr(P, "_fit", fake)
    store = Store(tmp_path / "store")
    before, after, _ = _blobs(n_per=10, dim=6, shift=1.0)
    kf = {"benchmark": "demo-abc", "backbone": "tiny:clip", "run": "r1"}
    r1 = P.joint_umap(before, after, store, kf)
    r2 = P.joint_umap(before.copy(), after.copy(), store, kf)  # equal content, new arrays
    assert len(fake.calls) == 1
    np.testing.assert_array_equal(r1[0], r2[0])
    np.testing.assert_array_equal(r1[1], r2[1])
    (manifest,) = store.list("projections")
    kf_stored = manifest["key_fields"]
    assert kf_stored["benchmark"] == "demo-abc" and kf_stored["input_sha256"] == P.array_digest(before, after)
    assert (kf_stored["n_neighbors"], kf_stored["min_dist"], kf_stored["metric"], kf_stored["seed"]) == (15, 0.1, "cosine", 0)
    assert manifest["meta"]["n_points"] == 40 and manifest["meta"]["rows"] == "before then after"
    # different content, different params, or a different seed → a new fit each
    after2 = after.copy()
    after2[0, 0] += 1e-3
    P.joint_umap(before, after2, store, kf)
    P.joint_umap(before, after, store, kf, n_neighbors=5)
    P.joint_umap(before, after, store, kf, seed=1)
    assert len(fake.calls) == 4
    assert len(store.list("projections")) == 4
    # look-up without fitting: same key for float64 copies of the inputs; None for unseen inputs
    hit = P.stored_joint_umap(before.astype(np.float64), after, store, kf)
    np.testing.assert_array_equal(hit[0], r1[0])
    np.testing.assert_array_equal(hit[1], r1[1])
    assert P.stored_joint_umap(before, after, store, kf, min_dist=0.5) is None
    assert len(fake.calls) == 4
    # a fresh Store object on the same folder (another process) reads the entry without fitting
    r3 = P.joint_umap(before, after, Store(tmp_path / "store"), kf)
    assert len(fake.calls) == 4
    np.testing.assert_array_equal(r3[1], r1[1])


def test_only_one_umap_runs_at_a_time_and_waiters_read_the_store(tmp_path, monkeypatch):
    fake = _FakeFit(delay=0.2)
    monkeypatch.setattr(P, "_fit", fake)
    store = Store(tmp_path / "store")
    before, after, _ = _blobs(n_per=10, dim=6, shift=1.0)
    other = before + 1.0
    results, errors = [], []

    def work(b):
        try:
            results.append(P.joint_umap(b, after, store, {"k": "same"}))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(b,)) for b in (before, before, before, other, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert len(results) == 5
    assert fake.max_active == 1          # never two fits at once
    assert len(fake.calls) == 2          # one per distinct input; the others were served by the store


def test_bad_inputs_raise_method_error():
    before, after, _ = _blobs(n_per=5, dim=4)
    with pytest.raises(MethodError, match="differ in shape"):
        P.joint_umap(before, after[:-1])
    bad = before.copy()
    bad[3, 1] = np.nan
    with pytest.raises(MethodError, match=r"NaN or inf in rows \[3\]"):
        P.joint_umap(bad, None)
    with pytest.raises(MethodError, match="at least 4 points"):
        P.joint_umap(before[:1], after[:1])
    with pytest.raises(MethodError, match="2-D"):
        P.joint_umap(before[0], None)


def test_array_digest_sees_content_dtype_and_shape():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert P.array_digest(a) == P.array_digest(a.copy())
    assert P.array_digest(a) != P.array_digest(a.astype(np.float64))
    assert P.array_digest(a) != P.array_digest(a.reshape(4, 3))
    assert P.array_digest(a, None) != P.array_digest(a, a)
    assert P.array_digest(np.asfortranarray(a)) == P.array_digest(a)


def test_displacement_values():
    xb = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    xa = np.array([[3.0, 4.0], [1.0, 1.0], [2.0, 1.0]])
    eb = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    ea = np.array([[0.0, 1.0], [0.0, 5.0], [-1.0, -1.0]])
    d = P.displacement(xb, xa, eb, ea, sample_ids=["a", "b", "c"])
    assert list(d["sample_id"]) == ["a", "b", "c"]
    np.testing.assert_allclose(d["move_2d"], [5.0, 0.0, 1.0])
    np.testing.assert_allclose(d["cos_change"], [1.0, 0.0, 2.0], atol=1e-12)
    np.testing.assert_allclose(d["move_emb"], [np.sqrt(2), 0.0, 2.0], atol=1e-12)
    assert list(d["rank_2d"]) == [1, 3, 2]
    np.testing.assert_allclose(d[["dx", "dy"]].to_numpy(), xa - xb)


def test_crossed_boundary():
    y = np.array([0, 0, 1, 1, 2])
    before = np.array([1, 0, 1, 0, 1])
    after = np.array([0, 1, 1, 0, 0])
    c = P.crossed_boundary(before, after, y)
    assert list(c) == ["fixed", "broken", "unchanged", "unchanged", "unchanged"]
    assert list(c.categories) == ["fixed", "broken", "unchanged"]
    d = P.crossed_boundary(before, after, y, detailed=True)
    assert list(d) == ["fixed", "broken", "still correct", "still wrong", "still wrong"]


def test_group_centroid_shifts():
    xb = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [5.0, 5.0]])
    xa = xb + np.array([[3.0, 4.0], [3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    eb = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    ea = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    s = P.group_centroid_shifts(xb, xa, eb, ea, [0, 0, 1, -1], group_names=["g0", "g1"])
    s = s.set_index("group")
    assert s.loc[0, "name"] == "g0" and s.loc[-1, "name"] == "unknown"
    assert s.loc[0, "n"] == 2
    np.testing.assert_allclose(s.loc[0, ["x_before", "y_before", "x_after", "y_after"]].astype(float),
                               [1.0, 0.0, 4.0, 4.0])
    assert s.loc[0, "shift_2d"] == pytest.approx(5.0)
    assert s.loc[0, "cos_shift"] == pytest.approx(1.0)
    assert s.loc[1, "shift_2d"] == pytest.approx(0.0) and s.loc[1, "cos_shift"] == pytest.approx(0.0)
    assert isinstance(s, pd.DataFrame)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_knn_matches_sklearn(metric):
    from sklearn.neighbors import NearestNeighbors

    x = np.random.default_rng(0).normal(size=(300, 12)).astype(np.float32)
    idx, dist = P.exact_knn(x, 8, metric, block=64)  # several blocks
    assert idx.shape == (300, 8) and idx.dtype == np.int32 and dist.dtype == np.float32
    assert (idx[:, 0] == np.arange(300)).all() and (dist[:, 0] == 0).all()
    ref_d, ref_i = NearestNeighbors(n_neighbors=8, metric=metric, algorithm="brute").fit(x).kneighbors(x)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(dist, ref_d, atol=1e-4)
    assert (np.diff(dist, axis=1) >= 0).all()
