"""Each loader on a small fake tree in its real source layout, and its bad-input messages."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from clipcal.data import BENCHMARKS, load_benchmark
from clipcal.data.metashift import SUBSET
from clipcal.errors import DataError
from tests.fixtures_data import CELEBA_ATTRS, make_celeba, make_csv_dataset, make_metashift, make_waterbirds


# ---------------------------------------------------------------- registry
def test_registry_names_and_unknown():
    assert list(BENCHMARKS) == ["demo", "waterbirds", "celeba", "metashift", "csv"]
    with pytest.raises(DataError) as e:
        load_benchmark("waterbird")
    msg = str(e.value)
    assert "did you mean 'waterbirds'" in msg
    for name in BENCHMARKS:
        assert name in msg


def test_root_required():
    with pytest.raises(DataError, match="needs a root folder"):
        load_benchmark("celeba")


# ---------------------------------------------------------------- waterbirds
def test_waterbirds_group_dro_layout(tmp_path):
    folder = make_waterbirds(tmp_path)
    for root in (tmp_path, folder):  # parent folder or the dataset folder itself
        b = load_benchmark("waterbirds", root)
        assert b.root == folder
        assert b.class_names == ["landbird", "waterbird"] and b.attr_names == ["land", "water"]
        gc = b.group_counts().set_index(["split", "group"])["n"]
        assert gc[("train", 0)] == 3 and gc[("train", 1)] == 1 and gc[("train", 2)] == 1 and gc[("train", 3)] == 3
        assert gc[("test", 2)] == 2
        assert len(b.table) == 24
        assert all(b.image_path(p).is_file() for p in b.table["path"])
    meta = pd.read_csv(folder / "metadata.csv")
    row = b.table.set_index("sample_id").loc[meta.loc[0, "img_filename"]]
    assert (row["y"], row["a"]) == (meta.loc[0, "y"], meta.loc[0, "place"])


def test_waterbirds_missing_root_and_metadata(tmp_path):
    with pytest.raises(DataError, match="root folder not found") as e:
        load_benchmark("waterbirds", tmp_path / "nowhere")
    assert "metadata.csv" in e.value.hint
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no metadata.csv"):
        load_benchmark("waterbirds", tmp_path / "empty")


def test_waterbirds_missing_columns_named(tmp_path):
    folder = make_waterbirds(tmp_path)
    meta = pd.read_csv(folder / "metadata.csv").drop(columns=["place", "split"])
    meta.to_csv(folder / "metadata.csv", index=False)
    with pytest.raises(DataError) as e:
        load_benchmark("waterbirds", folder)
    msg = str(e.value)
    assert "'split'" in msg and "'place'" in msg
    assert "columns found: img_id, img_filename, y, place_filename" in msg
    assert "expected schema" in msg


def test_waterbirds_bad_split_value(tmp_path):
    folder = make_waterbirds(tmp_path)
    meta = pd.read_csv(folder / "metadata.csv")
    meta.loc[3, "split"] = 7
    meta.to_csv(folder / "metadata.csv", index=False)
    with pytest.raises(DataError, match=r"unknown split value\(s\) \['7'\] \(line 5\)"):
        load_benchmark("waterbirds", folder)


# ---------------------------------------------------------------- celeba
@pytest.mark.parametrize("layout,nested", [("csv", False), ("csv", True), ("txt", False)])
def test_celeba_layouts(tmp_path, layout, nested):
    root = make_celeba(tmp_path / "celeba", n=12, layout=layout, nested=nested)
    b = load_benchmark("celeba", root)
    assert b.class_names == ["not blond", "blond"] and b.attr_names == ["female", "male"]
    assert len(b.table) == 12
    assert b.table["split"].value_counts().to_dict() == {"train": 4, "val": 4, "test": 4}
    # -1 → 0, 1 → 1; rows 0..3 were set to (blond, male) = (1,1), (1,0), (0,1), (0,0)
    assert b.table["y"].tolist()[:4] == [1, 1, 0, 0]
    assert b.table["a"].tolist()[:4] == [1, 0, 1, 0]
    assert b.table["group"].tolist()[:4] == [3, 2, 1, 0]
    assert all(b.image_path(p).is_file() for p in b.table["path"])


def test_celeba_configurable_columns(tmp_path):
    root = make_celeba(tmp_path, n=9)
    b = load_benchmark("celeba", root, target="Smiling", attribute="Bald")
    attrs = pd.read_csv(root / "list_attr_celeba.csv")
    assert b.table["y"].tolist() == (attrs["Smiling"] > 0).astype(int).tolist()
    assert b.table["a"].tolist() == (attrs["Bald"] > 0).astype(int).tolist()
    assert b.class_names == ["not Smiling", "Smiling"]
    with pytest.raises(DataError) as e:
        load_benchmark("celeba", root, target="Blond")
    assert "'Blond'" in str(e.value) and "Blond_Hair" in str(e.value)  # available columns listed


def test_celeba_missing_files(tmp_path):
    root = make_celeba(tmp_path, n=6)
    (root / "list_eval_partition.csv").unlink()
    with pytest.raises(DataError, match="list_eval_partition.csv"):
        load_benchmark("celeba", root)
    (root / "list_attr_celeba.csv").unlink()
    with pytest.raises(DataError, match="no list_attr_celeba.csv"):
        load_benchmark("celeba", root)


# ---------------------------------------------------------------- metashift
def test_metashift_subpopbench_layout_and_resplit(tmp_path):
    make_metashift(tmp_path, per_folder=10)
    b = load_benchmark("metashift", tmp_path)
    assert b.root == tmp_path / SUBSET
    assert b.class_names == ["dog", "cat"] and b.attr_names == ["outdoor", "indoor"]
    t = b.table
    assert len(t) == 40
    assert t["split"].value_counts().to_dict() == {"train": 26, "test": 10, "val": 4}  # int(40·.25), int(40·.1)
    row = t[t["path"].str.startswith("test/dog/dog(indoor)/")].iloc[0]
    assert (row["y"], row["a"], row["group"]) == (0, 1, 1)
    row = t[t["path"].str.startswith("train/cat/cat(indoor)/")].iloc[0]
    assert (row["y"], row["a"], row["group"]) == (1, 1, 3)
    # seeded: same seed → same split; another seed → another split; subset folder as root works too
    again = load_benchmark("metashift", tmp_path / SUBSET)
    assert again.table["split"].tolist() == t["split"].tolist()
    other = load_benchmark("metashift", tmp_path, seed=0)
    assert other.table["split"].tolist() != t["split"].tolist()
    assert b.params["seed"] == 42


def test_metashift_missing_folder(tmp_path):
    make_metashift(tmp_path, per_folder=2)
    import shutil

    shutil.rmtree(tmp_path / SUBSET / "test" / "dog")
    with pytest.raises(DataError, match=r"test/dog/dog\(indoor\)"):
        load_benchmark("metashift", tmp_path)


# ---------------------------------------------------------------- csv
def _rows(n=12, split=None, y=None, a=None):
    rows = []
    for i in range(n):
        r = {"id": f"s{i}", "filename": f"imgs/{i}.jpg", "split": (split or ["train", "val", "test"])[i % 3],
             "y": (y or [0, 1])[i % 2]}
        if a is not False:
            r["a"] = (a or [0, 1, 1, 0])[i % 4]
        rows.append(r)
    return rows


def test_csv_int_labels(tmp_path):
    make_csv_dataset(tmp_path, _rows(split=[0, 1, 2]))
    b = load_benchmark("csv", tmp_path)
    assert b.class_names == ["0", "1"] and b.attr_names == ["0", "1"]
    assert b.table["split"].tolist()[:3] == ["train", "val", "test"]
    assert b.table["sample_id"].tolist()[:2] == ["s0", "s1"]
    assert b.table["group"].tolist()[:4] == [0, 3, 1, 2]
    assert "val_carved" not in b.params


def test_csv_string_labels_sorted_and_recorded(tmp_path):
    rows = _rows(split=["Train", "VALID", "Test"], y=["zebra", "ant"], a=["night", "day", "day", "night"])
    make_csv_dataset(tmp_path, rows)
    b = load_benchmark("csv", tmp_path)
    assert b.class_names == ["ant", "zebra"] and b.attr_names == ["day", "night"]
    assert b.params["label_mapping"] == {"ant": 0, "zebra": 1}
    assert b.params["attr_mapping"] == {"day": 0, "night": 1}
    assert b.table["y"].tolist()[:2] == [1, 0]  # zebra, ant
    assert b.table["a"].tolist()[:3] == [1, 0, 0]  # night, day, day
    assert set(b.table["split"]) == {"train", "val", "test"}


def test_csv_mapped_columns_and_names(tmp_path):
    rows = [{"file": f"{i}.jpg", "part": ["training", "validation", "testing"][i % 3], "label": i % 2,
             "bg": (i // 2) % 2} for i in range(9)]
    make_csv_dataset(tmp_path, rows, csv_name="labels.csv")
    b = load_benchmark("csv", tmp_path, csv="labels.csv", path_col="file", split_col="part", y_col="label",
                       a_col="bg", class_names=["cat", "dog"], attr_names=["indoor", "outdoor"])
    assert b.class_names == ["cat", "dog"] and b.attr_names == ["indoor", "outdoor"]
    assert b.table["sample_id"].tolist()[:2] == ["0.jpg", "1.jpg"]  # no id column → filename
    assert b.group_name(int(b.table["group"][3])) == "dog / outdoor"


def test_csv_without_attribute(tmp_path):
    make_csv_dataset(tmp_path, _rows(a=False))
    b = load_benchmark("csv", tmp_path)
    assert b.attr_names == [] and (b.table["a"] == -1).all() and (b.table["group"] == -1).all()
    assert not b.has_attributes


def test_csv_missing_columns_message(tmp_path):
    rows = [{"image": f"{i}.jpg", "label": 0} for i in range(3)]
    make_csv_dataset(tmp_path, rows, images=False)
    with pytest.raises(DataError) as e:
        load_benchmark("csv", tmp_path, y_col="target")
    msg = str(e.value)
    assert "'split'" in msg and "'target'" in msg
    assert "columns found: image, label" in msg
    assert "expected schema: id (optional, unique), filename" in msg


def test_csv_no_val_carves_stratified_val(tmp_path):
    rows = [{"filename": f"{i}.jpg", "split": "train" if i < 50 else "test", "y": int(i % 5 == 0)}
            for i in range(60)]
    make_csv_dataset(tmp_path, rows)
    with pytest.warns(UserWarning, match="no val rows"):
        b = load_benchmark("csv", tmp_path, seed=3)
    t = b.table
    assert b.params["val_carved"] is True and b.params["val_fraction"] == 0.2
    val = t[t["split"] == "val"]
    assert len(val) == 10 and (val["y"] == 1).sum() == 2 and (val["y"] == 0).sum() == 8  # 20 % of each class
    assert (t["split"] == "test").sum() == 10
    with pytest.warns(UserWarning):
        again = load_benchmark("csv", tmp_path, seed=3)
    assert again.table["split"].tolist() == t["split"].tolist()


def test_csv_bad_values(tmp_path):
    make_csv_dataset(tmp_path, _rows(split=["train", "holdout", "test"]), images=False)
    with pytest.raises(DataError, match=r"unknown split value\(s\) \['holdout'\]"):
        load_benchmark("csv", tmp_path)
    rows = _rows()
    rows[1]["id"] = "s0"
    make_csv_dataset(tmp_path, rows, images=False)
    with pytest.raises(DataError, match="duplicate ids"):
        load_benchmark("csv", tmp_path)
    rows = _rows()
    rows[2]["y"] = None
    make_csv_dataset(tmp_path, rows, images=False)
    with pytest.raises(DataError, match=r"column 'y' has empty cells \(line 4\)"):
        load_benchmark("csv", tmp_path)


def test_csv_missing_csv_file(tmp_path):
    with pytest.raises(DataError, match="metadata file not found"):
        load_benchmark("csv", tmp_path)


def test_csv_partial_attribute_unknown(tmp_path):
    rows = _rows()
    rows[0]["a"] = None
    make_csv_dataset(tmp_path, rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = load_benchmark("csv", tmp_path)
    assert b.table["a"].iloc[0] == -1 and b.table["group"].iloc[0] == -1
    assert np.all(b.table["a"].iloc[1:] >= 0)


@pytest.mark.parametrize("sep", [";", "\t"])
def test_csv_semicolon_or_tab_separated(tmp_path, sep):
    """A spreadsheet's ';'-separated "CSV" once failed with "missing column(s) 'filename', …; columns found:
    id;filename;split;y;a"."""
    path = make_csv_dataset(tmp_path, _rows(split=[0, 1, 2]))
    df = pd.read_csv(path)
    df.to_csv(path, sep=sep, index=False)
    b = load_benchmark("csv", tmp_path)
    assert b.table["sample_id"].tolist()[:2] == ["s0", "s1"] and b.class_names == ["0", "1"]
    assert b.table["split"].tolist()[:3] == ["train", "val", "test"]


def test_csv_windows_path_separators(tmp_path):
    """A CSV written on Windows (img\\a.jpg) once listed every image as missing on Linux."""
    path = make_csv_dataset(tmp_path, [{"filename": f"img/{i}.jpg", "split": ["train", "val", "test"][i % 3],
                                        "y": i % 2} for i in range(6)])
    df = pd.read_csv(path)
    df["filename"] = df["filename"].str.replace("/", "\\")
    df.to_csv(path, index=False)
    b = load_benchmark("csv", tmp_path)
    assert b.table["path"].tolist()[:2] == ["img/0.jpg", "img/1.jpg"]
    assert all(b.image_path(p).is_file() for p in b.table["path"])
