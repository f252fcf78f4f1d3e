"""Sections of the Data page: how a benchmark's files are read (text encoding, paths outside its folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
import streamlit as st

#: why paths leaving the benchmark folder are refused unless allowed (clipcal.data.base.refuse_outside_root)
OUTSIDE_ROOT_WHY = ("Off by default: a dashboard may be shared by a team, and a metadata file must not make it "
                    "read (and show) images from anywhere on this machine.")


#: Rows of a metadata CSV the column-mapping form shows and guesses from.
HEAD_ROWS = 200


def csv_head(path: Path, encoding: str | None) -> pd.DataFrame:
    """The first :data:`HEAD_ROWS` rows of the metadata CSV at ``path`` as the benchmark reads it
    (:func:`clipcal.data.csvdata.read_metadata`: every cell text, ``attrs["notes"]`` says a guessed encoding),
    read once per version of the file (path, encoding, size, mtime) and kept by ``st.cache_data``: the Data page
    reruns on every click, and reading CelebA's 202,599-row CSV takes about a second.

    Raises:
        DataError: as ``read_metadata`` (missing, undecodable, unparseable file); errors are not cached.
    """
    try:
        stat = path.stat()
        version = (stat.st_size, stat.st_mtime_ns)
    except OSError:  # missing: read_metadata says so in its own words (and nothing is cached)
        version = None
    return _csv_head(str(path), encoding, version)


@st.cache_data(show_spinner=False, max_entries=8)
def _csv_head(path: str, encoding: str | None, version) -> pd.DataFrame:
    from clipcal.data.csvdata import read_metadata

    return read_metadata(Path(path), "csv", encoding=encoding).head(HEAD_ROWS)


def reading_options(name: str, prev: dict, fk: Callable[[str], str]) -> dict:
    """The "how to read the files" fields of benchmark ``name`` — those its loader takes
    (:func:`clipcal.data.registry.loader_options`): an encoding for its metadata text (blank = detect) and
    whether image paths may leave its folder. ``prev``: the current benchmark's options (the fields open on them);
    ``fk``: the page's form-key function. Returns the options to set (``{}`` = defaults)."""
    from clipcal.data.registry import loader_options

    takes = loader_options(name)
    out: dict = {}
    if not {"encoding", "allow_outside_root"} & takes:
        return out
    a, b = st.columns([1, 2])
    if "encoding" in takes:
        enc = a.text_input("Encoding (blank = detect)", value=str(prev.get("encoding") or ""),
                           key=fk(f"data.encoding.{name}"), placeholder="e.g. utf-16, cp1252",
                           help="Text encoding of the metadata file. Blank: a byte-order mark, UTF-16, UTF-8, "
                                "else cp1252 (said in the validation report).").strip()
        if enc:
            out["encoding"] = enc
    if "allow_outside_root" in takes:
        if b.checkbox("Allow images outside the folder", value=bool(prev.get("allow_outside_root")),
                      key=fk(f"data.outside.{name}"),
                      help="Accept absolute paths, ../ paths and links that lead out of the image folder."):
            out["allow_outside_root"] = True
        b.caption(OUTSIDE_ROOT_WHY)
    return out
