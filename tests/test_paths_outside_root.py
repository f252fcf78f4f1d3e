"""Issue 10 item 9: image paths that leave the benchmark root (absolute, '..', Windows drive paths) are refused
unless the user allows them, with the lines named and what to do; symlinks resolving outside the root are
listed by validation. Every benchmark whose paths come from a text file (csv, waterbirds, celeba) does this."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from clipcal.cli import main
from clipcal.data import load_benchmark, validate
from clipcal.errors import DataError
from tests.fixtures_data import make_celeba, make_waterbirds, write_jpeg

SPLITS = ["train", "val", "test"]


def _own(tmp_path, outside_path_for_row_3):
    root = tmp_path / "data"
    rows = [{"filename": f"img/{i}.jpg", "split": SPLITS[i % 3], "y": i % 2} for i in range(6)]
    for i, r in enumerate(rows):
        write_jpeg(root / r["filename"], seed=i)
    rows[3]["filename"] = outside_path_for_row_3
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def test_dotdot_path_is_refused_naming_the_line_and_the_way_out(tmp_path):
    write_jpeg(tmp_path / "secret.jpg")
    root = _own(tmp_path, "../secret.jpg")
    with pytest.raises(DataError) as e:
        load_benchmark("csv", root)
    msg = str(e.value)
    assert "metadata.csv" in msg and "line 5" in msg and "../secret.jpg" in msg
    assert "--allow-outside-root" in msg and "allow_outside_root=True" in msg
    b = load_benchmark("csv", root, allow_outside_root=True)
    rep = validate(b)
    assert rep.outside_root["path"].tolist() == ["../secret.jpg"]
    assert any("outside the benchmark root" in w for w in rep.warnings)
    assert "../secret.jpg" in rep.to_text()


@pytest.mark.parametrize("kind", ["posix", "windows"])
def test_absolute_paths_outside_the_root_are_refused(tmp_path, kind):
    secret = write_jpeg(tmp_path / "secret.jpg")
    root = _own(tmp_path, str(secret) if kind == "posix" else "C:\\Users\\me\\secret.jpg")
    with pytest.raises(DataError, match="line 5"):
        load_benchmark("csv", root)


def test_absolute_path_inside_the_root_is_fine(tmp_path):
    root = _own(tmp_path, "img/3.jpg")
    df = pd.read_csv(root / "metadata.csv")
    df.loc[3, "filename"] = str(root / "img" / "3.jpg")
    df.to_csv(root / "metadata.csv", index=False)
    b = load_benchmark("csv", root)
    assert validate(b).outside_root.empty


def test_symlink_to_a_file_outside_the_root_is_listed_by_validate(tmp_path):
    secret = write_jpeg(tmp_path / "elsewhere" / "secret.jpg")
    root = _own(tmp_path, "img/link.jpg")
    os.symlink(secret, root / "img" / "link.jpg")
    os.symlink(root / "img" / "0.jpg", root / "img" / "inside_link.jpg")  # a link inside the root is fine
    b = load_benchmark("csv", root)
    rep = validate(b)
    assert rep.outside_root["path"].tolist() == ["img/link.jpg"]
    assert rep.outside_root["resolved"].tolist() == [str(secret.resolve())]
    assert "symlink" in rep.outside_root["reason"].iloc[0]
    assert rep.ok  # reported, not refused: a symlink is placed by whoever can write the data folder


def test_waterbirds_and_celeba_refuse_paths_leaving_the_root(tmp_path):
    folder = make_waterbirds(tmp_path / "wb")
    df = pd.read_csv(folder / "metadata.csv")
    df.loc[2, "img_filename"] = "../../etc/x.jpg"
    df.to_csv(folder / "metadata.csv", index=False)
    with pytest.raises(DataError, match=r"metadata.csv.*line 4"):
        load_benchmark("waterbirds", tmp_path / "wb")
    assert len(load_benchmark("waterbirds", tmp_path / "wb", allow_outside_root=True).table) == len(df)

    root = make_celeba(tmp_path / "celeba", layout="csv")
    for name in ("list_attr_celeba.csv", "list_eval_partition.csv"):
        d = pd.read_csv(root / name, dtype=str)
        d.loc[1, "image_id"] = "../../../x.jpg"
        d.to_csv(root / name, index=False)
    with pytest.raises(DataError, match=r"list_attr_celeba.csv.*line 3"):
        load_benchmark("celeba", root)


def test_cli_flag_allows_and_validate_lists(tmp_path, capsys):
    write_jpeg(tmp_path / "secret.jpg")
    root = _own(tmp_path, "../secret.jpg")
    assert main(["data", "validate", "-b", "csv", "--root", str(root)]) == 2
    assert "--allow-outside-root" in capsys.readouterr().err
    main(["data", "validate", "-b", "csv", "--root", str(root), "--allow-outside-root"])
    out = capsys.readouterr().out
    assert "../secret.jpg" in out and "outside the benchmark root" in out
