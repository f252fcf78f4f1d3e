"""Groups: per-group accuracy of every method of a run, side by side, with definitions and intervals."""

from __future__ import annotations

import streamlit as st

from pathlib import Path

from clipcal import export, figures, views
from clipcal.pipeline import run_key
from pages.ui import resources, results, widgets

st.title("Groups — per-group accuracy")
st.caption("Every method of the chosen calibration run on the same test images: the summary metrics "
           "(each defined below the table), then accuracy per (class × attribute) group with 95 % intervals.")
widgets.teach_topic("worst_group")

run = bench = None
with widgets.guarded("loading"):
    bench, run = results.current_run()

if run is not None:
    split = st.radio("Evaluated on", ["test", "val"], horizontal=True, key="groups.split",
                     help="test is the honest figure; val is what model selection looked at")
    with widgets.guarded("computing metrics"):
        results.metrics_dataframe(views.metrics_table(run, split, numbers_only=True), key="groups.metrics")
        for note in views.failed_notes(run):  # applied but failed (e.g. a NaN loss): no numbers, what to change
            st.error(note)
        for note in views.not_applicable_notes(run):  # e.g. zero-shot without a text tower: no numbers at all
            st.caption(note)
        for note in views.fallback_notes(run):  # e.g. CFR = ERM when the calibration set is empty
            st.warning(note)
        for note in views.outcome_notes(run):  # CFR: which calibration-set rule ran, which model it returned
            st.info(note)
        results.metric_definitions()

        st.markdown("#### Per-group accuracy")
        # built once per (run, split): the figure costs ~0.2 s idle and 1.7 s on a loaded machine, every rerun
        groups, bars = resources.memo(("groups_fig", run_key(run), split), lambda: (
            (g := views.group_tables(run, split)), figures.group_accuracy_figure(g)))
        st.plotly_chart(bars, key="groups.bars")
        if not bench.has_attributes:
            st.info("This benchmark has no spurious-attribute labels, so the bars are per class; "
                    "look for hidden groups with cluster discovery on Spurious attributes.")
        with st.expander("Per-group table"):
            st.dataframe(groups, hide_index=True, key="groups.table")

        st.markdown("#### How each method was trained and selected")
        records = views.records_table(run)
        for _, r in records[records["loss terms"] != ""].iterrows():  # CFR: the loss as it ran, W's start
            st.caption(f"**{r['method']}** — loss: {r['loss terms']}"
                       + (f" · last layer: {r['last layer']}" if r["last layer"] else ""))
        st.dataframe(records, hide_index=True, key="groups.records")

    st.markdown("#### Export the calibrated model")
    exportable = export.exportable_methods(run)
    if not exportable:
        st.caption("This run stores no fitted last layer (it was calibrated before clipcal kept one): calibrate "
                   "again to export a method's model.")
    else:
        pick = st.selectbox("Method", exportable, format_func=views.method_label, key="groups.export_method",
                            index=exportable.index("cfr") if "cfr" in exportable else 0)
        if st.button("Export", key="groups.export",
                     help="open_clip backbones: a checkpoint whose visual.proj is the calibrated last layer, "
                          "loadable with plain open_clip; other backbones: the last layer W. Both with the class "
                          "head, classifier.json and a README, in a folder under the store's exports/"):
            with widgets.guarded("exporting"):
                ex = export.export_run(run, pick, store=resources.get_store())
                st.session_state["groups.exported"] = (run.key, pick, str(export.zip_export(ex)), ex.summary())
        done = st.session_state.get("groups.exported")
        if done and done[:2] == (run.key, pick) and Path(done[2]).is_file():
            st.success(f"Exported {done[3]}")
            st.download_button("Download (zip)", Path(done[2]).read_bytes(), file_name=Path(done[2]).name,
                               mime="application/zip", key="groups.export_download")
