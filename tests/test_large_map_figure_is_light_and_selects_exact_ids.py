"""The map figure at CelebA size (issue 14 item 3): 2 × 202,599 points are drawn with WebGL in a chart message of
a few MB (not the 36 MB the per-point hover fields made), and a box selection on it still maps to the exact
sample ids inside the box."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from streamlit.elements.plotly_chart import PlotlyChartSelectionSerde

from clipcal.figures import COMPACT_THRESHOLD, umap_figure
from clipcal.plot_selection import ids_from_selection

N = 202_599  # CelebA
MAX_MB = 16


def _points(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    y, a = rng.integers(0, 2, n), rng.integers(0, 2, n)
    return pd.DataFrame({
        "sample_id": [f"{i + 1:06d}.jpg" for i in range(n)],
        "x_before": rng.normal(size=n).astype(np.float32), "y_before": rng.normal(size=n).astype(np.float32),
        "x_after": rng.normal(size=n).astype(np.float32), "y_after": rng.normal(size=n).astype(np.float32),
        "class": np.array(["not blond", "blond"])[y], "attribute": np.array(["female", "male"])[a],
        "group": pd.Categorical(np.array(["not blond / female", "not blond / male", "blond / female",
                                          "blond / male"])[2 * y + a]),
        "split": rng.choice(["train", "val", "test"], n), "crossed": rng.choice(["fixed", "broken"], n),
        "cos_change": rng.random(n)})


def test_celeba_sized_map_is_webgl_and_its_message_is_a_few_mb():
    p = _points(N)
    for mode in ("side_by_side", "overlay"):
        fig = umap_figure(p, color="group", mode=mode, hover=["class", "attribute", "split", "crossed"], lines=150,
                          line_order="cos_change")
        markers = [t for t in fig.data if t.mode == "markers"]
        assert markers and all(t.type == "scattergl" for t in fig.data)
        assert sum(len(t.x) for t in markers) == 2 * N
        size = len(fig.to_json())  # what st.plotly_chart sends (plotly.io.to_json)
        assert size < MAX_MB * 2**20, f"{mode}: {size / 2**20:.1f} MB"
        # the hover card still names the sample and its colour
        assert all("%{customdata}" in t.hovertemplate and "group" in t.hovertemplate for t in markers)


def test_small_maps_keep_their_hover_fields():
    p = _points(COMPACT_THRESHOLD // 2 - 10)
    fig = umap_figure(p, color="group", hover=["class", "split"])
    assert np.asarray(fig.data[0].customdata).shape[1] == 4  # sample_id, group, class, split
    assert umap_figure(p, color="group", hover=["class"], compact=True).data[0].customdata.ndim == 1


def test_box_on_a_celeba_sized_map_selects_exact_ids():
    p = _points(N)
    fig = umap_figure(p, color="group", mode="side_by_side", hover=["class", "split"])
    box = (-0.01, 0.01)  # a thin box of the "after" panel: a few hundred of the 202,599 points
    inside = (p["x_after"].between(*box)) & (p["y_after"].between(-1, 1))
    want = set(p.loc[inside, "sample_id"])
    pts = []
    for c, tr in enumerate(fig.data):
        if tr.xaxis != "x2":  # the after panel
            continue
        x, y = np.asarray(tr.x), np.asarray(tr.y)
        for i in np.flatnonzero((x >= box[0]) & (x <= box[1]) & (y >= -1) & (y <= 1)):
            pts.append({"curve_number": c, "point_number": int(i), "point_index": int(i), "x": float(x[i]),
                        "y": float(y[i]), "customdata": tr.customdata[i]})
    assert 100 < len(pts) < 5000
    event = PlotlyChartSelectionSerde().deserialize(json.dumps(
        {"selection": {"points": pts, "point_indices": [p_["point_index"] for p_ in pts], "box": [], "lasso": []}}))
    ids = ids_from_selection(event)
    assert set(ids) == want and len(ids) == len(want)
    # without customdata in the event, the figure's traces give the same ids
    bare = [{k: v for k, v in p_.items() if k != "customdata"} for p_ in pts]
    assert set(ids_from_selection({"selection": {"points": bare}}, fig)) == want
