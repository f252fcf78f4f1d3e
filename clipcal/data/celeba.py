"""CelebA (Liu et al., ICCV 2015) as a spurious-correlation benchmark: target Blond_Hair, attribute Male.

Two layouts are read (per file, the Kaggle .csv is tried before the original .txt)::

    Kaggle ("jessicali9530/celeba-dataset"):
      <root>/img_align_celeba/<image_id>            (or img_align_celeba/img_align_celeba/<image_id>)
      <root>/list_attr_celeba.csv                   image_id, 5_o_Clock_Shadow, …, Young   (values -1 / 1)
      <root>/list_eval_partition.csv                image_id, partition                    (0 / 1 / 2)

    Original (Google Drive "Anno/" and "Eval/" text files, also used by group_DRO and SubpopBench):
      <root>/img_align_celeba/<image_id>
      <root>/list_attr_celeba.txt      line 1 count, line 2 the 40 names, then "<image_id> -1 1 …"
      <root>/list_eval_partition.txt   "<image_id> <0|1|2>"

Attribute values -1 become 0, +1 become 1. A .txt attribute file without its count line is read as well; a
file that is another CelebA file (``identity_CelebA.txt``, ``list_bbox_celeba.txt``, the partition file, …) is
named as such, with the 1-based line that shows it (:func:`looks_like`). The target and the spurious attribute
can be any of the 40 columns (``target=``, ``attribute=``). Splits are the official partition (162,770 / 19,867 / 19,962).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from clipcal.data.base import Benchmark, refuse_outside_root
from clipcal.data.csvdata import (empty_cells, map_split, read_metadata, read_text, require_columns,
                                  require_root)
from clipcal.errors import DataError

LAYOUT = """\
  <root>/img_align_celeba/000001.jpg …        (Kaggle's nested img_align_celeba/img_align_celeba/ works too)
  <root>/list_attr_celeba.csv                 image_id + 40 attribute columns (-1/1)
  <root>/list_eval_partition.csv              image_id, partition (0 train / 1 val / 2 test)
  (or the original list_attr_celeba.txt + list_eval_partition.txt)"""


_IMAGE_EXTS = (".jpg", ".jpeg", ".png")
ATTR_FILE = "list_attr_celeba"
PARTITION_FILE = "list_eval_partition"


def _is_image_id(token: str) -> bool:
    return token.lower().endswith(_IMAGE_EXTS)


def _token_rows(path: Path, encoding: str | None) -> tuple[list[tuple[int, list[str]]], list[str]]:
    """Non-blank lines of a whitespace-separated CelebA text file as ``(1-based line number, tokens)``."""
    text, _, note = read_text(path, "celeba", LAYOUT, encoding)
    rows = [(i + 1, ln.split()) for i, ln in enumerate(text.splitlines()) if ln.strip()]
    return rows, [note] if note else []


def looks_like(rows: list[list[str]]) -> str:
    """What a CelebA-style table (image id + numbers per row) looks like, naming the CelebA file it matches.

    Args:
        rows: token lists (image id first), header and count lines included or not.

    Returns:
        e.g. ``"2 columns: image id and a number from 1 to 10,177 — this looks like identity_CelebA.txt"``.
    """
    data = [r for r in rows if r and _is_image_id(r[0])]
    if not data:
        return "no line starts with an image id such as 000001.jpg"
    n = pd.Series([len(r) for r in data]).mode().iloc[0]
    vals = pd.to_numeric(pd.Series([v for r in data if len(r) == n for v in r[1:]]), errors="coerce")
    ints = bool(vals.notna().all()) and bool((vals % 1 == 0).all())
    if n == 2 and ints and set(vals.unique()) <= {0, 1, 2}:
        return "2 columns: image id and 0/1/2 — this looks like list_eval_partition.txt"
    if n == 2 and ints and vals.min() >= 1:
        return (f"2 columns: image id and a number from {int(vals.min()):,} to {int(vals.max()):,} — this looks "
                "like identity_CelebA.txt (person ids)")
    if ints and set(vals.unique()) <= {-1, 0, 1}:
        return f"{n} columns: image id and {n - 1} values of -1/1 — this looks like list_attr_celeba.txt"
    if n == 5 and ints:
        return "5 columns: image id and 4 numbers — this looks like list_bbox_celeba.txt (x_1 y_1 width height)"
    if n == 11 and ints:
        return ("11 columns: image id and 10 numbers — this looks like list_landmarks_(align_)celeba.txt "
                "(5 landmark x/y pairs)")
    return f"{n} columns: image id and {n - 1} values"


def _read_txt_attrs(path: Path, encoding: str | None) -> tuple[pd.DataFrame, list[str]]:
    """Read ``list_attr_celeba.txt``: optional count line, the attribute names, then ``<id> ±1 …`` rows.

    Returns:
        ``(table of str indexed by 1-based line number, notes)``; the notes report a count line that disagrees
        with the rows.

    Raises:
        DataError: naming the file, the line and what the file looks like instead (another CelebA file, cut
            off at a line, a missing names line).
    """
    rows, notes = _token_rows(path, encoding)
    expected = "line 1 the number of images, line 2 the 40 attribute names, then '<image id> -1 1 …' per image"
    if not rows:
        raise DataError(f"celeba: {path} is empty", hint=f"list_attr_celeba.txt has {expected}")
    count, i = None, 0
    if len(rows[0][1]) == 1 and rows[0][1][0].isdigit():
        count, i = int(rows[0][1][0]), 1
    if i >= len(rows) or _is_image_id(rows[i][1][0]):
        line = rows[i][0] if i < len(rows) else rows[0][0]
        what = looks_like([t for _, t in rows])
        fix = ("this is not the attribute file: put list_attr_celeba.txt from CelebA's Anno/ folder there"
               if "list_attr_celeba" not in what else
               "the attribute names line is missing: download list_attr_celeba.txt again")
        raise DataError(f"celeba: {path} line {line} should hold the attribute names (list_attr_celeba.txt has "
                        f"{expected}); this file has {what}", hint=fix)
    names = rows[i][1]
    data = rows[i + 1:]
    if data and len(names) == len(data[0][1]) and not _is_image_id(names[0]):
        names = names[1:]  # a header that names the id column too ("image_id 5_o_Clock_Shadow …")
    width = len(names) + 1
    bad = [(ln, len(t)) for ln, t in data if len(t) != width]
    if bad:
        if len(bad) == 1 and bad[0][0] == data[-1][0] and bad[0][1] < width:
            raise DataError(f"celeba: {path} line {bad[0][0]} has {bad[0][1]} fields instead of {width} (image id "
                            f"+ {len(names)} attributes): the file is cut off there",
                            hint="download list_attr_celeba.txt again")
        if len(bad) > len(data) // 2:
            raise DataError(f"celeba: {path} is not list_attr_celeba.txt: its names line (line {rows[i][0]}) has "
                            f"{len(names)} names but its rows have {looks_like([t for _, t in data])}",
                            hint="put list_attr_celeba.txt from CelebA's Anno/ folder there")
        shown = ", ".join(f"line {ln} ({k} fields)" for ln, k in bad[:5])
        raise DataError(f"celeba: {path}: {len(bad)} line(s) do not have {width} fields (image id + "
                        f"{len(names)} attributes): {shown}",
                        hint="fix or remove those lines, or download the file again")
    if count is not None and count != len(data):
        notes.append(f"{path}: line 1 says {count:,} images but {len(data):,} are listed — if you did not "
                     "shorten it on purpose, the file is cut off: download it again")
    df = pd.DataFrame([t for _, t in data], columns=["image_id", *names], index=[ln for ln, _ in data])
    return df, notes


def _read_txt_partition(path: Path, encoding: str | None) -> tuple[pd.DataFrame, list[str]]:
    """Read ``list_eval_partition.txt`` (``<image id> <0|1|2>`` per line; a header line is tolerated).

    Raises:
        DataError: naming this file, the first wrong line and what the file looks like instead.
    """
    rows, notes = _token_rows(path, encoding)
    if rows and not _is_image_id(rows[0][1][0]) and len(rows[0][1]) == 2:
        rows = rows[1:]  # "image_id partition"
    if not rows:
        raise DataError(f"celeba: {path} is empty", hint="list_eval_partition.txt has '<image id> <0|1|2>' per line")
    bad = [(ln, t) for ln, t in rows if len(t) != 2 or t[1] not in ("0", "1", "2")]
    if bad:
        ln, t = bad[0]
        raise DataError(f"celeba: {path} line {ln} is {' '.join(t)!r} ({len(bad):,} such lines): "
                        "list_eval_partition.txt has 2 columns, image id and 0 (train) / 1 (val) / 2 (test); this "
                        f"file has {looks_like([t for _, t in rows])}",
                        hint="put list_eval_partition.txt from CelebA's Eval/ folder there")
    df = pd.DataFrame([t for _, t in rows], columns=["image_id", "partition"], index=[ln for ln, _ in rows])
    return df, notes


def _read_tables(root: Path, encoding: str | None) -> tuple[pd.DataFrame, pd.DataFrame, Path, Path, list[str]]:
    """The attribute and partition tables (each file in the Kaggle CSV or the original .txt form), indexed by
    1-based line number, with their paths and the readers' notes."""
    found = {}
    for stem in (ATTR_FILE, PARTITION_FILE):
        found[stem] = next((root / f"{stem}{ext}" for ext in (".csv", ".txt") if (root / f"{stem}{ext}").is_file()),
                           None)
    missing = [f"{stem}.csv (or .txt)" for stem, f in found.items() if f is None]
    if missing:
        raise DataError(f"celeba: no {' and no '.join(missing)} in {root}", hint=f"expected layout:\n{LAYOUT}")
    a_path, p_path = found[ATTR_FILE], found[PARTITION_FILE]
    notes = []
    if a_path.suffix == ".csv":
        attrs = read_metadata(a_path, "celeba", LAYOUT, encoding=encoding)
        require_columns(attrs, ["image_id"], a_path, "image_id, then the 40 attribute columns (-1/1)")
        empty_cells(attrs["image_id"], a_path, "image_id", "every row needs an image id")
        notes += attrs.attrs.get("notes", [])
    else:
        attrs, more = _read_txt_attrs(a_path, encoding)
        notes += more
    if p_path.suffix == ".csv":
        part = read_metadata(p_path, "celeba", LAYOUT, encoding=encoding)
        require_columns(part, ["image_id", "partition"], p_path, "image_id, partition (0/1/2)")
        empty_cells(part["image_id"], p_path, "image_id", "every row needs an image id")
        notes += part.attrs.get("notes", [])
    else:
        part, more = _read_txt_partition(p_path, encoding)
        notes += more
    part = part.assign(split=map_split(part["partition"], p_path, "partition"))
    return attrs, part, a_path, p_path, notes


def load_celeba(root: str | Path, target: str = "Blond_Hair", attribute: str = "Male", encoding: str | None = None,
                allow_outside_root: bool = False) -> Benchmark:
    """Load CelebA with a binary target and a binary spurious attribute taken from its 40 attributes.

    Args:
        root: dataset folder (see module docstring for both layouts; each file may be .csv or .txt).
        target: attribute column used as the class ``y`` (default ``Blond_Hair``).
        attribute: attribute column used as the spurious attribute ``a`` (default ``Male``).
        encoding: text encoding of the metadata files; default detected (BOM, UTF-16, UTF-8, else cp1252).
        allow_outside_root: accept image ids that lead out of the dataset folder (``../…``; refused by default).

    Returns:
        ``Benchmark`` ``celeba``; classes ``not <target>, <target>``, attributes ``not <attribute>,
        <attribute>`` (for the defaults: ``not blond, blond`` × ``female, male``);
        ``sample_id`` = ``image_id``.

    Raises:
        DataError: root, metadata or image folder missing; a file that is another CelebA file (named: which
            file, which line, what it looks like) or cut off at a line; target/attribute column missing (the
            message lists the available attributes); values other than -1/0/1 (lines named); ids without a
            partition.
    """
    base = require_root(root, "celeba", LAYOUT)
    attrs, part, attr_path, part_path, notes = _read_tables(base, encoding)
    available = ", ".join(c for c in attrs.columns if c != "image_id")
    require_columns(attrs, [target, attribute], attr_path, "image_id + attribute columns; available: " + available)
    img_dir = base / "img_align_celeba"
    if (img_dir / "img_align_celeba").is_dir():
        img_dir = img_dir / "img_align_celeba"
    if not img_dir.is_dir():
        raise DataError(f"celeba: image folder not found: {base / 'img_align_celeba'}",
                        hint=f"expected layout:\n{LAYOUT}")
    coded = {}
    for col in (target, attribute):
        v = pd.to_numeric(attrs[col], errors="coerce")
        bad = ~v.isin([-1, 0, 1])
        if bad.any():
            lines = ", ".join(map(str, attrs.index[bad][:5]))
            raise DataError(f"celeba: {attr_path} column {col!r} must hold -1/1 (or 0/1); line(s) {lines} hold "
                            f"{sorted(set(attrs.loc[bad, col]))[:5]}",
                            hint="fix those lines or download the file again")
        coded[col] = (v > 0).astype(int)
    split = attrs["image_id"].map(dict(zip(part["image_id"], part["split"])))
    if split.isna().any():
        ids = list(attrs.loc[split.isna(), "image_id"][:5])
        raise DataError(f"celeba: {int(split.isna().sum()):,} image(s) of {attr_path.name} have no line in "
                        f"{part_path.name}, e.g. {ids}",
                        hint=f"{part_path.name} must list every image of {attr_path.name}")
    rel = img_dir.relative_to(base).as_posix()
    paths = rel + "/" + attrs["image_id"]
    refuse_outside_root(paths, base, allow_outside_root, attr_path)
    table = pd.DataFrame({
        "sample_id": attrs["image_id"].to_numpy(),
        "path": paths.to_numpy(),
        "split": split.to_numpy(),
        "y": coded[target].to_numpy(),
        "a": coded[attribute].to_numpy(),
    })
    if (target, attribute) == ("Blond_Hair", "Male"):
        cnames, anames = ["not blond", "blond"], ["female", "male"]
    else:
        cnames, anames = [f"not {target}", target], [f"not {attribute}", attribute]
    params = {"root": str(base), "target": target, "attribute": attribute}
    if encoding:
        params["encoding"] = encoding
    if allow_outside_root:
        params["allow_outside_root"] = True
    return Benchmark(name="celeba", root=base, table=table, class_names=cnames, attr_names=anames, params=params,
                     target_name=target.replace("_", " ").lower(), attr_name=attribute.replace("_", " ").lower(),
                     notes=notes)
