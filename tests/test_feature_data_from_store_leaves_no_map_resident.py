"""FeatureData.from_store copies the stored features and embeddings in row blocks and releases the store maps'
pages as it goes (issue 14.3): at CelebA size the copies used to sit beside 1.45 GB of resident mapped pages
(the dashboard's peak on every page). ``store.release_pages`` also releases the map behind a plain-ndarray view
(``np.asarray`` of a store array), which it used to skip silently."""

from __future__ import annotations

import numpy as np

from clipcal import rowblocks
from clipcal.methods.base import FeatureData
from clipcal.store import Store, release_pages
from tests.test_store_maps_release_their_pages import _resident_kb


def test_from_store_copies_equal_rows_and_leaves_the_maps_released(syn_small_ds, tmp_path, monkeypatch):
    monkeypatch.setattr(rowblocks, "BLOCK_BYTES", 1 << 14)
    es = syn_small_ds.embedding_set()
    feats = np.ascontiguousarray(es.features, dtype=np.float32)
    embs = np.ascontiguousarray(es.embeddings, dtype=np.float32)
    entry = Store(tmp_path / "store").put("t", {"k": 1}, {"features": feats, "embeddings": embs})
    es.features, es.embeddings = entry.array("features"), entry.array("embeddings")
    files = [entry.path / entry.manifest["arrays"][k]["file"] for k in ("features", "embeddings")]
    float(es.features.sum()), float(es.embeddings.sum())  # every page resident before
    assert all(_resident_kb(f) > 0 for f in files)
    fd = FeatureData.from_store(syn_small_ds.benchmark(), es)
    assert [_resident_kb(f) for f in files] == [0, 0]
    np.testing.assert_array_equal(fd.features, feats)
    np.testing.assert_array_equal(fd.embeddings, embs)
    assert fd.features.dtype == np.float32 and not isinstance(fd.features, np.memmap)


def test_release_pages_follows_a_view_to_its_map(tmp_path):
    x = np.arange(4096 * 256, dtype=np.float32).reshape(4096, 256)
    entry = Store(tmp_path / "store").put("t", {"k": 2}, {"x": x})
    file = entry.path / entry.manifest["arrays"]["x"]["file"]
    view = np.asarray(entry.array("x"))
    float(view.sum())
    assert _resident_kb(file) > 0
    assert release_pages(view, x, None) == 1  # the view's map; the in-memory array and None are left alone
    assert _resident_kb(file) == 0
    np.testing.assert_array_equal(view[7], x[7])
