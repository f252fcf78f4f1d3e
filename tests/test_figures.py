"""clipcal.figures: every builder returns a Figure with the expected traces, custom_data and axis titles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from clipcal import figures as F
from clipcal import views as V
from clipcal.concepts import (attribute_decodability, calibration_set_vs_groups, concept_scores,
                              discover_clusters)
from clipcal.data.base import Benchmark
from clipcal.metrics import group_table
from clipcal.projection import crossed_boundary, group_centroid_shifts


def _bench(tmp_path):
    t = pd.DataFrame({"sample_id": [f"s{i}" for i in range(12)], "path": "p.png",
                      "split": ["train"] * 6 + ["val"] * 2 + ["test"] * 4,
                      "y": [0, 0, 0, 1, 1, 1, 0, 1, 0, 0, 1, 1], "a": [0, 0, 1, 1, 1, 0, 0, 1, 0, 1, 1, 0]})
    return Benchmark("csv", tmp_path, t, ["landbird", "waterbird"], ["land", "water"])


def _points(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "x_before": rng.normal(size=n),
                         "y_before": rng.normal(size=n), "x_after": rng.normal(size=n),
                         "y_after": rng.normal(size=n), "class": rng.choice(["landbird", "waterbird"], n),
                         "conf": rng.uniform(size=n), "split": rng.choice(["train", "test"], n),
                         "move_2d": np.arange(n, dtype=float)})


def test_color_map_is_stable_semantic_and_colour_blind_safe():
    m = F.color_map(["b", "a", "unknown", "correct", "wrong"])
    assert m["b"] == F.OKABE_ITO[0] and m["a"] == F.OKABE_ITO[1]
    assert m["unknown"] == F.UNKNOWN_COLOUR and m["correct"] == "#0072B2" and m["wrong"] == "#D55E00"
    assert F.color_map(["x"], colors={"x": "#123456"}) == {"x": "#123456"}
    assert len(set(F.color_map([f"c{i}" for i in range(18)]).values())) == 18


def test_group_counts_figure(tmp_path):
    fig = F.group_counts_figure(_bench(tmp_path).group_counts())
    assert isinstance(fig, go.Figure)
    assert [t.name for t in fig.data] == ["train", "val", "test"]
    assert list(fig.data[0].x) == ["landbird / land", "landbird / water", "waterbird / land", "waterbird / water"]
    assert list(fig.data[0].y) == [2, 1, 1, 2]
    assert fig.layout.barmode == "group"
    assert "group" in fig.layout.xaxis.title.text and "count" in fig.layout.yaxis.title.text
    assert F.group_counts_figure(_bench(tmp_path).group_counts(), log_y=True).layout.yaxis.type == "log"


def test_group_accuracy_figure_highlights_each_methods_worst_group():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    g = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    erm = group_table(y, np.array([0, 0, 1, 1, 1, 0, 1, 1]), g, ["landbird", "waterbird"], ["land", "water"])
    cfr = group_table(y, np.array([0, 0, 0, 1, 1, 1, 1, 0]), g, ["landbird", "waterbird"], ["land", "water"])
    long = pd.concat([erm.assign(method="ERM"), cfr.assign(method="CFR")])
    fig = F.group_accuracy_figure(long)
    # per method: a legend-only swatch, then the bars (hidden from the legend); last: the hatch key
    assert [(t.name, t.showlegend) for t in fig.data] == [("ERM", None), ("ERM", False), ("CFR", None),
                                                          ("CFR", False), ("worst group of a method", None)]
    erm_tr, cfr_tr = fig.data[1], fig.data[3]
    assert list(erm_tr.x)[1] == "landbird / water"
    np.testing.assert_allclose(erm_tr.y, [1.0, 0.0, 0.5, 1.0])
    assert list(erm_tr.marker.pattern.shape) == ["", "/", "", ""]          # ERM's worst: landbird / water
    assert list(cfr_tr.marker.pattern.shape) == ["", "/", "", "/"]         # CFR: two groups tied at 0.5
    np.testing.assert_allclose(np.asarray(erm_tr.error_y.array, float), erm["ci_high"] - erm["accuracy"])
    np.testing.assert_allclose(np.asarray(erm_tr.error_y.arrayminus, float), erm["accuracy"] - erm["ci_low"])
    assert "95 %" in fig.layout.yaxis.title.text and fig.layout.barmode == "group"
    assert tuple(fig.layout.yaxis.range) == (0, 1.05)
    assert not fig.layout.annotations  # every group has images


def test_group_accuracy_figure_says_n_0_for_an_empty_group():
    """Regression (newcomer trial): a group without test images was a blank slot; README promises n = 0."""
    y = np.array([0, 0, 1, 1, 1])
    g = np.array([0, 0, 2, 2, 3])   # group 1 (landbird / water) has no samples
    t = group_table(y, np.array([0, 1, 1, 1, 0]), g, ["landbird", "waterbird"], ["land", "water"])
    assert t.loc[t["group"] == 1, "n"].item() == 0
    fig = F.group_accuracy_figure(t.assign(method="ERM"))
    notes = [(a.x, a.text) for a in fig.layout.annotations]
    assert notes == [("landbird / water", "n = 0<br>(no images)")]


def test_method_summary_style_marks_best_per_split():
    t = pd.DataFrame({"method": ["ERM", "CFR", "ERM", "CFR"], "split": ["val", "val", "test", "test"],
                      "worst_group": [0.6, 0.8, 0.7, 0.65], "overall": [0.9, 0.88, np.nan, 0.9],
                      "uses_group_labels": [False, False, False, False]})
    sty = F.method_summary_style(t, metric_cols=("worst_group", "overall"))
    html = sty.to_html()
    assert "80.0%" in html and "—" in html
    ctx = sty._compute().ctx
    bold = {k for k, v in ctx.items() if ("font-weight", "bold") in v}
    # worst_group is column 2: best on val = row 1 (CFR), on test = row 2 (ERM)
    assert (1, 2) in bold and (2, 2) in bold and (0, 2) not in bold and (3, 2) not in bold
    assert sty.data["uses_group_labels"].iloc[0] == "no group labels"


def test_method_summary_style_shows_whole_chosen_epochs():
    """Regression (newcomer trial): 'chosen epoch' read 20.000000 once DFR (no epoch) made the column float."""
    t = pd.DataFrame({"method": ["ERM", "DFR"], "worst_group": [0.8, 0.9], "chosen_epoch": [20.0, np.nan]})
    html = F.method_summary_style(t, metric_cols=("worst_group",)).to_html()
    assert ">20<" in html and "20.000000" not in html and ">—<" in html


def test_umap_side_by_side_categorical():
    p = _points()
    fig = F.umap_figure(p, color="class", hover=["split"])
    assert len(fig.data) == 4
    assert [t.xaxis for t in fig.data] == ["x", "x2", "x", "x2"]
    assert [t.showlegend for t in fig.data] == [True, False, True, False]
    assert fig.data[0].legendgroup == fig.data[1].legendgroup == "landbird"
    for t in fig.data:
        assert t.type == "scatter"  # small N: SVG
        cd = np.asarray(t.customdata)
        assert cd.shape[1] == 3  # sample_id, class, split
        assert set(cd[:, 1]) == {t.name}
    land = p[p["class"] == "landbird"]
    assert list(np.asarray(fig.data[0].customdata)[:, 0]) == list(land["sample_id"])
    np.testing.assert_allclose(fig.data[1].x, land["x_after"])
    assert fig.layout.dragmode == "lasso"
    assert fig.layout.xaxis.title.text.startswith("UMAP 1") and fig.layout.yaxis.title.text.startswith("UMAP 2")
    assert [a.text for a in fig.layout.annotations] == ["Before calibration", "After calibration"]
    assert "coloured by class" in fig.layout.title.text


def test_umap_large_n_uses_webgl_and_continuous_colour():
    p = _points(n=1200)
    fig = F.umap_figure(p, color="conf")
    assert [t.type for t in fig.data] == ["scattergl", "scattergl"]
    assert fig.data[0].marker.showscale and not fig.data[1].marker.showscale
    assert fig.data[0].marker.colorscale is not None
    assert np.asarray(fig.data[0].customdata).shape == (1200, 2)


def test_umap_overlay_with_lines_and_before_only():
    p = _points()
    fig = F.umap_figure(p, color="class", mode="overlay", lines=5, line_order="move_2d")
    names = [t.name for t in fig.data]
    # filled "after" dots first, the open "before" rings over them (tests/test_figure_markers_stay_visible.py), lines last
    assert names == ["landbird", "waterbird", "landbird (before)", "waterbird (before)", "before → after (5 points)"]
    assert fig.data[2].marker.symbol == "circle-open"
    lines = fig.data[-1]
    assert lines.customdata is None and lines.mode == "lines"
    # the five largest move_2d rows (39 … 35), each as [before, after, gap]
    np.testing.assert_allclose(np.asarray(lines.x, float)[0::3], p.loc[[39, 38, 37, 36, 35], "x_before"])
    np.testing.assert_allclose(np.asarray(lines.x, float)[1::3], p.loc[[39, 38, 37, 36, 35], "x_after"])
    solo = F.umap_figure(p.drop(columns=["x_after", "y_after"]), color="split", category_order=["train", "test"])
    assert [t.name for t in solo.data] == ["train", "test"]
    assert solo.data[0].marker.color == F.SEMANTIC_COLOURS["train"]
    with pytest.raises(ValueError):
        F.umap_figure(p, color="class", mode="sideways")


def test_umap_missing_colour_values_are_unknown_grey():
    p = _points(n=10)
    p["attr"] = ["land", None] * 5
    fig = F.umap_figure(p, color="attr")
    assert [t.name for t in fig.data][::2] == ["land", "unknown"]
    assert fig.data[2].marker.color == F.UNKNOWN_COLOUR


def test_centroid_and_crossing_figures():
    rng = np.random.default_rng(0)
    xb, xa = rng.normal(size=(20, 2)), rng.normal(size=(20, 2))
    eb, ea = rng.normal(size=(20, 4)), rng.normal(size=(20, 4))
    groups = np.repeat([0, 1], 10)
    s = group_centroid_shifts(xb, xa, eb, ea, groups, group_names=["g0", "g1"])
    fig = F.centroid_shift_figure(s)
    assert [t.name for t in fig.data] == ["g0", "g1", "g0 (before)", "g1 (before)", "before calibration (ring)",
                                          "after calibration (dot)"]
    assert len(fig.layout.annotations) == 2
    assert fig.layout.annotations[0].x == pytest.approx(s["x_after"][0])
    y = np.array([0, 0, 1, 1])
    df = pd.DataFrame({"group_name": ["a", "a", "b", "b"],
                       "crossing": crossed_boundary(np.array([1, 0, 1, 0]), np.array([0, 1, 1, 1]), y)})
    cf = F.crossing_figure(df)
    assert [t.name for t in cf.data] == ["fixed", "broken", "unchanged"]
    assert list(cf.data[0].y) == [1, 1] and list(cf.data[1].y) == [1, 0] and list(cf.data[2].y) == [0, 1]
    assert cf.layout.barmode == "stack"


def test_training_curves_figure():
    rows = [(e, st, sp, m, v) for e in range(3) for st in ("stage 1", "stage 2") for sp in ("train", "val")
            for m, v in (("loss", 1.0 / (e + 1)), ("worst-group accuracy", 0.5 + 0.1 * e))]
    curves = pd.DataFrame(rows, columns=["epoch", "stage", "split", "metric", "value"])
    fig = F.training_curves_figure(curves)
    assert [a.text for a in fig.layout.annotations] == ["loss", "worst-group accuracy"]
    assert len(fig.data) == 8
    assert sum(t.showlegend for t in fig.data) == 4
    assert fig.data[0].name == "train · stage 1" and fig.data[1].line.dash == "dash"
    assert list(fig.data[0].x) == [0, 1, 2]
    assert fig.layout.xaxis.title.text == "epoch"


def test_decodability_figure():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, 200)
    x = rng.normal(size=(200, 4)) + a[:, None]
    r = attribute_decodability(x, rng.normal(size=(200, 4)), a, np.array(["train"] * 120 + ["test"] * 80))
    fig = F.decodability_figure(r.table)
    assert [t.name for t in fig.data] == ["before", "after"]
    assert list(fig.data[0].x) == ["balanced accuracy", "AUROC"]
    assert fig.data[0].y[0] == pytest.approx(r.table["balanced_accuracy"][0])
    assert [(s.xref, s.x0, s.x1, s.y0) for s in fig.layout.shapes] == [("paper", 0, 1, 0.5)]  # chance line
    assert "decodable" in fig.layout.title.text


def test_concept_scores_figure():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(30, 5))
    y, pred = np.repeat([0, 1], 15), np.tile([0, 1, 1], 10)
    s = concept_scores(img, y, pred, rng.normal(size=(6, 5)), list("abcdef"), ["landbird", "waterbird"])
    fig = F.concept_scores_figure(s, top=3)
    assert len(fig.data) == 2 and all(t.orientation == "h" for t in fig.data)
    top_land = s[s["class"] == "landbird"].head(3)["concept"].tolist()
    assert list(fig.data[0].y) == top_land[::-1]  # best at the top
    assert fig.layout.annotations[0].text.startswith("landbird (misclassified n=")
    assert "misclassified − correct" in fig.layout.xaxis.title.text


def test_cluster_and_calibration_set_figures():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4))
    y = np.repeat([0, 1], 20)
    res = discover_clusters(x, y, rng.uniform(size=40) > 0.3, k=2, a=rng.integers(0, 2, 40),
                            class_names=["landbird", "waterbird"], attr_names=["land", "water"])
    fig = F.cluster_accuracy_figure(res.table)
    assert {t.name for t in fig.data} <= {"land", "water"}
    assert sum(len(t.x) for t in fig.data) == 4
    assert list(fig.layout.xaxis.categoryarray) == ["landbird · cluster 0", "landbird · cluster 1",
                                                    "waterbird · cluster 0", "waterbird · cluster 1"]
    t = pd.DataFrame({"sample_id": [f"s{i}" for i in range(8)], "path": "p", "split": "train",
                      "y": [0, 0, 0, 1, 1, 1, 0, 1], "a": [0, 0, 1, 1, 1, 0, 0, 1]})
    from clipcal.data.base import finalize_table
    rep = calibration_set_vs_groups([2, 5], finalize_table(t, 2, 2), group_names=["LL", "LW", "WL", "WW"])
    cf = F.calibration_set_figure(rep.table)
    assert [tr.name for tr in cf.data] == ["share in pool (train)", "share in calibration set"]
    assert list(cf.data[1].y) == [0.0, 0.5, 0.5, 0.0]
    assert list(cf.data[1].marker.pattern.shape) == ["", "/", "/", ""]


def test_umap_points_frame(tmp_path):
    b = _bench(tmp_path)
    xy = np.arange(24, dtype=float).reshape(12, 2)
    pts = V.umap_points(b.table, xy, xy + 1, b.class_names, b.attr_names, extra={"ERM": ["correct"] * 12})
    assert list(pts.columns) == ["sample_id", "x_before", "y_before", "x_after", "y_after", "split", "class",
                                 "attribute", "group", "ERM"]
    assert pts.loc[2, "group"] == "landbird / water" and pts.loc[2, "x_after"] == 5.0
    t2 = b.table.assign(a=-1)
    assert V.umap_points(t2, xy, None, b.class_names, b.attr_names)["group"].eq("unknown").all()
    fig = F.umap_figure(pts, "group", hover=["split", "ERM"])
    assert len(fig.data) == 8
    with pytest.raises(ValueError):
        V.umap_points(b.table, xy[:5])
