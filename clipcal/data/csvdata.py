"""Bring your own data: a metadata CSV plus a folder of images (SubpopBench-style ``id, filename, split, y, a``).

Expected schema (column names are mappable with the ``*_col`` arguments)::

    id        optional   unique sample id (default: the filename)
    filename  required   image path, relative to the image folder (or absolute); ``path`` is accepted too;
                         Windows separators (``img\\a.jpg``) are read as ``img/a.jpg``
    split     required   0/1/2 or train/val/test (case-insensitive; also training, valid, validation, testing)
    y         required   class label: integers ≥ 0 or strings (strings → sorted names)
    a         optional   spurious attribute: integers ≥ 0 or strings; empty cells → unknown (-1)

A split without ``val`` gets a seeded, class-stratified ``val_fraction`` (20 %) of ``train`` carved out as
``val``; this is recorded in ``Benchmark.params["val_carved"]``, warned about, and shown by the validation
report. The helpers here (:func:`read_metadata`, :func:`require_columns`, :func:`map_split`,
:func:`carve_val`) are shared by the other loaders.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from clipcal.data.base import Benchmark
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
    if not p.is_dir():
        raise DataError(f"{benchmark}: root folder not found: {p}", hint=f"expected layout:\n{layout}")
    return p


def read_metadata(path: Path, what: str, layout: str | None = None, **read_csv_kw) -> pd.DataFrame:
    """Read a metadata CSV, raising ``DataError`` naming the file if it is missing, empty or not a CSV.

    A file whose header parses as one column holding ``;``, tab or ``|`` is re-read with that separator
    (spreadsheets in many locales save "CSV" with ``;``).
    """
    if not path.is_file():
        raise DataError(f"{what}: metadata file not found: {path}",
                        hint=f"expected layout:\n{layout}" if layout else "check the path")
    try:
        df = pd.read_csv(path, **read_csv_kw)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{what}: cannot parse {path} as CSV: {err}",
                        hint="the file must be a comma-separated table with a header row") from None
    if len(df.columns) == 1 and "sep" not in read_csv_kw:
        # spreadsheets in many locales save ';'- (or tab-) separated "CSV": read those with their separator
        head = str(df.columns[0])
        sep = next((c for c in (";", "\t", "|") if c in head), None)
        if sep is not None:
            return read_metadata(path, what, layout, sep=sep, **read_csv_kw)
    if df.empty:
        raise DataError(f"{what}: {path} has no rows", hint="the metadata must list one image per row")
    df.columns = [str(c).strip() for c in df.columns]
    return df


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
        DataError: unknown values, naming them and the first rows holding them.
    """
    def norm(v) -> str:
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        return str(v).strip().lower()

    keys = values.map(norm)
    out = keys.map(_SPLIT_WORDS)
    bad = out.isna()
    if bad.any():
        vals = sorted(set(values[bad].astype(str)))[:5]
        rows = [int(i) + 2 for i in values.index[bad][:5]]  # +2: header line, 1-based
        raise DataError(f"{path}: column {column!r} has unknown split value(s) {vals} (lines {rows})",
                        hint="use 0/1/2 or train/val/test (also training, valid, validation, testing)")
    return out


def encode_labels(values: pd.Series, names: list[str] | None, path: Path | str, column: str,
                  allow_missing: bool = False) -> tuple[np.ndarray, list[str], dict | None]:
    """Turn a label column into int codes + names.

    Integers (or integer-valued floats) are kept as they are (names default to ``"0" … "K-1"``, or the given
    ``names``); strings are mapped to the index of their sorted unique value (or of their position in the
    given ``names``). Empty cells become -1 when ``allow_missing``.

    Returns:
        ``(codes int64 [N], names, mapping or None)``; ``mapping`` is ``{name: code}`` for string labels.

    Raises:
        DataError: empty cells (when not allowed), negative integers, strings not in ``names``.
    """
    missing = values.isna() | (values.astype(str).str.strip() == "")
    if missing.any() and not allow_missing:
        rows = [int(i) + 2 for i in values.index[missing][:5]]
        raise DataError(f"{path}: column {column!r} has empty cells (lines {rows})",
                        hint="every row needs a label")
    present = values[~missing]
    num = pd.to_numeric(present, errors="coerce")
    codes = np.full(len(values), -1, dtype=np.int64)
    if num.notna().all() and (num % 1 == 0).all():
        ints = num.astype(np.int64)
        if (ints < 0).any():
            rows = [int(i) + 2 for i in ints.index[ints < 0][:5]]
            raise DataError(f"{path}: column {column!r} has negative labels (lines {rows})",
                            hint="integer labels must be 0 … K-1; or give names as strings")
        k = int(ints.max()) + 1 if len(ints) else 0
        if names is None:
            names = [str(i) for i in range(k)]
        elif k > len(names):
            raise DataError(f"{path}: column {column!r} has label {k - 1} but only {len(names)} names given",
                            hint=f"names given: {names}")
        codes[~missing.to_numpy()] = ints.to_numpy()
        return codes, list(names), None
    strs = present.astype(str).str.strip()
    if names is None:
        names = sorted(strs.unique())
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

    Returns:
        ``Benchmark`` with params recording the mapping (``label_mapping``, ``attr_mapping`` for string
        labels, ``val_carved``).

    Raises:
        DataError: root or CSV missing, missing columns (named, with the expected schema and the columns
            found), unknown split values, empty labels, duplicate ids.
    """
    base = require_root(root, "csv", "  <root>/metadata.csv   columns: " + CSV_SCHEMA + "\n  <root>/<images>")
    csv_path = Path(csv) if Path(csv).is_absolute() else base / csv
    df = read_metadata(csv_path, "csv", layout=f"  {csv_path}  with columns: {CSV_SCHEMA}", dtype=str,
                       keep_default_na=True)
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
    paths = df[path_col].astype(str).str.strip()
    # a CSV written on Windows has img\a.jpg: read backslashes as folder separators (when no '/' is used)
    win = paths.str.contains("\\", regex=False) & ~paths.str.contains("/", regex=False)
    paths = paths.where(~win, paths.str.replace("\\", "/", regex=False))
    if (df[path_col].isna() | (paths == "")).any():
        rows = [int(i) + 2 for i in df.index[df[path_col].isna() | (paths == "")][:5]]
        raise DataError(f"{csv_path}: column {path_col!r} has empty cells (lines {rows})",
                        hint="every row needs an image path")
    ids = df[id_col].astype(str).str.strip() if id_col else paths
    dup = ids.duplicated(keep=False)
    if dup.any():
        raise DataError(f"{csv_path}: duplicate ids in column {id_col or path_col!r}: "
                        f"{list(ids[dup].unique()[:5])}", hint="every row needs a unique id")
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
                     params=params, target_name=target_name, attr_name=attr_name)
