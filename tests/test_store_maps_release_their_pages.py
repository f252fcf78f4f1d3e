"""Memory maps of store arrays at CelebA size (issue 14 item 3): pages a reader has touched count in the process's
RSS for as long as the map lives; release_pages drops them (the array stays readable), and the dashboard's
FeatureData releases the embeddings' maps once it has copied them."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np

from clipcal.store import Store, release_pages


def _resident_kb(path) -> int:
    """Rss of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:  # a mapping's first line
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(head[1])
    return total


def _entry(tmp_path):
    store = Store(tmp_path / "store")
    x = np.arange(2**20, dtype=np.float32).reshape(1024, 1024)  # 4 MiB
    entry = store.put("t", {"k": 1}, {"x": x, "y": x[:, :8].copy()})
    return entry, x


def test_release_pages_drops_resident_pages_and_the_array_stays_readable(tmp_path):
    entry, x = _entry(tmp_path)
    a = entry.array("x")
    file = entry.path / entry.manifest["arrays"]["x"]["file"]
    assert float(a.sum()) == float(x.sum())  # touch every page
    assert _resident_kb(file) >= 4000
    assert release_pages(a, None, np.ones(3), entry.array("y", mmap=False)) == 1  # only the map is released
    assert _resident_kb(file) == 0
    np.testing.assert_array_equal(a[7], x[7])


def test_dashboard_feature_data_releases_the_embeddings_maps(tmp_path, monkeypatch):
    from clipcal.methods import FeatureData
    from pages.ui import resources

    entry, x = _entry(tmp_path)
    emb = NS(features=entry.array("x"), embeddings=entry.array("y"), backbone_spec="tiny:clip", key="k")
    files = [entry.path / entry.manifest["arrays"][n]["file"] for n in ("x", "y")]

    def from_store(bench, es, **kw):  # what the real one does to the maps: reads (copies) every row
        return NS(features=np.array(es.features), embeddings=np.array(es.embeddings))

    monkeypatch.setattr(FeatureData, "from_store", from_store)
    resources.forget("fd")
    monkeypatch.setattr(resources, "fingerprint", lambda bench: f"fp-{tmp_path}")
    fd = resources.feature_data(NS(), emb)
    np.testing.assert_array_equal(fd.features, x)
    assert [_resident_kb(f) for f in files] == [0, 0]
