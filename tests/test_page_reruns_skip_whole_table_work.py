"""A page rerun that changes nothing heavy does no work over every row (issue 14.3: reruns ≤ 1 s at CelebA size).

Measured on a CelebA-shaped store (202,599 rows, ``bench/page_rerun.py --size celeba``): Spurious attributes reran
in 1.43 s (median) and Representations in 1.04 s, over the 1 s goal, because every rerun

* looked selected rows up by turning all N sample ids into Python strings and a hash index, once per thumbnail
  grid (60 % of a Spurious rerun) — now a vectorised membership test that reads only the k hits as strings;
* compared the run's N sample ids with the embeddings' (``pipeline.check_run_rows``, 30 %) — now once per
  (run, embeddings), both immutable store entries;
* ranked the moved points and rebuilt the crossing and centroid-shift figures (Representations) — now memoised
  per run and method, like the map figure.

The first two are measured by allocations (no timing in tests), the last by counting calls on rerun.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from clipcal.data.base import Benchmark
from clipcal.plot_selection import image_grid_items, selection_table
from pages.ui import resources, state

N = 200_000


def _big_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "sample_id": pd.array([f"{i:06d}.jpg" for i in range(N)], dtype="str"),  # the store's arrow strings
        "path": pd.array([f"img/{i:06d}.jpg" for i in range(N)], dtype="str"),
        "split": rng.choice(["train", "val", "test"], N),
        "y": rng.integers(0, 2, N),
        "a": rng.integers(0, 2, N),
    })


def _peak_bytes(fn) -> int:
    fn()  # one-time work (imports, pyarrow kernels) is not what is measured
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_selected_rows_are_found_without_a_python_string_per_row(tmp_path):
    table = _big_table()
    bench = Benchmark("csv", tmp_path, table, ["not blond", "blond"], ["female", "male"])
    ids = [f"{i:06d}.jpg" for i in (199_999, 7, 123_456, 7)] + ["nope"]  # a duplicate and an unknown id
    items = image_grid_items(table, ids, bench, limit=24)
    assert [p for p, _ in items] == [str(tmp_path / f"img/{i:06d}.jpg") for i in (199_999, 7, 123_456, 7)]
    pred = np.arange(N) % 2
    sel = selection_table(table, ids, extra={"pred": pred}, class_names=bench.class_names,
                          attr_names=bench.attr_names)
    assert sel["sample_id"].tolist() == ids[:4]
    assert sel["pred"].tolist() == [199_999 % 2, 1, 0, 1]
    assert sel["class"].tolist() == [bench.class_names[int(table["y"].iloc[i])] for i in (199_999, 7, 123_456, 7)]
    # 200,000 ids as Python strings (the old lookup) are ≥ 10 MB; the membership mask is 0.2 MB
    assert _peak_bytes(lambda: image_grid_items(table, ids, bench, limit=24)) < 2_000_000
    assert _peak_bytes(lambda: selection_table(table, ids, extra={"pred": pred}, class_names=bench.class_names,
                                               attr_names=bench.attr_names)) < 2_000_000


def test_non_string_sample_ids_and_misaligned_extra_columns(tmp_path):
    t = pd.DataFrame({"sample_id": [10, 11, 12], "path": ["a", "b", "c"], "split": ["test"] * 3, "y": [0, 1, 0],
                      "a": [0, 0, 1]})
    assert selection_table(t, ["12", "10"])["sample_id"].tolist() == [12, 10]
    objects = t.assign(sample_id=pd.Series([10, 11, 12], dtype=object))  # ints in an object column: not strings
    assert selection_table(objects, ["12", "10"])["sample_id"].tolist() == [12, 10]
    with pytest.raises(ValueError, match=r"extra column 'pred' has 2 values for 3 table rows"):
        selection_table(t, ["10"], extra={"pred": [0, 1]})


def test_run_rows_are_checked_once_per_run_and_embeddings(monkeypatch):
    from types import SimpleNamespace as NS

    from clipcal import pipeline
    from clipcal.errors import ClipcalError

    emb = NS(backbone_spec="spec", key="emb-key")
    fd = NS(n=3)
    calls = []
    monkeypatch.setattr(resources, "load_embeddings", lambda bench, spec=None: emb)
    monkeypatch.setattr(resources, "feature_data", lambda bench, e: fd)
    monkeypatch.setattr(resources, "fingerprint", lambda bench: "fp-rows-checked")
    monkeypatch.setattr(pipeline, "check_run_rows", lambda run, f: calls.append(run.key))
    resources.forget("rows_checked")
    ok = NS(key="run-ok")
    assert resources.run_feature_data(ok, "bench") is fd
    assert resources.run_feature_data(ok, "bench") is fd
    assert calls == ["run-ok"]

    def mismatch(run, f):
        calls.append(run.key)
        raise ClipcalError("run computed on other embeddings")

    monkeypatch.setattr(pipeline, "check_run_rows", mismatch)
    bad = NS(key="run-bad")
    for _ in range(2):  # a failed check is never remembered as passed
        with pytest.raises(ClipcalError, match="other embeddings"):
            resources.run_feature_data(bad, "bench")
    assert calls == ["run-ok", "run-bad", "run-bad"]
    resources.forget("rows_checked")


def test_a_representations_rerun_recomputes_no_movement_view(app, seeded_store, monkeypatch):
    import clipcal.figures
    import clipcal.projection

    at = app("representations", **{state.K_RUN: seeded_store["run_id"]})
    assert not at.exception
    assert any(m.value == "#### What moved" for m in at.markdown)
    calls = []
    for mod, name in ((clipcal.projection, "moved_most"), (clipcal.figures, "crossing_figure"),
                      (clipcal.figures, "centroid_shift_figure")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    for _ in range(2):
        at.run()
        assert not at.exception
    assert calls == []
    assert len(at.get("plotly_chart")) >= 3  # the map, the crossings and the centroid shifts are still drawn
