"""Plotly selection → sample ids → table, CSV and image grid (pure functions, no streamlit).

Streamlit 1.67's ``st.plotly_chart(..., on_select="rerun")`` returns a ``PlotlyState``:
``{"selection": {"points": [...], "point_indices": [...], "box": [...], "lasso": [...]}}``. Each entry of
``points`` is plotly.js's event point with keys turned to snake case: ``curve_number`` (the trace),
``point_number`` / ``point_index`` (index *within that trace*), ``x``, ``y``, ``customdata`` (the point's
row of the trace's ``customdata``), ``legendgroup`` … ``point_indices`` merges the per-trace indices of
all traces and is therefore useless once ``color=`` splits the points into one trace per category
(field-notes.md, pitfall 6). Every scatter built by :mod:`clipcal.figures` carries ``sample_id`` as the
first ``custom_data`` field, so the ids are read from ``customdata``, falling back to the figure's traces
by ``(curve_number, point_index)`` when an event lacks it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

#: Position of ``sample_id`` inside each point's ``custom_data`` (figures.py puts it first).
ID_FIELD = 0


def _get(obj: Any, key: str, default=None):
    """dict-or-attribute access (Streamlit's states are dicts with attribute access)."""
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _points(event: Any) -> list:
    sel = _get(event, "selection")
    if sel is None:  # a PlotlySelectionState passed directly
        sel = event
    pts = _get(sel, "points", None)
    return list(pts or [])


def _trace_customdata(fig_or_traces: Any, curve: int):
    if fig_or_traces is None:
        return None
    traces = getattr(fig_or_traces, "data", fig_or_traces)
    if isinstance(traces, Mapping):  # fig.to_dict() / to_plotly_json()
        traces = traces.get("data", [])
    try:
        tr = traces[curve]
    except (IndexError, TypeError, KeyError):
        return None
    return _get(tr, "customdata")


def _first(cd: Any, field: int):
    if cd is None:
        return None
    if isinstance(cd, (list, tuple, np.ndarray)):
        return cd[field] if len(cd) > field else None
    return cd if field == 0 else None


def ids_from_selection(event: Any, fig_or_traces: Any = None, id_field: int = ID_FIELD) -> list[str]:
    """Sample ids of the points selected on a plotly chart (box, lasso or click).

    Args:
        event: what ``st.plotly_chart(..., on_select="rerun")`` returned (``PlotlyState``: a dict with
            ``selection``), or its ``selection`` part, or ``None`` / ``{}`` (no selection).
        fig_or_traces: the Figure shown (or its ``data`` list, or ``fig.to_dict()``), used only for
            points whose event lacks ``customdata``.
        id_field: position of ``sample_id`` in each point's ``custom_data`` (0 for clipcal.figures).

    Returns:
        Unique sample ids as ``str``, in the order of the event's points (a point shown in two panels —
        before and after — counts once). Points without an id (lines, centroid markers) are ignored.
    """
    ids: list[str] = []
    seen: set[str] = set()
    for p in _points(event):
        sid = _first(_get(p, "customdata"), id_field)
        if sid is None:
            curve = _get(p, "curve_number", _get(p, "curveNumber"))
            idx = _get(p, "point_index", _get(p, "point_number", _get(p, "pointNumber")))
            if curve is not None and idx is not None:
                cd = _trace_customdata(fig_or_traces, int(curve))
                if cd is not None and int(idx) < len(cd):
                    sid = _first(cd[int(idx)], id_field)
        if sid is None or (isinstance(sid, float) and np.isnan(sid)):
            continue
        s = str(sid)
        if s not in seen:
            seen.add(s)
            ids.append(s)
    return ids


def _row_positions(table: pd.DataFrame, ids: Sequence[str]) -> np.ndarray:
    """Positions in ``table`` of the rows whose ``sample_id`` is in ``ids``, in ``ids`` order; unknown ids dropped.

    A vectorised membership test (``Series.isin``: pyarrow's ``is_in`` on string columns) finds the k selected
    rows; only those are read as Python strings. The old lookup turned all N ids into Python strings and a hash
    index on every call — 0.1 s per thumbnail grid at CelebA size (202,599 rows), several grids per page rerun.
    """
    want = [str(i) for i in ids]
    if not want:
        return np.zeros(0, dtype=np.int64)
    sid = table["sample_id"]
    if not pd.api.types.is_string_dtype(sid):  # the Series, not its dtype: an object column of ints is not strings
        sid = sid.astype(str)
    hit = np.flatnonzero(sid.isin(want).to_numpy(dtype=bool))
    first: dict[str, int] = {}
    for pos, s in zip(hit.tolist(), sid.iloc[hit].tolist()):
        first.setdefault(s, pos)
    return np.asarray([first[i] for i in want if i in first], dtype=np.int64)


def selection_table(table: pd.DataFrame, ids: Sequence[str], extra: pd.DataFrame | Mapping | None = None,
                    class_names: Sequence[str] | None = None, attr_names: Sequence[str] | None = None
                    ) -> pd.DataFrame:
    """Rows of the sample table for the selected ids, in selection order, with optional extra columns.

    Args:
        table: canonical sample table (``sample_id, path, split, y, a, group``), or any frame with
            ``sample_id``.
        ids: selected sample ids (:func:`ids_from_selection`); unknown ids are dropped.
        extra: more columns — a DataFrame with a ``sample_id`` column (joined on it), or a mapping
            ``name → array`` aligned with ``table``'s rows (e.g. ``{"pred ERM": pred, "conf": p}``).
        class_names / attr_names: when given, columns ``class`` / ``attribute`` hold the names of ``y`` / ``a``.

    Returns:
        A new DataFrame with a fresh RangeIndex.

    Raises:
        ValueError: a mapping column of ``extra`` does not have one value per row of ``table``.
    """
    pos = _row_positions(table, ids)
    t = table.iloc[pos].copy()  # the selected rows only: the columns below cost O(k), not O(N)
    if isinstance(extra, Mapping):
        for name, vals in extra.items():
            vals = np.asarray(vals)
            if len(vals) != len(table):
                raise ValueError(f"extra column {name!r} has {len(vals)} values for {len(table)} table rows")
            t[name] = vals[pos]
    if class_names is not None and "y" in t:
        t.insert(t.columns.get_loc("y") + 1, "class", [class_names[int(v)] for v in t["y"]])
    if attr_names is not None and "a" in t:
        t.insert(t.columns.get_loc("a") + 1, "attribute",
                 [attr_names[int(v)] if 0 <= int(v) < len(attr_names) else "unknown" for v in t["a"]])
    out = t.reset_index(drop=True)
    if isinstance(extra, pd.DataFrame):
        ex = extra.copy()
        ex["sample_id"] = ex["sample_id"].astype(str)
        ex = ex.drop(columns=[c for c in ex.columns if c in out.columns and c != "sample_id"])
        out = out.merge(ex, on="sample_id", how="left")
    if "split" in out and isinstance(out["split"].dtype, pd.CategoricalDtype):
        out["split"] = out["split"].astype(str)
    return out


def selection_csv(table: pd.DataFrame, ids: Sequence[str], extra: pd.DataFrame | Mapping | None = None,
                  class_names: Sequence[str] | None = None, attr_names: Sequence[str] | None = None) -> bytes:
    """The :func:`selection_table` as UTF-8 CSV bytes (header row, no index) for a download button."""
    buf = io.StringIO()
    selection_table(table, ids, extra, class_names, attr_names).to_csv(buf, index=False)
    return buf.getvalue().encode("utf-8")


def image_grid_items(table: pd.DataFrame, ids: Sequence[str], benchmark, limit: int = 60,
                     captions: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """``(image path, caption)`` pairs for the first ``limit`` selected samples, for ``st.image``.

    Args:
        table: the sample table (``sample_id, path, split, y, a``).
        ids: selected sample ids, in the order to show.
        benchmark: the :class:`clipcal.data.Benchmark` (resolves relative paths; names classes/attributes).
        limit: at most this many items (≥ 0).
        captions: optional extra caption text per sample id (e.g. ``"ERM: landbird (0.93)"``).

    Returns:
        List of ``(absolute path as str, caption)``; caption ``"<class> / <attribute> · <split>"``
        (attribute omitted when unknown), plus the extra text on a new line.
    """
    rows = table.iloc[_row_positions(table, list(ids)[: max(int(limit), 0)])]
    cls = list(getattr(benchmark, "class_names", []) or [])
    att = list(getattr(benchmark, "attr_names", []) or [])
    items = []
    for r in rows.itertuples(index=False):
        y, a = int(r.y), int(getattr(r, "a", -1))
        label = cls[y] if y < len(cls) else str(y)
        if 0 <= a < len(att):
            label += f" / {att[a]}"
        cap = f"{label} · {r.split}"
        if captions and str(r.sample_id) in captions:
            cap += f"\n{captions[str(r.sample_id)]}"
        items.append((str(benchmark.image_path(r.path)), cap))
    return items
