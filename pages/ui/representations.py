"""Sections of the Representations page: the joint UMAP (from the store, else a background job), the map as a
selectable plotly chart or with image hover cards, the selection's table and images, and what moved.

Memo keys used here (tests read some): ``("umap", run, method)`` the coordinates, ``("points", run, method)`` the
points frame, ``("hover_imgs", run, splits)`` the thumbnails of the hover view.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from clipcal import pipeline, views
from pages.ui import jobs, resources, state, widgets

MAP_VIEWS = ("Selection (lasso/box)", "Hover thumbnails")


def projection_or_job(run, bench, method: str | None):
    """``(xy_before, xy_after | None)`` if the run's joint UMAP is in the store, else start (or show) the job
    that computes it and return ``None``."""
    run_id = pipeline.run_key(run)
    mkey = ("umap", run_id, method or "before")
    hit = resources.memo_peek(mkey)
    if hit is not None:
        return hit
    fd = resources.run_feature_data(run, bench)
    xy = pipeline.stored_projection(run, fd, method, resources.fingerprint(bench), state.backbone_spec(),
                                    resources.get_store())
    if xy is not None:
        return resources.memo(mkey, lambda: xy)
    jkey = pipeline.umap_job_key(run_id, method)
    job = resources.get_jobs().get(jkey)
    if job is None or (not job.is_running and job.status == "done"):
        job = jobs.start_projection(run_id, method)
    if job.status == "failed" and st.button("Try again", key="repr.umap_retry"):
        jobs.start_projection(run_id, method)
        st.rerun()
    st.info("The shared UMAP map of this run is computed once and then kept in the store.")
    from clipcal.sampled_map import LARGE_MAP_FIT_SAMPLES, LARGE_MAP_THRESHOLD

    if fd.n > LARGE_MAP_THRESHOLD:
        st.caption(f"{fd.n:,} samples is more than UMAP fits here in minutes: the map is fitted on a seeded sample "
                   f"of {LARGE_MAP_FIT_SAMPLES:,} samples (their before and after) and the other points are placed "
                   "into it; the page will say how.")
    jobs.job_status(jkey)
    return None


def map_note(xy) -> None:
    """How the map was made, when it was not fitted on every point (:func:`clipcal.sampled_map.map_note`)."""
    from clipcal.sampled_map import map_note as note

    text = note(getattr(xy, "info", None))
    if text:
        st.caption(text)


def points_table(run, bench, method: str | None, xy) -> pd.DataFrame:
    """:func:`clipcal.views.run_points` of the run, memoised per run and method."""
    def build():
        fd = resources.run_feature_data(run, bench)
        return views.run_points(run, fd, resources.sample_table(bench, fd), bench.has_attributes, method, xy)

    return resources.memo(("points", pipeline.run_key(run), method or "before"), build)


def umap_figure(points: pd.DataFrame, color: str, layout: str):
    """The joint map (:func:`clipcal.figures.umap_figure`): side by side or overlaid; ``sample_id`` is every
    point's ``custom_data[0]`` (:mod:`clipcal.plot_selection` reads it back)."""
    from clipcal.figures import umap_figure as _fig

    return _fig(points, color=color, mode="overlay" if layout == "overlaid" else "side_by_side",
                hover=views.hover_columns(points, color), lines=150,
                # segments of the samples whose embedding changed most (1 − cos), not of the longest 2-D moves
                line_order="cos_change" if "cos_change" in points else None)


def selectable_map(run, method: str | None, shown: pd.DataFrame, color: str, layout: str, splits) -> list[str]:
    """The plotly map with box / lasso selection; returns the selected sample ids
    (:func:`clipcal.plot_selection.ids_from_selection`)."""
    from clipcal.plot_selection import ids_from_selection

    from clipcal.figures import COMPACT_THRESHOLD

    fig = resources.memo(("umap_fig", pipeline.run_key(run), method, color, layout, tuple(splits)),
                         lambda: umap_figure(shown, color, layout))
    if len(shown) * (2 if method else 1) > COMPACT_THRESHOLD:
        st.caption(f"{len(shown) * (2 if method else 1):,} points: hovering a point names its sample id and colour "
                   "only (the other fields would make the chart too heavy for the browser); select points to see "
                   "all their fields in the table below.")
    event = st.plotly_chart(fig, key="repr.umap", on_select="rerun", selection_mode=("lasso", "box"),
                            config={"scrollZoom": True, "displaylogo": False})
    ids = ids_from_selection(event)
    st.session_state[state.K_SELECTION] = {"run": pipeline.run_key(run), "ids": ids}  # a concept on Spurious attributes
    return ids


def _hover_images(bench, shown: pd.DataFrame) -> np.ndarray:
    """The ``image`` column (thumbnail data URIs, ``""`` beyond the cap or unreadable) for the shown points
    (:func:`clipcal.hover_chart.hover_thumbnails`); each thumbnail is encoded once per process."""
    from clipcal.hover_chart import HOVER_THUMB_QUALITY, HOVER_THUMB_SIZE, hover_thumbnails, thumbnail_data_uri

    def encode(path: str) -> str:
        return resources.memo(("thumb_uri", path, HOVER_THUMB_SIZE, HOVER_THUMB_QUALITY),
                              lambda: thumbnail_data_uri(path, HOVER_THUMB_SIZE, HOVER_THUMB_QUALITY))

    paths = [str(bench.image_path(p)) for p in shown["path"].astype(str)]
    return hover_thumbnails(paths, encode=encode).to_numpy()


def _hover_spec(run, bench, shown: pd.DataFrame, color: str, layout: str, method: str | None):
    """The map with image hover cards, as a Vega-Lite dict (:func:`clipcal.hover_chart.umap_hover_spec`): card =
    thumbnail, sample id, colour, class, attribute, split and the predictions of the baseline and of ``method``,
    each named. Returns ``(spec, points with a thumbnail, points that should have one)``; memoised per run,
    method, colour, layout and shown splits (the thumbnails are shared between the kept specs)."""
    from clipcal.hover_chart import HOVER_THUMB_CAP, umap_hover_spec

    run_id = pipeline.run_key(run)

    def build():
        fd = resources.run_feature_data(run, bench)
        p, hover = views.hover_cards(run, shown, fd.class_names, method)
        imgs = resources.memo(("hover_imgs", run_id, tuple(sorted(p["split"].unique()))),
                              lambda: _hover_images(bench, p))
        p["image"] = pd.Series(imgs, index=p.index, dtype=object)
        spec = umap_hover_spec(p, color, mode="overlay" if layout == "overlaid" else "side_by_side", hover=hover,
                               line_order="cos_change" if "cos_change" in p else None, lines=150)
        return spec, int(sum(1 for u in imgs if u)), min(len(p), HOVER_THUMB_CAP)

    return resources.memo(("umap_hover", run_id, method, color, layout, tuple(sorted(shown["split"].unique()))),
                          build)


def hover_map(run, bench, shown: pd.DataFrame, color: str, layout: str, method: str | None) -> None:
    """The map with an image on hover (at most :data:`clipcal.hover_chart.HOVER_MAP_POINTS_CAP` samples, a seeded
    random subset beyond), and how many points are drawn and have an image."""
    from clipcal.hover_chart import HOVER_MAP_POINTS_CAP, hover_subsample

    n_all = len(shown)
    if n_all > HOVER_MAP_POINTS_CAP:
        shown = shown.iloc[hover_subsample(n_all, HOVER_MAP_POINTS_CAP)]
        st.caption(f"This view draws {len(shown):,} of the {n_all:,} samples, a fixed random sample: a hover map "
                   "carries every point inside the chart. The Selection view draws them all.")
    with st.spinner("Making thumbnails (once per image)…"):
        spec, n_img, n_want = _hover_spec(run, bench, shown, color, layout, method)
    st.vega_lite_chart(spec=spec, key="repr.hover")
    st.caption("Every point shows its image on hover." if n_img >= len(shown) else
               f"Images on hover for {n_img:,} of {len(shown):,} points"
               + (": a fixed random sample, because every thumbnail travels inside the chart (the other points "
                  "show their details only). Narrow the splits to cover more of them." if n_want < len(shown) else ".")
               + (f" {n_want - n_img:,} image files could not be read (see Data → validation)."
                  if n_img < n_want else ""))


def selection_section(bench, run, points: pd.DataFrame, ids: list[str], hover_view: bool) -> None:
    """The selected samples: a CSV download, their table and their images (first 24)."""
    st.markdown(f"#### Selection ({len(ids)} samples)")
    if not ids and hover_view:
        st.caption(f"Switch the map to “{MAP_VIEWS[0]}” to select points.")
        return
    if not ids:
        st.caption("Use the box or lasso tool in the chart's toolbar, then drag over points.")
        return
    with widgets.guarded("showing the selection"):
        sel = views.selection_rows(points, ids)
        st.download_button("Download the selection as CSV", sel.to_csv(index=False).encode(),
                           file_name="selection.csv", mime="text/csv", key="repr.download")
        st.dataframe(sel.drop(columns=["path"], errors="ignore"), hide_index=True, key="repr.selection", height=240)
        with st.container(key="repr_selection_grid"):  # a key the browser test finds the grid by
            widgets.grid_of_ids(bench, resources.run_feature_data(run, bench), sel["sample_id"], limit=24,
                                columns=8)
        if len(sel) > 24:
            st.caption(f"First 24 of {len(sel)} shown; the CSV has all.")


def movement_section(run, bench, method: str, xy, points: pd.DataFrame) -> None:
    """Points that moved most between before and after, boundary crossings, and group centroid shifts."""
    from clipcal.figures import centroid_shift_figure, crossing_figure
    from clipcal.projection import group_centroid_shifts, moved_most

    left, right = st.columns(2)
    with left:
        st.markdown("**Moved most** — by the change of the embedding (`cos_change` = 1 − cosine between before "
                    "and after); `move_2d` = distance in the map, a cue only")
        ranking = resources.memo(("moved_most", pipeline.run_key(run), method), lambda: moved_most(points, 20))
        st.dataframe(ranking.table, hide_index=True, key="repr.moved", height=300,
                     column_config={"move_2d": st.column_config.NumberColumn(format="%.3f"),
                                    "cos_change": st.column_config.NumberColumn(format="%.2e")})
        st.caption(ranking.note)
    with right:
        bm = views.baseline_method(run)
        if bm and bm != method:
            def crossed():
                test = points[points["split"] == "test"]
                # two title lines: one ran past the half-width column's edge
                title = (f"Test samples that crossed the decision boundary<br>"
                         f"<sup>{views.method_label(bm)} → {views.method_label(method)}</sup>")
                return crossing_figure(test, group_col="group" if "group" in test else "class",
                                       crossing_col="crossed", title=title)

            st.plotly_chart(resources.memo(("fig_crossed", pipeline.run_key(run), method), crossed),
                            key="repr.crossed")
        else:
            st.caption("Boundary crossings need an ERM run to compare with.")
    if bench.has_attributes:
        def shifts():
            fd = resources.run_feature_data(run, bench)
            before, after = pipeline.projection_inputs(run, fd, method)
            return centroid_shift_figure(group_centroid_shifts(xy[0], xy[1], before, after, fd.group,
                                                               bench.group_names()))

        st.plotly_chart(resources.memo(("fig_shifts", pipeline.run_key(run), method), shifts), key="repr.shifts")
