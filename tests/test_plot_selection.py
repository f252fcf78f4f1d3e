"""clipcal.plot_selection: Streamlit plotly selection events → sample ids → table / CSV / image grid."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.elements.plotly_chart import PlotlyChartSelectionSerde

from clipcal.data.base import Benchmark
from clipcal.figures import umap_figure
from clipcal.plot_selection import image_grid_items, ids_from_selection, selection_csv, selection_table


def _table():
    return pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(8)],
        "path": [f"img/{i}.png" for i in range(8)],
        "split": ["train", "train", "val", "val", "test", "test", "test", "test"],
        "y": [0, 0, 1, 1, 0, 1, 0, 1],
        "a": [0, 1, 0, 1, 0, 1, -1, 1],
    })


def _bench(tmp_path):
    return Benchmark("csv", tmp_path, _table(), ["landbird", "waterbird"], ["land", "water"])


def _points_frame():
    t = _table()
    rng = np.random.default_rng(0)
    return pd.DataFrame({"sample_id": t["sample_id"], "x_before": rng.normal(size=8), "y_before": rng.normal(size=8),
                         "x_after": rng.normal(size=8), "y_after": rng.normal(size=8),
                         "class": np.where(t["y"] == 0, "landbird", "waterbird"), "split": t["split"]})


def _event_json(points, box=(), lasso=()):
    """The JSON Streamlit's frontend sends (PlotlyChart.tsx → setStringValue), keys in snake case."""
    return json.dumps({"selection": {"points": points, "point_indices": sorted({p["point_index"] for p in points}),
                                     "box": list(box), "lasso": list(lasso)}})


def _pt(fig, curve, idx, with_customdata=True):
    tr = fig.data[curve]
    p = {"curve_number": curve, "point_number": idx, "point_index": idx, "x": float(tr.x[idx]),
         "y": float(tr.y[idx]), "legendgroup": tr.legendgroup}
    if with_customdata:
        p["customdata"] = list(tr.customdata[idx])
    return p


def test_box_selection_over_several_traces_maps_through_customdata():
    fig = umap_figure(_points_frame(), color="class", hover=["split"])
    # side by side: traces = [landbird before, landbird after, waterbird before, waterbird after]
    assert [t.name for t in fig.data] == ["landbird", "landbird", "waterbird", "waterbird"]
    pts = [_pt(fig, 0, 0), _pt(fig, 0, 2), _pt(fig, 2, 0), _pt(fig, 2, 3)]
    box = [{"xref": "x", "yref": "y", "x": [-3.0, 3.0], "y": [-3.0, 3.0]}]
    event = PlotlyChartSelectionSerde().deserialize(_event_json(pts, box=box))
    ids = ids_from_selection(event)
    # landbird trace holds s0, s1, s4, s6 in order; waterbird s2, s3, s5, s7
    assert ids == ["s0", "s4", "s2", "s7"]
    # point_indices alone would be ambiguous: [0, 2, 3] — the mapping must not use it
    assert event["selection"]["point_indices"] == [0, 2, 3]


def test_lasso_selection_in_both_panels_counts_each_sample_once_and_accepts_selection_part():
    fig = umap_figure(_points_frame(), color="class")
    pts = [_pt(fig, 1, 1), _pt(fig, 0, 1), _pt(fig, 3, 2)]
    lasso = [{"xref": "x2", "yref": "y2", "x": [0, 1, 1, 0], "y": [0, 0, 1, 1]}]
    event = PlotlyChartSelectionSerde().deserialize(_event_json(pts, lasso=lasso))
    assert ids_from_selection(event) == ["s1", "s5"]
    assert ids_from_selection(event["selection"]) == ["s1", "s5"]
    assert ids_from_selection(event.selection) == ["s1", "s5"]


def test_points_without_customdata_fall_back_to_the_figure():
    fig = umap_figure(_points_frame(), color="class", webgl=True)
    pts = [_pt(fig, 2, 1, with_customdata=False), _pt(fig, 0, 3, with_customdata=False)]
    event = json.loads(_event_json(pts))
    assert ids_from_selection(event, fig) == ["s3", "s6"]
    assert ids_from_selection(event, fig.data) == ["s3", "s6"]
    assert ids_from_selection(event, fig.to_dict()) == ["s3", "s6"]
    assert ids_from_selection(event) == []  # nothing to map through: no ids, no crash


def test_overlay_lines_trace_is_ignored():
    fig = umap_figure(_points_frame(), color="class", mode="overlay", lines=3)
    line_curve = len(fig.data) - 1
    assert fig.data[line_curve].customdata is None
    # overlay order: the filled "after" traces first (curve 0 = landbird after), the open "before" rings last
    pts = [_pt(fig, 0, 0), {"curve_number": line_curve, "point_number": 0, "point_index": 0, "x": 0, "y": 0}]
    assert ids_from_selection(json.loads(_event_json(pts)), fig) == ["s0"]


def test_empty_selections():
    empty = PlotlyChartSelectionSerde().deserialize(None)
    assert ids_from_selection(empty) == []
    assert ids_from_selection(None) == []
    assert ids_from_selection({}) == []
    assert ids_from_selection({"selection": {"points": [], "point_indices": [], "box": [], "lasso": []}}) == []


def test_scalar_customdata_and_click_event():
    event = {"selection": {"points": [{"curve_number": 0, "point_number": 4, "point_index": 4, "customdata": "s4"},
                                      {"curve_number": 0, "point_number": 5, "point_index": 5, "customdata": [7]}],
                           "point_indices": [4, 5], "box": [], "lasso": []}}
    assert ids_from_selection(event) == ["s4", "7"]


def test_selection_table_order_names_and_extra_columns():
    t = _table()
    pred = np.array([0, 1, 1, 0, 0, 1, 1, 1])
    out = selection_table(t, ["s6", "s1", "nope", "s3"], extra={"pred ERM": pred},
                          class_names=["landbird", "waterbird"], attr_names=["land", "water"])
    assert list(out["sample_id"]) == ["s6", "s1", "s3"]
    assert list(out["class"]) == ["landbird", "landbird", "waterbird"]
    assert list(out["attribute"]) == ["unknown", "water", "water"]
    assert list(out["pred ERM"]) == [1, 1, 0]
    assert list(out.index) == [0, 1, 2]
    df_extra = pd.DataFrame({"sample_id": ["s1", "s3"], "move_2d": [0.5, 2.0]})
    out2 = selection_table(t, ["s3", "s1", "s0"], extra=df_extra)
    assert list(out2["sample_id"]) == ["s3", "s1", "s0"]
    np.testing.assert_allclose(out2["move_2d"], [2.0, 0.5, np.nan])
    assert selection_table(t, []).empty


def test_selection_csv_round_trip():
    raw = selection_csv(_table(), ["s2", "s0"], class_names=["landbird", "waterbird"])
    assert isinstance(raw, bytes)
    back = pd.read_csv(io.BytesIO(raw))
    assert list(back["sample_id"]) == ["s2", "s0"]
    assert list(back.columns[:5]) == ["sample_id", "path", "split", "y", "class"]
    assert list(back["class"]) == ["waterbird", "landbird"]


def test_image_grid_items(tmp_path):
    bench = _bench(tmp_path)
    items = image_grid_items(bench.table, ["s6", "s3", "s0"], bench, limit=2, captions={"s3": "ERM: landbird (0.91)"})
    assert items == [(str(tmp_path / "img/6.png"), "landbird · test"),
                     (str(tmp_path / "img/3.png"), "waterbird / water · val\nERM: landbird (0.91)")]
    assert image_grid_items(bench.table, ["s1"], bench, limit=0) == []
    assert Path(items[0][0]).is_absolute()
