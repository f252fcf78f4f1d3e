"""Representations: UMAP of the embeddings before vs after calibration in one shared map; select to inspect."""

from __future__ import annotations

import streamlit as st

from pages import _common as c

st.title("Representations — before vs after")
st.caption("One UMAP map fitted jointly on the frozen embeddings (before) and a method's recalibrated "
           "embeddings (after), so positions are comparable. Drag a box or lasso over points to see them, "
           "or switch the map to hover thumbnails.")
c.teach_topic("umap")

bench, run, emb = c.current_run_with_embeddings("repr")

if run is not None and emb is not None:
    with c.guarded("preparing the map"):
        after_methods = c.methods_with_after(run)
        if not after_methods:
            st.info("No method of this run changed the embeddings (only CFR does); the map shows the "
                    "embeddings before calibration only.")
        cols = st.columns([3, 3, 2, 3])
        method = cols[0].selectbox("After = embeddings of", after_methods or ["(none)"],
                                   index=c.default_after_index(after_methods), key="repr.method",
                                   format_func=lambda m: m if m == "(none)" else c.method_label(m))
        method = None if method == "(none)" else method
        st.session_state[c.K_METHOD] = method
        for note in c.fallback_notes(run, only=method):  # "after" = ERM's embeddings: say so next to the map
            st.warning(note)
        color_opts = c.color_options(run, bench)
        color = cols[1].selectbox("Colour by", list(color_opts), key="repr.color")
        layout = cols[2].radio("Layout", ["side by side", "overlaid"], key="repr.layout", horizontal=True,
                               disabled=method is None)
        splits = cols[3].multiselect("Splits", ["train", "val", "test"], default=["train", "val", "test"],
                                     key="repr.splits")

        xy = c.projection_or_job(run, bench, emb, method)
    if xy is not None:
        view = st.radio("Map", c.MAP_VIEWS, key="repr.view", horizontal=True,
                        help="Selection: drag a box or lasso to list the points and their images below. "
                             "Hover thumbnails: hover a point to see its image (no selection in this view).")
        ids = []
        with c.guarded("drawing the map"):
            points = c.points_table(run, bench, emb, method, xy)
            shown = points[points["split"].isin(splits)]
            if view == c.MAP_VIEWS[1]:
                with st.spinner("Making thumbnails (once per image)…"):
                    spec, n_img, n_want = c.umap_hover_spec(run, bench, shown, color_opts[color],
                                                            layout if method else "side by side", method)
                st.vega_lite_chart(spec=spec, key="repr.hover")
                st.caption("Every point shows its image on hover." if n_img >= len(shown) else
                           f"Images on hover for {n_img:,} of {len(shown):,} points"
                           + (": a fixed random sample, because every thumbnail travels inside the chart (the "
                              "other points show their details only). Narrow the splits to cover more of them."
                              if n_want < len(shown) else ".")
                           + (f" {n_want - n_img:,} image files could not be read (see Data → validation)."
                              if n_img < n_want else ""))
            else:
                fig = c.memo(("umap_fig", c._run_id(run), method, color, layout, tuple(splits)),
                             lambda: c.umap_figure(shown, color_opts[color], layout if method else "side by side"))
                event = st.plotly_chart(fig, key="repr.umap", on_select="rerun", selection_mode=("lasso", "box"),
                                        config={"scrollZoom": True, "displaylogo": False})
                ids = c.selected_ids(event, shown)

        st.markdown(f"#### Selection ({len(ids)} samples)")
        if not ids and view == c.MAP_VIEWS[1]:
            st.caption(f"Switch the map to “{c.MAP_VIEWS[0]}” to select points.")
        elif not ids:
            st.caption("Use the box or lasso tool in the chart's toolbar, then drag over points.")
        else:
            with c.guarded("showing the selection"):
                sel = c.selection_table(points, ids)
                st.download_button("Download the selection as CSV", sel.to_csv(index=False).encode(),
                                   file_name="selection.csv", mime="text/csv", key="repr.download")
                st.dataframe(sel.drop(columns=["path"], errors="ignore"), hide_index=True, key="repr.selection",
                             height=240)
                c.selection_grid(bench, run, sel["sample_id"], limit=24)
                if len(sel) > 24:
                    st.caption(f"First 24 of {len(sel)} shown; the CSV has all.")

        if method is not None:
            st.markdown("#### What moved")
            with c.guarded("measuring movement"):
                c.movement_section(run, bench, emb, method, xy, points)
