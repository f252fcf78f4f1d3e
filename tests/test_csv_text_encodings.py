"""Issue 10 item 4: every text table clipcal reads (user CSV, Waterbirds metadata.csv, CelebA files) is decoded
by a stated rule — a byte-order mark, else UTF-8, else Windows-1252 with a note — or by the encoding the user
gives; never blamed on the layout. The neighbouring text problems of paths and labels read from a table (BOM in
the first column name, Windows separators, trailing whitespace/CRLF, NFC/NFD file names, ';'/tab separators)
are handled the same way in every reader."""

from __future__ import annotations

import unicodedata

import pandas as pd
import pytest

from clipcal.data import load_benchmark, validate
from clipcal.errors import DataError
from tests.fixtures_data import make_celeba, make_waterbirds, write_jpeg

SPLITS = ["train", "val", "test"]


def _own_rows(names=("café", "forêt", "Müller", "Łódź", "naïve", "señor")):
    return [{"id": f"s{i}", "filename": f"img/{n}.jpg", "split": SPLITS[i % 3], "y": ["oiseau", "chèvre"][i % 2],
             "a": ["forêt", "plage"][(i // 2) % 2]} for i, n in enumerate(names)]


def _write_images(root, rows):
    for i, r in enumerate(rows):
        write_jpeg(root / r["filename"], seed=i)


def test_utf16_tab_separated_csv_is_read_as_unicode_text(tmp_path):
    """Excel's "Unicode text" export (UTF-16 with BOM, tab-separated) was refused as "not a comma-separated table"."""
    rows = _own_rows()
    _write_images(tmp_path, rows)
    pd.DataFrame(rows).to_csv(tmp_path / "metadata.csv", sep="\t", index=False, encoding="utf-16")
    b = load_benchmark("csv", tmp_path)
    assert b.class_names == ["chèvre", "oiseau"]
    assert b.attr_names == ["forêt", "plage"]
    assert b.table["path"].tolist()[:2] == ["img/café.jpg", "img/forêt.jpg"]
    rep = validate(b)
    assert rep.ok and len(rep.missing) == 0


def test_latin1_csv_is_read_with_a_note_and_the_right_names(tmp_path):
    """A Latin-1 (Windows-1252) file decodes to the same names; validate says which encoding was assumed."""
    rows = _own_rows(names=("café", "forêt", "Müller", "Ærø", "naïve", "señor"))  # all in Latin-1
    _write_images(tmp_path, rows)
    pd.DataFrame(rows).to_csv(tmp_path / "metadata.csv", index=False, encoding="latin-1")
    b = load_benchmark("csv", tmp_path)
    assert b.class_names == ["chèvre", "oiseau"] and b.attr_names == ["forêt", "plage"]
    rep = validate(b)
    assert rep.ok and len(rep.missing) == 0
    assert any("cp1252" in w and "encoding" in w for w in rep.warnings), rep.warnings


def test_explicit_encoding_wins_and_bad_bytes_name_the_line(tmp_path):
    rows = _own_rows(names=("Łódź", "Kraków", "Gdańsk", "Poznań", "Wrocław", "Żywiec"))
    for r in rows:
        r["y"], r["a"] = r["y"].replace("è", "e"), r["a"].replace("ê", "e")  # not in cp1250
    _write_images(tmp_path, rows)
    pd.DataFrame(rows).to_csv(tmp_path / "metadata.csv", index=False, encoding="cp1250")
    b = load_benchmark("csv", tmp_path, encoding="cp1250")
    assert "img/Łódź.jpg" in b.table["path"].tolist()
    with pytest.raises(DataError) as e:
        load_benchmark("csv", tmp_path, encoding="ascii")
    msg = str(e.value)
    assert "metadata.csv" in msg and "line 2" in msg and "ascii" in msg and "--encoding" in msg
    with pytest.raises(DataError, match="unknown text encoding 'klingon'"):
        load_benchmark("csv", tmp_path, encoding="klingon")


def test_bom_is_not_part_of_the_first_column_name(tmp_path):
    """Excel's "CSV UTF-8" starts with a BOM: the id column must still be found (was '\\ufeffid')."""
    rows = _own_rows()
    _write_images(tmp_path, rows)
    (tmp_path / "metadata.csv").write_bytes(b"\xef\xbb\xbf" + pd.DataFrame(rows).to_csv(index=False).encode())
    b = load_benchmark("csv", tmp_path, id_col="id")
    assert b.table["sample_id"].tolist()[:2] == ["s0", "s1"]


def test_semicolon_csv_with_commas_inside_cells(tmp_path):
    """The separator comes from the header line: a ';' file whose cells hold commas was a parse error."""
    rows = [{"id": f"s{i}", "filename": f"img/a,{i}.jpg", "split": SPLITS[i % 3], "y": i % 2} for i in range(6)]
    _write_images(tmp_path, rows)
    pd.DataFrame(rows).to_csv(tmp_path / "metadata.csv", sep=";", index=False)
    b = load_benchmark("csv", tmp_path)
    assert b.table["path"].tolist()[:2] == ["img/a,0.jpg", "img/a,1.jpg"]


def test_crlf_trailing_whitespace_and_mixed_separators(tmp_path):
    rows = [{"id": f"s{i} ", "filename": f"img\\sub/{i}.jpg  ", "split": SPLITS[i % 3] + " ", "y": ["a ", "b"][i % 2]}
            for i in range(6)]
    for i in range(6):
        write_jpeg(tmp_path / f"img/sub/{i}.jpg", seed=i)
    pd.DataFrame(rows).to_csv(tmp_path / "metadata.csv", index=False, lineterminator="\r\n")
    b = load_benchmark("csv", tmp_path)
    assert b.class_names == ["a", "b"]
    assert b.table["sample_id"].tolist()[:2] == ["s0", "s1"]
    assert b.table["path"].tolist()[:2] == ["img/sub/0.jpg", "img/sub/1.jpg"]
    assert validate(b).ok


def test_nfd_file_names_on_disk_match_nfc_paths_and_labels_are_one_class(tmp_path):
    """macOS writes decomposed (NFD) names: 'café.jpg' in the CSV must find 'cafe\\u0301.jpg' on disk, and a
    label typed once in NFC and once in NFD is one class, not two."""
    rows = _own_rows()
    for i, r in enumerate(rows):
        write_jpeg(tmp_path / unicodedata.normalize("NFD", r["filename"]), seed=i)
    for i, r in enumerate(rows):
        r["filename"] = unicodedata.normalize("NFC", r["filename"])
        if i % 4 == 1:
            r["y"] = unicodedata.normalize("NFD", r["y"])
    pd.DataFrame(rows).to_csv(tmp_path / "metadata.csv", index=False)
    b = load_benchmark("csv", tmp_path)
    assert b.class_names == ["chèvre", "oiseau"]
    rep = validate(b)
    assert len(rep.missing) == 0 and rep.ok


def test_waterbirds_metadata_in_utf16(tmp_path):
    """Sibling: Waterbirds' metadata.csv goes through the same reader."""
    folder = make_waterbirds(tmp_path)
    df = pd.read_csv(folder / "metadata.csv")
    df.to_csv(folder / "metadata.csv", sep="\t", index=False, encoding="utf-16")
    b = load_benchmark("waterbirds", tmp_path)
    assert len(b.table) == len(df) and validate(b).ok


@pytest.mark.parametrize("layout", ["csv", "txt"])
def test_celeba_files_with_bom_or_utf16(tmp_path, layout):
    """Sibling: both CelebA layouts are decoded by the same rule (a BOM before the count line broke the .txt)."""
    make_celeba(tmp_path, layout=layout)
    for name in (["list_attr_celeba.csv", "list_eval_partition.csv"] if layout == "csv"
                 else ["list_attr_celeba.txt", "list_eval_partition.txt"]):
        p = tmp_path / name
        p.write_bytes(p.read_text().encode("utf-16" if layout == "csv" else "utf-8-sig"))
    b = load_benchmark("celeba", tmp_path)
    assert len(b.table) == 12 and validate(b).ok
