"""Representations: UMAP of the embeddings before vs after calibration in one shared map; select to inspect."""

from __future__ import annotations

import streamlit as st

from clipcal import views
from pages.ui import representations as ui
from pages.ui import results, state, widgets
from pages.ui import story as story_ui

st.title("Representations — before vs after")
st.caption("One UMAP map fitted jointly on the frozen embeddings (before) and a method's recalibrated "
           "embeddings (after), so positions are comparable. Drag a box or lasso over points to see them, "
           "or switch the map to hover thumbnails.")
widgets.teach_topic("umap")

bench, run, emb = results.current_run_with_embeddings()

if run is not None and emb is not None:
    xy = None  # stays None when preparing fails (the error is shown) or the map is still being computed
    lead = st.container()  # the story and the neighbourhood purity lead the page; filled once the method is known
    with widgets.guarded("preparing the map"):
        after_methods = views.methods_with_after(run)
        if not after_methods:
            st.info("No method of this run changed the embeddings (only CFR does); the map shows the "
                    "embeddings before calibration only.")
        cols = st.columns([3, 3, 2, 3])
        method = cols[0].selectbox("After = embeddings of", after_methods or ["(none)"],
                                   index=views.preferred_index(after_methods, state.preferred_method()),
                                   key="repr.method",
                                   format_func=lambda m: m if m == "(none)" else views.method_label(m))
        method = None if method == "(none)" else method
        st.session_state[state.K_METHOD] = method
        for note in views.fallback_notes(run, only=method):  # "after" = ERM's embeddings: say so next to the map
            st.warning(note)
        with lead, widgets.guarded("telling what changed"):  # with CFR's calibration rule and selection
            story_ui.story_block(bench, run, method, key="repr.story")
        color_opts = views.color_options(run, bench.has_attributes)
        color = cols[1].selectbox("Colour by", list(color_opts), key="repr.color")
        layout = cols[2].radio("Layout", ["side by side", "overlaid"], key="repr.layout", horizontal=True,
                               disabled=method is None)
        splits = cols[3].multiselect("Splits", ["train", "val", "test"], default=["train", "val", "test"],
                                     key="repr.splits")
        xy = ui.projection_or_job(run, bench, method)

    if xy is not None:
        ui.map_note(xy)
        view = st.radio("Map", ui.MAP_VIEWS, key="repr.view", horizontal=True,
                        help="Selection: drag a box or lasso to list the points and their images below. "
                             "Hover thumbnails: hover a point to see its image (no selection in this view).")
        ids, points = [], None
        with widgets.guarded("drawing the map"):
            points = ui.points_table(run, bench, method, xy)
            shown = points[points["split"].isin(splits)]
            shape = layout if method else "side by side"
            if view == ui.MAP_VIEWS[1]:
                ui.hover_map(run, bench, shown, color_opts[color], shape, method)
            else:
                ids = ui.selectable_map(run, method, shown, color_opts[color], shape, splits)

        ui.selection_section(bench, run, points, ids, hover_view=view == ui.MAP_VIEWS[1])

        if method is not None and points is not None:
            st.markdown("#### What moved")
            with widgets.guarded("measuring movement"):
                ui.movement_section(run, bench, method, xy, points)
