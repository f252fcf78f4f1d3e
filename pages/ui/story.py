"""The story of a run on screen (:mod:`clipcal.story`, issue 12.5): where "Run the demo path" ends (Home) and
atop Representations — ERM's worst group, what each method recovered, the images that crossed, which way the
representation moved (neighbourhood class purity before vs after), CFR's calibration rule and selection."""

from __future__ import annotations

import streamlit as st

from clipcal import catalog, pipeline, story, views
from pages.ui import resources, state, widgets


def _inputs(run, bench, method):
    """(FeatureData, points without a map, purity) of the run, memoised per run and method."""
    rid, names = pipeline.run_key(run), bench.group_names() if bench.has_attributes else None
    fd = resources.run_feature_data(run, bench)
    pts = resources.memo(("story_points", rid, method),
                         lambda: story.story_points(run, fd.class_names, names, method))
    purity = resources.memo(("purity", rid, method), lambda: story.run_purity(run, fd, method, names))
    return fd, pts, purity


def story_block(bench, run, method: str | None = None, key: str = "story") -> None:
    """The story in sentences, the neighbourhood purity table, a few images that crossed, CFR's outcome lines."""
    from clipcal.separation import PURITY_DEFINITION

    method = method if method is not None else story.story_method(run)
    fd, pts, purity = _inputs(run, bench, method)
    # a stored run never changes: its story is built once per (run, method), not on every rerun
    s = resources.memo(("story", pipeline.run_key(run), method),
                       lambda: story.run_story(run, points=pts, purity=purity, method=method))
    st.markdown(f"**{s.headline}**")
    st.markdown("\n".join(f"- {line}" for line in s.sentences))
    if s.purity is not None:
        shown = s.purity[["name", "n", "purity_before", "purity_after", "change"]]
        st.dataframe(shown, hide_index=True, key=f"{key}.purity", column_config={
            "name": st.column_config.TextColumn("group"),
            **{c: st.column_config.NumberColumn(c.replace("_", " "), format="%.2f")
               for c in ("purity_before", "purity_after", "change")}})
        st.caption(PURITY_DEFINITION.format(k=s.purity.attrs.get("k", "k")))
    if s.examples:
        st.caption(f"Test images {views.method_label(method)} fixed ({s.baseline and views.method_label(s.baseline)} "
                   "had them wrong), the worst group first:")
        widgets.grid_of_ids(bench, fd, s.examples, limit=len(s.examples), columns=len(s.examples))
    for line in views.outcome_notes(run, only=method):
        st.caption(line)


def _job_runs(runs: list[dict], job) -> list[dict]:
    """The runs (newest first) stored since ``job`` started (a run's ``created`` is ISO time, to the second)."""
    from datetime import datetime

    def stamp(created) -> float:
        try:
            return datetime.fromisoformat(str(created).replace("Z", "+00:00")).timestamp()
        except ValueError:
            return float("-inf")

    return [r for r in runs if stamp(r["created"]) >= int(job.started or 0)]


def demo_story(bench_spec: dict, spec: str, job) -> None:
    """Home, once the demo path stored a run: the story of its newest run (of this benchmark and backbone) — while
    the job still runs, the story of its first results (the fast methods, :data:`clipcal.pipeline.FIRST_METHODS`),
    said to be partial. Each new run of the job becomes the run the result pages show — only in the session that
    started the job (the job manager is shared by every session of the server: another user's demo must not
    replace this user's choice) and once per run, so a later choice in the sidebar stands."""
    with widgets.guarded("telling what happened"):
        bench = resources.load_bench(bench_spec)
        runs = resources.runs_for(bench, spec) if bench is not None else []
        if job.is_running:
            runs = _job_runs(runs, job)
        if not runs:
            return
        seen = st.session_state.setdefault("story.seen_jobs", set())
        if (id(job), runs[0]["id"]) not in seen:
            seen.add((id(job), runs[0]["id"]))
            if (st.session_state.get(state.K_DEMO_JOB) == pipeline.demo_job_key(bench_spec, spec)
                    and st.session_state.get(state.K_RUN) != runs[0]["id"]):
                st.session_state[state.K_RUN] = runs[0]["id"]
                st.rerun()  # the sidebar was drawn before this switch: draw it again with the run now shown
        if job.is_running:
            st.subheader("First results")
            st.caption(f"{', '.join(catalog.method_short(m) for m in runs[0]['methods'])} done; the other "
                       "methods are still training — this becomes the full comparison when they finish.")
        else:
            st.subheader("What happened")
        story_block(bench, resources.get_run(runs[0]["id"]), key="home.story")
