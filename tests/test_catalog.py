"""clipcal.catalog: what is in the store and how it is named and reopened — benchmark specs rebuilt from
manifests, labels, the embeddings and runs tables, the newest set a new session reopens (plain unit tests; the
pages only draw these)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clipcal import catalog
from clipcal.store import Store


def test_spec_key_is_stable_and_order_free():
    a = {"name": "csv", "root": "/d", "options": {"y_col": "label", "csv": "m.csv"}}
    b = {"options": {"csv": "m.csv", "y_col": "label"}, "root": "/d", "name": "csv"}
    assert catalog.spec_key(a) == catalog.spec_key(b)
    assert catalog.spec_key(a) != catalog.spec_key({**a, "root": "/e"})


def test_demo_spec_from_manifest_keeps_only_changed_options_typed_as_the_defaults():
    from clipcal.data.demo import DEFAULTS

    meta = {"benchmark": {"name": "demo", "params": {"n_train": "8", "n_val": 4.0, "seed": DEFAULTS["seed"],
                                                     "not_an_option": 1}}}
    spec = catalog.bench_spec_from_meta(meta)
    assert spec == {"name": "demo", "root": None, "options": {"n_train": 8, "n_val": 4}}
    assert type(spec["options"]["n_train"]) is int


def test_named_benchmark_spec_needs_a_root():
    assert catalog.bench_spec_from_meta({"benchmark": {"name": "waterbirds", "root": "/data/wb", "params": {}}}) \
        == {"name": "waterbirds", "root": "/data/wb", "options": {}}
    assert catalog.bench_spec_from_meta({"benchmark": {"name": "celeba", "params": {"root": "/c", "target": "x"}}}) \
        == {"name": "celeba", "root": "/c", "options": {"target": "x"}}
    assert catalog.bench_spec_from_meta({"benchmark": {"name": "waterbirds", "params": {}}}) is None
    assert catalog.bench_spec_from_meta({"benchmark": "not a dict"}) is None
    assert catalog.bench_spec_from_meta({}) is None


def test_labels():
    assert catalog.bench_label({"name": "demo", "root": None, "options": {"n_train": 8, "seed": 3}}).startswith(
        "demo — Waterbirds-lite (8/")
    assert catalog.bench_label({"name": "waterbirds", "root": "/data/wb"}) == "waterbirds — /data/wb"
    assert catalog.bench_label({"name": "metashift", "root": None}) == "metashift"
    assert catalog.source_label({"benchmark": {"name": "waterbirds", "root": "/data/wb"}}) == "/data/wb"
    assert catalog.source_label({}) == ""
    assert catalog.fmt_time("2026-11-29T08:40:12+00:00") == "2026-11-29 08:40 UTC"
    assert catalog.fmt_time(0) == "1970-01-01 00:00 UTC"
    assert catalog.fmt_time("yesterday") == "yesterday" and catalog.fmt_time(None) == ""
    assert catalog.method_short("zeroshot") == "zero-shot" and catalog.method_short("cfr") == "CFR"


class _Listing:
    """A store's ``list(kind)`` (oldest first), for the table builders."""

    def __init__(self, manifests):
        self.manifests = manifests

    def list(self, kind):
        assert kind == "embeddings"
        return self.manifests


def _manifest(minute: int, backbone: str, bench: dict, n: int) -> dict:
    return {"created": f"2026-11-29T08:{minute:02d}:00+00:00", "key_fields": {"benchmark": f"fp{minute}"},
            "meta": {"benchmark": bench, "backbone_spec": backbone, "n_embedded": n}}


def test_embeddings_table_newest_first_and_what_a_new_session_reopens(tmp_path):
    gone = f"open_clip:ViT-B-32:{tmp_path / 'gone.pt'}"
    store = _Listing([_manifest(1, "tiny:clip", {"name": "demo", "params": {"n_train": 8}}, 16),
                      _manifest(2, gone, {"name": "waterbirds", "root": "/data/wb", "params": {}}, 40),
                      _manifest(3, "tiny:clip", {"name": "waterbirds", "params": {}}, 7)])
    t = catalog.embeddings_table(store)
    assert list(t.columns) == catalog.EMBEDDINGS_COLUMNS
    assert t["images"].tolist() == [7, 40, 16]  # newest first
    assert t["created"].tolist()[0] == "2026-11-29 08:03 UTC" and t["fingerprint"].tolist()[0] == "fp3"
    assert t["bench_spec"].iloc[0] is None and t["source"].iloc[1] == "/data/wb"
    # the newest has no files to reopen, the next one's checkpoint is gone: the demo one is reopened
    bench, backbone = catalog.newest_reopenable(t)
    assert bench == {"name": "demo", "root": None, "options": {"n_train": 8}} and backbone == "tiny:clip"
    assert catalog.newest_reopenable(t.iloc[:2]) is None
    assert catalog.weights_gone(gone) is True
    assert catalog.weights_gone("tiny:clip") is False
    assert catalog.weights_gone("open_clip:NoSuchArch:nothing") is True  # unparsable counts as gone


def test_embeddings_table_of_a_real_store(tmp_path):
    store = Store(tmp_path / "store")
    store.put("embeddings", {"benchmark": "fp", "backbone": {"spec": "tiny:clip"}}, {"x": np.zeros(2)},
              meta={"benchmark": {"name": "demo", "params": {}}})
    t = catalog.embeddings_table(store)
    assert t["backbone"].tolist() == ["tiny:clip"] and t["fingerprint"].tolist() == ["fp"]  # from the key
    assert catalog.embeddings_table(Store(tmp_path / "empty")).empty


def test_runs_table_and_entries_from_list_runs():
    runs = pd.DataFrame({"key": ["k2", "k1"], "created": ["2026-11-29T12:33:00+00:00", ""],
                         "benchmark": ["demo", "demo"], "backbone": ["tiny:clip"] * 2,
                         "methods": ["erm,cfr", "dfr"], "changed": ["cfr.lr=0.001", ""],
                         "test_worst_group": [{"erm": 0.5, "cfr": float("nan")}, {}]})
    t = catalog.runs_table(runs)
    assert t["methods"].tolist() == ["erm, cfr", "dfr"]
    assert t["best test worst-group"].iloc[0] == 0.5 and np.isnan(t["best test worst-group"].iloc[1])
    assert t["by"].tolist() == ["ERM", ""]  # the method that reached it, never a bare number
    assert catalog.best_of({"erm": 0.5, "dfr": 0.8, "cfr": float("nan")}) == (0.8, "dfr")
    assert t["created"].tolist() == ["2026-11-29 12:33 UTC", ""]
    entries = catalog.run_entries(runs)
    assert entries[0] == {"id": "k2", "created": "2026-11-29T12:33:00+00:00", "methods": ["erm", "cfr"],
                          "test_worst_group": {"erm": 0.5, "cfr": pytest.approx(float("nan"), nan_ok=True)},
                          "changed": "cfr.lr=0.001"}
    label = catalog.run_label(entries[0])
    assert label == "2026-11-29 12:33 UTC · ERM, CFR · cfr.lr=0.001 · best test worst-group 0.50 (ERM)"
    assert catalog.best_score({"a": None, "b": float("nan")}) is None
