"""A metadata header with a repeated or unnamed column is refused by name (pandas would rename it to y.1 /
'Unnamed: N' and the loader would silently use one of them); --root given a file says so."""
import pytest

from clipcal.data.csvdata import read_metadata, require_root
from clipcal.errors import DataError


@pytest.mark.parametrize("header", ["id,filename,split,y,y", "id,filename,split,y, y ", "id,filename,split, y,y\t"])
def test_repeated_column_name_is_refused_naming_file_and_columns(tmp_path, header):
    f = tmp_path / "metadata.csv"
    f.write_text(header + "\n1,a.jpg,0,1,0\n")
    with pytest.raises(DataError) as e:
        read_metadata(f, "csv")
    assert str(f) in str(e.value) and "'y' in columns 4, 5" in str(e.value)
    assert "rename or delete" in e.value.hint


def test_unnamed_column_with_values_is_refused(tmp_path):
    f = tmp_path / "metadata.csv"
    f.write_text(",id,filename,split,y\n0,1,a.jpg,0,1\n")  # pandas to_csv(index=True)
    with pytest.raises(DataError, match="without a name.*column\\(s\\) 1"):
        read_metadata(f, "csv")


def test_unnamed_empty_trailing_column_is_dropped(tmp_path):
    f = tmp_path / "metadata.csv"
    f.write_text("id,filename,split,y,\n1,a.jpg,0,1,\n")
    assert list(read_metadata(f, "csv").columns) == ["id", "filename", "split", "y"]


@pytest.mark.parametrize("bench", ["csv", "waterbirds", "celeba", "metashift"])
def test_root_given_a_file_says_it_is_a_file(tmp_path, bench):
    f = tmp_path / "metadata.csv"
    f.write_text("x\n")
    with pytest.raises(DataError, match="is a file, not a folder") as e:
        require_root(f, bench, "layout")
    assert f"--root {tmp_path}" in e.value.hint
    assert ("--csv metadata.csv" in e.value.hint) == (bench == "csv")
