"""Issue 16 item 1: a CSV cell is text, never a silent "missing". Values such as ``None``, ``NA``, ``nan``,
``null`` are real categories, ids and paths; only a truly empty cell is empty, and an empty required cell is an
error naming the file, column and line. Every table reader (csv, waterbirds, celeba) follows this."""

from __future__ import annotations

import pandas as pd
import pytest

from clipcal.data import load_benchmark, validate
from clipcal.errors import DataError
from tests.fixtures_data import make_celeba, make_waterbirds, write_jpeg

SPLITS = ["train", "val", "test"]


def _write(root, rows):
    root.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(rows):
        write_jpeg(root / r["filename"], seed=i)
    # written by hand: pandas' own writer would turn None into an empty cell
    cols = list(rows[0])
    lines = [",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in rows]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


def test_attribute_values_none_and_na_are_categories(tmp_path):
    attrs = ["None", "NA", "EU", "glasses", "None", "NA", "EU", "glasses"]
    rows = [{"filename": f"{i}.jpg", "split": SPLITS[i % 3], "y": i % 2, "a": attrs[i]} for i in range(8)]
    _write(tmp_path, rows)
    b = load_benchmark("csv", tmp_path)
    assert b.attr_names == ["EU", "NA", "None", "glasses"]
    assert (b.table["a"] >= 0).all()
    assert [b.attr_names[a] for a in b.table["a"]] == attrs
    assert not any("unknown" in w for w in validate(b).warnings)


def test_a_class_called_none_is_a_class(tmp_path):
    rows = [{"filename": f"{i}.jpg", "split": SPLITS[i % 3], "y": ["None", "hat"][i % 2]} for i in range(6)]
    _write(tmp_path, rows)
    b = load_benchmark("csv", tmp_path)
    assert b.class_names == ["None", "hat"]
    assert b.table["y"].tolist() == [0, 1, 0, 1, 0, 1]


def test_ids_and_paths_keep_their_text(tmp_path):
    ids = ["NA", "nan", "null", "007", "None", "N/A"]
    rows = [{"id": ids[i], "filename": f"{ids[i].replace('/', '_')}.jpg", "split": SPLITS[i % 3], "y": i % 2}
            for i in range(6)]
    _write(tmp_path, rows)
    b = load_benchmark("csv", tmp_path)
    assert b.table["sample_id"].tolist() == ids
    assert b.table["path"].tolist()[:3] == ["NA.jpg", "nan.jpg", "null.jpg"]
    assert validate(b).ok


@pytest.mark.parametrize("column", ["id", "filename", "split", "y"])
def test_an_empty_required_cell_is_an_error_naming_column_and_line(tmp_path, column):
    """A blank id passed validation ("Result: OK") and crashed embed with a TypeError."""
    rows = [{"id": f"s{i}", "filename": f"{i}.jpg", "split": SPLITS[i % 3], "y": i % 2, "a": i % 2}
            for i in range(6)]
    _write(tmp_path, rows)
    text = (tmp_path / "metadata.csv").read_text().splitlines()
    cells = text[4].split(",")  # line 5 = the 4th data row
    cells[list(rows[0]).index(column)] = "  "
    text[4] = ",".join(cells)
    (tmp_path / "metadata.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError) as e:
        load_benchmark("csv", tmp_path, id_col="id")
    msg = str(e.value)
    assert f"{column!r}" in msg and "empty" in msg and "line 5" in msg and "metadata.csv" in msg


def test_empty_attribute_cell_is_unknown_and_blank_lines_keep_line_numbers(tmp_path):
    rows = [{"filename": f"{i}.jpg", "split": SPLITS[i % 3], "y": i % 2, "a": ["x", "y"][i % 2]} for i in range(6)]
    _write(tmp_path, rows)
    text = (tmp_path / "metadata.csv").read_text().splitlines()
    text[2] = "1.jpg,val,1,"  # empty attribute: unknown
    text.insert(3, "")  # a blank line: later line numbers still as an editor shows them
    text[5] = "3.jpg,train,,y"  # line 6, empty class
    (tmp_path / "metadata.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"'y' has empty cells \(line 6\)"):
        load_benchmark("csv", tmp_path)
    text[5] = "3.jpg,train,1,y"
    (tmp_path / "metadata.csv").write_text("\n".join(text) + "\n")
    b = load_benchmark("csv", tmp_path)
    assert b.table["a"].tolist() == [0, -1, 0, 1, 0, 1]


def test_waterbirds_blank_filename_is_an_error_naming_the_line(tmp_path):
    folder = make_waterbirds(tmp_path)
    df = pd.read_csv(folder / "metadata.csv", dtype=str)
    df.loc[3, "img_filename"] = ""
    df.to_csv(folder / "metadata.csv", index=False)
    with pytest.raises(DataError, match=r"'img_filename' has empty cells \(line 5\)"):
        load_benchmark("waterbirds", tmp_path)


def test_celeba_image_id_na_is_an_id(tmp_path):
    root = make_celeba(tmp_path, layout="csv")
    for name in ("list_attr_celeba.csv", "list_eval_partition.csv"):
        d = pd.read_csv(root / name, dtype=str)
        d.loc[5, "image_id"] = "NA"
        d.to_csv(root / name, index=False)
    write_jpeg(root / "img_align_celeba" / "NA")
    b = load_benchmark("celeba", root)
    assert "NA" in b.table["sample_id"].tolist()
