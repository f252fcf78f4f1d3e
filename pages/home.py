"""Home: what clipcal does, what is in the store, and the one-click demo path."""

from __future__ import annotations

import streamlit as st

from clipcal import catalog, pipeline
from clipcal.views import fmt_eta
from pages.ui import jobs, resources, state, widgets
from pages.ui import story as story_ui

st.title("clipcal — spurious correlations in CLIP representations")
st.markdown(
    "clipcal shows whether an image model leans on a **spurious attribute** (a background, a hair colour) "
    "instead of the class itself, by measuring accuracy on every (class × attribute) **group**. "
    "It embeds a benchmark once with a backbone of your choice, runs baselines and **CFR** (Contrastive "
    "Feature Recalibration, CVPR 2024), which recalibrates the representation **without group labels**. "
    "Then it lets you look: per-group accuracy side by side, a UMAP of the representation before vs after, "
    "and inspections that name and locate the spurious attribute."
)
widgets.teach_topic("spurious")

# --- the demo path ----------------------------------------------------------------------------------------
st.subheader("Run the demo")
bench, spec = state.bench_spec(), state.backbone_spec()
st.markdown(
    f"One click: generate the benchmark (if needed) → embed it with **{spec}** → calibrate with every "
    f"method that applies. Current choice: **{catalog.bench_label(bench)}** (change it in the sidebar or on Data)."
)
if (catalog.spec_key(bench), spec) != (catalog.spec_key(catalog.DEFAULT_BENCH), catalog.DEFAULT_BACKBONE):
    # the button runs the current choice; say so, and offer the built-in demo the README describes
    st.caption("This runs your current choice, not the built-in demo.")
    if st.button("Switch to the built-in demo (Waterbirds-lite, bundled EfficientNet-Lite0)", key="home.to_demo"):
        state.set_benchmark(catalog.DEFAULT_BENCH)
        state.set_backbone(catalog.DEFAULT_BACKBONE)
        st.rerun()
demo_key = pipeline.demo_job_key(bench, spec)
job = resources.get_jobs().get(demo_key)
running = job is not None and job.is_running
if st.button("▶ Run the demo path", type="primary", disabled=running, key="home.run_demo"):
    with widgets.guarded("starting the demo"):
        jobs.start_demo_path(bench, spec)
        st.rerun()


def _done(job) -> None:
    st.success(f"Demo path finished in {fmt_eta(job.elapsed_s)}: {job.result}. Now look at the results:")
    story_ui.demo_story(bench, spec, job)  # what happened, in numbers (issue 12.5)


job = jobs.job_status(demo_key, show_done=_done, watch_runs=True)
if job is not None and job.is_running:  # the fast methods' run is stored first: show it while the rest trains
    story_ui.demo_story(bench, spec, job)
cols = st.columns(6)
for col, (page, label, icon) in zip(cols, [
    ("data", "Data", "🗂️"), ("embed", "Embed", "🧮"), ("calibrate", "Calibrate", "🎯"),
    ("groups", "Groups", "📊"), ("representations", "Representations", "🗺️"),
    ("spurious", "Spurious attributes", "🔎"),
]):
    with col:
        st.page_link(state.PAGE[page], label=label, icon=icon)

# --- the store ----------------------------------------------------------------------------------------------
st.subheader("In the store")
from clipcal.errors import StoreError  # noqa: E402
from clipcal.paths import cache_dir, cache_root  # noqa: E402

try:
    st.caption(f"Store folder: `{cache_dir()}` (set `CLIPCAL_CACHE` to move it).")
except StoreError as err:  # e.g. CLIPCAL_CACHE names a file: say so, and what to do, instead of a traceback
    st.error(f"Store folder `{cache_root()}` cannot be used: {err.message}")
    st.info(f"What to do: {err.hint or 'set CLIPCAL_CACHE to a writable folder'}, then restart the dashboard.")
with widgets.guarded("reading the store"):
    emb = resources.store_embeddings()
    runs = resources.store_runs()
    st.markdown(f"**Embeddings** ({len(emb)})")
    if len(emb):
        st.dataframe(emb.drop(columns=["bench_spec", "fingerprint"]), hide_index=True, key="home.emb")
    else:
        st.caption("None yet — embed a benchmark on the Embed page or with `python -m clipcal embed`.")
    st.markdown(f"**Calibration runs** ({len(runs)})")
    if len(runs):
        st.dataframe(runs, hide_index=True, key="home.runs",
                     column_config={"best test worst-group": st.column_config.NumberColumn(format="%.3f")})
    else:
        st.caption("None yet — calibrate on the Calibrate page or with `python -m clipcal calibrate`.")
