"""clipcal.figures: "before" markers stay visible under "after" ones (open rings drawn over the dots, larger) in
the centroid-shift figure and the overlaid UMAP; legends say which marker is which; trace order kept."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clipcal import figures as F


def _shifts(dx: float) -> pd.DataFrame:
    return pd.DataFrame({"group": [0, 1, 2], "name": ["a / x", "a / y", "b / x"], "n": [10, 3, 7],
                         "x_before": [0.0, 1.0, 2.0], "y_before": [0.0, 1.0, 0.5],
                         "x_after": [0.0 + dx, 1.0, 2.0 - dx], "y_after": [0.0, 1.0 + dx, 0.5],
                         "shift_2d": [dx, dx, dx], "cos_shift": [1e-3, 2e-3, 0.0]})


@pytest.mark.parametrize("dx", [0.0, 0.4])
def test_centroid_rings_are_drawn_over_the_dots_and_larger(dx):
    s = _shifts(dx)
    fig = F.centroid_shift_figure(s)
    groups = [t for t in fig.data if t.legendgroup != "key"]
    dots = [i for i, t in enumerate(groups) if t.marker.symbol == "circle"]
    rings = [i for i, t in enumerate(groups) if t.marker.symbol == "circle-open"]
    assert len(dots) == len(rings) == 3
    assert max(dots) < min(rings)  # plotly draws later traces on top: no dot can cover a ring
    for i, r in zip(dots, rings):
        dot, ring = groups[i], groups[r]
        assert ring.marker.size > dot.marker.size + 4  # an unmoved centroid is a dot inside its ring
        assert ring.marker.line.width >= 2 and ring.marker.color == dot.marker.color
    k = 1
    assert (list(groups[dots[k]].x), list(groups[dots[k]].y)) == ([s.x_after[k]], [s.y_after[k]])
    assert (list(groups[rings[k]].x), list(groups[rings[k]].y)) == ([s.x_before[k]], [s.y_before[k]])
    # arrows stop at the dot's edge and start at the ring's edge
    a = fig.layout.annotations[0]
    assert a.standoff >= groups[dots[0]].marker.size / 2 and a.startstandoff >= groups[rings[0]].marker.size / 2


def test_centroid_legend_is_honest():
    fig = F.centroid_shift_figure(_shifts(0.2))
    shown = [t for t in fig.data if t.showlegend is not False]
    assert [t.name for t in shown] == ["a / x", "a / y", "b / x", "before calibration (ring)",
                                       "after calibration (dot)"]
    assert [t.marker.symbol for t in shown[:3]] == ["circle"] * 3  # group swatches are the group's colour dot
    key_ring, key_dot = shown[3:]
    assert key_ring.marker.symbol == "circle-open" and key_dot.marker.symbol == "circle"
    assert list(key_ring.x) == [None]  # legend only, nothing in the plot
    assert "open ring" in fig.layout.title.text and "filled dot" in fig.layout.title.text


def _points(n=30, seed=0):
    rng = np.random.default_rng(seed)
    xb = rng.normal(size=(n, 2))
    return pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "x_before": xb[:, 0], "y_before": xb[:, 1],
                         "x_after": xb[:, 0], "y_after": xb[:, 1],  # nothing moved: the worst case for rings
                         "class": rng.choice(["landbird", "waterbird", "other"], n), "conf": rng.uniform(size=n)})


@pytest.mark.parametrize("color", ["class", "conf"])
def test_umap_overlay_rings_on_top_of_every_dot(color):
    p = _points(n=40 if color == "class" else 60)
    fig = F.umap_figure(p, color=color, mode="overlay", lines=0)
    kinds = ["ring" if t.marker.symbol == "circle-open" else "dot" for t in fig.data]
    assert kinds.count("ring") == kinds.count("dot") >= 1
    assert kinds == sorted(kinds)  # every dot before every ring ("dot" < "ring")
    ring, dot = fig.data[kinds.index("ring")], fig.data[0]
    assert ring.marker.size > dot.marker.size and ring.marker.line.width >= 1.5
    assert ring.marker.opacity >= dot.marker.opacity
    # the selection still maps back: every marker trace carries sample ids first
    assert all(np.asarray(t.customdata)[0, 0].startswith("s") for t in fig.data)


def test_side_by_side_keeps_the_trace_order():
    fig = F.umap_figure(_points(), color="class")
    assert [t.name for t in fig.data] == ["landbird", "landbird", "other", "other", "waterbird", "waterbird"]
    assert all(t.marker.symbol is None for t in fig.data)
