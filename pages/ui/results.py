"""What the result pages (Calibrate's results, Groups, Representations, Spurious attributes) open with — the
current run, or why there is none — and the result blocks they share: the method × metric table, the metric
definitions, the training curves."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from clipcal import views
from clipcal.catalog import bench_label, run_label
from pages.ui import resources, state, widgets


def shown_run(runs: list[dict]):
    """Load the run ``K_RUN`` (or the newest of ``runs``) and say which one it is."""
    ids = [r["id"] for r in runs]
    rid = st.session_state.get(state.K_RUN)
    rid = rid if rid in ids else ids[0]
    st.caption(f"Calibration run: **{run_label(runs[ids.index(rid)])}** (choose another in the sidebar)")
    return resources.get_run(rid)


def current_run():
    """``(benchmark, run)`` of the current selection (the run chosen in the sidebar, default the newest),
    rendering what is missing; ``(bench | None, None)`` if there is no run yet or the run has no results."""
    bench = resources.load_bench()
    if bench is None:
        widgets.no_benchmark_notice()
        return None, None
    runs = resources.runs_for(bench, state.backbone_spec())
    if not runs:
        st.info(f"No calibration run of **{bench_label(state.bench_spec())}** with **{state.backbone_spec()}** yet.")
        st.page_link(state.PAGE["calibrate"], label="Go to Calibrate", icon="🎯")
        return bench, None
    run = shown_run(runs)
    if run is not None and not run.results:  # stored by versions that kept runs in which nothing ran
        why = "; ".join(f"{views.method_label(m)}: {r}" for m, r in (run.not_applicable or {}).items())
        st.warning(f"None of this run's methods could run ({why or 'no reason recorded'}), so there is "
                   "nothing to show. Choose another run in the sidebar, or calibrate again on Calibrate.")
        return bench, None
    return bench, run


def current_run_with_embeddings():
    """``(benchmark, run, embeddings)`` of the current selection inside one guarded block; ``run`` and
    ``embeddings`` are None when missing (what is missing is rendered)."""
    run = bench = emb = None
    with widgets.guarded("loading"):
        bench, run = current_run()
        if run is not None:
            emb = resources.load_embeddings(bench)
            if emb is None:
                widgets.no_embeddings_notice(state.backbone_spec())
    return bench, run, emb


def metrics_dataframe(table: pd.DataFrame, key: str) -> None:
    """The method × metric table (best value per metric bold), each metric labelled with its definition."""
    from clipcal.figures import method_summary_style
    from clipcal.metrics import METRIC_DEFINITIONS

    shown = table.drop(columns=[c for c in ("method", "split") if c in table])
    cfg = {"label": st.column_config.TextColumn("method"),
           "uses_group_labels": st.column_config.TextColumn("group labels"),
           "selection_rule": st.column_config.TextColumn("model selection"),
           "chosen_epoch": st.column_config.NumberColumn("chosen epoch")}
    for col, label in views.METRIC_COLUMNS.items():
        cfg[col] = st.column_config.Column(label, help=METRIC_DEFINITIONS.get(col))
    st.dataframe(method_summary_style(shown), hide_index=True, column_config=cfg, key=key)


def metric_definitions() -> None:
    """The metric definitions as a compact list (from :data:`clipcal.metrics.METRIC_DEFINITIONS`)."""
    from clipcal.metrics import METRIC_DEFINITIONS

    st.markdown("\n".join(f"- **{label}** — {METRIC_DEFINITIONS[k]}" for k, label in views.METRIC_COLUMNS.items()
                          if k in METRIC_DEFINITIONS))


def results_table(run, key: str) -> None:
    """The run's method × metric table on the test split (definitions in the column help)."""
    st.markdown("Test split. Hover a column title for its definition; the best value per metric is bold.")
    metrics_dataframe(views.metrics_table(run, "test"), key=key)


def training_curves_chart(curves: pd.DataFrame | None, key: str | None = None, title: str | None = None,
                          cache_key: tuple | None = None) -> None:
    """Training curves (:func:`clipcal.figures.training_curves_figure`); nothing if empty. With ``cache_key`` the
    figure is built once (building it costs ~0.4 s)."""
    if curves is None or len(curves) == 0:
        return
    from clipcal.figures import training_curves_figure

    build = lambda: training_curves_figure(curves, title=title)  # noqa: E731
    st.plotly_chart(resources.memo(cache_key, build) if cache_key else build(), key=key)


def curves_section(run) -> None:
    """Training curves of every method of the run that has any, one expander each."""
    from clipcal.pipeline import run_key

    for name in views.run_methods(run):
        curves = getattr(views.method_result(run, name), "curves", None)
        if curves is not None and len(curves):
            label = views.method_label(name)
            with st.expander(f"Training curves — {label}"):
                training_curves_chart(curves, key=f"curves.{name}",
                                      title=f"{label}: loss terms and validation metrics per epoch",
                                      cache_key=("curves_fig", run_key(run), name))
