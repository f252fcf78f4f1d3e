"""The UMAP map with image hover cards — the one Altair / Vega-Lite chart builder (plotly's hover cannot show
images; Vega's tooltip renders a field titled ``image`` holding a data URI as an ``<img>``).

Same points frame, colours and categories as :func:`clipcal.figures.umap_figure` (the conventions come from
:mod:`clipcal.figures`); thumbnails are small JPEG data URIs of a seeded subset of the points, so the chart's
payload stays bounded. altair comes with Streamlit and is imported inside the functions.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from clipcal.figures import WEBGL_THRESHOLD, color_map, _categories, _hover_strings, _is_continuous, _segment_rows


#: Most points of a hover map that carry a thumbnail; above it a seeded random subset does (bounds the payload:
#: every thumbnail travels inside the chart's data, ~2 KB of base64 each at the defaults below).
HOVER_THUMB_CAP = 3000
#: Most points a hover map draws; above it a seeded random subset (:func:`hover_subsample`) is drawn. A Vega-Lite
#: spec carries every point as a JSON record (~200 bytes with its card), so CelebA's 2 × 202,599 points would be an
#: ~80 MB message; the selectable plotly map (WebGL) draws them all.
HOVER_MAP_POINTS_CAP = 20_000
#: Longest side in pixels and JPEG quality of hover thumbnails.
HOVER_THUMB_SIZE = 80
HOVER_THUMB_QUALITY = 70


def hover_subsample(n: int, cap: int = HOVER_THUMB_CAP, seed: int = 0) -> np.ndarray:
    """Rows that get a hover thumbnail: all ``n`` if ``n <= cap``, else a seeded random ``cap`` of them.

    Returns:
        Sorted int64 indices (``numpy.random.default_rng(seed).choice`` without replacement), so the same
        points keep their thumbnails across reruns and processes.

    Raises:
        ValueError: ``cap`` < 0.
    """
    if cap < 0:
        raise ValueError(f"cap must be >= 0, got {cap}")
    if n <= cap:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False)).astype(np.int64)


def thumbnail_data_uri(path, size: int = HOVER_THUMB_SIZE, quality: int = HOVER_THUMB_QUALITY) -> str:
    """``"data:image/jpeg;base64,…"`` of an image's thumbnail (:func:`clipcal.data.images.thumbnail`,
    longest side ``size`` px, JPEG ``quality``), for a Vega-Lite tooltip's ``image`` field.

    Raises:
        DataError: the file is missing or cannot be decoded (as :func:`clipcal.data.images.load_image`).
    """
    import base64
    import io

    from clipcal.data.images import thumbnail

    buf = io.BytesIO()
    thumbnail(path, size).save(buf, "JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def hover_thumbnails(paths: Sequence, cap: int = HOVER_THUMB_CAP, seed: int = 0, size: int = HOVER_THUMB_SIZE,
                     quality: int = HOVER_THUMB_QUALITY, encode=None) -> pd.Series:
    """The ``image`` column of :func:`umap_hover_chart`: a thumbnail data URI for the rows of
    :func:`hover_subsample` ``(len(paths), cap, seed)``, ``""`` for every other row.

    Args:
        paths: image file per row (e.g. ``points["path"]``).
        encode: ``path -> data URI`` (default :func:`thumbnail_data_uri` with ``size`` / ``quality``); the
            dashboard passes a memoised one.

    Returns:
        ``pd.Series`` of str named ``image``, one per path; unreadable files get ``""`` (their point keeps its
        text tooltip: one bad file must not take the whole map down).
    """
    from clipcal.errors import ClipcalError

    encode = encode or (lambda p: thumbnail_data_uri(p, size, quality))
    paths = list(paths)
    out = np.full(len(paths), "", dtype=object)
    for i in hover_subsample(len(paths), cap, seed):
        try:
            out[i] = encode(str(paths[i]))
        except ClipcalError:
            pass
    return pd.Series(out, name="image", dtype=object)


def umap_hover_chart(points: pd.DataFrame, color: str, mode: str = "side_by_side", hover: Sequence[str] = (),
                     image: str = "image", title: str | None = None, color_label: str | None = None,
                     category_order: Sequence | None = None, colors: Mapping | None = None, lines: int = 150,
                     line_order: str | None = None, max_images: int = HOVER_THUMB_CAP, seed: int = 0,
                     width: int = 400, height: int = 400, marker_size: float | None = None, opacity: float = 0.75):
    """The joint UMAP map of :func:`umap_figure` as an Altair (Vega-Lite) chart whose hover card shows the image.

    Vega-Lite tooltips are drawn by the vega-tooltip plugin, which renders a tooltip field titled exactly
    ``image`` holding a URL or data URI as an ``<img>`` (Vega-Lite docs, "Tooltip image"); Streamlit's
    ``st.altair_chart`` uses that plugin. Points whose ``image`` is ``""`` show the text fields only.

    Args:
        points: as for :func:`umap_figure` (``sample_id, x_before, y_before[, x_after, y_after]``, the
            ``color`` and ``hover`` columns) plus ``image`` (column name): data URI or ``""`` per row,
            e.g. from :func:`hover_thumbnails`.
        color: column to colour by; same palette and rules as :func:`umap_figure` (float columns with > 12
            values use the continuous Cividis scheme).
        mode: ``"side_by_side"`` (two panels, one shared axis range) or ``"overlay"`` (before = open circles,
            after = filled, grey segments joining ``lines`` points' two positions, the ``line_order`` column's
            largest first and only where it is > 0 — pass ``cos_change``, the embedding change — else a
            seeded random subset).
        hover: extra columns for the hover card (after sample id and the colour column).
        max_images: at most this many rows keep their image (a seeded subset of the non-empty ones, see
            :func:`hover_subsample`): the payload bound holds whatever the caller passed.
        width / height: pixels per panel (overlay: the single panel is ``2 * width`` wide); the legend is
            below the panels, so two panels fit Streamlit's main column. Above :data:`WEBGL_THRESHOLD` points
            the chart asks vega-embed for the canvas renderer (``usermeta.embedOptions``).

    Returns:
        ``altair`` chart (``HConcatChart`` side by side, ``LayerChart`` overlaid or without "after"); its one
        top-level dataset has one row per sample with fields ``sample_id, xb, yb[, xa, ya], color, h0 … hk,
        image[, line]`` (``h*`` = the hover columns as display strings, titled with their column names).

    Raises:
        ValueError: unknown ``mode``; ``color`` not a column.
    """
    import warnings

    import altair as alt

    if mode not in ("side_by_side", "overlay"):
        raise ValueError(f"mode must be 'side_by_side' or 'overlay', got {mode!r}")
    p = points.reset_index(drop=True)
    if color not in p:
        raise ValueError(f"colour column {color!r} is not in points (columns: {list(p.columns)})")
    n = len(p)
    has_after = "x_after" in p and "y_after" in p and p["x_after"].notna().any()
    side = has_after and mode == "side_by_side"
    label = color_label or color
    hover = [h for h in dict.fromkeys(hover) if h in p and h not in ("sample_id", color, image)]
    # plain field names: Vega-Lite reads "." and "[" in names as paths; titles carry the real names
    d = pd.DataFrame({"sample_id": p["sample_id"].astype(str),
                      "xb": p["x_before"].astype(float), "yb": p["y_before"].astype(float)})
    if has_after:
        d["xa"], d["ya"] = p["x_after"].astype(float), p["y_after"].astype(float)
    continuous = _is_continuous(p[color])
    if continuous:
        d["color"] = p[color].astype(float)
    else:
        d["color"] = p[color].astype("object").where(p[color].notna(), "unknown").astype(str)
    for i, h in enumerate(hover):
        d[f"h{i}"] = _hover_strings(p[h])
    # object arrays keep references to the caller's strings (no copy of a few MB of base64 per chart)
    imgs = (np.array([v if isinstance(v, str) else "" for v in p[image].to_numpy(dtype=object)], dtype=object)
            if image in p else np.full(n, "", dtype=object))
    filled = np.flatnonzero(imgs != "")
    if len(filled) > max_images:
        keep = np.zeros(n, bool)
        keep[filled[hover_subsample(len(filled), max_images, seed)]] = True
        imgs = np.where(keep, imgs, "")
    d["image"] = pd.Series(imgs, dtype=object)  # object: a str column would copy the base64 into Arrow
    if has_after and not side and lines > 0:
        if line_order is not None and line_order in p:
            idx = _segment_rows(p, line_order, lines)
        else:
            idx = np.random.default_rng(seed).permutation(n)[:lines]
        d["line"] = False
        d.loc[idx, "line"] = True

    if continuous:
        cenc = alt.Color("color:Q", scale=alt.Scale(scheme="cividis"), title=label, legend=alt.Legend(orient="bottom"))
        ctip = alt.Tooltip("color:Q", title=label, format=".3g")
    else:
        cats = [str(c) for c in _categories(d["color"], None if category_order is None
                                             else [str(c) for c in category_order])]
        cmap = color_map(cats, None if colors is None else {str(k): v for k, v in colors.items()})
        cenc = alt.Color("color:N", title=label, scale=alt.Scale(domain=cats, range=[cmap[c] for c in cats]),
                         legend=alt.Legend(symbolOpacity=1, symbolType="circle", orient="bottom", columns=4))
        ctip = alt.Tooltip("color:N", title=label)
    tips = ([alt.Tooltip("image:N", title="image"), alt.Tooltip("sample_id:N", title="sample id"), ctip]
            + [alt.Tooltip(f"h{i}:N", title=h) for i, h in enumerate(hover)])

    def dom(*cols):
        v = np.concatenate([d[c].to_numpy(dtype=float) for c in cols])
        v = v[np.isfinite(v)]
        lo, hi = (float(v.min()), float(v.max())) if len(v) else (0.0, 1.0)
        pad = 0.03 * (hi - lo or 1.0)
        return [lo - pad, hi + pad]

    sx = alt.Scale(domain=dom("xb", *(["xa"] if has_after else [])), nice=False, zero=False)
    sy = alt.Scale(domain=dom("yb", *(["ya"] if has_after else [])), nice=False, zero=False)
    size = marker_size or (10 if n > 5000 else 20 if n > 1000 else 40)

    def axes(xc: str, yc: str) -> dict:
        return dict(x=alt.X(f"{xc}:Q", scale=sx, title="UMAP 1 (arbitrary units)", axis=alt.Axis(grid=False)),
                    y=alt.Y(f"{yc}:Q", scale=sy, title="UMAP 2 (arbitrary units)", axis=alt.Axis(grid=False)))

    def layer(xc: str, yc: str, which: str | None, ring: bool = False):
        tip = tips + ([alt.Tooltip("map:N", title="map")] if which else [])
        ch = alt.Chart().mark_point(filled=not ring, size=size, opacity=opacity * (0.6 if ring else 1.0))
        if which:
            ch = ch.transform_calculate(map=f"'{which} calibration'")
        return ch.encode(**axes(xc, yc), color=cenc, tooltip=tip)

    if title is None:
        title = (f"UMAP of the embeddings before vs after calibration (one joint fit), coloured by {label}"
                 if has_after else f"UMAP of the embeddings, coloured by {label}")
    title = alt.TitleParams(title, subtitle="Hover a point to see its image; drag to pan, scroll to zoom.",
                            anchor="start")
    # canvas above WEBGL_THRESHOLD points: SVG makes one DOM node per point (Streamlit only switches by itself
    # for inline data, not for its Arrow datasets); vega-embed reads usermeta.embedOptions
    meta = {"embedOptions": {"renderer": "canvas"}} if n * (2 if has_after else 1) > WEBGL_THRESHOLD else None
    if side:
        # one param bound to both panels' scales: they pan and zoom together
        zoom = alt.selection_interval(bind="scales", encodings=["x", "y"], name="umap_zoom")
        before = layer("xb", "yb", "before").properties(title="Before calibration", width=width, height=height)
        after = layer("xa", "ya", "after").properties(title="After calibration", width=width, height=height)
        with warnings.catch_warnings():  # Altair warns when it merges one param into two views: wanted here
            warnings.filterwarnings("ignore", message="Automatically deduplicated selection parameter")
            chart = alt.hconcat(before.add_params(zoom), after.add_params(zoom), data=d, title=title)
        chart = chart.resolve_scale(color="shared")
        return chart.properties(usermeta=meta) if meta else chart
    if has_after:
        parts = []
        if "line" in d:
            parts.append(alt.Chart().mark_rule(color="#5A5A5A", opacity=0.35, strokeWidth=1)
                         .encode(**axes("xb", "yb"), x2="xa:Q", y2="ya:Q")
                         .transform_filter("datum.line"))
        parts += [layer("xb", "yb", "before", ring=True), layer("xa", "ya", "after")]
    else:
        parts = [layer("xb", "yb", None)]
    # fit-x: the width follows Streamlit's column, the height stays the plot's (Streamlit's default "fit" would
    # squeeze the plot to leave room for title and legend inside ``height``)
    chart = alt.layer(*parts, data=d, title=title).properties(
        width=2 * width if has_after else width, height=height,
        autosize=alt.AutoSizeParams(type="fit-x", contains="padding")).interactive()
    return chart.properties(usermeta=meta) if meta else chart


def umap_hover_spec(points: pd.DataFrame, color: str, **kw) -> dict:
    """:func:`umap_hover_chart` as a Vega-Lite dict for ``st.vega_lite_chart(spec=…)``: validated by Altair
    once, so a page can keep it and redraw without Altair's schema validation (~0.3 s per rerun at 6,000
    points).

    Args:
        points, color, **kw: as :func:`umap_hover_chart`.

    Returns:
        dict with ``data = {"name": "points"}`` and ``datasets = {"points": DataFrame}`` (the frame described in
        :func:`umap_hover_chart`; Streamlit sends it as Arrow).
    """
    import altair as alt

    chart = umap_hover_chart(points, color, **kw)
    frame = chart.data
    chart.data = alt.NamedData(name="points")
    spec = chart.to_dict()
    spec["datasets"] = {"points": frame}
    return spec
