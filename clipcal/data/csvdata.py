"""Bring your own data: a metadata CSV plus a folder of images (SubpopBench-style ``id, filename, split, y, a``).

Expected schema (column names are mappable with the ``*_col`` arguments)::

    id        optional   unique sample id (default: the filename)
    filename  required   image path, relative to the image folder; ``path`` is accepted too; Windows
                         separators (``img\\a.jpg``) are read as ``img/a.jpg``; paths leaving the image folder
                         (absolute elsewhere, ``../``) are refused unless ``allow_outside_root``
    split     required   0/1/2 or train/val/test (case-insensitive; also training, valid, validation, testing)
    y         required   class label: integers ≥ 0 or strings (strings → sorted names)
    a         optional   spurious attribute: integers ≥ 0 or strings; empty cells → unknown (-1)

Every cell is text: ``None``, ``NA``, ``nan`` are values like any other, only an empty cell is empty (an
empty id, path, split or class is an error naming the line). The file's text encoding and separator are
found by :func:`read_metadata` (BOM / UTF-16 / UTF-8 / else cp1252 with a note; ``,`` tab ``;`` ``|``).

A split without ``val`` gets a seeded, class-stratified ``val_fraction`` (20 %) of ``train`` carved out as
``val``; this is recorded in ``Benchmark.params["val_carved"]``, warned about, and shown by the validation
report. The helpers here (:func:`read_metadata`, :func:`clean_paths`, :func:`require_columns`,
:func:`map_split`, :func:`encode_labels`, :func:`carve_val`) are shared by the other loaders.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from clipcal.data.base import Benchmark, refuse_outside_root
from clipcal.errors import DataError

CSV_SCHEMA = (
    "id (optional, unique), filename (image path relative to the image folder), split (0/1/2 or "
    "train/val/test), y (class: int or string), a (spurious attribute: int or string, optional)"
)

_SPLIT_WORDS = {
    "0": "train", "train": "train", "training": "train", "tr": "train",
    "1": "val", "val": "val", "valid": "val", "validation": "val", "dev": "val", "va": "val",
    "2": "test", "test": "test", "testing": "test", "te": "test",
}


def require_root(root: str | Path | None, benchmark: str, layout: str) -> Path:
    """Return ``root`` as a Path, or raise ``DataError`` (with the expected ``layout``) if it is missing."""
    if root is None:
        raise DataError(f"{benchmark}: no root folder given", hint=f"expected layout:\n{layout}")
    p = Path(root).expanduser()
    if p.is_file():
        hint = (f"pass its folder as --root {p.parent} and the file name as --csv {p.name}" if benchmark == "csv"
                else f"pass the folder that holds it as --root {p.parent}")
        raise DataError(f"{benchmark}: --root {p} is a file, not a folder", hint=f"{hint}; expected layout:\n{layout}")
    if not p.is_dir():
        raise DataError(f"{benchmark}: root folder not found: {p}", hint=f"expected layout:\n{layout}")
    return p


#: How to say which encoding a file is in, shown with every decoding problem.
ENCODING_HINT = ("give the file's text encoding: --encoding NAME on the command line, encoding=NAME in Python "
                 "(common: utf-8, cp1252 = Windows Western European, latin-1, cp1250 = Central European, utf-16, "
                 "shift_jis, gb18030); or save the file as \"CSV UTF-8\" in your spreadsheet program")

# Longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_SEPARATORS = (",", "\t", ";", "|")


def _line_of(raw: bytes, offset: int, encoding: str) -> int:
    """1-based line number of byte ``offset`` of ``raw`` (newlines counted in the file's own encoding)."""
    nl = "\n".encode(encoding)
    bom = next((b for b, _ in _BOMS if nl.startswith(b) and len(nl) > len(b)), b"")
    return raw[:offset].count(nl[len(bom):]) + 1


def decode_text(raw: bytes, path: Path | str, what: str, encoding: str | None = None) -> tuple[str, str, str | None]:
    """Decode the bytes of a text table by one stated rule.

    Rule (first that applies): the ``encoding`` given; a byte-order mark (UTF-8 / UTF-16 / UTF-32, as spreadsheet
    programs write for "CSV UTF-8" and "Unicode text"); NUL bytes without a mark → UTF-16 LE/BE (a text table in
    any single-byte encoding or UTF-8 holds no NUL); valid UTF-8; otherwise Windows-1252 (cp1252, the superset of
    Latin-1 that Western-European Excel writes), or Latin-1 where cp1252 leaves a byte undefined. General
    detectors were not used: on short files they guess wrong (charset_normalizer 3.5 read a cp1252
    ``Müller,Käfer`` line as cp775 → ``M³ller``), and these files are short.

    Returns:
        ``(text, encoding used, note or None)``; the note (for guessed legacy encodings) says what was assumed
        and how to override it. A leading BOM is removed from ``text``.

    Raises:
        DataError: unknown ``encoding`` name, or bytes invalid in the given encoding (naming the 1-based line).
    """
    note = None
    if encoding:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise DataError(f"{what}: unknown text encoding {encoding!r}", hint=ENCODING_HINT) from None
        enc = encoding
    else:
        enc = next((e for bom, e in _BOMS if raw.startswith(bom)), None)
        if enc is None and b"\x00" in raw[:4096]:
            head = raw[:4096]
            enc = "utf-16-le" if head[1::2].count(0) >= head[0::2].count(0) else "utf-16-be"
        if enc is None:
            try:
                return raw.decode("utf-8"), "utf-8", None
            except UnicodeDecodeError:
                pass
            for enc in ("cp1252", "latin-1"):
                try:
                    text = raw.decode(enc)
                    break
                except UnicodeDecodeError:
                    continue
            label = "Windows Western European" if enc == "cp1252" else "Latin-1"
            note = (f"{path} is not UTF-8: read as {enc} ({label}); "
                    f"if names look wrong, {ENCODING_HINT}")
            return text.lstrip("\ufeff"), enc, note
    try:
        text = raw.decode(enc)
    except UnicodeDecodeError as err:
        line = _line_of(raw, err.start, enc)
        raise DataError(f"{what}: {path} line {line} is not valid {enc} "
                        f"(byte {raw[err.start:err.start + 1]!r}: {err.reason})", hint=ENCODING_HINT) from None
    return text.lstrip("\ufeff"), enc, note


def read_text(path: Path, what: str, layout: str | None = None,
              encoding: str | None = None) -> tuple[str, str, str | None]:
    """Read a text file as :func:`decode_text` does; ``DataError`` naming the file when it is missing."""
    if not path.is_file():
        raise DataError(f"{what}: metadata file not found: {path}",
                        hint=f"expected layout:\n{layout}" if layout else "check the path")
    return decode_text(path.read_bytes(), path, what, encoding)


def read_metadata(path: Path, what: str, layout: str | None = None, encoding: str | None = None) -> pd.DataFrame:
    """Read a metadata table (header row + one row per image) with every cell as text.

    * Encoding: :func:`decode_text` (BOM, UTF-16, UTF-8, else cp1252 with a note; or ``encoding``).
    * Separator: the one of ``,`` tab ``;`` ``|`` that occurs most in the header line (spreadsheets in many
      locales save "CSV" with ``;``; "Unicode text" is tab-separated), so commas inside cells of a ``;`` file
      are kept.
    * Cells are text, never guessed missing: ``None``, ``NA``, ``nan``, ``null`` are values (16.1); an empty
      cell is ``""``. Cells and column names are stripped of surrounding whitespace (also ``\\r`` of CRLF
      files and a stray BOM). Rows that are entirely empty are dropped.

    Returns:
        DataFrame of ``str`` whose **index is the 1-based line number** of each row in the file (as an editor
        shows it; exact unless a quoted cell spans lines), for messages. ``df.attrs`` holds ``encoding`` and
        ``notes`` (list of str: the assumed encoding, when guessed).

    Raises:
        DataError: file missing, not decodable, not parseable (naming the encoding and separator used), or
            without rows.
    """
    text, enc, note = read_text(path, what, layout, encoding)
    lines = text.splitlines()
    first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if first is None:
        raise DataError(f"{what}: {path} is empty", hint="the metadata must have a header row and one row per image")
    header = lines[first]
    sep = max(_SEPARATORS, key=lambda c: (header.count(c), -_SEPARATORS.index(c)))
    body = "\n".join(lines[first:])
    try:
        # dtype=object: the same Python str cells as dtype=str at half the time (CelebA: 202,599 × 41 cells)
        df = pd.read_csv(io.StringIO(body), sep=sep, dtype=object, na_filter=False, skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise DataError(f"{what}: cannot parse {path} as a table: {err}",
                        hint=f"read as {enc} text with separator {sep!r} (the one most used in the header line "
                        f"{first + 1}); the file must be a table with a header row and the same number of cells "
                        "on every line") from None
    df.columns = _header_names(header, sep, df, path, what, first + 1)
    df = df.loc[:, [c != "" for c in df.columns]]  # unnamed empty columns: a separator ending every line
    if re.search(r"[^\S\n\t]" if sep == "\t" else r"[^\S\n]", body):  # any cell may need stripping
        df = df.apply(lambda s: s.str.strip())
    df.index = pd.RangeIndex(len(df)) + first + 2  # header on line first + 1
    rest = lines[first + 1:]
    if len(rest) == len(df):  # one row per line (no quoted cell spans lines): blank rows from the text, fast
        keep = [bool(ln.strip().strip(sep).strip()) for ln in rest]
    else:
        keep = (df != "").any(axis=1).to_numpy()
    df = df[keep]
    if df.empty:
        raise DataError(f"{what}: {path} has no rows", hint="the metadata must list one image per row")
    df.attrs.update(encoding=enc, notes=[note] if note else [])
    return df


def _header_names(header: str, sep: str, df: pd.DataFrame, path: Path | str, what: str, line: int) -> list[str]:
    """The column names of ``header`` as written (pandas renames a repeated ``y`` to ``y.1`` and an empty cell
    to ``Unnamed: N``), stripped of whitespace and a stray BOM; raise ``DataError`` for a name repeated (after
    stripping) or an empty name over a column with values. An empty name over an empty column (a separator
    at the end of every line) is kept as ``""``, dropped by the caller."""
    raw = next(csv.reader([header], delimiter=sep), [])
    if len(raw) != len(df.columns):  # a quoted header cell spanning lines: keep pandas' names
        raw = [str(c) for c in df.columns]
    names = [str(c).strip().lstrip("\ufeff").strip() for c in raw]
    repeated = sorted({n for n in names if n and names.count(n) > 1})
    if repeated:
        where = "; ".join(f"{n!r} in columns {', '.join(str(i + 1) for i, m in enumerate(names) if m == n)}"
                          for n in repeated)
        raise DataError(f"{what}: {path} has repeated column name(s) in its header (line {line}): {where}",
                        hint="each column needs its own name: rename or delete the extra column(s) so the "
                        "loader knows which one to use (names are compared without surrounding spaces)")
    unnamed = [i for i, n in enumerate(names) if not n and (df.iloc[:, i].astype(str).str.strip() != "").any()]
    if unnamed:
        raise DataError(f"{what}: {path} has column(s) without a name in its header (line {line}): column(s) "
                        f"{', '.join(str(i + 1) for i in unnamed)}",
                        hint="give each column a name in the header row, or delete the column (a table saved "
                        "by pandas' to_csv has an unnamed index column: save it with index=False)")
    return names


def empty_cells(values: pd.Series, path: Path | str, column: str, what: str = "every row needs a value") -> None:
    """Raise ``DataError`` naming ``column`` and the first lines (the index) where ``values`` is ``""``."""
    empty = values.astype(str).str.strip() == ""
    if empty.any():
        lines = [int(i) for i in values.index[empty][:5]]
        raise DataError(f"{path}: column {column!r} has empty cells ({_lines(lines, empty.sum())})", hint=what)


def _lines(lines: list[int], n: int | None = None) -> str:
    """``"line 5"`` / ``"lines 5, 9, 12"`` (+ ``" … (N in all)"``)."""
    more = f" … ({n} in all)" if n is not None and n > len(lines) else ""
    return ("line " if len(lines) == 1 and not more else "lines ") + ", ".join(map(str, lines)) + more


_WIN_ABS = re.compile(r"^[A-Za-z]:\\|^\\\\")  # C:\… or \\server\…: Windows absolute paths, kept as they are


def clean_paths(values: pd.Series, base: Path, path: Path | str, column: str) -> pd.Series:
    """Image paths read from a table, with Windows separators read as folder separators.

    * empty cells → ``DataError`` naming the lines;
    * ``img\\a.jpg`` → ``img/a.jpg`` (always when the value has no ``/``; for a mix of both, when only the
      ``/`` form exists under ``base``); Windows absolute paths (``C:\\…``, ``\\\\server\\…``) are left as
      they are, for the root check (:func:`clipcal.data.base.paths_outside_root`) to name.

    Args:
        values: stripped path cells, index = line numbers (as from :func:`read_metadata`).
        base: folder relative paths are resolved against.

    Returns:
        The paths (same index). Ids derived from paths use these, so they keep the text as written.
    """
    empty_cells(values, path, column, "every row needs an image path")
    p = values.astype(str)
    back = p.str.contains("\\", regex=False) & ~p.str.match(_WIN_ABS)
    conv = p.str.replace("\\", "/", regex=False)
    simple = back & ~p.str.contains("/", regex=False)
    p = p.where(~simple, conv)
    for i in p.index[back & ~simple]:
        if not (base / p[i]).exists() and (base / conv[i]).exists():
            p[i] = conv[i]
    return p


def match_unicode_forms(paths: pd.Series, base: Path, path: Path | str) -> tuple[pd.Series, list[str]]:
    """Match non-ASCII paths to files stored in the other Unicode normal form.

    macOS writes decomposed (NFD) file names while typed text is usually composed (NFC); on Linux the two are
    different names. A path whose file does not exist as written, but does in NFC or NFD, is replaced by that
    form. Only non-ASCII paths are looked at (one ``stat`` each).

    Returns:
        ``(paths, notes)``; the note says how many paths were matched (shown by validation).
    """
    p = paths.copy()
    n = 0
    for i in p.index[~p.map(str.isascii)]:
        if (base / p[i]).exists():
            continue
        for form in ("NFC", "NFD"):
            q = unicodedata.normalize(form, p[i])
            if q != p[i] and (base / q).exists():
                p[i], n = q, n + 1
                break
    notes = [f"{n} path(s) in {path} name files stored in another Unicode normal form (NFD, as macOS writes, "
             "or NFC): matched to the files on disk"] if n else []
    return p, notes


def require_columns(df: pd.DataFrame, cols: list[str], path: Path | str, schema: str) -> None:
    """Raise ``DataError`` naming the missing columns, the expected schema and the columns found."""
    missing = [c for c in cols if c not in df.columns]
    if missing:
        found = ", ".join(map(str, df.columns[:30])) + (" …" if len(df.columns) > 30 else "")
        raise DataError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; columns found: {found}",
            hint=f"expected schema: {schema}",
        )


def map_split(values: pd.Series, path: Path | str, column: str = "split") -> pd.Series:
    """Map split values (0/1/2, train/val/test and synonyms, any case) to ``train`` / ``val`` / ``test``.

    Raises:
        DataError: empty cells or unknown values, naming them and the first lines holding them (``values``'
            index is the line number, as from :func:`read_metadata`).
    """
    def norm(v) -> str:
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        return str(v).strip().lower()

    empty_cells(values, path, column, "every row needs a split: 0/1/2 or train/val/test")
    keys = values.map(norm)
    out = keys.map(_SPLIT_WORDS)
    bad = out.isna()
    if bad.any():
        vals = sorted(set(values[bad].astype(str)))[:5]
        raise DataError(f"{path}: column {column!r} has unknown split value(s) {vals} "
                        f"({_lines([int(i) for i in values.index[bad][:5]], int(bad.sum()))})",
                        hint="use 0/1/2 or train/val/test (also training, valid, validation, testing)")
    return out


def encode_labels(values: pd.Series, names: list[str] | None, path: Path | str, column: str,
                  allow_missing: bool = False) -> tuple[np.ndarray, list[str], dict | None]:
    """Turn a label column into int codes + names.

    Integers (or integer-valued floats) are kept as they are (names default to ``"0" … "K-1"``, or the given
    ``names``); strings are mapped to the index of their sorted unique value (or of their position in the
    given ``names``). Only an empty cell is missing (``None``, ``NA`` are labels like any other, 16.1); empty
    cells become -1 when ``allow_missing``. String labels are compared in Unicode NFC, so a name typed on
    macOS (NFD) and elsewhere is one label. ``values``' index is the line number used in messages.

    Returns:
        ``(codes int64 [N], names, mapping or None)``; ``mapping`` is ``{name: code}`` for string labels.

    Raises:
        DataError: empty cells (when not allowed), negative integers, strings not in ``names``.
    """
    missing = values.isna() | (values.astype(str).str.strip() == "")
    if not allow_missing:
        empty_cells(values.where(~missing, ""), path, column, "every row needs a label")
    present = values[~missing]
    num = pd.to_numeric(present, errors="coerce")
    codes = np.full(len(values), -1, dtype=np.int64)
    if num.notna().all() and (num % 1 == 0).all():
        ints = num.astype(np.int64)
        if (ints < 0).any():
            raise DataError(f"{path}: column {column!r} has negative labels "
                            f"({_lines([int(i) for i in ints.index[ints < 0][:5]], int((ints < 0).sum()))})",
                            hint="integer labels must be 0 … K-1; or give names as strings")
        k = int(ints.max()) + 1 if len(ints) else 0
        if names is None:
            names = [str(i) for i in range(k)]
        elif k > len(names):
            raise DataError(f"{path}: column {column!r} has label {k - 1} but only {len(names)} names given",
                            hint=f"names given: {names}")
        codes[~missing.to_numpy()] = ints.to_numpy()
        return codes, list(names), None
    strs = present.astype(str).str.strip().map(lambda v: unicodedata.normalize("NFC", v))
    if names is None:
        names = sorted(strs.unique())
    else:
        names = [unicodedata.normalize("NFC", str(n)) for n in names]
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(strs) - set(index))
    if unknown:
        raise DataError(f"{path}: column {column!r} has values {unknown[:5]} not in the given names {names}",
                        hint="fix the names or the labels")
    codes[~missing.to_numpy()] = strs.map(index).to_numpy()
    return codes, list(names), dict(index)


def carve_val(table: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """Move a seeded, class-stratified ``fraction`` of ``train`` rows to ``val`` (returns a copy).

    Per class with ``n`` training rows, ``round(fraction · n)`` rows move (at least one when n ≥ 2), drawn
    with ``numpy.random.default_rng(seed)``; rows are visited in ``sample_id`` order so the result does not
    depend on the CSV's row order.
    """
    t = table.copy()
    t["split"] = t["split"].astype(str)
    rng = np.random.default_rng(seed)
    for y in sorted(t.loc[t["split"] == "train", "y"].unique()):
        idx = t.index[(t["split"] == "train") & (t["y"] == y)]
        idx = idx[np.argsort(t.loc[idx, "sample_id"].to_numpy(), kind="stable")]
        k = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        if k:
            t.loc[rng.choice(idx, size=k, replace=False), "split"] = "val"
    return t


def load_csv(
    root: str | Path,
    csv: str | Path = "metadata.csv",
    image_dir: str | Path | None = None,
    id_col: str | None = None,
    path_col: str | None = None,
    split_col: str = "split",
    y_col: str = "y",
    a_col: str | None = None,
    class_names: list[str] | None = None,
    attr_names: list[str] | None = None,
    target_name: str = "class",
    attr_name: str = "spurious attribute",
    val_fraction: float = 0.2,
    seed: int = 0,
    encoding: str | None = None,
    allow_outside_root: bool = False,
) -> Benchmark:
    """Load your own images + metadata CSV as a :class:`Benchmark` named ``csv``.

    Args:
        root: folder holding the CSV (and, by default, the images).
        csv: CSV file name (relative to ``root``) or path. Default ``metadata.csv``.
        image_dir: folder the ``filename`` values are relative to (relative to ``root`` or absolute);
            default ``root``.
        id_col: id column; default ``id`` if present, else the filename is the id.
        path_col: image path column; default ``filename``, else ``path``, else ``img_filename``.
        split_col, y_col: split and class columns (required).
        a_col: attribute column; default ``a`` if present, else none (``a = -1``, no attribute names). When
            given explicitly it must exist.
        class_names / attr_names: names for integer labels (index = code), or the order for string labels.
        target_name / attr_name: what ``y`` and ``a`` mean (shown in tables and plots).
        val_fraction, seed: the val split carved from train when the CSV has no val rows.
        encoding: the CSV's text encoding; default: detected by :func:`decode_text` (BOM, UTF-16, UTF-8,
            else cp1252 with a note shown by validation).
        allow_outside_root: accept image paths that leave the image folder (absolute elsewhere, ``../``);
            refused by default (:func:`clipcal.data.base.refuse_outside_root`); validation lists them.

    Returns:
        ``Benchmark`` with params recording the mapping (``label_mapping``, ``attr_mapping`` for string
        labels, ``val_carved``).

    Raises:
        DataError: root or CSV missing, undecodable text, missing columns (named, with the expected schema and
            the columns found), empty required cells (id, path, split, y: the lines named), unknown split values,
            duplicate ids, paths leaving the image folder (unless allowed).
    """
    base = require_root(root, "csv", "  <root>/metadata.csv   columns: " + CSV_SCHEMA + "\n  <root>/<images>")
    csv_path = Path(csv) if Path(csv).is_absolute() else base / csv
    df = read_metadata(csv_path, "csv", layout=f"  {csv_path}  with columns: {CSV_SCHEMA}", encoding=encoding)
    notes = list(df.attrs.get("notes", []))
    cols = set(df.columns)
    path_col = path_col or next((c for c in ("filename", "path", "img_filename", "image") if c in cols),
                                "filename")
    a_explicit = a_col is not None
    a_col = a_col or "a"
    required = [path_col, split_col, y_col] + ([id_col] if id_col else []) + ([a_col] if a_explicit else [])
    require_columns(df, required, csv_path, CSV_SCHEMA)
    id_col = id_col or ("id" if "id" in cols else None)

    img_root = base if image_dir is None else (Path(image_dir) if Path(image_dir).is_absolute()
                                               else base / image_dir)
    paths = clean_paths(df[path_col], img_root, csv_path, path_col)
    if id_col:
        empty_cells(df[id_col], csv_path, id_col, "every row needs an id (or leave out --id-col: the path is the id)")
    ids = df[id_col] if id_col else paths
    dup = ids.duplicated(keep=False)
    if dup.any():
        first = ids[dup].unique()[:5]
        where = "; ".join(f"{v!r} on {_lines([int(i) for i in ids.index[ids == v][:5]])}" for v in first)
        raise DataError(f"{csv_path}: duplicate ids in column {id_col or path_col!r}: {where}",
                        hint="every row needs a unique id")
    refuse_outside_root(paths, img_root, allow_outside_root, csv_path)
    paths, more = match_unicode_forms(paths, img_root, csv_path)
    notes += more
    split = map_split(df[split_col], csv_path, split_col)
    y, cnames, ymap = encode_labels(df[y_col], class_names, csv_path, y_col)
    if a_col in cols:
        a, anames, amap = encode_labels(df[a_col], attr_names, csv_path, a_col, allow_missing=True)
    else:
        a, anames, amap = np.full(len(df), -1, dtype=np.int64), [], None
    table = pd.DataFrame({"sample_id": ids.to_numpy(), "path": paths.to_numpy(), "split": split.to_numpy(),
                          "y": y, "a": a})
    params = {"csv": str(csv_path), "image_dir": str(img_root), "columns": {
        "id": id_col, "path": path_col, "split": split_col, "y": y_col, "a": a_col if a_col in cols else None}}
    if encoding:
        params["encoding"] = encoding
    if allow_outside_root:
        params["allow_outside_root"] = True
    if ymap:
        params["label_mapping"] = ymap
    if amap:
        params["attr_mapping"] = amap
    if not (table["split"] == "val").any():
        table = carve_val(table, val_fraction, seed)
        params.update(val_carved=True, val_fraction=val_fraction, val_seed=seed)
        warnings.warn(f"{csv_path} has no val rows: carved a class-stratified {val_fraction:.0%} of train "
                      f"as val (seed {seed})", stacklevel=2)
    if not (table["split"] == "test").any():
        warnings.warn(f"{csv_path} has no test rows", stacklevel=2)
    return Benchmark(name="csv", root=img_root, table=table, class_names=cnames, attr_names=anames,
                     params=params, target_name=target_name, attr_name=attr_name, notes=notes)
