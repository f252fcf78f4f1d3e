"""The shared sidebar (drawn by app.py on every page): the current benchmark, backbone and calibration run —
the choices are the defaults plus what is in the store — and the running jobs."""

from __future__ import annotations

import streamlit as st

from clipcal.catalog import DEFAULT_BACKBONE, DEFAULT_BENCH, bench_label, run_label, spec_key
from pages.ui import jobs, resources, state


def _sync_run() -> None:
    st.session_state[state.K_RUN] = st.session_state.get("sb.run")


def run_picker(runs: list[dict]) -> str:
    """The run selectbox (widget key ``sb.run``) bound to the shared ``K_RUN``; returns the chosen key.

    ``K_RUN`` is ``None`` or unknown → the newest run.
    """
    ids = [r["id"] for r in runs]
    if st.session_state.get(state.K_RUN) not in ids:
        st.session_state[state.K_RUN] = ids[0]
    st.session_state["sb.run"] = st.session_state[state.K_RUN]
    labels = {r["id"]: run_label(r) for r in runs}
    st.selectbox("Calibration run", ids, format_func=labels.get, key="sb.run", on_change=_sync_run,
                 help="Shown on Calibrate (results), Groups, Representations and Spurious attributes")
    return st.session_state[state.K_RUN]


def sidebar() -> None:
    """Benchmark, backbone and run pickers, then the running jobs."""
    with st.sidebar:
        st.markdown("### Current selection")
        current, backbone = state.bench_spec(), state.backbone_spec()
        choices: dict[str, dict] = {}
        for spec in (current, DEFAULT_BENCH):
            choices.setdefault(spec_key(spec), spec)
        backbones = [backbone, DEFAULT_BACKBONE]
        try:
            for _, r in resources.store_embeddings().iterrows():
                if r["bench_spec"] is not None:
                    choices.setdefault(spec_key(r["bench_spec"]), r["bench_spec"])
                if r["backbone"]:
                    backbones.append(str(r["backbone"]))
        except Exception as err:  # noqa: BLE001
            st.caption(f"store not readable: {err}")
        keys, cur = list(choices), spec_key(current)
        # The widget keys carry the current choice: a choice made on Data / Embed then gives a fresh widget
        # that starts at ``index`` = the new choice. With one fixed key the widget kept its old value and the
        # next rerun switched straight back to it.
        picked = st.selectbox("Benchmark", keys, index=keys.index(cur),
                              format_func=lambda k: bench_label(choices[k]), key=state.choice_key("sb.bench", cur),
                              help="Change it in detail (own CSV, root folder) on the Data page.")
        if picked != cur:
            state.set_benchmark(choices[picked])
            st.rerun()
        backbones = list(dict.fromkeys(backbones))
        bb = st.selectbox("Backbone", backbones, index=backbones.index(backbone),
                          key=state.choice_key("sb.backbone", backbone),
                          help="Pick another (open_clip, local checkpoint) on the Embed page.")
        if bb != backbone:
            state.set_backbone(bb)
            st.rerun()
        try:
            bench = resources.load_bench()
            runs = resources.runs_for(bench, backbone) if bench is not None else []
            if runs:
                run_picker(runs)
        except Exception as err:  # noqa: BLE001 - the page shows the error in full
            st.caption(f"runs not readable: {err}")
        jobs.running_jobs_list()
