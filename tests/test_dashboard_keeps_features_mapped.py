"""The dashboard's FeatureData keeps the pre-projection features as the store's read-only map
(``FeatureData.from_store(..., features_in_memory=False)``, issue 14.3): no page view reads them except concepts
from images, and their in-memory copy was 830 MB of the server's RSS at CelebA size on every page (the cold map job
peaked at 4.35 GB). Values, checks and training are unchanged; only where the bytes live differs."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest

from clipcal.methods import get_method
from clipcal.methods.base import FeatureData, MethodError
from clipcal.store import Store
from tests.test_store_maps_release_their_pages import _resident_kb


def _stored(syn_small_ds, tmp_path, feats=None):
    es = syn_small_ds.embedding_set()
    feats = np.ascontiguousarray(es.features if feats is None else feats, dtype=np.float32)
    embs = np.ascontiguousarray(es.embeddings, dtype=np.float32)
    entry = Store(tmp_path / "store").put("t", {"k": 1}, {"features": feats, "embeddings": embs})
    es.features, es.embeddings = entry.array("features"), entry.array("embeddings")
    return es, feats, entry.path / entry.manifest["arrays"]["features"]["file"]


def _traced(fn):
    fn()  # one-time work (imports, caches) is not what is measured
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_mapped_features_are_the_map_with_equal_values_and_no_copy(syn_small_ds, tmp_path):
    es, feats, file = _stored(syn_small_ds, tmp_path)
    bench = syn_small_ds.benchmark()
    copied, peak_copied = _traced(lambda: FeatureData.from_store(bench, es))
    mapped, peak_mapped = _traced(lambda: FeatureData.from_store(bench, es, features_in_memory=False))
    assert mapped.features_mapped and not copied.features_mapped
    assert not mapped.features.flags.writeable and copied.features.flags.writeable
    assert peak_mapped < peak_copied - 0.9 * feats.nbytes, (peak_mapped, peak_copied, feats.nbytes)
    assert _resident_kb(file) == 0  # the construction checks read the map and released it
    np.testing.assert_array_equal(mapped.features, copied.features)
    np.testing.assert_array_equal(mapped.embeddings, copied.embeddings)


def test_mapped_features_still_refuse_broken_rows(syn_small_ds, tmp_path):
    es = syn_small_ds.embedding_set()
    bad = np.ascontiguousarray(es.features, dtype=np.float32).copy()
    bad[3, 0] = np.inf
    es2, _, _ = _stored(syn_small_ds, tmp_path, feats=bad)
    with pytest.raises(MethodError, match="features contain NaN, inf"):
        FeatureData.from_store(syn_small_ds.benchmark(), es2, features_in_memory=False)


def test_a_method_trains_the_same_on_mapped_features(syn_small_ds, tmp_path):
    es, _, _ = _stored(syn_small_ds, tmp_path)
    results = []
    for in_memory in (True, False):
        fd = FeatureData.from_store(syn_small_ds.benchmark(), es, features_in_memory=in_memory)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # torch warns on a read-only array: none may reach it
            results.append(get_method("erm")(epochs=3, seed=0).fit(fd).result_)
    np.testing.assert_array_equal(results[0].probs, results[1].probs)


def test_rows_in_another_order_are_copied_as_before(syn_small_ds, tmp_path):
    es, feats, _ = _stored(syn_small_ds, tmp_path)
    bench = syn_small_ds.benchmark()
    bench.table = bench.table.iloc[::-1].reset_index(drop=True)  # the table's order is not the store's
    fd = FeatureData.from_store(bench, es, features_in_memory=False)
    assert not fd.features_mapped and fd.features.flags.writeable
    np.testing.assert_array_equal(fd.features, feats[::-1])


def test_the_dashboards_feature_data_keeps_the_map(syn_small_ds, tmp_path, monkeypatch):
    from pages.ui import resources

    es, feats, file = _stored(syn_small_ds, tmp_path)
    monkeypatch.setattr(resources, "fingerprint", lambda bench: f"fp-{tmp_path}")
    resources.forget("fd")
    fd = resources.feature_data(syn_small_ds.benchmark(), es)
    assert fd.features_mapped and not fd.features.flags.writeable and fd.embeddings.flags.writeable
    assert _resident_kb(file) == 0
    np.testing.assert_array_equal(fd.features, feats)
    resources.forget("fd")


def test_the_concept_vector_job_releases_the_map_it_read(syn_small_ds, tmp_path, monkeypatch):
    import contextlib

    import clipcal.cav as cav
    from pages.ui import resources, spurious

    es, feats, file = _stored(syn_small_ds, tmp_path)
    monkeypatch.setattr(resources, "fingerprint", lambda bench: f"fp-{tmp_path}")
    resources.forget("fd")
    fd = resources.feature_data(syn_small_ds.benchmark(), es)
    for name, value in (("load_bench", lambda spec: None), ("get_run", lambda run_id: None),
                        ("run_feature_data", lambda run, bench, spec=None: fd), ("get_store", lambda: None),
                        ("loaded_model", lambda spec: contextlib.nullcontext(None))):
        monkeypatch.setattr(resources, name, value)
    monkeypatch.setattr(spurious.views, "method_result", lambda run, method: None)
    # the job's last-layer fit reads every row of h (cav.recover_last_layer)
    monkeypatch.setattr(cav, "concept_report_job", lambda fd, *a, **k: float(np.asarray(fd.features).sum()))
    assert spurious._cav_worker("run", {}, "spec", "erm", {}, None, 4) == pytest.approx(float(feats.sum()))
    assert _resident_kb(file) == 0
    resources.forget("fd")
