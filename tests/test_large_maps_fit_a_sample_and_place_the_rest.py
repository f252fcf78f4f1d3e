"""Maps of many samples (issue 14 item 3): above LARGE_MAP_THRESHOLD samples the joint UMAP is fitted on a seeded,
stratified sample and the other points are placed with umap's transform; the sample's parameters are part of the
store key; the map is repeatable, shows no movement the embeddings do not have, and says how it was made."""

from __future__ import annotations

import numpy as np
import pytest

from clipcal import projection as P
from clipcal import sampled_map as S
from clipcal.store import Store

PARAMS = P._params(0, 15, 0.1, "cosine")


def _small_limits(monkeypatch, threshold=100, fit=80, floor=15, chunk=64):
    monkeypatch.setattr(S, "LARGE_MAP_THRESHOLD", threshold)
    monkeypatch.setattr(S, "LARGE_MAP_FIT_SAMPLES", fit)
    monkeypatch.setattr(S, "LARGE_MAP_STRATUM_FLOOR", floor)
    monkeypatch.setattr(S, "PLACE_CHUNK", chunk)


def test_key_of_a_large_map_holds_the_sample_parameters_and_small_keys_do_not_change(monkeypatch):
    _small_limits(monkeypatch)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 8)).astype(np.float32)
    groups = rng.integers(0, 4, 120)
    k = P.projection_key(x, x, {}, PARAMS, strata=groups)
    assert (k["sample_threshold"], k["fit_samples"], k["stratum_floor"], k["place_chunk"]) == (100, 80, 15, 64)
    assert k["strata_sha256"] != "none"
    # every sample parameter, and the strata, change the key
    assert P.projection_key(x, x, {}, PARAMS, strata=None) != k
    assert P.projection_key(x, x, {}, PARAMS, strata=(groups + 1) % 4) != k
    monkeypatch.setattr(S, "LARGE_MAP_FIT_SAMPLES", 60)
    assert P.projection_key(x, x, {}, PARAMS, strata=groups) != k
    monkeypatch.setattr(S, "LARGE_MAP_FIT_SAMPLES", 80)
    monkeypatch.setattr(S, "LARGE_MAP_STRATUM_FLOOR", 5)
    assert P.projection_key(x, x, {}, PARAMS, strata=groups) != k
    # at or below the threshold: the key a map had before sampled maps existed (strata ignored)
    small = x[:100]
    ks = P.projection_key(small, small, {}, PARAMS, strata=groups[:100])
    assert ks == P.projection_key(small, small, {}, PARAMS) and not any("sample" in f for f in ks)


def test_stratified_sample_is_seeded_sorted_and_keeps_small_groups():
    groups = np.array([0] * 9000 + [1] * 900 + [2] * 100)
    s = S.stratified_sample(groups, len(groups), size=1000, floor=150, seed=0)
    assert np.array_equal(s, np.sort(s)) and len(np.unique(s)) == len(s)
    counts = np.bincount(groups[s], minlength=3)
    # proportional share (900, 90, 10) lifted to the floor, never above the group's size
    assert counts.tolist() == [900, 150, 100]
    assert np.array_equal(s, S.stratified_sample(groups, len(groups), size=1000, floor=150, seed=0))
    assert not np.array_equal(s, S.stratified_sample(groups, len(groups), size=1000, floor=150, seed=1))
    assert len(S.stratified_sample(None, 5000, size=700, seed=0)) == 700


def _blobs(n_per=150, dim=16, seed=0):
    """Two classes × two attribute values; 'after' removes the attribute direction for half the samples and
    leaves the other half exactly unchanged."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2, dim)) * 4
    attr = rng.normal(size=dim) * 2
    y = np.repeat([0, 1], n_per)
    a = rng.integers(0, 2, len(y))
    before = (centres[y] + np.outer(2 * a - 1, attr) + rng.normal(size=(len(y), dim))).astype(np.float32)
    after = before.copy()
    changed = np.arange(len(y)) % 2 == 0
    after[changed] -= np.outer(2 * a[changed] - 1, attr).astype(np.float32)
    before[7] = before[3]  # an exact duplicate sample (the same image twice)
    after[7] = after[3]
    return before, after, y, 2 * y + a, changed


class _FakeModel:
    """Stands in for a fitted umap.UMAP: transform = the first two coordinates plus noise drawn per call (as umap's
    transform draws its random numbers per call), so rows placed in different calls land apart."""

    def __init__(self):
        self.calls = []

    def transform(self, x):
        self.calls.append(len(x))
        noise = np.random.default_rng(len(self.calls)).normal(size=(len(x), 2)) * 1e-3
        return np.asarray(x[:, :2], np.float64) + noise


class _FakeFit:
    def __init__(self):
        self.fitted, self.model = [], _FakeModel()

    def __call__(self, x, seed, n_neighbors, min_dist, metric, force_approximation=False, return_model=False):
        self.fitted.append(len(x))
        xy = np.asarray(x[:, :2], np.float32)
        return (xy, self.model) if return_model else xy


def test_large_map_wiring_sample_fitted_rest_placed_in_fixed_chunks_without_invented_movement(monkeypatch):
    _small_limits(monkeypatch)
    fake = _FakeFit()
    monkeypatch.setattr(P, "_fit", fake)
    before, after, y, groups, changed = _blobs()
    n = len(y)
    m = P.joint_umap(before, after, strata=groups)
    fit = S.stratified_sample(groups, n, size=80, floor=15, seed=0)
    assert fake.fitted == [2 * len(fit)]  # one fit, on the sample's before and after rows
    # transformed: every before row outside the sample and the after rows among them that changed — but
    # samples 3 and 7 (odd: unchanged) are the same image, transformed once or taken from the fit
    outside = ~np.isin(np.arange(n), fit)
    placed_rows = int(outside.sum() + (changed & outside).sum()) - (0 if {3, 7} <= set(fit.tolist()) else 1)
    assert sum(fake.model.calls) == placed_rows and max(fake.model.calls) <= 64
    xb, xa = m
    assert (m.info["fitted_points"], m.info["placed_points"]) == (2 * len(fit), 2 * (n - len(fit)))
    np.testing.assert_array_equal(xb[fit], before[fit, :2])  # fitted rows keep their fitted places
    np.testing.assert_array_equal(xa[~changed], xb[~changed])  # unchanged samples do not move
    np.testing.assert_array_equal(xb[7], xb[3])  # the same image twice is one point
    np.testing.assert_array_equal(xa[7], xa[3])
    np.testing.assert_allclose(xa, after[:, :2], atol=1e-2)  # every row placed where transform put it


@pytest.mark.slow
@pytest.mark.timeout(2400)  # pynndescent compiles on first use (~80 s of CPU, minutes on a busy machine)
def test_large_map_fits_a_stratified_sample_places_the_rest_repeatably_and_says_so(tmp_path, monkeypatch):
    _small_limits(monkeypatch)
    before, after, y, groups, changed = _blobs()
    n = len(y)
    store = Store(tmp_path / "store")
    fits = P.FIT_COUNT
    xb, xa = m = P.joint_umap(before, after, store, {"run": "r"}, strata=groups)
    assert P.FIT_COUNT == fits + 1  # one UMAP fit, on the sample; the rest is placed, not fitted
    fit = S.stratified_sample(groups, n, size=80, floor=15, seed=0)
    assert m.info["fitted_samples"] == len(fit) and m.info["fitted_points"] == 2 * len(fit)
    assert m.info["placed_points"] == 2 * n - 2 * len(fit) and m.info["stratified_by"] == "group"
    assert np.isfinite(xb).all() and np.isfinite(xa).all()
    # no invented movement: unchanged samples sit on one point; the duplicate sample sits where its twin does
    np.testing.assert_array_equal(xa[~changed], xb[~changed])
    np.testing.assert_array_equal(xb[7], xb[3])
    np.testing.assert_array_equal(xa[7], xa[3])
    # placed points land with their own class: nearer their class's fitted centre than the other's
    placed = np.setdiff1d(np.arange(n), fit)
    centre = np.stack([xb[fit][y[fit] == k].mean(0) for k in (0, 1)])
    d = np.linalg.norm(xb[placed][:, None, :] - centre[None], axis=2)
    assert (d.argmin(1) == y[placed]).mean() > 0.95
    # repeatable: a fresh fit (no store) gives the same map; the store serves the same map without fitting
    xb2, xa2 = P.joint_umap(before, after, None, strata=groups)
    np.testing.assert_array_equal(xb, xb2)
    np.testing.assert_array_equal(xa, xa2)
    hit = P.stored_joint_umap(before, after, store, {"run": "r"}, strata=groups)
    np.testing.assert_array_equal(hit[1], xa)
    assert hit.info == m.info and P.FIT_COUNT == fits + 2
    note = S.map_note(hit.info)
    assert f"{2 * len(fit):,}" in note and f"{2 * n - 2 * len(fit):,}" in note and "stratified by group" in note
    assert "seed 0" in note and S.map_note(P.joint_umap(before[:50], after[:50]).info) == ""
