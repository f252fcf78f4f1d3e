"""``python -m clipcal data …`` and the shared benchmark options used by other commands."""

from __future__ import annotations

import argparse

import pytest

from clipcal.cli import main
from clipcal.commands.data import add_benchmark_args, benchmark_from_args, benchmark_options
from clipcal.errors import DataError
from tests.fixtures_data import DEMO_SMALL, make_csv_dataset, make_waterbirds


def test_list(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("demo", "waterbirds", "celeba", "metashift", "csv"):
        assert f"  {name}" in out
    assert "Demo assets: all present" in out


def test_validate_ok_and_not_ok(tmp_path, capsys):
    folder = make_waterbirds(tmp_path)
    assert main(["data", "validate", "--benchmark", "waterbirds", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Result: OK" in out and "waterbird" in out
    first = sorted(folder.rglob("*.jpg"))[0]
    first.unlink()
    assert main(["data", "validate", "-b", "waterbirds", "--root", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "Missing files (1)" in out and first.name in out


def test_validate_csv_with_column_options(tmp_path, capsys):
    rows = [{"file": f"{i}.jpg", "part": ["train", "val", "test"][i % 3], "label": ["cat", "dog"][i % 2],
             "bg": ["in", "out"][(i // 2) % 2]} for i in range(12)]
    make_csv_dataset(tmp_path, rows, csv_name="labels.csv")
    rc = main(["data", "validate", "-b", "csv", "--root", str(tmp_path), "--csv", "labels.csv", "--path-col", "file",
               "--split-col", "part", "--y-col", "label", "--a-col", "bg"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "cat" in out and "out" in out


def test_validate_load_error_exit_2(tmp_path, capsys):
    assert main(["data", "validate", "-b", "csv", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "metadata file not found" in err and "Traceback" not in err


def test_download_failure_message(tmp_path, capsys):
    rc = main(["data", "download", "-b", "waterbirds", "--root", str(tmp_path), "--url", "http://127.0.0.1:9/x.tgz"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "place the files by hand" in err and "waterbird_complete95_forest2water2/metadata.csv" in err


def test_help_mentions_every_benchmark(capsys):
    try:
        main(["data", "validate", "--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    for word in ("--benchmark", "--root", "--path-col", "--n-train", "examples:", "metashift"):
        assert word in out


def test_shared_benchmark_args_for_other_commands(tmp_path):
    p = argparse.ArgumentParser()
    add_benchmark_args(p)
    args = p.parse_args(["--n-train", "120", "--n-val", "40", "--n-test", "80", "--data-seed", "0"])
    assert benchmark_options(args) == ("demo", None, {**DEMO_SMALL})
    b = benchmark_from_args(args)
    assert b.name == "demo" and len(b.table) == 240
    args = p.parse_args(["-b", "celeba", "--root", "/x", "--target", "Smiling"])
    assert benchmark_options(args) == ("celeba", "/x", {"target": "Smiling"})
    args = p.parse_args(["-b", "celeba", "--root", "/x", "--target", "Smiling", "--n-train", "5"])
    with pytest.raises(DataError, match="--n-train"):  # another benchmark's option is refused (issue 16.4)
        benchmark_options(args)
