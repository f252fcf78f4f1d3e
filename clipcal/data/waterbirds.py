"""Waterbirds (Sagawa et al., ICLR 2020) in the group_DRO / WILDS folder layout.

Layout (``root`` may be the dataset folder itself or a folder containing exactly one such folder, e.g. the
``waterbird_complete95_forest2water2/`` of the group_DRO tarball or ``waterbirds_v1.0/`` of WILDS)::

    <root>/metadata.csv                       img_id, img_filename, y, split, place[, place_filename]
    <root>/001.Black_footed_Albatross/*.jpg   images, paths as in img_filename
    …

``y``: 0 landbird, 1 waterbird; ``place`` (the spurious attribute): 0 land, 1 water; ``split``: 0 train,
1 val, 2 test. Official sizes: 4,795 / 1,199 / 5,794 (:data:`EXPECTED_GROUP_COUNTS`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from clipcal.data.base import Benchmark, refuse_outside_root
from clipcal.data.csvdata import (clean_paths, map_split, match_unicode_forms, read_metadata, require_columns,
                                  require_root)
from clipcal.errors import DataError

LAYOUT = """\
  <root>/metadata.csv                      columns img_id, img_filename, y, split (0/1/2), place (0 land, 1 water)
  <root>/001.Black_footed_Albatross/…jpg   the images, at the paths given in img_filename
  (root may also be a folder holding waterbird_complete95_forest2water2/ or waterbirds_v1.0/)"""

SCHEMA = "img_filename (image path), y (0 landbird / 1 waterbird), split (0/1/2), place (0 land / 1 water)"

#: Official (split, landbird/land, landbird/water, waterbird/land, waterbird/water) counts, used to check a
#: download (the tarball has no published checksum).
EXPECTED_GROUP_COUNTS = {"train": (3498, 184, 56, 1057), "val": (467, 466, 133, 133),
                         "test": (2255, 2255, 642, 642)}

_SUBDIRS = ("waterbird_complete95_forest2water2", "waterbirds_v1.0", "waterbirds")


def find_waterbirds_dir(root: Path) -> Path:
    """The folder holding ``metadata.csv``: ``root`` itself or one known/unique sub-folder."""
    if (root / "metadata.csv").is_file():
        return root
    for name in _SUBDIRS:
        if (root / name / "metadata.csv").is_file():
            return root / name
    found = [p.parent for p in root.glob("*/metadata.csv")]
    if len(found) == 1:
        return found[0]
    raise DataError(f"waterbirds: no metadata.csv in {root}" + (f" (found several: {found})" if found else ""),
                    hint=f"expected layout:\n{LAYOUT}")


def load_waterbirds(root: str | Path, encoding: str | None = None, allow_outside_root: bool = False) -> Benchmark:
    """Load Waterbirds from its ``metadata.csv``.

    Args:
        root: dataset folder (see module docstring).
        encoding: text encoding of ``metadata.csv``; default detected (:func:`clipcal.data.csvdata.read_metadata`).
        allow_outside_root: accept ``img_filename`` values leaving the dataset folder (refused by default).

    Returns:
        ``Benchmark`` ``waterbirds``: classes ``landbird, waterbird`` ("bird type"), attributes
        ``land, water`` ("background"); ``sample_id`` = ``img_filename`` as written (Windows separators read
        as ``/``).

    Raises:
        DataError: root or ``metadata.csv`` missing, undecodable, missing columns (named), empty cells, bad
            split values or labels (lines named), paths leaving the folder.
    """
    folder = find_waterbirds_dir(require_root(root, "waterbirds", LAYOUT))
    path = folder / "metadata.csv"
    df = read_metadata(path, "waterbirds", LAYOUT, encoding=encoding)
    require_columns(df, ["img_filename", "y", "split", "place"], path, SCHEMA)
    paths = clean_paths(df["img_filename"], folder, path, "img_filename")
    coded = {}
    for col in ("y", "place"):
        v = coded[col] = pd.to_numeric(df[col], errors="coerce")
        bad = v.isna() | ~v.isin([0, 1])
        if bad.any():
            lines = [int(i) for i in df.index[bad][:5]]
            raise DataError(f"{path}: column {col!r} must be 0 or 1; bad lines {lines}",
                            hint=f"expected schema: {SCHEMA}")
    refuse_outside_root(paths, folder, allow_outside_root, path)
    files, notes = match_unicode_forms(paths, folder, path)
    table = pd.DataFrame({
        "sample_id": paths.to_numpy(),
        "path": files.to_numpy(),
        "split": map_split(df["split"], path).to_numpy(),
        "y": coded["y"].astype(int).to_numpy(),
        "a": coded["place"].astype(int).to_numpy(),
    })
    params = {"root": str(folder)}
    if encoding:
        params["encoding"] = encoding
    if allow_outside_root:
        params["allow_outside_root"] = True
    return Benchmark(name="waterbirds", root=folder, table=table, class_names=["landbird", "waterbird"],
                     attr_names=["land", "water"], params=params, target_name="bird type", attr_name="background",
                     notes=list(df.attrs.get("notes", [])) + notes)
