"""Hover thumbnails on the Representations map: the Altair/Vega-Lite builder and its thumbnail column (pure),
the page's "Hover thumbnails" view (AppTest over the seeded store), and the hover card in real Chromium.

Why Altair: plotly's hovertemplate cannot show images; Vega-Lite tooltips drawn by the vega-tooltip plugin
(which ``st.altair_chart`` uses) render a field titled ``image`` holding a data URI as an ``<img>``.
"""

from __future__ import annotations

import base64
import io
import json
import time

import altair as alt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipcal import hover_chart as H
from clipcal.errors import DataError


def _points(n=40, seed=0, after=True):
    rng = np.random.default_rng(seed)
    p = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "x_before": rng.normal(size=n),
                      "y_before": rng.normal(size=n), "class": rng.choice(["landbird", "waterbird"], n),
                      "split": rng.choice(["train", "test"], n), "conf": rng.uniform(size=n),
                      "correct: CFR (ours)": rng.choice(["correct", "wrong"], n),
                      "move_2d": np.arange(n, dtype=float)})
    if after:
        p["x_after"], p["y_after"] = rng.normal(size=n), rng.normal(size=n)
    return p


def _spec(chart) -> tuple[dict, pd.DataFrame]:
    """The Vega-Lite dict and its one top-level dataset as a frame."""
    spec = chart.to_dict()
    return spec, pd.DataFrame(spec["datasets"][spec["data"]["name"]])


def _tooltips(view: dict) -> list[tuple[str, str]]:
    return [(t["field"], t["title"]) for t in view["encoding"]["tooltip"]]


def _jpeg(tmp_path, name="a.jpg", size=(200, 120), colour=(200, 40, 40)):
    path = tmp_path / name
    Image.new("RGB", size, colour).save(path, "JPEG")
    return path


# ---------------------------------------------------------------------------------------------------------
# the data-URI column


def test_hover_subsample_is_all_below_the_cap_and_a_seeded_subset_above():
    np.testing.assert_array_equal(H.hover_subsample(5, cap=5), np.arange(5))
    a = H.hover_subsample(6000, cap=3000, seed=0)
    assert a.dtype == np.int64 and len(a) == 3000 and len(np.unique(a)) == 3000
    assert np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 6000
    np.testing.assert_array_equal(a, H.hover_subsample(6000, cap=3000, seed=0))  # same seed, same points
    assert not np.array_equal(a, H.hover_subsample(6000, cap=3000, seed=1))
    assert len(H.hover_subsample(10, cap=0)) == 0
    with pytest.raises(ValueError, match="cap"):
        H.hover_subsample(10, cap=-1)


def test_thumbnail_data_uri_is_a_small_jpeg(tmp_path):
    uri = H.thumbnail_data_uri(_jpeg(tmp_path), size=64, quality=70)
    head, b64 = uri.split(",", 1)
    assert head == "data:image/jpeg;base64"
    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert im.format == "JPEG" and im.size == (64, 38)  # longest side 64, aspect kept (200×120)
    r, g, b = im.convert("RGB").getpixel((32, 19))
    assert r > 150 and g < 90 and b < 90
    with pytest.raises(DataError):
        H.thumbnail_data_uri(tmp_path / "missing.jpg")


def test_hover_thumbnails_encodes_only_the_capped_subsample_and_survives_bad_files(tmp_path):
    good = _jpeg(tmp_path)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    paths = [good] * 9 + [tmp_path / "bad.jpg"]
    calls = []

    def encode(p):
        calls.append(p)
        return H.thumbnail_data_uri(p, 32)

    col = H.hover_thumbnails(paths, cap=4, seed=3, encode=encode)
    assert col.name == "image" and len(col) == 10 and col.dtype == object
    want = set(H.hover_subsample(10, cap=4, seed=3).tolist())
    assert len(calls) == 4  # nothing beyond the cap is read
    assert {i for i, v in enumerate(col) if v} == want - ({9} if 9 in want else set())
    assert all(v == "" for i, v in enumerate(col) if i not in want)
    full = H.hover_thumbnails(paths, cap=100, size=32)
    assert full.iloc[9] == "" and all(v.startswith("data:image/jpeg;base64,") for v in full.iloc[:9])


# ---------------------------------------------------------------------------------------------------------
# the chart


def test_side_by_side_chart_has_two_panels_one_dataset_and_the_image_tooltip_first():
    p = _points()
    p["image"] = [f"data:image/jpeg;base64,{i}" for i in range(len(p))]
    spec, data = _spec(H.umap_hover_chart(p, "correct: CFR (ours)", hover=["class", "split", "nope"]))
    assert [v["title"] for v in spec["hconcat"]] == ["Before calibration", "After calibration"]
    assert len(spec["datasets"]) == 1 and len(data) == 40  # one row per sample, shared by both panels
    assert list(data["sample_id"]) == list(p["sample_id"]) and list(data["image"]) == list(p["image"])
    np.testing.assert_allclose(data["xa"], p["x_after"])
    left, right = spec["hconcat"]
    assert (left["encoding"]["x"]["field"], right["encoding"]["x"]["field"]) == ("xb", "xa")
    # both panels share one axis range, so positions are comparable
    assert left["encoding"]["x"]["scale"]["domain"] == right["encoding"]["x"]["scale"]["domain"]
    lo, hi = left["encoding"]["x"]["scale"]["domain"]
    assert lo < min(p["x_before"].min(), p["x_after"].min()) and hi > max(p["x_before"].max(), p["x_after"].max())
    assert _tooltips(left) == [("image", "image"), ("sample_id", "sample id"), ("color", "correct: CFR (ours)"),
                               ("h0", "class"), ("h1", "split"), ("map", "map")]
    colour = left["encoding"]["color"]
    assert colour["scale"] == {"domain": ["correct", "wrong"], "range": ["#0072B2", "#D55E00"]}
    assert spec["params"][0]["bind"] == "scales" and len(spec["params"][0]["views"]) == 2
    assert set(data["h0"]) <= {"landbird", "waterbird"}


def test_chart_caps_the_images_with_a_seeded_subset():
    p = _points(n=50)
    p["image"] = ["data:image/jpeg;base64,AAAA"] * 45 + [""] * 5
    _, a = _spec(H.umap_hover_chart(p, "class", max_images=10, seed=0))
    _, b = _spec(H.umap_hover_chart(p, "class", max_images=10, seed=0))
    kept = np.flatnonzero(a["image"] != "")
    assert len(kept) == 10 and kept.max() < 45  # only rows that had an image keep one
    np.testing.assert_array_equal(kept, np.flatnonzero(b["image"] != ""))
    np.testing.assert_array_equal(kept, np.arange(45)[H.hover_subsample(45, 10, seed=0)])
    _, none = _spec(H.umap_hover_chart(p.drop(columns=["image"]), "class"))
    assert (none["image"] == "").all()


def test_overlay_draws_segments_for_the_points_that_moved_most():
    p = _points(n=30)
    spec, data = _spec(H.umap_hover_chart(p, "class", mode="overlay", lines=5, line_order="move_2d"))
    rule, before, after = spec["layer"]
    assert rule["mark"]["type"] == "rule" and rule["transform"] == [{"filter": "datum.line"}]
    assert sorted(data.index[data["line"]]) == [25, 26, 27, 28, 29]  # the five largest move_2d
    assert before["mark"]["filled"] is False and after["mark"]["filled"] is True
    assert spec["width"] == 2 * 400 and spec["autosize"] == {"type": "fit-x", "contains": "padding"}
    no_lines = _spec(H.umap_hover_chart(p, "class", mode="overlay", lines=0))[0]
    assert [v["mark"]["type"] for v in no_lines["layer"]] == ["point", "point"]


def test_before_only_and_continuous_colour():
    p = _points(n=30, after=False)
    spec, data = _spec(H.umap_hover_chart(p, "conf"))
    assert len(spec["layer"]) == 1 and "xa" not in data
    view = spec["layer"][0]
    assert view["encoding"]["color"]["type"] == "quantitative"
    assert view["encoding"]["color"]["scale"] == {"scheme": "cividis"}
    assert [t for t, _ in _tooltips(view)] == ["image", "sample_id", "color"]  # no "map" without an after
    with pytest.raises(ValueError, match="mode"):
        H.umap_hover_chart(p, "class", mode="stacked")
    with pytest.raises(ValueError, match="colour column"):
        H.umap_hover_chart(p, "missing")


def test_spec_keeps_the_frame_as_one_named_dataset_for_streamlit():
    p = _points(n=1200)
    p["image"] = ["data:image/jpeg;base64,AAAA"] * 1200
    spec = H.umap_hover_spec(p, "class", max_images=500, hover=["split"])
    assert spec["data"] == {"name": "points"} and list(spec["datasets"]) == ["points"]
    frame = spec["datasets"]["points"]
    assert isinstance(frame, pd.DataFrame) and len(frame) == 1200 and frame["image"].dtype == object
    assert (frame["image"] != "").sum() == 500
    assert list(frame.columns) == ["sample_id", "xb", "yb", "xa", "ya", "color", "h0", "image"]
    assert spec["usermeta"] == {"embedOptions": {"renderer": "canvas"}}  # 2,400 points: no SVG node per point
    assert [t for _, t in _tooltips(spec["hconcat"][0])][0] == "image"


def test_chart_json_is_dominated_by_the_thumbnails(tmp_path):
    """The payload grows with the images kept, not with the points: the cap bounds it."""
    uri = H.thumbnail_data_uri(_jpeg(tmp_path), size=80)
    p = _points(n=2000)
    p["image"] = uri
    with alt.data_transformers.disable_max_rows():
        small = len(json.dumps(H.umap_hover_chart(p, "class", max_images=100).to_dict()))
        big = len(json.dumps(H.umap_hover_chart(p, "class", max_images=1000).to_dict()))
    assert big - small == pytest.approx(900 * len(uri), rel=0.05)


# ---------------------------------------------------------------------------------------------------------
# the page (AppTest over the seeded store)


def _vega_specs(at) -> list[dict]:
    return [json.loads(e.proto.spec) for e in at.get("vega_lite_chart")]


@pytest.mark.slow  # seeding the store (embed + six methods + UMAP) takes ~1 min on 2 cores
def test_page_hover_view_renders_the_altair_map(app, seeded_store):
    from pages.ui import representations, resources, state

    at = app("representations", **{state.K_RUN: seeded_store["run_id"]})
    assert not at.exception
    assert at.radio(key="repr.view").value == representations.MAP_VIEWS[0] and not _vega_specs(at)
    n_plotly = len(at.get("plotly_chart"))
    at.radio(key="repr.view").set_value("Hover thumbnails").run()
    assert not at.exception, at.exception
    specs = _vega_specs(at)
    assert len(specs) == 1 and [v["title"] for v in specs[0]["hconcat"]] == ["Before calibration",
                                                                               "After calibration"]
    titles = [t for _, t in _tooltips(specs[0]["hconcat"][0])]
    assert titles == ["image", "sample id", "class", "attribute", "split", "prediction (ERM)", "prediction (CFR)",
                      "map"]
    assert any("Every point shows its image on hover." in x.value for x in at.caption), [x.value for x in at.caption]
    assert any("to select points" in x.value for x in at.caption)
    assert len(at.get("plotly_chart")) == n_plotly - 1  # the plotly map gave way; the movement charts stay
    # the image column: one JPEG data URI per sample (240 < cap), read with clipcal.data.thumbnail
    n = seeded_store["n_samples"]
    xy = resources.memo_peek(("umap", seeded_store["run_id"], "cfr"))
    pts = representations.points_table(seeded_store["run"], seeded_store["bench"], "cfr", xy)
    imgs = resources.memo_peek(("hover_imgs", seeded_store["run_id"], ("test", "train", "val")))
    assert imgs is not None and len(imgs) == n == len(pts)
    assert all(str(u).startswith("data:image/jpeg;base64,") for u in imgs)
    # overlay and another colour also render
    at.radio(key="repr.layout").set_value("overlaid").run()
    at.selectbox(key="repr.color").set_value("group").run()
    assert not at.exception, at.exception
    spec = _vega_specs(at)[0]
    assert [v["mark"]["type"] for v in spec["layer"]] == ["rule", "point", "point"]
    assert spec["layer"][1]["encoding"]["color"]["title"] == "group"
    # a split filter: only those points are drawn
    at.multiselect(key="repr.splits").set_value(["test"]).run()
    assert not at.exception, at.exception
    assert any("Every point shows its image on hover." in x.value for x in at.caption)


# ---------------------------------------------------------------------------------------------------------
# the real browser: hover a point, the tooltip holds an <img>


@pytest.mark.browser
@pytest.mark.slow
def test_hovering_a_point_shows_its_thumbnail(seeded_server, browser_page):
    from tests.fixtures_browser import goto, no_exception, shot, wait_settled

    page = browser_page
    goto(page, f"{seeded_server}/representations", "What moved")
    page.locator('[data-testid="stRadio"] label', has_text="Hover thumbnails").first.click()
    t0 = time.monotonic()
    # Streamlit lets Vega draw SVG for small data and switches to canvas above 2,000 points per dataset
    canvas = page.locator('[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg.marks').first
    try:
        canvas.wait_for(timeout=120_000)
    except Exception:
        shot(page, "representations-hover-failed")
        raise
    wait_settled(page)
    print(f"hover view drawn {time.monotonic() - t0:.2f} s after the click")
    no_exception(page, "representations, hover view")
    box = canvas.bounding_box()
    tip = page.locator("#vg-tooltip-element")
    found = None
    # scan the left ("before") panel until a point is under the mouse
    for fy in np.linspace(0.12, 0.9, 40):
        for fx in np.linspace(0.08, 0.48, 40):
            page.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
            if tip.count() and tip.is_visible() and tip.locator("img").count():
                found = (fx, fy)
                break
        if found:
            break
    assert found, "no hover card with an image appeared over the map"
    src = tip.locator("img").first.get_attribute("src")
    assert src.startswith("data:image/jpeg;base64,")
    page.wait_for_function("() => { const i = document.querySelector('#vg-tooltip-element img');"
                           " return i && i.complete && i.naturalWidth > 0; }")
    text = tip.inner_text()
    for key in ("sample id", "class", "split", "prediction (ERM)", "prediction (CFR)", "map"):
        assert key in text, text
    shot(page, "representations-hover")
