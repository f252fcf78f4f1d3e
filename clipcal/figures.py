"""Plotly figure builders: pure functions of DataFrames → ``plotly.graph_objects.Figure``.

Used by the pages and tested directly. Conventions:

* colours come from the Okabe–Ito palette (Okabe & Ito 2008; safe for the common colour-vision deficiencies),
  extended by plotly's ``Safe`` palette beyond eight categories; "unknown" is always grey; semantic pairs
  are fixed (correct = blue, wrong = vermillion; fixed = green, broken = vermillion);
* every title says what the figure shows and every axis title says what its unit is;
* every scatter point carries ``sample_id`` as the FIRST ``custom_data`` field, so a selection maps back
  to samples through :func:`clipcal.plot_selection.ids_from_selection`, whatever the number of traces;
* scatters above :data:`WEBGL_THRESHOLD` points use ``Scattergl`` (WebGL); the default drag mode is lasso.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

#: Okabe–Ito, reordered so the first colours are the most distinct on white (yellow late, black last).
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#000000"]
#: Paul Tol's "safe" qualitative palette (as in plotly.express), used after Okabe–Ito runs out.
SAFE_EXTRA = ["#88CCEE", "#CC6677", "#DDCC77", "#117733", "#332288", "#AA4499", "#44AA99", "#999933",
              "#882255", "#661100"]
PALETTE = OKABE_ITO + SAFE_EXTRA
UNKNOWN_COLOUR = "#BBBBBB"
SEMANTIC_COLOURS = {
    "correct": "#0072B2", "wrong": "#D55E00", "incorrect": "#D55E00",
    "fixed": "#009E73", "broken": "#D55E00", "unchanged": "#BBBBBB", "still correct": "#9BC3E0",
    "still wrong": "#E8B49A",
    "in calibration set": "#E69F00", "not in calibration set": "#C8C8C8",
    "train": "#0072B2", "val": "#E69F00", "test": "#009E73",
    "before": "#999999", "after": "#0072B2",
    "unknown": UNKNOWN_COLOUR,
}
#: Point count above which scatters use WebGL (``go.Scattergl``).
WEBGL_THRESHOLD = 1000
#: Above this many points in a map, each point carries only its ``sample_id`` (``customdata`` one string, not a row
#: of hover fields) and its hover card names the id and the colour: the hover fields cost ~60 bytes a point in the
#: chart's JSON, which at CelebA's 2 × 202,599 points made a 36 MB message serialised on every rerun (3.5 s).
COMPACT_THRESHOLD = 50_000
SCATTER_CONFIG = {"scrollZoom": True, "displaylogo": False}
_FONT = dict(size=13)


def color_map(categories: Sequence, colors: Mapping | None = None) -> dict:
    """Stable colour for each category: explicit ``colors`` > semantic names > palette in order.

    "unknown" (and NaN) is grey. The palette position depends only on the category's position in
    ``categories``, so the same sorted categories always get the same colours across figures.
    """
    out, i = {}, 0
    for c in categories:
        key = str(c)
        if colors and c in colors:
            out[c] = colors[c]
        elif key in SEMANTIC_COLOURS:
            out[c] = SEMANTIC_COLOURS[key]
        else:
            out[c] = PALETTE[i % len(PALETTE)]
            i += 1
    return out


def _layout(fig: go.Figure, title: str, **kw) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.0, xanchor="left"), template="plotly_white", font=_FONT,
                      legend=dict(title_text=kw.pop("legend_title", None)), margin=dict(l=60, r=20, t=70, b=60),
                      **kw)
    return fig


def _categories(s: pd.Series, order: Sequence | None = None) -> list:
    vals = s.astype("object").where(s.notna(), "unknown")
    present = list(pd.unique(vals))
    if order is not None:
        return [c for c in order if c in present] + [c for c in present if c not in order]
    if isinstance(s.dtype, pd.CategoricalDtype):
        return [c for c in s.cat.categories if c in present] + (["unknown"] if "unknown" in present else [])
    known = [c for c in present if c != "unknown"]
    try:
        known = sorted(known)
    except TypeError:
        known = sorted(known, key=str)
    return known + (["unknown"] if "unknown" in present else [])


# ---------------------------------------------------------------------------------------------------------
# Data


def group_counts_figure(counts: pd.DataFrame, log_y: bool = False, title: str | None = None) -> go.Figure:
    """Bar chart of images per (class × attribute) group, one bar per split side by side.

    Args:
        counts: ``Benchmark.group_counts()`` (``split, group, class, attribute, n``).
        log_y: logarithmic count axis (small groups stay visible next to large ones).
    """
    c = counts.copy()
    c["label"] = np.where(c["attribute"].astype(str) == "unknown", c["class"].astype(str),
                          c["class"].astype(str) + " / " + c["attribute"].astype(str))
    labels = list(pd.unique(c["label"]))
    fig = go.Figure()
    for split in [s for s in ("train", "val", "test") if s in set(c["split"].astype(str))]:
        s = c[c["split"].astype(str) == split].set_index("label").reindex(labels)
        fig.add_bar(x=labels, y=s["n"], name=split, marker_color=SEMANTIC_COLOURS[split], text=s["n"],
                    textposition="outside", hovertemplate="%{x}<br>" + split + ": %{y} images<extra></extra>")
    _layout(fig, title or "Images per group and split (group = class / spurious attribute)",
            barmode="group", legend_title="split",
            xaxis_title="group (class / spurious attribute)",
            yaxis_title="images (count" + (", log scale)" if log_y else ")"))
    if log_y:
        fig.update_yaxes(type="log")
    return fig


# ---------------------------------------------------------------------------------------------------------
# Groups


def _group_label(df: pd.DataFrame) -> pd.Series:
    if "name" in df:
        return df["name"].astype(str)
    att = df["attribute"].astype(str)
    return np.where(att == "unknown", df["class"].astype(str) + " / unknown attribute",
                    df["class"].astype(str) + " / " + att)


def group_accuracy_figure(groups: pd.DataFrame, method_col: str = "method", title: str | None = None
                          ) -> go.Figure:
    """Per-group accuracy with 95 % intervals, methods side by side; each method's worst group hatched.

    Args:
        groups: long table, one row per (method, group): ``method, group, class, attribute, n, accuracy,
            ci_low, ci_high`` — the concatenation of ``clipcal.metrics.group_table`` per method with a
            ``method`` column (a single method may omit it).
        method_col: name of the method column.
    """
    g = groups.copy()
    if method_col not in g:
        g[method_col] = "model"
    g["label"] = _group_label(g)
    labels = list(pd.unique(g["label"]))
    methods = list(pd.unique(g[method_col]))
    cmap = color_map(methods)
    fig = go.Figure()
    for m in methods:
        s = g[g[method_col] == m].set_index("label").reindex(labels)
        acc = s["accuracy"].astype(float)
        worst = acc.eq(acc[s["n"].fillna(0) > 0].min()) & acc.notna()
        # legend swatch from a plain legend-only bar (plotly draws the swatch from the first bar's style)
        # (offsetgroup: the legend-only bar shares the method's slot instead of taking one of its own)
        fig.add_bar(x=[None], y=[None], name=str(m), legendgroup=str(m), offsetgroup=str(m),
                    marker_color=cmap[m], hoverinfo="skip")
        fig.add_bar(
            x=labels, y=acc, name=str(m), legendgroup=str(m), offsetgroup=str(m), showlegend=False,
            marker_color=cmap[m],
            marker_pattern_shape=["/" if w else "" for w in worst],
            marker_line_width=[3 if w else 0 for w in worst], marker_line_color="#000000",
            error_y=dict(type="data", symmetric=False, array=(s["ci_high"] - acc).clip(lower=0),
                         arrayminus=(acc - s["ci_low"]).clip(lower=0), thickness=1.2, width=3),
            customdata=np.stack([s["n"].fillna(0).astype(int), s["ci_low"], s["ci_high"],
                                 np.where(worst, "worst group of this method", "")], axis=1),
            hovertemplate=f"<b>{m}</b><br>%{{x}}<br>accuracy %{{y:.1%}} (95 % CI %{{customdata[1]:.1%}}–"
                          "%{customdata[2]:.1%})<br>n = %{customdata[0]}<br>%{customdata[3]}<extra></extra>")
    fig.add_bar(x=[None], y=[None], name="worst group of a method", marker_color="#FFFFFF",
                marker_pattern_shape="/", marker_pattern_fgcolor="#000000", marker_line_width=2,
                marker_line_color="#000000", hoverinfo="skip", offsetgroup=str(methods[0]) if methods else None)
    _layout(fig, title or "Accuracy per group, methods side by side (hatched, outlined bar = the method's "
                          "worst group)",
            barmode="group", legend_title="method",
            xaxis_title="group (class / spurious attribute)",
            yaxis_title="accuracy (whiskers: 95 % Wilson interval)")
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%")
    # explicit: the legend-only bars (x = None) would otherwise make plotly guess a numeric axis
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=labels)
    # a group without images in this split has no bar: say so in its slot instead of leaving it blank
    n_by_label = g.assign(n=g["n"].fillna(0)).groupby("label", sort=False)["n"].sum()
    for lab in labels:
        if n_by_label.get(lab, 0) == 0:
            fig.add_annotation(x=lab, y=0.02, text="n = 0<br>(no images)", showarrow=False, yanchor="bottom",
                               font=dict(size=11, color="#555555"))
    return fig


def method_summary_style(table: pd.DataFrame, metric_cols: Sequence[str] = ("worst_group", "overall",
                                                                           "mean_group", "train_weighted",
                                                                           "worst_class")):
    """A pandas ``Styler`` of ``clipcal.metrics.method_table`` for ``st.dataframe``.

    Metric columns shown as percentages; per split, the best value of each metric is bold on a light
    blue background; methods that used group labels are marked in a ``group labels`` column (✓).
    Returns the Styler (``.data`` is the displayed frame).
    """
    t = table.copy()
    cols = [c for c in metric_cols if c in t]
    if "uses_group_labels" in t:
        t["uses_group_labels"] = np.where(t["uses_group_labels"].astype(bool), "✓ uses group labels",
                                          "no group labels")
    split_col = "split" if "split" in t else None

    def best(col: pd.Series) -> list[str]:
        out = [""] * len(col)
        parts = t.groupby(split_col).groups.values() if split_col else [col.index]
        for idx in parts:
            v = col.loc[idx].astype(float)
            if v.notna().any():
                for i in v.index[v == v.max()]:
                    out[col.index.get_loc(i)] = "font-weight: bold; background-color: #DCEBF7"
        return out

    fmt = {c: "{:.1%}" for c in cols}
    if "chosen_epoch" in t:  # a float column when some method has none (DFR): show whole epochs, not 20.000000
        fmt["chosen_epoch"] = lambda v: "—" if v is None or v != v else f"{int(v)}"
    sty = t.style.format(fmt, na_rep="—")
    for c in cols:
        sty = sty.apply(best, subset=[c])
    return sty


# ---------------------------------------------------------------------------------------------------------
# Representations (UMAP)


def _segment_rows(p: pd.DataFrame, line_order: str, lines: int) -> pd.Index:
    """Rows that get a before→after segment: at most ``lines``, largest ``line_order`` first, only those
    whose value is > 0 — a point that did not move gets no segment and is not counted as drawn."""
    v = p[line_order].astype(float)
    return v[v > 0].sort_values(ascending=False, kind="stable").index[:lines]


def _hover_template(hover: Sequence[str], start: int = 1, panel: str = "") -> str:
    lines = ["<b>%{customdata[0]}</b>"]
    lines += [f"{h}: %{{customdata[{i}]}}" for i, h in enumerate(hover, start=start)]
    return "<br>".join(lines) + (f"<extra>{panel}</extra>" if panel else "<extra></extra>")


def _hover_strings(s: pd.Series) -> np.ndarray:
    """Column as display strings: floats with 3 significant digits, missing values as "unknown"."""
    if pd.api.types.is_float_dtype(s):
        out = np.array([f"{v:.3g}" for v in s.to_numpy()], dtype=object)
    else:
        out = s.astype(str).to_numpy(dtype=object)
    out[s.isna().to_numpy()] = "unknown"
    return out


def _is_continuous(s: pd.Series) -> bool:
    return pd.api.types.is_float_dtype(s) and s.nunique(dropna=True) > 12


def umap_figure(points: pd.DataFrame, color: str, mode: str = "side_by_side", hover: Sequence[str] = (),
                title: str | None = None, color_label: str | None = None, category_order: Sequence | None = None,
                colors: Mapping | None = None, lines: int = 200, line_order: str | None = None,
                webgl: bool | None = None, marker_size: float | None = None, opacity: float = 0.75,
                seed: int = 0, compact: bool | None = None) -> go.Figure:
    """The joint UMAP map before vs after calibration, coloured by any column.

    Args:
        points: one row per sample: ``sample_id, x_before, y_before`` and (for before/after)
            ``x_after, y_after``, the ``color`` column and the ``hover`` columns.
        color: column to colour by (class, attribute, group, correct/wrong per method, calibration-set
            membership, split, confidence …). Float columns with > 12 values use a continuous scale
            (Cividis); anything else is categorical with one trace per category (and panel).
        mode: ``"side_by_side"`` (two panels sharing axes and legend) or ``"overlay"`` (one panel: before
            as open rings drawn over the filled "after" dots, grey segments joining each point's two positions
            for ``lines`` points). Without ``x_after`` a single "before" panel is drawn.
        hover: extra columns shown on hover and appended to ``custom_data`` after ``sample_id``.
        color_label: legend title (default the column name).
        category_order / colors: optional category order and ``{category: colour}``.
        lines: overlay only — how many before→after segments to draw (0 = none).
        line_order: overlay only — column ranking the points for segments (largest first; rows with a
            value ≤ 0 get none): the embedding change ``cos_change`` from
            :func:`clipcal.projection.displacement`, not ``move_2d`` (the map can show movement the
            embeddings do not have); default a seeded random subset.
        webgl: force ``Scattergl`` on/off; default on above :data:`WEBGL_THRESHOLD` points.
        compact: ``customdata`` = the ``sample_id`` alone and a hover card of id and colour only (``hover`` is
            not drawn); default on above :data:`COMPACT_THRESHOLD` points (before + after).

    Returns:
        Figure whose marker traces all carry ``customdata[:, 0] = sample_id`` (then the hover columns; compact:
        ``customdata[i] = sample_id``, which :func:`clipcal.plot_selection.ids_from_selection` reads the same);
        ``dragmode="lasso"``; ``uirevision`` fixed so zoom survives reruns.
    """
    p = points.reset_index(drop=True)
    has_after = "x_after" in p and "y_after" in p and p["x_after"].notna().any()
    if mode not in ("side_by_side", "overlay"):
        raise ValueError(f"mode must be 'side_by_side' or 'overlay', got {mode!r}")
    n = len(p)
    gl = (n * (2 if has_after else 1) > WEBGL_THRESHOLD) if webgl is None else webgl
    Trace = go.Scattergl if gl else go.Scatter
    size = marker_size or (4 if n > 5000 else 6 if n > 1000 else 8)
    n_points = n * (2 if has_after else 1)
    compact = n_points > COMPACT_THRESHOLD if compact is None else compact
    hover = [] if compact else [h for h in hover if h in p and h not in ("sample_id", color)]
    hv = [color] + hover
    ids = p["sample_id"].astype(str).to_numpy(dtype=object)
    cd = ids if compact else np.column_stack([ids] + [_hover_strings(p[h]) for h in hv])
    label = color_label or color
    panels = [("before", "x_before", "y_before")] + ([("after", "x_after", "y_after")] if has_after else [])
    side = has_after and mode == "side_by_side"
    if side:
        fig = make_subplots(rows=1, cols=2, shared_xaxes=True, shared_yaxes=True, horizontal_spacing=0.04,
                            subplot_titles=("Before calibration", "After calibration"))
    else:
        fig = go.Figure()
    tmpl = _hover_template([label] + hover)
    rings = []  # overlay: the open "before" rings, added after every filled dot so that no dot hides a ring
    continuous = _is_continuous(p[color])
    if continuous:
        vals = p[color].astype(float)
        lo, hi = float(np.nanmin(vals)), float(np.nanmax(vals))
        for i, (name, xc, yc) in enumerate(panels):
            overlay_before = (not side) and has_after and name == "before"
            marker = dict(color=vals, colorscale="Cividis", cmin=lo, cmax=hi, size=size, opacity=opacity,
                          showscale=i == 0, colorbar=dict(title=dict(text=label)))
            if overlay_before:  # a ring larger than the dot: an unmoved point is a dot inside its ring
                marker.update(symbol="circle-open", size=size + 3, opacity=min(1.0, opacity + 0.15),
                              line=dict(width=1.5))
            tmpl_c = (f"<b>%{{customdata}}</b><br>{label}: %{{marker.color:.3g}}<extra>{name}</extra>" if compact
                      else _hover_template([label] + hover, panel=name))
            tr = Trace(x=p[xc], y=p[yc], mode="markers", name=name, marker=marker, customdata=cd,
                       hovertemplate=tmpl_c)
            if overlay_before:
                rings.append(tr)
            else:
                fig.add_trace(tr, row=1, col=i + 1) if side else fig.add_trace(tr)
    else:
        cats = _categories(p[color], category_order)
        cmap = color_map(cats, colors)
        key = p[color].astype("object").where(p[color].notna(), "unknown")
        for c in cats:
            m = (key == c).to_numpy()
            for i, (name, xc, yc) in enumerate(panels):
                overlay_before = (not side) and has_after and name == "before"
                marker = dict(color=cmap[c], size=size, opacity=opacity)
                if overlay_before:
                    marker.update(symbol="circle-open", size=size + 3, opacity=min(1.0, opacity + 0.15),
                                  line=dict(color=cmap[c], width=1.5))
                show = (i == 0) if side else True
                tname = str(c) if (side or not has_after or name == "after") else f"{c} (before)"
                tmpl_c = (f"<b>%{{customdata}}</b><br>{label}: {c}<extra>{name}</extra>" if compact
                          else _hover_template([label] + hover, panel=name))
                tr = Trace(x=p.loc[m, xc], y=p.loc[m, yc], mode="markers", name=tname, legendgroup=str(c),
                           showlegend=show, marker=marker, customdata=cd[m], hovertemplate=tmpl_c)
                if overlay_before:
                    rings.append(tr)
                else:
                    fig.add_trace(tr, row=1, col=i + 1) if side else fig.add_trace(tr)
    fig.add_traces(rings)
    if has_after and not side and lines > 0:
        if line_order is not None and line_order in p:
            idx = _segment_rows(p, line_order, lines)
        else:
            idx = np.sort(np.random.default_rng(seed).permutation(n)[:lines])
        xs = np.full(3 * len(idx), np.nan)
        ys = np.full(3 * len(idx), np.nan)
        xs[0::3], xs[1::3] = p.loc[idx, "x_before"], p.loc[idx, "x_after"]
        ys[0::3], ys[1::3] = p.loc[idx, "y_before"], p.loc[idx, "y_after"]
        fig.add_trace(Trace(x=xs, y=ys, mode="lines", name=f"before → after ({len(idx)} points)",
                            line=dict(color="rgba(90,90,90,0.35)", width=1), hoverinfo="skip"))
    if title is None:
        title = (f"UMAP of the embeddings before vs after calibration (one joint fit), coloured by {label}"
                 if has_after else f"UMAP of the embeddings, coloured by {label}")
    _layout(fig, title, legend_title=label, dragmode="lasso", uirevision="umap", hovermode="closest",
            legend_itemsizing="constant", height=560)
    fig.update_xaxes(title_text="UMAP 1 (arbitrary units)", showgrid=False, zeroline=False)
    fig.update_yaxes(title_text="UMAP 2 (arbitrary units)", showgrid=False, zeroline=False)
    if side:
        fig.update_yaxes(title_text="", row=1, col=2)
    return fig


def centroid_shift_figure(shifts: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Arrows from each group's map centroid before calibration to after (``group_centroid_shifts``).

    Traces: one filled "after" dot per group (in the legend, coloured by group), then one open "before" ring
    per group drawn on top and larger than the dot, so a centroid that barely moved shows as a dot inside its
    ring instead of hiding the ring; then two grey legend-only keys for ring = before and dot = after.
    """
    s = shifts.reset_index(drop=True)
    cmap = color_map(list(s["name"]))
    fig = go.Figure()
    dot, ring = 10, 18
    for when in ("after", "before"):
        for r in s.itertuples(index=False):
            hover = (f"<b>{r.name}</b> {when} calibration (n = {r.n})<br>map shift {r.shift_2d:.2f}"
                     f"<br>1 − cos of mean embeddings {r.cos_shift:.3g}<extra></extra>")
            col = cmap[r.name]
            marker = (dict(color=col, size=dot, symbol="circle", line=dict(color="#FFFFFF", width=1))
                      if when == "after" else
                      dict(color=col, size=ring, symbol="circle-open", line=dict(color=col, width=2.5)))
            fig.add_trace(go.Scatter(x=[getattr(r, f"x_{when}")], y=[getattr(r, f"y_{when}")], mode="markers",
                                     name=str(r.name) if when == "after" else f"{r.name} (before)",
                                     legendgroup=str(r.name), showlegend=when == "after", marker=marker,
                                     hovertemplate=hover))
    for name, marker in (("before calibration (ring)", dict(size=ring, symbol="circle-open",
                                                            line=dict(color="#555555", width=2.5))),
                         ("after calibration (dot)", dict(size=dot, symbol="circle"))):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name, legendgroup="key",
                                 marker=dict(color="#555555", **marker), hoverinfo="skip"))
    for r in s.itertuples(index=False):
        # standoffs (px) end the arrow at the dot's edge and start it at the ring's, so neither is covered
        fig.add_annotation(x=r.x_after, y=r.y_after, ax=r.x_before, ay=r.y_before, xref="x", yref="y",
                           axref="x", ayref="y", showarrow=True, arrowhead=3, arrowwidth=2,
                           arrowcolor=cmap[r.name], standoff=dot / 2 + 1, startstandoff=ring / 2, text="")
    _layout(fig, title or "Group centroids in the joint UMAP: before (open ring) → after (filled dot)",
            legend_title="group")
    fig.update_xaxes(title_text="UMAP 1 (arbitrary units)")
    fig.update_yaxes(title_text="UMAP 2 (arbitrary units)")
    return fig


def crossing_figure(df: pd.DataFrame, group_col: str = "group_name", crossing_col: str = "crossing",
                    title: str | None = None) -> go.Figure:
    """Stacked bars: per group, how many samples were fixed / broken / unchanged by calibration.

    Args:
        df: one row per sample with a group column and the labels of
            :func:`clipcal.projection.crossed_boundary`.
    """
    tab = pd.crosstab(df[group_col].astype(str), df[crossing_col].astype(str))
    cats = [c for c in ("fixed", "broken", "still wrong", "still correct", "unchanged") if c in tab.columns]
    fig = go.Figure()
    for c in cats:
        fig.add_bar(x=tab.index, y=tab[c], name=c, marker_color=SEMANTIC_COLOURS[c],
                    hovertemplate="%{x}<br>" + c + ": %{y}<extra></extra>")
    _layout(fig, title or "Samples that crossed the decision boundary, per group", barmode="stack",
            legend_title="prediction change", xaxis_title="group",
            yaxis_title="samples (count)")
    return fig


# ---------------------------------------------------------------------------------------------------------
# Calibration


def training_curves_figure(curves: pd.DataFrame, color: str = "split", title: str | None = None) -> go.Figure:
    """Training curves: one panel per metric (loss terms, validation metrics) against epoch.

    Args:
        curves: ``MethodResult.curves`` (``epoch, stage, split, metric, value``; may hold a ``method``
            column). Lines are coloured by ``color`` and dashed by ``stage``.
    """
    c = curves.copy()
    metrics = list(pd.unique(c["metric"]))
    ncols = min(3, max(len(metrics), 1))
    nrows = int(np.ceil(len(metrics) / ncols)) if metrics else 1
    # rows ~95 px apart: room for a panel's "epoch" axis title plus the next panel's title (0.15 overlapped them)
    vgap = min(0.3, 95 / max(280 * nrows - 130, 1)) if nrows > 1 else 0.15
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=[str(m) for m in metrics],
                        horizontal_spacing=0.08, vertical_spacing=vgap)
    cats = _categories(c[color]) if color in c else ["all"]
    cmap = color_map(cats)
    stages = list(pd.unique(c["stage"])) if "stage" in c else [None]
    dashes = ["solid", "dash", "dot", "dashdot", "longdash"]
    seen = set()
    for i, m in enumerate(metrics):
        r, col = i // ncols + 1, i % ncols + 1
        sub = c[c["metric"] == m]
        for cat in cats:
            for j, st in enumerate(stages):
                s = sub[(sub[color] == cat) if color in sub else slice(None)]
                if st is not None:
                    s = s[s["stage"] == st]
                if s.empty:
                    continue
                s = s.sort_values("epoch")
                name = str(cat) if len(stages) == 1 else f"{cat} · {st}"
                fig.add_trace(go.Scatter(x=s["epoch"], y=s["value"], mode="lines+markers", name=name,
                                         legendgroup=name, showlegend=name not in seen,
                                         line=dict(color=cmap[cat], dash=dashes[j % len(dashes)]),
                                         marker=dict(size=4),
                                         hovertemplate=f"{m}<br>{name}<br>epoch %{{x}}: %{{y:.4g}}<extra></extra>"),
                              row=r, col=col)
                seen.add(name)
    _layout(fig, title or "Training curves: loss terms and validation metrics per epoch",
            legend_title=color, height=max(320, 280 * nrows))
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="value")
    return fig


# ---------------------------------------------------------------------------------------------------------
# Spurious attributes


def _chance_lines(fig: go.Figure, levels: Sequence[float], names: Sequence[str]) -> None:
    """Dashed chance lines drawn over the bars of a categorical x axis with one category per level.

    Spans the whole width whatever the number of bars per category: one line across the plot (``xref="paper"``,
    0 → 1) when all levels are equal, else one per category across its full slot (``i ± 0.5`` on the category
    axis, whose range is pinned to ``[-0.5, n - 0.5]`` so the slots tile the plot). One legend entry (shapes
    carry legend items since plotly 5.15) names the level(s); ``names`` are the categories' short names.
    """
    style = dict(type="line", line=dict(color="#000000", width=2, dash="dash"), layer="above",
                 legendgroup="chance")
    if np.allclose(levels, levels[0]):
        fig.add_shape(xref="paper", x0=0, x1=1, y0=levels[0], y1=levels[0], showlegend=True,
                      name=f"chance level ({levels[0]:.2f})", **style)
        return
    name = "chance level (" + ", ".join(f"{n} {lv:.2f}" for n, lv in zip(names, levels)) + ")"
    for i, lv in enumerate(levels):
        fig.add_shape(xref="x", x0=i - 0.5, x1=i + 0.5, y0=lv, y1=lv, showlegend=i == 0, name=name, **style)
    fig.update_xaxes(range=[-0.5, len(levels) - 0.5])


def decodability_figure(table: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Bars of how well a linear probe predicts the spurious attribute, before vs after calibration.

    Args:
        table: ``DecodabilityResult.table`` (``representation, balanced_accuracy, auroc, chance``).

    Chance is a dashed line (a layout shape, not a trace) across the whole plot, or across each metric's full
    slot when the two chance levels differ (> 2 attribute values); its legend entry names the level(s).
    """
    metrics = [("balanced_accuracy", "balanced accuracy"), ("auroc", "AUROC")]
    fig = go.Figure()
    reps = list(table["representation"])
    for r in reps:
        row = table[table["representation"] == r].iloc[0]
        fig.add_bar(x=[m[1] for m in metrics], y=[row[m[0]] for m in metrics], name=str(r),
                    marker_color=SEMANTIC_COLOURS.get(str(r), PALETTE[len(fig.data) % len(PALETTE)]),
                    text=[f"{row[m[0]]:.2f}" for m in metrics], textposition="outside",
                    hovertemplate=f"{r}<br>%{{x}}: %{{y:.3f}}<extra></extra>")
    chance = float(table["chance"].iloc[0]) if len(table) else 0.5
    # balanced accuracy: 1 / number of attribute values; AUROC: 0.5
    _chance_lines(fig, [chance, 0.5], ["bal. acc.", "AUROC"])
    _layout(fig, title or "Is the spurious attribute still decodable? Linear probe on the test split, "
                          "before vs after calibration",
            barmode="group", legend_title="embeddings",
            xaxis_title="probe score (higher = attribute easier to read from the embedding)",
            yaxis_title="score (chance marked; 1 = perfectly decodable)")
    fig.update_yaxes(range=[0, 1.08])
    return fig


def concept_scores_figure(scores: pd.DataFrame, top: int = 10, classes: Sequence[str] | None = None,
                          value: str = "score", title: str | None = None) -> go.Figure:
    """Horizontal bars of the top concepts per class (``clipcal.concepts.concept_scores``).

    Args:
        scores: concept-score table. top: concepts per class. classes: which classes (default all).
        value: ``"score"`` (cosine difference) or ``"effect_size"`` (Cohen's d).

    A class without scores (no misclassified or no correct images) gets a note in its panel and no axes.
    """
    s = scores.dropna(subset=[value])
    classes = list(classes) if classes is not None else list(pd.unique(scores["class"]))
    ncols = min(2, max(len(classes), 1))
    nrows = int(np.ceil(len(classes) / ncols)) if classes else 1
    sub_titles = []
    for c in classes:
        row = scores[scores["class"] == c]
        nw, nr = (int(row["n_wrong"].iloc[0]), int(row["n_correct"].iloc[0])) if len(row) else (0, 0)
        sub_titles.append(f"{c} (misclassified n={nw}, correct n={nr})")
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=sub_titles, horizontal_spacing=0.25,
                        vertical_spacing=0.12)
    empty = []
    for i, c in enumerate(classes):
        d = s[s["class"] == c].sort_values(value, ascending=False).head(top).iloc[::-1]
        if d.empty:  # no errors or no correct images: say so instead of an empty pair of axes
            empty.append((i // ncols + 1, i % ncols + 1))
        fig.add_trace(go.Bar(x=d[value], y=d["concept"], orientation="h", name=str(c), showlegend=False,
                             marker_color=np.where(d[value] > 0, "#D55E00", "#0072B2"),
                             customdata=np.column_stack([d["effect_size"], d["mean_sim_wrong"],
                                                         d["mean_sim_correct"]]) if len(d) else None,
                             hovertemplate="%{y}<br>score %{x:.4f}<br>effect size d = %{customdata[0]:.2f}"
                                           "<br>mean cos (misclassified) %{customdata[1]:.4f}<br>mean cos "
                                           "(correct) %{customdata[2]:.4f}<extra></extra>"),
                      row=i // ncols + 1, col=i % ncols + 1)
    xlabel = ("cosine similarity, misclassified − correct images" if value == "score"
              else "effect size (Cohen's d, misclassified vs correct)")
    _layout(fig, title or "Top concepts per class: how much more they match its misclassified images than its "
                          "correct ones (orange: more, a candidate spurious attribute; blue: less)",
            height=max(360, 40 * top * nrows + 120))
    fig.update_xaxes(title_text=xlabel)
    for r, col in empty:
        fig.update_xaxes(visible=False, row=r, col=col)
        fig.update_yaxes(visible=False, row=r, col=col)
        fig.add_annotation(text="nothing to score: this class needs both<br>misclassified and correct images",
                           xref="x domain", yref="y domain", x=0.5, y=0.5, showarrow=False,
                           font=dict(color="#666666"), row=r, col=col)
    if classes and len(empty) == len(classes):  # only notes: no tall blank chart
        fig.update_layout(height=220 * nrows)
    return fig


def cluster_accuracy_figure(clusters: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Accuracy of each k-means cluster within each class (``ClusterResult.table``), coloured by the
    cluster's majority attribute when known; bar text = cluster size."""
    t = clusters.copy()
    t["label"] = t["class"].astype(str) + " · cluster " + t["cluster"].astype(str)
    cats = _categories(t["majority_attribute"].astype(str))
    cmap = color_map(cats)
    fig = go.Figure()
    for c in cats:
        d = t[t["majority_attribute"].astype(str) == c]
        fig.add_bar(x=d["label"], y=d["accuracy"], name=str(c), marker_color=cmap[c], text=d["n"],
                    texttemplate="n=%{text}", textposition="outside",
                    customdata=np.column_stack([d["n"], d["n_wrong"], d["purity"].fillna(np.nan)]),
                    hovertemplate="%{x}<br>accuracy %{y:.1%}<br>n = %{customdata[0]}, wrong = "
                                  "%{customdata[1]}<br>attribute purity %{customdata[2]:.0%}<extra></extra>")
    fig.update_xaxes(categoryorder="array", categoryarray=list(t["label"]))
    _layout(fig, title or "Clusters within each class (k-means on embeddings): accuracy per cluster",
            legend_title="majority attribute", xaxis_title="class · cluster (0 = lowest accuracy)",
            yaxis_title="accuracy (share classified correctly)")
    fig.update_yaxes(range=[0, 1.1], tickformat=".0%")
    return fig


def calibration_set_figure(table: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Share of each true group in the calibration set vs in the pool it was drawn from
    (``CalibrationSetReport.table``); minority groups are hatched."""
    fig = go.Figure()
    hatch = ["/" if m else "" for m in table["minority"]]
    for col, name, colour in (("share_in_pool", "share in pool (train)", "#999999"),
                              ("share_in_set", "share in calibration set", "#E69F00")):
        fig.add_bar(x=table["name"].astype(str), y=table[col], name=name, marker_color=colour,
                    marker_pattern_shape=hatch,
                    customdata=np.column_stack([table["n_in_set"], table["n_in_pool"], table["enrichment"]]),
                    hovertemplate="%{x}<br>" + name + ": %{y:.1%}<br>in set %{customdata[0]}, in pool "
                                  "%{customdata[1]}<br>enrichment ×%{customdata[2]:.2f}<extra></extra>")
    _layout(fig, title or "Calibration set vs true groups (hatched = minority group)", barmode="group",
            legend_title="", xaxis_title="group (class / spurious attribute)",
            yaxis_title="share of samples (each bar colour sums to 100 %)")
    fig.update_yaxes(tickformat=".0%")
    return fig


# ---------------------------------------------------------------------------------------------------------
# concept activation vectors (clipcal.cav's report tables)


def cav_groups_figure(groups: pd.DataFrame, concept: str = "concept"):
    """Grouped bars: per group, the mean cosine with the CAV before and after calibration (NaN bars left out)."""
    fig = go.Figure()
    for space in ("before", "after"):
        col = f"score_{space}"
        if col in groups and groups[col].notna().any():
            fig.add_bar(x=groups["name"], y=groups[col], name=space, marker_color=SEMANTIC_COLOURS[space],
                        text=[f"{v:.3f}" if np.isfinite(v) else "" for v in groups[col]], textposition="outside",
                        hovertemplate=f"{space}<br>%{{x}}<br>mean cosine with the CAV %{{y:.3f}}<extra></extra>")
    return _layout(fig, f"How much each group points along the CAV of “{concept}”", barmode="group",
                   legend_title="embeddings", xaxis_title="group (test split)",
                   yaxis_title="mean cosine with the CAV")


def tcav_figure(tcav: pd.DataFrame, concept: str = "concept"):
    """TCAV score per class (mean ± sd over the concept CAVs) beside the random CAVs' scores; p in the hover and
    the label. Classes whose score is not vouched for (``shown`` False) are left out."""
    t = tcav[tcav["shown"]] if "shown" in tcav else tcav.iloc[0:0]
    fig = go.Figure()
    fig.add_bar(x=t["class"], y=t["tcav"], name=f"CAV of “{concept}”", marker_color=SEMANTIC_COLOURS["after"],
                error_y=dict(type="data", array=t["tcav_sd"].fillna(0)),
                text=[f"{v:.2f} (p={p:.2g}{', significant' if s else ''})"
                      for v, p, s in zip(t["tcav"], t["p_value"], t["significant"])], textposition="outside",
                hovertemplate="%{x}<br>TCAV %{y:.2f}<extra></extra>")
    fig.add_bar(x=t["class"], y=t["random_tcav"], name="random directions", marker_color=SEMANTIC_COLOURS["before"],
                error_y=dict(type="data", array=t["random_sd"].fillna(0)),
                hovertemplate="%{x}<br>random TCAV %{y:.2f}<extra></extra>")
    _layout(fig, "TCAV: share of each class's images whose class score rises along the concept", barmode="group",
            legend_title="direction", xaxis_title="class", yaxis_title="TCAV score (0–1)")
    fig.update_yaxes(range=[0, 1.15])
    return fig
