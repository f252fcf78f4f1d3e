"""Hints printed by the CLI are commands a CLI user can run as printed: `report` before any run suggests a
`calibrate` with every benchmark option given (--root, --csv, column mapping), and an unknown --key points to
`report --list`, not the Python function clipcal.runs.list_runs()."""
import pytest

from clipcal.cli import main
from tests.fixtures_data import make_csv_dataset


def test_report_without_runs_suggests_calibrate_with_root_csv_and_columns(tmp_path, tmp_store_root, capsys):
    rows = [{"file": f"im{i}.jpg", "part": ["train", "val", "test"][i % 3], "label": i % 2} for i in range(6)]
    make_csv_dataset(tmp_path / "data", rows, csv_name="labels.csv")
    argv = ["-b", "csv", "--root", str(tmp_path / "data"), "--csv", "labels.csv", "--path-col", "file",
            "--split-col", "part", "--y-col", "label"]
    assert main(["report", *argv]) == 1
    hint = capsys.readouterr().err.splitlines()[-1].strip()
    assert hint.startswith("python -m clipcal calibrate --benchmark csv --root ")
    for opt in ("--csv labels.csv", "--path-col file", "--split-col part", "--y-col label", "--backbone "):
        assert opt in hint
    assert str(tmp_path / "data") in hint


@pytest.mark.parametrize("command", [["export", "--key", "nope"], ["report", "--key", "nope"]])
def test_unknown_key_points_to_report_list(tmp_store_root, capsys, command):
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "python -m clipcal report" in err and "--list" in err
    assert "list_runs()" not in err
