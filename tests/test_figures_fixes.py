"""clipcal.figures: the chance line spans the whole decodability plot, open "before" markers stay visible
(centroid shifts, overlaid UMAP), empty concept panels say why, training-curve rows do not overlap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clipcal import figures as F


def _decod_table(n_reps: int, chance: float) -> pd.DataFrame:
    return pd.DataFrame({"representation": ["before"] + [f"after ({i})" for i in range(1, n_reps)],
                         "balanced_accuracy": np.linspace(0.9, 0.6, n_reps), "auroc": np.linspace(0.95, 0.7, n_reps),
                         "chance": chance})


def _paper_extent(fig, shape) -> tuple[float, float]:
    """x0, x1 of a shape in paper coordinates (0 = left edge of the plot area, 1 = right edge)."""
    if shape.xref == "paper":
        return shape.x0, shape.x1
    assert shape.xref == "x"
    r0, r1 = fig.layout.xaxis.range
    return (shape.x0 - r0) / (r1 - r0), (shape.x1 - r0) / (r1 - r0)


@pytest.mark.parametrize("n_reps", [1, 2, 5, 9])
def test_chance_line_spans_the_whole_plot_for_any_number_of_bars(n_reps):
    fig = F.decodability_figure(_decod_table(n_reps, 0.5))
    assert len(fig.data) == n_reps and all(t.type == "bar" for t in fig.data)  # chance is no longer a trace
    (line,) = fig.layout.shapes
    assert _paper_extent(fig, line) == (0, 1)
    assert line.y0 == line.y1 == 0.5 and line.line.dash == "dash"
    assert line.showlegend and line.name == "chance level (0.50)"


def test_chance_lines_per_metric_tile_the_width_when_levels_differ():
    # 3 attribute values: balanced-accuracy chance 1/3, AUROC chance 0.5
    fig = F.decodability_figure(_decod_table(6, 1 / 3))
    shapes = fig.layout.shapes
    assert [s.y0 for s in shapes] == pytest.approx([1 / 3, 0.5])
    ext = [_paper_extent(fig, s) for s in shapes]
    assert ext == [pytest.approx((0.0, 0.5)), pytest.approx((0.5, 1.0))]  # together 0 → 1, no gap
    # every category slot (where its group of bars sits) is covered by its own level
    assert list(fig.layout.xaxis.range) == [-0.5, 1.5]
    assert [s.showlegend for s in shapes] == [True, False]
    assert shapes[0].name == "chance level (bal. acc. 0.33, AUROC 0.50)"


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


def _concept_rows(ok_land: bool, ok_water: bool) -> pd.DataFrame:
    rows = []
    for c, ok in (("landbird", ok_land), ("waterbird", ok_water)):
        for k in range(4):
            rows.append({"class": c, "class_index": int(c == "waterbird"), "concept": f"c{k}",
                         "score": 0.1 * k if ok else np.nan, "effect_size": 0.5 * k if ok else np.nan,
                         "mean_sim_wrong": 0.2, "mean_sim_correct": 0.1, "n_wrong": 5 if ok else 0,
                         "n_correct": 9})
    return pd.DataFrame(rows)


def test_concept_panel_without_scores_says_why():
    fig = F.concept_scores_figure(_concept_rows(True, False), top=3)
    notes = [a for a in fig.layout.annotations if "nothing to score" in (a.text or "")]
    assert len(notes) == 1 and notes[0].xref == "x2 domain"
    assert fig.layout.xaxis2.visible is False and fig.layout.yaxis2.visible is False
    assert fig.layout.xaxis.visible is not False and len(fig.data[0].y) == 3
    assert fig.layout.height == 360
    # no class has scores (e.g. a method right on every landbird, wrong on every waterbird): a short chart of notes
    none = F.concept_scores_figure(_concept_rows(False, False), top=10)
    assert sum("nothing to score" in (a.text or "") for a in none.layout.annotations) == 2
    assert none.layout.height == 220


@pytest.mark.parametrize("n_metrics", [4, 6, 9])
def test_training_curve_rows_leave_room_for_axis_and_panel_titles(n_metrics):
    rows = [(e, "cfr", "train", f"m{k}", 1.0 / (e + 1)) for e in range(3) for k in range(n_metrics)]
    fig = F.training_curves_figure(pd.DataFrame(rows, columns=["epoch", "stage", "split", "metric", "value"]))
    nrows = int(np.ceil(n_metrics / 3))
    plot_px = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b
    gap = fig.layout.yaxis.domain[0] - fig.layout.yaxis4.domain[1]  # row 1 bottom − row 2 top
    assert gap * plot_px >= 90, f"{nrows} rows: only {gap * plot_px:.0f} px between rows"
