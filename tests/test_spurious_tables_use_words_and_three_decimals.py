"""The Spurious attributes tables show the field's words as headers and fractions to 3 decimals (new-user report:
raw ``balanced_accuracy`` / ``n_in_pool`` headers and 0.99 beside 0.9913); the frames' own columns are unchanged
and any dtype (nullable integers, categories, strings) is accepted."""

from __future__ import annotations

import pandas as pd

from pages.ui import spurious


def test_headers_and_number_formats(monkeypatch):
    shown = {}
    monkeypatch.setattr(spurious.st, "dataframe", lambda df, **kw: shown.update(df=df, **kw))
    df = pd.DataFrame({"representation": ["before", "after"], "balanced_accuracy": [0.99, 0.9913],
                       "n_in_pool": pd.Series([3, None], dtype="Int64"), "n_test": [1.0, 2.0],
                       "kind": pd.Categorical(["a", "b"]), "auroc": [0.5, 0.75]})
    spurious._table(df, "spur.x")
    cfg = shown["column_config"]
    assert shown["df"] is df and shown["key"] == "spur.x" and shown["hide_index"]
    assert cfg["balanced_accuracy"]["label"] == "balanced accuracy"
    assert cfg["balanced_accuracy"]["type_config"]["format"] == "%.3f"
    assert cfg["auroc"]["type_config"]["format"] == "%.3f"
    assert cfg["n_in_pool"]["label"] == "n in pool" and "format" not in cfg["n_in_pool"].get("type_config", {})
    assert "format" not in cfg["n_test"].get("type_config", {})  # a count, even when stored as float
    assert "representation" not in cfg and "kind" not in cfg
