"""The Data page at CelebA size (issue 14 item 3): a rerun (every click) neither re-reads the metadata CSV of the
column-mapping form nor rescans the sample table for attribute labels — both once per file version / benchmark."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from clipcal.data import csvdata
from clipcal.data.base import Benchmark
from pages.ui import state
from tests.fixtures_app import map_key
from tests.test_app_setup_pages import _png_csv_dataset

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def test_data_page_reads_the_csv_head_once_per_file_version(tmp_path, tmp_store_root, monkeypatch):
    from streamlit.testing.v1 import AppTest

    root = tmp_path / "own"
    _png_csv_dataset(root, csv_name="metadata.csv")
    calls: list[str] = []
    real = csvdata.read_metadata

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(csvdata, "read_metadata", counting)
    spec = {"name": "csv", "root": str(root), "options": {"id_col": "image_id", "path_col": "file",
                                                          "split_col": "part", "y_col": "label", "a_col": "place"}}
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[state.K_BENCH] = spec
    at.run()
    at.switch_page("pages/data.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key=map_key(at, "a_col")).value == "place"  # the form was built from the head
    first = len(calls)
    assert first >= 1
    at.run()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(calls) == first, f"the metadata CSV was read again on a rerun: {calls[first:]}"
    # a new version of the file is read again
    pd.read_csv(root / "metadata.csv").rename(columns={"place": "spot"}).to_csv(root / "metadata.csv", index=False)
    at.run()
    assert len(calls) > first and "spot" in at.selectbox(key=map_key(at, "a_col")).options


def test_has_attributes_scans_the_table_once_per_table():
    table = pd.DataFrame({"sample_id": ["a", "b", "c"], "path": ["a.png", "b.png", "c.png"],
                          "split": ["train", "val", "test"], "y": [0, 1, 0], "a": [-1, 1, -1]})
    bench = Benchmark("csv", "/data", table, ["cat", "dog"], ["in", "out"])
    scans = []
    real = pd.Series.__ge__
    try:
        pd.Series.__ge__ = lambda self, other: scans.append(1) or real(self, other)
        assert all(bench.has_attributes for _ in range(6))
        assert len(scans) == 1
        # another table (or other attribute names) is scanned again
        bench.table = bench.table.assign(a=-1)
        assert not bench.has_attributes and len(scans) == 2
    finally:
        pd.Series.__ge__ = real
