"""The Data page's column mapping belongs to the CSV shown (new-user report: it followed the previous file).

Folder A has no class column called like a class, so "class (y)" falls back to the first column; opening folder
B, which has ``y`` and ``a``, kept ``id`` as the class and the benchmark was accepted with one class per image.
"""

from __future__ import annotations

import pandas as pd
from PIL import Image

from tests.fixtures_app import map_key
from tests.test_app_setup_pages import _no_exception, fk


def _folder(root, columns: dict) -> None:
    (root / "img").mkdir(parents=True)
    for k in range(12):
        Image.new("RGB", (8, 8), (k * 20, 0, 0)).save(root / "img" / f"{k}.png")
    rows = [{c: f(k) for c, f in columns.items()} for k in range(12)]
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)


def test_another_csv_starts_from_its_own_columns(app, tmp_path):
    base = {"id": lambda k: f"s{k}", "filename": lambda k: f"img/{k}.png",
            "split": lambda k: ("train", "val", "test")[k % 3]}
    _folder(tmp_path / "no_y", {**base, "label_text": lambda k: ("cat", "dog")[k % 2]})
    _folder(tmp_path / "with_y", {**base, "y": lambda k: ("cat", "dog")[k % 2], "a": lambda k: ("in", "out")[k // 6]})
    at = app("data")
    at.selectbox(key=fk(at, "data.name")).set_value("csv").run()
    at.text_input(key=fk(at, "data.csv_root")).input(str(tmp_path / "no_y")).run()
    _no_exception(at)
    assert at.selectbox(key=map_key(at, "y_col")).value == "id"  # no guess matches: the first column
    assert at.selectbox(key=map_key(at, "a_col")).value == "(none)"
    at.text_input(key=fk(at, "data.csv_root")).input(str(tmp_path / "with_y")).run()
    _no_exception(at)
    assert at.selectbox(key=map_key(at, "y_col")).value == "y"
    assert at.selectbox(key=map_key(at, "a_col")).value == "a"
    # and back: the first folder's form is its own again, not the second's
    at.text_input(key=fk(at, "data.csv_root")).input(str(tmp_path / "no_y")).run()
    assert at.selectbox(key=map_key(at, "y_col")).value == "id"
