"""Issue 16 item 4: CelebA file mix-ups get the right advice — which file, which line (1-based, as an editor
shows it) and what the file looks like instead; complete files are never called "cut off". Options that do not
apply to the chosen benchmark are refused, in the CLI and in ``load_benchmark``."""

from __future__ import annotations

import argparse

import pytest

from clipcal.commands.data import add_benchmark_args, benchmark_options
from clipcal.data import load_benchmark, validate
from clipcal.errors import DataError
from tests.fixtures_data import make_celeba


def _identity_file(n=12):
    return "".join(f"{i + 1:06d}.jpg {[2880, 10177, 1, 17][i % 4]}\n" for i in range(n))


def test_attribute_txt_without_its_count_line_is_read(tmp_path):
    root = make_celeba(tmp_path / "a", layout="txt")
    ref = load_benchmark("celeba", root).table
    p = root / "list_attr_celeba.txt"
    p.write_text("\n".join(p.read_text().splitlines()[1:]) + "\n")
    b = load_benchmark("celeba", root)
    assert b.table.equals(ref)


def test_identity_file_as_attribute_file_is_named(tmp_path):
    root = make_celeba(tmp_path, layout="txt")
    (root / "list_attr_celeba.txt").write_text(_identity_file())
    with pytest.raises(DataError) as e:
        load_benchmark("celeba", root)
    msg = str(e.value)
    assert "list_attr_celeba.txt" in msg and "identity_CelebA.txt" in msg
    assert "1 to 10,177" in msg and "cut off" not in msg


def test_identity_file_as_partition_file_names_that_file_and_its_line(tmp_path):
    root = make_celeba(tmp_path, layout="txt")
    (root / "list_eval_partition.txt").write_text(_identity_file())
    with pytest.raises(DataError) as e:
        load_benchmark("celeba", root)
    msg = str(e.value)
    assert "list_eval_partition.txt" in msg and "list_attr_celeba" not in msg.split("\n")[0]
    assert "line 1" in msg and "identity_CelebA.txt" in msg


def test_cut_off_attribute_file_names_the_line_and_count_mismatch_is_reported(tmp_path):
    root = make_celeba(tmp_path, layout="txt")
    p = root / "list_attr_celeba.txt"
    lines = p.read_text().splitlines()
    p.write_text("\n".join(lines[:-1] + [lines[-1][:15]]))  # last line cut in the middle
    with pytest.raises(DataError) as e:
        load_benchmark("celeba", root)
    assert f"line {len(lines)}" in str(e.value) and "cut off" in str(e.value)
    p.write_text("\n".join(lines[:-2]) + "\n")  # two whole lines missing: line 1 still says 12
    b = load_benchmark("celeba", root, allow_outside_root=False)
    assert any("line 1 says 12 images" in w for w in validate(b).warnings)


def test_partition_file_as_attribute_file_is_named(tmp_path):
    root = make_celeba(tmp_path, layout="txt")
    (root / "list_attr_celeba.txt").write_text((root / "list_eval_partition.txt").read_text())
    with pytest.raises(DataError, match="list_eval_partition.txt"):
        load_benchmark("celeba", root)


def test_options_of_another_benchmark_are_refused(tmp_path):
    p = argparse.ArgumentParser()
    add_benchmark_args(p)
    args = p.parse_args(["-b", "celeba", "--root", "/x", "--csv", "labels.csv"])
    with pytest.raises(DataError) as e:
        benchmark_options(args)
    assert "--csv" in str(e.value) and "csv" in str(e.value) and "celeba" in str(e.value)
    args = p.parse_args(["-b", "waterbirds", "--root", "/x", "--target", "Smiling", "--n-train", "5"])
    with pytest.raises(DataError, match="--target.*--n-train|--n-train.*--target"):
        benchmark_options(args)
    root = make_celeba(tmp_path, layout="csv")
    with pytest.raises(DataError, match="'csv'.*celeba"):
        load_benchmark("celeba", root, csv="labels.csv")
