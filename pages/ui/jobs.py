"""Background jobs of the dashboard: starting them (one running job per key, :mod:`clipcal.jobs`) and their
panels — live progress with Cancel (polled every second in a fragment, so reruns and page switches never touch
the worker), the error if one failed, live training curves of a calibration.

The work itself is :mod:`clipcal.pipeline`; the workers here only add what the dashboard keeps (the shared
model, leased for the job's length: :func:`pages.ui.resources.model_lease`; the memo of loaded objects).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any, Callable

import streamlit as st

from clipcal import pipeline, views
from clipcal.errors import ClipcalError
from pages.ui import resources, state


# ---------------------------------------------------------------------------------------------------------
# starters
# ---------------------------------------------------------------------------------------------------------
def demo_building_job(options: dict):
    """The running job that generates the demo with these options — its own build job, or a "Run the demo"
    job of that demo (whatever backbone) — or ``None``. Offering a second build meanwhile would race it."""
    jobs = resources.get_jobs()
    own = jobs.get(pipeline.demo_build_key(options))
    if own is not None and own.is_running:
        return own
    prefix = pipeline.demo_job_key({"name": "demo", "root": None, "options": dict(options)}, "")
    return next((j for j in jobs.jobs(running_only=True) if j.key.startswith(prefix)), None)


def start_demo_build(options: dict):
    """Start (or return the running) job that generates the demo images."""
    from clipcal.data.demo import build_demo

    def build(progress=None):
        return build_demo(progress=progress, **options)

    return resources.get_jobs().submit(pipeline.demo_build_key(options), build, label="Generating the demo images")


def _demo_worker(bench_spec: dict, backbone: str, progress=None, cancel=None) -> str:
    # the shared model, leased for the job (no second copy on the device, nobody closes it under the job) and
    # loaded while the benchmark builds; the pool's exit waits for the load, then the stack releases the lease
    with ExitStack() as stack, ThreadPoolExecutor(1, thread_name_prefix="clipcal-load") as pool:
        model = pool.submit(stack.enter_context, resources.model_lease(backbone))
        summary = pipeline.demo_path(bench_spec, model, progress=progress, cancel=cancel)
    resources.forget("emb")
    resources.forget("run")
    return summary


def start_demo_path(bench_spec: dict, backbone: str):
    """Start (or return the running) job of :func:`clipcal.pipeline.demo_path` (Home's one click).

    Raises:
        StoreError: the store cannot be written (:meth:`clipcal.store.Store.check_writable`), before any work.
    """
    resources.get_store().check_writable()
    key = pipeline.demo_job_key(bench_spec, backbone)
    st.session_state[state.K_DEMO_JOB] = key
    return resources.get_jobs().submit(key, _demo_worker, dict(bench_spec), backbone,
                                       label="Demo path (benchmark → embed → calibrate)")


def _embed_worker(bench_spec: dict, backbone: str, device: str = "auto", precision: str = "auto",
                  batch_size: int = 64, progress=None, cancel=None):
    if progress:
        progress(0, None, f"loading {backbone}")
    with resources.model_lease(backbone, device, precision) as model:
        emb = pipeline.embed(bench_spec, model, store=resources.get_store(), device=device, precision=precision,
                             batch_size=batch_size, progress=progress, cancel=cancel)
    resources.forget("emb")
    return emb


def start_embedding(bench_spec: dict, backbone: str, **options):
    """Start (or return the running) embedding job of (benchmark, backbone); ``options``: device, precision,
    batch_size.

    Raises:
        StoreError: the store cannot be written (:meth:`clipcal.store.Store.check_writable`): said now, not after
            every image was encoded.
    """
    resources.get_store().check_writable()
    return resources.get_jobs().submit(pipeline.embed_job_key(bench_spec, backbone), _embed_worker,
                                       dict(bench_spec), backbone, label=f"Embedding with {backbone}", **options)


def _calib_worker(bench_spec: dict, backbone: str, methods: list[str], hparams: dict, seed: int = 0,
                  selection: str | None = None, progress=None, cancel=None):
    bench = resources.load_bench(bench_spec)
    run = pipeline.calibrate(bench, resources.load_embeddings(bench, backbone), methods, hparams,
                             store=resources.get_store(), seed=seed, selection=selection, progress=progress,
                             cancel=cancel)
    return run.key, pipeline.calibration_summary(run, methods)


def start_calibration(bench_spec: dict, backbone: str, methods: list[str], hparams: dict, seed: int = 0,
                      selection: str | None = None):
    """Start (or return the running) calibration job of (benchmark, backbone); its result is
    ``(run key, summary)``.

    Raises:
        MethodError: a hyperparameter value a method refuses (:func:`clipcal.runs.resolve_hparams`);
        MissingDependencyError: a package a chosen method needs is not installed
        (:func:`clipcal.runs.check_method_dependencies`); StoreError: the store cannot be written — all before any
        work.
    """
    from clipcal.runs import check_method_dependencies, resolve_hparams

    check_method_dependencies(list(methods))
    resolve_hparams(list(methods), hparams, int(seed), selection)
    resources.get_store().check_writable()
    return resources.get_jobs().submit(
        pipeline.calib_job_key(bench_spec, backbone), _calib_worker, dict(bench_spec), backbone, list(methods),
        dict(hparams), seed=int(seed), selection=selection, label=f"Calibrating {', '.join(methods)}")


def _umap_worker(run_id: str, bench_spec: dict, backbone: str, method: str | None, progress=None):
    bench = resources.load_bench(bench_spec)
    run = resources.get_run(run_id)
    fd = resources.run_feature_data(run, bench, backbone)
    return pipeline.project(run, fd, method, resources.fingerprint(bench), backbone, resources.get_store(),
                            progress=progress)


def start_projection(run_id: str, method: str | None):
    """Start the job that fits the current run's joint UMAP (:func:`clipcal.pipeline.project`).

    Raises:
        StoreError: the store cannot be written (the map is stored), before any work.
    """
    resources.get_store().check_writable()
    return resources.get_jobs().submit(pipeline.umap_job_key(run_id, method), _umap_worker, run_id,
                                       state.bench_spec(), state.backbone_spec(), method,
                                       label="Computing the shared UMAP map")


# ---------------------------------------------------------------------------------------------------------
# panels
# ---------------------------------------------------------------------------------------------------------
def show_job_error(job) -> None:
    """Render a failed job's error like :func:`pages.ui.widgets.show_error` (traceback captured in the worker)."""
    if isinstance(job.error, ClipcalError):
        st.error(job.error_message)
    else:
        st.error(f"{job.label} failed: {job.error_message}")
        with st.expander("Details (for a bug report)"):
            st.code(job.error_details, language="text")


def _render_running(job, cancel_key: str) -> None:
    frac = job.progress.fraction
    st.progress(frac if frac is not None else 0.0, text=f"**{job.label}** — {views.progress_line(job)}")
    if job.cancel_requested:
        st.caption("Cancelling… (work finished so far is kept)")
    elif st.button("Cancel", key=cancel_key, help="Stop the job; finished work stays in the store"):
        job.cancel()
        st.rerun()


def live_curves_figure(job, cache, key: str):
    """The live training-curves figure of a running ``job``, rebuilt only when new metrics arrived.

    The figure is kept in ``cache[key]`` (a mapping, e.g. ``st.session_state``) with the job's
    :func:`clipcal.views.live_curves_signature`; the job fragment polls every second and building the figure
    costs ~0.3 s of CPU, while most polls of a long CFR job find no new epoch. Returns ``None`` while no metrics
    were reported.
    """
    sig = (job.submitted, *views.live_curves_signature(job.history))
    hit = cache.get(key)
    if hit is not None and hit[0] == sig:
        return hit[1]
    if sig[1] == 0:
        return None
    from clipcal.figures import training_curves_figure

    fig = training_curves_figure(views.live_curves_table(job), title="Live: training metrics reported so far")
    cache[key] = (sig, fig)
    return fig


@st.fragment(run_every=1.0)
def _job_fragment(key: str, live: str | None = None, watch_runs: bool = False) -> None:
    job = resources.get_jobs().get(key)
    if job is None:
        return
    if job.is_running:
        _render_running(job, f"cancel.{key}")
        if live == "curves":
            fig = live_curves_figure(job, st.session_state, f"_live.{key}")
            if fig is not None:  # drawn on every run: a fragment drops what it does not draw again
                st.plotly_chart(fig, key=f"live.{key}")
        if watch_runs:  # a run stored while the job goes on (the demo path's first results): show it now
            stamp, seen = resources.store_stamp("runs"), st.session_state.get(f"_runs.{key}")
            st.session_state[f"_runs.{key}"] = stamp
            if seen is not None and seen != stamp:
                st.rerun(scope="app")
    else:  # finished while we polled: rerun the whole page once so it shows the result
        st.session_state.pop(f"_live.{key}", None)
        st.rerun(scope="app")


def job_status(key: str, show_done: Callable | None = None, live: str | None = None,
               watch_runs: bool = False) -> Any:
    """Show the job under ``key``: live progress + Cancel while running, the error if it failed, a note if
    cancelled.

    Args:
        key: job key (:mod:`clipcal.pipeline` builds them).
        show_done: called with the job when it finished successfully (e.g. a summary).
        live: ``"curves"`` to draw the training metrics reported so far under the progress bar.
        watch_runs: rerun the whole page when a run is stored while the job runs (one ``stat`` per poll), so
            the page can show results the job stored on its way (the demo path's first run).

    Returns:
        The job (or ``None`` if there is none).
    """
    job = resources.get_jobs().get(key)
    if job is None:
        return None
    if job.is_running:
        _job_fragment(key, live, watch_runs)
    elif job.status == "failed":
        show_job_error(job)
    elif job.status == "cancelled":
        st.warning(f"{job.label}: cancelled after {views.fmt_eta(job.elapsed_s)}. {job.error_message}")
    elif show_done is not None:
        show_done(job)
    return job


def running_jobs_list() -> None:
    """The running jobs, one short bar each (:func:`clipcal.views.job_short_line`), for the sidebar."""
    running = resources.get_jobs().jobs(running_only=True)
    if running:
        st.markdown("### Running jobs")
        for j in running:
            st.progress(j.progress.fraction or 0.0, text=views.job_short_line(j))
