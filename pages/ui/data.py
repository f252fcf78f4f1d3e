"""Sections of the Data page: how a benchmark's files are read (text encoding, paths outside its folder)."""

from __future__ import annotations

from typing import Callable

import streamlit as st

#: why paths leaving the benchmark folder are refused unless allowed (clipcal.data.base.refuse_outside_root)
OUTSIDE_ROOT_WHY = ("Off by default: a dashboard may be shared by a team, and a metadata file must not make it "
                    "read (and show) images from anywhere on this machine.")


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
