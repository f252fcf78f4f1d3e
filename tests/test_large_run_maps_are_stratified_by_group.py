"""A run's map above LARGE_MAP_THRESHOLD samples (issue 14 item 3) is fitted on a sample stratified by the
FeatureData's groups, through both doors of clipcal.pipeline: the job (project) and the page's look-up
(stored_projection), which must use the same key (the strata's hash is part of it)."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pandas as pd

from clipcal import pipeline
from clipcal import projection as P
from clipcal import sampled_map as S
from clipcal.store import Store


def _fake_fit(x, seed, n_neighbors, min_dist, metric, force_approximation=False, return_model=False):
    class _Model:
        def transform(self, rows):
            return np.asarray(rows[:, :2], np.float64)

    xy = np.asarray(x[:, :2], np.float32)
    return (xy, _Model()) if return_model else xy


def test_a_large_run_map_is_stratified_by_group_and_the_page_finds_it(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "LARGE_MAP_THRESHOLD", 100)
    monkeypatch.setattr(S, "LARGE_MAP_FIT_SAMPLES", 60)
    monkeypatch.setattr(S, "LARGE_MAP_STRATUM_FLOOR", 10)
    monkeypatch.setattr(P, "_fit", _fake_fit)  # the wiring is under test, not UMAP
    rng = np.random.default_rng(0)
    n = 160
    ids = np.array([f"s{i}" for i in range(n)])
    before = rng.normal(size=(n, 8)).astype(np.float32)
    group = np.r_[np.zeros(150, np.int64), np.ones(10, np.int64)]  # a small group the floor must keep
    fd = NS(n=n, sample_ids=ids, embeddings=before, group=group)
    run = NS(key="run-1", labels=pd.DataFrame({"sample_id": ids}),
             results={"cfr": NS(embeddings_after=before + 0.5)})
    store = Store(tmp_path / "store")
    m = pipeline.project(run, fd, "cfr", "fp", "tiny:clip", store)
    assert m.info["stratified_by"] == "group"
    fit = S.stratified_sample(group, n, 60, 10, 0)
    assert m.info["fitted_samples"] == len(fit) and set(range(150, 160)) <= set(fit.tolist())
    hit = pipeline.stored_projection(run, fd, "cfr", "fp", "tiny:clip", store)
    assert hit is not None and hit.info == m.info
    np.testing.assert_array_equal(hit[1], m[1])
