"""Shared state, cached loaders and widgets of the dashboard pages (Streamlit allowed here, no algorithm).

Session-state keys (the only state shared across pages)
-------------------------------------------------------
``K_BENCH`` = ``"cc.benchmark"``
    The current benchmark as a plain dict ``{"name": str, "root": str | None, "options": dict}`` — the
    arguments of :func:`clipcal.data.load_benchmark`. Default: the built-in demo (Waterbirds-lite).
``K_BACKBONE`` = ``"cc.backbone"``
    The current backbone spec (str), default ``bundled:efficientnet-lite0``.
``K_RUN`` = ``"cc.run"``
    Id of the calibration run shown on Groups / Representations / Spurious attributes (``None`` = newest
    run for the current benchmark and backbone).
``K_METHOD`` = ``"cc.method"``
    The method whose calibrated embeddings are the "after" view (``None`` = CFR if present, else the first
    method with ``embeddings_after``).
``K_DEMO_JOB`` = ``"cc.demo_job"``
    Key of the "run the demo" job started from Home (or ``None``).

Widget keys start with the page name (``data.``, ``embed.`` …) and are never read by other pages.

Caching: the :class:`~clipcal.jobs.JobManager`, the store and loaded benchmarks / embedding sets / runs
live in ``st.cache_resource`` (shared, never pickled; big arrays stay memory-mapped from the store). A
loader that finds nothing returns ``None`` and is not cached, so results appear as soon as a job stored
them. Backbones (models) are cached one at a time: choosing another one releases the previous.
"""

from __future__ import annotations

import contextlib
import gc
import json
import sys
import threading
import traceback
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
import pandas as pd
import streamlit as st

from clipcal.errors import ClipcalError


def _route_through_app() -> None:
    """Send a v1-style run of a page file back through app.py.

    Streamlit decides process-wide whether ``pages/`` is a v1 multipage folder until ``st.navigation`` is first
    called: when a fresh server's first request is a deep link (``/groups`` bookmarked or reloaded after a
    restart), it runs ``pages/groups.py`` alone — no sidebar, a raw file list as navigation. Clearing that flag
    and rerunning makes app.py (and its ``st.navigation``) handle the same URL.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


_route_through_app()

K_BENCH = "cc.benchmark"
K_BACKBONE = "cc.backbone"
K_RUN = "cc.run"
K_METHOD = "cc.method"
K_DEMO_JOB = "cc.demo_job"

DEFAULT_BENCH = {"name": "demo", "root": None, "options": {}}
DEFAULT_BACKBONE = "bundled:efficientnet-lite0"

PAGE = {  # page files, for st.page_link / st.switch_page
    "home": "pages/home.py", "data": "pages/data.py", "embed": "pages/embed.py",
    "calibrate": "pages/calibrate.py", "groups": "pages/groups.py",
    "representations": "pages/representations.py", "spurious": "pages/spurious.py",
}


# ---------------------------------------------------------------------------------------------------------
# state
# ---------------------------------------------------------------------------------------------------------
def init_state() -> None:
    """Fill the shared keys with defaults on a session's first run.

    A new session opens what is already in the store: the benchmark and backbone of the newest embedding
    set that can be reopened (e.g. embedded headless with ``python -m clipcal embed``; the manifest must say
    where the benchmark's files are, and a checkpoint file it was made with must still be there), else the
    built-in demo and the bundled backbone.
    """
    ss = st.session_state
    if K_BENCH in ss and K_BACKBONE in ss:
        return
    bench, spec = dict(DEFAULT_BENCH), DEFAULT_BACKBONE
    try:
        emb = store_embeddings()
        reopenable = emb[emb["bench_spec"].notna() & ~emb["backbone"].map(_weights_gone)]
        if len(reopenable):  # newest first; entries whose files cannot be located are skipped
            bench, spec = reopenable.iloc[0]["bench_spec"], reopenable.iloc[0]["backbone"]
    except Exception:  # noqa: BLE001 - an unreadable store must not stop the app; pages say more
        pass
    ss.setdefault(K_BENCH, bench)
    ss.setdefault(K_BACKBONE, spec)
    ss.setdefault(K_RUN, None)
    ss.setdefault(K_METHOD, None)
    ss.setdefault(K_DEMO_JOB, None)


_FROZEN_MODULES = [0]  # len(sys.modules) when freeze_imported_objects last froze


def freeze_imported_objects() -> bool:
    """Move every object alive now out of the cyclic garbage collector's sight (``gc.freeze()``, CPython ≥ 3.7)
    when new modules were imported since the last call; called by app.py after each run.

    Why: with torch, open_clip, umap, numba and plotly loaded the process tracks ≈ 0.5 M container objects,
    nearly all of them library code that lives as long as the process. Python's automatic full collections
    then take ≈ 0.5 s each and hold the GIL: every few reruns a page took a second instead of half that
    (bench/page_rerun.py), and worker threads stalled. Frozen objects are still freed by reference counting;
    only cyclic garbage among them would be kept, so the garbage present is collected first and the freeze
    happens only after new imports (a handful of times per process). Returns True when it froze.
    """
    n = len(sys.modules)
    if n <= _FROZEN_MODULES[0]:
        return False
    gc.collect()
    gc.freeze()
    _FROZEN_MODULES[0] = n
    return True


def bench_spec() -> dict:
    """The current benchmark spec dict (see ``K_BENCH``)."""
    return st.session_state.get(K_BENCH) or dict(DEFAULT_BENCH)


def backbone_spec() -> str:
    """The current backbone spec string."""
    return st.session_state.get(K_BACKBONE) or DEFAULT_BACKBONE


def set_benchmark(spec: dict) -> None:
    """Make ``spec`` the current benchmark (and forget the chosen run, which belonged to the old one)."""
    st.session_state[K_BENCH] = {"name": spec["name"], "root": spec.get("root") or None,
                                 "options": dict(spec.get("options") or {})}
    st.session_state[K_RUN] = None


def set_backbone(spec: str) -> None:
    """Make ``spec`` the current backbone (forgets the chosen run)."""
    st.session_state[K_BACKBONE] = spec
    st.session_state[K_RUN] = None


def spec_key(spec: dict) -> str:
    """Stable string of a benchmark spec, for cache and job keys."""
    return json.dumps(spec, sort_keys=True, default=str)


def bench_label(spec: dict) -> str:
    """Short human label of a benchmark spec."""
    name = spec.get("name", "?")
    opts = spec.get("options") or {}
    if name == "demo":
        from clipcal.data.demo import demo_params

        try:
            p = demo_params(**opts)
            return f"demo — Waterbirds-lite ({p['n_train']}/{p['n_val']}/{p['n_test']}, seed {p['seed']})"
        except ClipcalError:
            return "demo — Waterbirds-lite"
    root = spec.get("root") or ""
    if name == "csv" and opts.get("csv"):  # several own CSVs: name the file and its folder
        from pathlib import Path

        return f"csv — {Path(str(opts['csv'])).name} in {root or Path(str(opts['csv'])).parent}"
    return f"{name} — {root}" if root else name


# ---------------------------------------------------------------------------------------------------------
# cached resources
# ---------------------------------------------------------------------------------------------------------
@st.cache_resource(show_spinner=False)
def get_jobs():
    """The process-wide :class:`clipcal.jobs.JobManager` (survives reruns, page switches and sessions)."""
    from clipcal.jobs import JobManager

    return JobManager()


@st.cache_resource(show_spinner=False)
def _memo_holder() -> tuple[dict, threading.Lock]:
    return {}, threading.Lock()


def memo(key: tuple, load: Callable[[], Any]) -> Any:
    """Process-wide memo for loaded objects: return the cached value of ``key`` or ``load()`` it.

    ``None`` results are not kept, so a page that found nothing finds it once a job has stored it.
    """
    data, lock = _memo_holder()
    with lock:
        if key in data:
            return data[key]
    value = load()
    if value is not None:
        with lock:
            data[key] = value
    return value


def memo_peek(key: tuple) -> Any:
    """The memoised value of ``key`` or ``None`` (never loads)."""
    data, lock = _memo_holder()
    with lock:
        return data.get(key)


def forget(prefix: str) -> None:
    """Drop memo entries whose key starts with ``prefix`` (e.g. after a job replaced a stored entry)."""
    data, lock = _memo_holder()
    with lock:
        for k in [k for k in data if k and k[0] == prefix]:
            del data[k]


def get_store():
    """The default :class:`clipcal.store.Store` (under ``$CLIPCAL_CACHE`` or ``./cache``)."""
    from clipcal.paths import cache_dir
    from clipcal.store import Store

    root = str(cache_dir())
    return memo(("store", root), lambda: Store(root))


def store_stamp(kind: str) -> int:
    """Changes whenever an entry of ``kind`` is added or replaced (mtime of the kind's folder, ns)."""
    try:
        return (get_store().root / kind).stat().st_mtime_ns
    except OSError:
        return 0


def demo_built(options: dict) -> bool:
    """Whether the demo with these options is already generated in the cache."""
    from clipcal.data.demo import demo_dir

    return (demo_dir(**options) / "COMPLETE").is_file()


def load_bench(spec: dict | None = None):
    """The :class:`~clipcal.data.Benchmark` of ``spec`` (default: current), or ``None`` for a demo not built
    yet (generating it is a job: :func:`start_demo_build`).

    Raises:
        ClipcalError: as :func:`clipcal.data.load_benchmark` (missing root, bad metadata …).
    """
    from clipcal.data import load_benchmark

    spec = spec or bench_spec()
    if spec["name"] == "demo" and not spec.get("root") and not demo_built(spec.get("options") or {}):
        return None
    return memo(("bench", spec_key(spec)),
                lambda: load_benchmark(spec["name"], root=spec.get("root"), **(spec.get("options") or {})))


def demo_build_key(options: dict) -> str:
    """Job key of generating the demo with these options."""
    return f"demo-build:{json.dumps(options, sort_keys=True)}"


def demo_building_job(options: dict):
    """The running job that generates the demo with these options — its own build job, or a "Run the demo"
    job of that demo (whatever backbone) — or ``None``. Offering a second build meanwhile would race it."""
    jobs = get_jobs()
    own = jobs.get(demo_build_key(options))
    if own is not None and own.is_running:
        return own
    prefix = f"demo-path:{spec_key({'name': 'demo', 'root': None, 'options': dict(options)})}:"
    return next((j for j in jobs.jobs(running_only=True) if j.key.startswith(prefix)), None)


def start_demo_build(options: dict):
    """Start (or return the running) job that generates the demo images."""
    from clipcal.data.demo import build_demo

    def build(progress=None):
        return build_demo(progress=progress, **options)

    return get_jobs().submit(demo_build_key(options), build, label="Generating the demo images")


def fingerprint(bench) -> str:
    """``bench.fingerprint()``, computed once per Benchmark object (it hashes the whole table)."""
    fp = bench.__dict__.get("_cc_fingerprint")
    if fp is None:
        fp = bench.fingerprint()
        bench.__dict__["_cc_fingerprint"] = fp
    return fp


def load_embeddings(bench, spec: str | None = None):
    """The stored :class:`clipcal.embed.EmbeddingSet` of (benchmark, backbone), or ``None`` if not embedded."""
    from clipcal.embed import load_embeddings as _load

    spec = spec or backbone_spec()
    return memo(("emb", fingerprint(bench), spec), lambda: _load(bench, spec, store=get_store()))


# ---------------------------------------------------------------------------------------------------------
# store listings
# ---------------------------------------------------------------------------------------------------------
def _fmt_time(value) -> str:
    """``"2026-11-29 08:40 UTC"`` from an ISO time (the store's ``created``) or a UNIX time."""
    if value in (None, ""):
        return ""
    try:
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return datetime.fromisoformat(str(value)).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except (ValueError, OSError):
        return str(value)


def _bench_spec_from_meta(meta: dict) -> dict | None:
    """Rebuild a benchmark spec from a manifest's benchmark description (None if it cannot be)."""
    b = meta.get("benchmark") or {}
    if not isinstance(b, dict):
        return None
    name = b.get("name")
    if not name:
        return None
    params = dict(b.get("params") or {})
    root = b.get("root") or params.pop("root", None)
    if name == "demo":
        from clipcal.data.demo import DEFAULTS

        opts = {}
        for k, v in params.items():
            if k in DEFAULTS:
                opts[k] = type(DEFAULTS[k])(float(v)) if isinstance(DEFAULTS[k], int) else type(DEFAULTS[k])(v)
        opts = {k: v for k, v in opts.items() if DEFAULTS[k] != v}
        return {"name": "demo", "root": None, "options": opts}
    if name == "csv" and root is None and params.get("csv"):  # load_csv records the CSV and image folder
        from pathlib import Path

        cols = params.get("columns") or {}
        cols = cols if isinstance(cols, dict) else {}
        opts = {"csv": str(params["csv"])}
        if params.get("image_dir"):
            opts["image_dir"] = str(params["image_dir"])
        for short, arg in (("id", "id_col"), ("path", "path_col"), ("split", "split_col"), ("y", "y_col"),
                           ("a", "a_col")):
            if cols.get(short):
                opts[arg] = cols[short]
        # the names and the carved val split are part of the fingerprint: without them integer labels named
        # at load time reopen as '0', '1' and the embeddings are not found
        if b.get("class_names"):
            opts["class_names"] = list(b["class_names"])
        if b.get("attr_names"):
            opts["attr_names"] = list(b["attr_names"])
        if params.get("val_carved"):
            opts.update(val_fraction=float(params.get("val_fraction", 0.2)), seed=int(params.get("val_seed", 0)))
        return {"name": "csv", "root": str(Path(params["csv"]).parent), "options": opts}
    if root is None:
        return None
    return {"name": name, "root": str(root), "options": params}


def source_label(meta: dict) -> str:
    """Where an embedded benchmark's files are, from its manifest: ``"meta.csv in /data/own"`` for an
    own CSV, the root folder for a named benchmark, ``""`` for the demo or when the manifest does not say."""
    b = meta.get("benchmark") if isinstance(meta.get("benchmark"), dict) else {}
    params = b.get("params") if isinstance(b.get("params"), dict) else {}
    if b.get("name") == "demo":
        return ""
    if params.get("csv"):
        from pathlib import Path

        csv = Path(str(params["csv"]))
        return f"{csv.name} in {params.get('image_dir') or csv.parent}"
    return str(b.get("root") or params.get("root") or "")


def store_embeddings() -> pd.DataFrame:
    """Embedding sets in the store, newest first: benchmark, source (own CSV file + folder or root, see
    :func:`source_label`), backbone, images, created (UTC), fingerprint,
    bench_spec (the spec dict to reopen it, ``None`` when the manifest does not say where the files are)."""
    return memo(("emb_list", store_stamp("embeddings")), _store_embeddings)


def _store_embeddings() -> pd.DataFrame:
    rows = []
    for m in get_store().list("embeddings"):  # oldest first
        meta, kf = m.get("meta") or {}, m.get("key_fields") or {}
        b = meta.get("benchmark") if isinstance(meta.get("benchmark"), dict) else {}
        rows.append({
            "benchmark": b.get("name", "?"),
            "source": source_label(meta),
            "backbone": meta.get("backbone_spec") or (kf.get("backbone") or {}).get("spec", "?"),
            "images": meta.get("n_embedded"),
            "skipped": meta.get("n_skipped", 0),
            "created": _fmt_time(m.get("created")),
            "fingerprint": kf.get("benchmark") or b.get("fingerprint"),
            "bench_spec": _bench_spec_from_meta(meta),
        })
    df = pd.DataFrame(rows, columns=["benchmark", "source", "backbone", "images", "skipped", "created", "fingerprint",
                                     "bench_spec"])
    return df.iloc[::-1].reset_index(drop=True)  # store.list is oldest first


def store_runs() -> pd.DataFrame:
    """Calibration runs in the store, newest first: created (UTC), benchmark, backbone, methods, best test
    worst-group accuracy (:func:`clipcal.runs.list_runs`)."""
    t = memo(("all_runs", store_stamp("runs")), lambda: _runs_module().list_runs(get_store()))
    best = [max((v for v in (wg or {}).values() if isinstance(v, (int, float)) and v == v), default=None)
            for wg in t["test_worst_group"]]
    return pd.DataFrame({"created": [_fmt_time(x) for x in t["created"]], "benchmark": t["benchmark"],
                         "backbone": t["backbone"], "methods": t["methods"].str.replace(",", ", "),
                         "settings changed": t["changed"], "best test worst-group": best})


# ---------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------
def show_error(err: BaseException, what: str = "") -> None:
    """Show an exception on the page: a core error as its message (+ hint), anything else as a short
    message with the traceback in an expander (never a bare traceback)."""
    if isinstance(err, ClipcalError):
        st.error(str(err))
        return
    st.error(f"{what + ': ' if what else ''}unexpected {type(err).__name__}: {err}")
    with st.expander("Details (for a bug report)"):
        st.code("".join(traceback.format_exception(type(err), err, err.__traceback__)), language="text")


@contextlib.contextmanager
def guarded(what: str = ""):
    """``with guarded("loading runs"):`` — render any exception raised inside with :func:`show_error`.

    Streamlit's own control flow (``st.rerun``, ``st.stop``) derives from ``BaseException`` and passes.
    """
    try:
        yield
    except Exception as err:  # noqa: BLE001 - every error becomes a message on the page
        show_error(err, what)


def show_job_error(job) -> None:
    """Render a failed job's error like :func:`show_error` (the traceback was captured in the worker)."""
    if isinstance(job.error, ClipcalError):
        st.error(job.error_message)
    else:
        st.error(f"{job.label} failed: {job.error_message}")
        with st.expander("Details (for a bug report)"):
            st.code(job.error_details, language="text")


# ---------------------------------------------------------------------------------------------------------
# job widgets
# ---------------------------------------------------------------------------------------------------------
def fmt_eta(seconds: float | None) -> str:
    """``"1 min 05 s"`` style; ``"—"`` when unknown."""
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def progress_line(job) -> str:
    """One line: done / total, rate, ETA, message."""
    p = job.progress
    parts = []
    whole = float(p.done).is_integer()
    if p.total:  # fractional progress (methods of a calibration) as a percentage: "2 / 2" while CFR trains misled
        parts.append(f"{p.done:,.0f} / {p.total:,.0f}" if whole else f"{100 * p.done / p.total:.0f} %")
    if p.rate and (whole or p.rate >= 0.1):
        unit = p.extra.get("unit", "images" if "embed" in job.key else "items")
        parts.append(f"{p.rate:,.1f} {unit}/s")
    if p.total and p.rate:
        parts.append(f"ETA {fmt_eta(p.eta_s)}")
    parts.append(f"elapsed {fmt_eta(job.elapsed_s)}")
    if p.message:
        parts.append(p.message)
    return " · ".join(parts)


def _render_running(job, cancel_key: str) -> None:
    frac = job.progress.fraction
    st.progress(frac if frac is not None else 0.0, text=f"**{job.label}** — {progress_line(job)}")
    if job.cancel_requested:
        st.caption("Cancelling… (work finished so far is kept)")
    elif st.button("Cancel", key=cancel_key, help="Stop the job; finished work stays in the store"):
        job.cancel()
        st.rerun()


@st.fragment(run_every=1.0)
def _job_fragment(key: str, live: str | None = None) -> None:
    job = get_jobs().get(key)
    if job is None:
        return
    if job.is_running:
        _render_running(job, f"cancel.{key}")
        if live == "curves":
            fig = live_curves_figure(job, st.session_state, f"_live.{key}")
            if fig is not None:  # drawn on every run: a fragment drops what it does not draw again
                st.plotly_chart(fig, key=f"live.{key}")
    else:  # finished while we polled: rerun the whole page once so it shows the result
        st.session_state.pop(f"_live.{key}", None)
        st.rerun(scope="app")


def live_curves_signature(history) -> tuple[int, float | None, float | None]:
    """What :func:`live_curves_table` would hold, without building it: ``(rows, epoch, time)`` — the number of
    metric rows and the ``done`` and ``time`` of the last report that added rows.

    Equal signatures mean an equal table (reports only append; the history is capped, so the row count alone
    could repeat, the report time cannot). ``history``: ``Job.history`` (objects with ``done, time, extra``).
    """
    n, last = 0, (None, None)
    for p in list(history):
        k = sum(1 for v in (p.extra.get("metrics") or {}).values() if isinstance(v, (int, float)) and v == v)
        if k:
            n, last = n + k, (p.done, p.time)
    return (n, *last)


def live_curves_figure(job, cache, key: str):
    """The live training-curves figure of a running ``job``, rebuilt only when new metrics arrived.

    The figure is kept in ``cache[key]`` (a mapping, e.g. ``st.session_state``) with the job's
    :func:`live_curves_signature`; the job fragment polls every second and building the figure costs ~0.3 s of
    CPU, while most polls of a long CFR job find no new epoch. Returns ``None`` while no metrics were reported.
    """
    sig = (job.submitted, *live_curves_signature(job.history))
    hit = cache.get(key)
    if hit is not None and hit[0] == sig:
        return hit[1]
    if sig[1] == 0:
        return None
    from clipcal.figures import training_curves_figure

    fig = training_curves_figure(live_curves_table(job), title="Live: training metrics reported so far")
    cache[key] = (sig, fig)
    return fig


def live_curves_table(job) -> pd.DataFrame:
    """Training metrics reported so far by a calibration job (``Progress.metrics`` of clipcal.methods) as a
    curves table ``epoch, stage, split, metric, value`` (``epoch`` = the report's ``done``)."""
    rows = []
    for p in list(job.history):
        metrics = p.extra.get("metrics") or {}
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and value == value:
                split = "val" if name.startswith("val") else "train"
                rows.append((p.done, p.extra.get("stage", ""), split, name, float(value)))
    return pd.DataFrame(rows, columns=["epoch", "stage", "split", "metric", "value"])


def job_status(key: str, show_done: Callable | None = None, live: str | None = None) -> Any:
    """Show the job under ``key``: live progress + Cancel while running (polled every second in a fragment,
    so reruns and page switches never touch the worker), the error if it failed, a note if cancelled.

    Args:
        key: job key in :func:`get_jobs`.
        show_done: called with the job when it finished successfully (e.g. a summary).
        live: ``"curves"`` to draw the training metrics reported so far under the progress bar.

    Returns:
        The job (or ``None`` if there is none).
    """
    job = get_jobs().get(key)
    if job is None:
        return None
    if job.is_running:
        _job_fragment(key, live)
    elif job.status == "failed":
        show_job_error(job)
    elif job.status == "cancelled":
        st.warning(f"{job.label}: cancelled after {fmt_eta(job.elapsed_s)}. {job.error_message}")
    elif show_done is not None:
        show_done(job)
    return job


def training_curves_chart(curves: pd.DataFrame | None, key: str | None = None, title: str | None = None,
                          cache_key: tuple | None = None) -> None:
    """Training curves (:func:`clipcal.figures.training_curves_figure`); nothing if empty. With
    ``cache_key`` the figure is built once (building it costs ~0.4 s)."""
    if curves is None or len(curves) == 0:
        return
    from clipcal.figures import training_curves_figure

    build = lambda: training_curves_figure(curves, title=title)  # noqa: E731
    st.plotly_chart(memo(cache_key, build) if cache_key else build(), key=key)


# ---------------------------------------------------------------------------------------------------------
# shared widgets
# ---------------------------------------------------------------------------------------------------------
def teach(title: str, body: str) -> None:
    """A collapsed teaching expander."""
    with st.expander(f"📘 {title}"):
        st.markdown(body)


TEACH = {
    "spurious": (
        "What is a spurious correlation?",
        "A feature that goes along with the class in the training data but does not define it. In "
        "Waterbirds (and the built-in Waterbirds-lite demo) 95 % of the training waterbirds are shown on "
        "water and 95 % of the landbirds on land, so a model can score well by looking at the **background** "
        "instead of the bird. It then fails on the rare *minority groups* — a waterbird on land, a landbird "
        "on water. A **group** is a (class, spurious attribute) pair.",
    ),
    "worst_group": (
        "What worst-group accuracy means",
        "Accuracy is computed separately for every group; **worst-group accuracy** is the lowest of them. "
        "It shows whether the model works for everyone or only for the majority. The *average* accuracy is "
        "reported three ways because papers disagree: plain **overall** accuracy on the test set, the "
        "**mean over groups**, and the **train-weighted** average (each group's accuracy weighted by its "
        "share of the training set — the Waterbirds convention). Intervals are 95 % (Wilson) — a group "
        "of 20 test images can easily move by ±20 points.",
    ),
    "cfr": (
        "What CFR does",
        "**Contrastive Feature Recalibration** (You et al., CVPR 2024, arXiv 2403.07241) needs **no group "
        "labels**. It (1) trains a plain linear probe on the frozen embeddings, (2) picks a **calibration "
        "set** of training samples the probe finds hard or that sit far from their class centroid — these "
        "are mostly the minority groups — and (3) fine-tunes the backbone's **last projection layer** with "
        "a contrastive loss that pulls each calibration sample towards its class centroid and away from "
        "other classes, then retrains the classifier. The representation itself moves, which is what the "
        "Representations page shows before vs after.",
    ),
    "umap": (
        "How to read the UMAP plot",
        "Each dot is one image; UMAP places images with similar embeddings close together. "
        "\"Before\" and \"after\" are fitted **together** in one map, so positions are comparable. If the "
        "spurious attribute drives the representation, points cluster by background (colour by "
        "*attribute*); after a good calibration they should cluster by **class** instead. Distances between "
        "far-apart clusters mean little; neighbourhoods mean a lot. Drag a box or lasso to see the images.",
    ),
}


def teach_topic(name: str) -> None:
    """Render one of :data:`TEACH` as an expander."""
    teach(*TEACH[name])


def image_grid(paths: list, captions: list[str] | None = None, columns: int = 6, size: int = 128) -> None:
    """Thumbnails in a grid (via ``clipcal.data.images.thumbnail``); unreadable files show their reason."""
    if not paths:
        st.caption("No images.")
        return
    captions = captions or [""] * len(paths)
    cols = st.columns(columns)
    for i, (p, cap) in enumerate(zip(paths, captions)):
        with cols[i % columns]:
            try:
                st.image(_thumb(str(p), size), caption=cap or None, width="stretch")
            except ClipcalError as err:
                st.caption(f"⚠️ {cap}: {err.message}")


def _thumb(path: str, size: int) -> bytes:
    """JPEG bytes of a thumbnail (encoded once; st.image sends bytes as they are)."""
    import io

    from clipcal.data.images import thumbnail

    def build():
        buf = io.BytesIO()
        thumbnail(path, size).save(buf, "JPEG", quality=85)
        return buf.getvalue()

    return memo(("thumb", path, size), build)


def no_benchmark_notice() -> None:
    """Explain that the current demo is not built yet, with a link to Data."""
    st.info("The demo images are not generated yet. Build them on **Data** (or run the demo from **Home**).")
    st.page_link(PAGE["data"], label="Go to Data", icon="🗂️")


def need_embeddings(bench) -> Any:
    """The current embedding set, or render a notice (with a link to Embed) and return ``None``."""
    emb = load_embeddings(bench)
    if emb is None:
        no_embeddings_notice(backbone_spec())
    return emb


def _weights_gone(spec: str) -> bool:
    """True when ``spec`` names a checkpoint file or folder that is not there (or cannot be parsed)."""
    from clipcal.backbones import weights_status

    try:
        return weights_status(spec) == "missing"
    except ClipcalError:
        return True


def no_embeddings_notice(spec: str) -> None:
    """Say why there are no embeddings for ``spec``: a checkpoint file or folder that is gone (its stored
    embeddings are keyed by the weights' fingerprint, so they are found again once it is back), or none made."""
    from clipcal.backbones import parse_spec

    try:
        ps = parse_spec(spec)
    except ClipcalError:
        ps = None
    if ps is not None and _weights_gone(spec):
        st.error(f"The weights of **{spec}** are missing: `{ps.checkpoint or ps.local_dir}` is not there any more. "
                 "Stored embeddings are matched by the weights' fingerprint, so the ones made with it are found "
                 "again when the file is back in place (moving it elsewhere is fine: give the new path). Or "
                 "choose another backbone in the sidebar.")
        return
    st.info(f"No embeddings of this benchmark with **{spec}** in the store yet.")
    st.page_link(PAGE["embed"], label="Go to Embed", icon="🧮")


# ---------------------------------------------------------------------------------------------------------
# sidebar
# ---------------------------------------------------------------------------------------------------------
def choice_key(base: str, current: str) -> str:
    """Widget key that carries the current choice: ``base`` + a short hash of ``current`` (e.g. the sidebar's
    ``"sb.bench"``, the Data page's form fields), so the widget is recreated — and the browser shows its new
    default — whenever the choice changes elsewhere. With one fixed key the browser kept showing the old value
    (a deleted widget state is not sent back to the page)."""
    import hashlib

    return f"{base}.{hashlib.sha1(current.encode()).hexdigest()[:10]}"


def sidebar() -> None:
    """The shared sidebar: current benchmark and backbone (choices: defaults + what is in the store), and
    the running jobs."""
    with st.sidebar:
        st.markdown("### Current selection")
        choices: dict[str, dict] = {}
        current = bench_spec()
        for spec in [current, DEFAULT_BENCH]:
            choices.setdefault(spec_key(spec), spec)
        backbones = [backbone_spec(), DEFAULT_BACKBONE]
        try:
            emb = store_embeddings()
            for _, r in emb.iterrows():
                if r["bench_spec"] is not None:
                    choices.setdefault(spec_key(r["bench_spec"]), r["bench_spec"])
                if r["backbone"]:
                    backbones.append(str(r["backbone"]))
        except Exception as err:  # noqa: BLE001
            st.caption(f"store not readable: {err}")
        keys = list(choices)
        cur = spec_key(current)
        # The widget keys carry the current choice: a choice made on Data / Embed then gives a fresh widget
        # that starts at ``index`` = the new choice. With one fixed key the widget kept its old value and the
        # next rerun switched straight back to it.
        picked = st.selectbox("Benchmark", keys, index=keys.index(cur),
                              format_func=lambda k: bench_label(choices[k]), key=choice_key("sb.bench", cur),
                              help="Change it in detail (own CSV, root folder) on the Data page.")
        if picked != cur:
            set_benchmark(choices[picked])
            st.rerun()
        backbones = list(dict.fromkeys(backbones))
        bb = st.selectbox("Backbone", backbones, index=backbones.index(backbone_spec()),
                          key=choice_key("sb.backbone", backbone_spec()),
                          help="Pick another (open_clip, local checkpoint) on the Embed page.")
        if bb != backbone_spec():
            set_backbone(bb)
            st.rerun()
        try:
            bench = load_bench()
            runs = runs_for(bench, backbone_spec()) if bench is not None else []
            if runs:
                run_picker(runs)
        except Exception as err:  # noqa: BLE001 - the page shows the error in full
            st.caption(f"runs not readable: {err}")
        running = get_jobs().jobs(running_only=True)
        if running:
            st.markdown("### Running jobs")
            for j in running:
                f = j.progress.fraction
                st.progress(f or 0.0, text=job_short_line(j))


def job_short_line(job) -> str:
    """``"Run the demo — 2/3 embedding 896/2,400"``: the job's label, its current stage (the message part
    before ``:``, as :func:`_staged` writes it) and that stage's own count. Multi-stage jobs restart their
    count at every stage, so an overall percentage would seem to go backwards."""
    p = job.progress
    msg = str(p.message or "")
    import re

    m = re.match(r"\s*(\d+/\d+ [^:]+)(:|$)", msg)  # "2/3 embedding: …" (see _staged)
    stage = m.group(1).strip() if m else ""
    parts = [job.label]
    if stage:
        parts.append(stage)
    if p.total:
        parts.append(f"{p.done:,.0f}/{p.total:,.0f}")
    elif not stage and msg:
        parts.append(msg)
    return " — ".join([parts[0], " ".join(parts[1:])]) if len(parts) > 1 else parts[0]


# ---------------------------------------------------------------------------------------------------------
# job keys and starters (one running job per key, see clipcal.jobs)
# ---------------------------------------------------------------------------------------------------------
def embed_job_key(bench_spec_: dict, spec: str) -> str:
    """Key of the embedding job of (benchmark, backbone)."""
    return f"embed:{spec_key(bench_spec_)}:{spec}"


def calib_job_key(bench_spec_: dict, spec: str) -> str:
    """Key of the calibration job of (benchmark, backbone)."""
    return f"calibrate:{spec_key(bench_spec_)}:{spec}"


def demo_job_key(bench_spec_: dict, spec: str) -> str:
    """Key of the Home page's demo-path job."""
    return f"demo-path:{spec_key(bench_spec_)}:{spec}"


def method_classes() -> dict:
    """``{name: Method class}`` of every registered method whose module is available (display order)."""
    from clipcal.errors import MethodError
    from clipcal.methods import METHODS, get_method

    def load():
        out = {}
        for name in METHODS:
            try:
                out[name] = get_method(name)
            except MethodError:  # a method module not installed: not offered
                continue
        return out

    return memo(("method_classes",), load)


def applicable_methods(emb, has_attributes: bool = True) -> list[str]:
    """Names of the available methods that can run on this embedding set and benchmark: text methods need a
    text tower, methods that use group labels (DFR) need spurious-attribute labels."""
    has_text = bool(getattr(emb, "has_text", False))
    return [n for n, m in method_classes().items() if (has_text or not getattr(m, "needs_text", False))
            and (has_attributes or not getattr(m, "uses_group_labels", False))]


def _staged(progress, stage: str):
    """Wrap a job's progress callback so every report carries ``stage`` (shown in the message)."""
    if progress is None:
        return None

    def report(*args, **kwargs):
        if len(args) == 1 and not isinstance(args[0], (int, float)):
            obj = args[0]
            msg = getattr(obj, "message", "") or ""
            fields = {k: getattr(obj, k) for k in ("done", "total") if hasattr(obj, k)}
            for k in ("images_per_s", "rate", "eta_s"):
                if getattr(obj, k, None) is not None:
                    fields["rate" if k == "images_per_s" else k] = getattr(obj, k)
            return progress(**fields, message=f"{stage}: {msg}" if msg else stage)
        if len(args) >= 3:
            args = (*args[:2], f"{stage}: {args[2]}")
        elif "message" in kwargs:
            kwargs["message"] = f"{stage}: {kwargs['message']}"
        else:
            kwargs["message"] = stage
        return progress(*args, **kwargs)

    return report


def demo_path(bench_spec_: dict, spec: str, methods: list[str] | None = None, progress=None, cancel=None) -> str:
    """Worker of "Run the demo": build/load the benchmark → embed (resumes from the store) → calibrate with
    every applicable method at its defaults. Returns a one-line summary."""
    from clipcal.backbones import load_backbone
    from clipcal.data import load_benchmark
    from clipcal.embed import embed_benchmark
    from clipcal.runs import run_calibration

    store = get_store()
    bench = load_benchmark(bench_spec_["name"], root=bench_spec_.get("root"),
                           progress=_staged(progress, "1/3 benchmark") if bench_spec_["name"] == "demo" else None,
                           **(bench_spec_.get("options") or {}))
    bb = load_backbone(spec)
    emb = embed_benchmark(bench, bb, store=store, progress=_staged(progress, "2/3 embedding"), cancel=cancel)
    methods = methods or applicable_methods(emb, bench.has_attributes)
    run = run_calibration(bench, emb, methods=methods, hparams={}, store=store,
                          progress=_staged(progress, "3/3 calibrating"), cancel=cancel)
    forget("emb")
    forget("run")
    return f"{len(emb.sample_ids)} images embedded, {len(methods)} methods calibrated ({', '.join(methods)})"


def start_demo_path(bench_spec_: dict, spec: str):
    """Start (or return the running) demo-path job."""
    st.session_state[K_DEMO_JOB] = demo_job_key(bench_spec_, spec)
    return get_jobs().submit(demo_job_key(bench_spec_, spec), demo_path, bench_spec_=dict(bench_spec_), spec=spec,
                             label="Demo path (benchmark → embed → calibrate)")


# ---------------------------------------------------------------------------------------------------------
# backbones and embedding
# ---------------------------------------------------------------------------------------------------------
def list_backbones() -> pd.DataFrame:
    """:func:`clipcal.backbones.list_backbones`, memoised for the process (it scans the weight caches)."""
    from clipcal.backbones import list_backbones as _list

    return memo(("backbones",), _list)


@st.cache_resource(show_spinner=False)
def _model_slot() -> tuple[dict, threading.Lock]:
    """The one slot holding a loaded backbone, shared by sessions and worker threads."""
    return {}, threading.Lock()


def shared_backbone(spec: str, device: str = "auto", precision: str = "auto"):
    """The one loaded backbone model of this process (worker threads and pages share it; the slot lives in
    ``st.cache_resource``).

    Asking for another spec / device / precision releases the previous model first with
    :meth:`Backbone.close` (so GPU memory is not held by a model nobody uses; field-notes pitfall 8) —
    unless an embedding job is still using it, then garbage collection frees it when the job ends.
    """
    from clipcal.backbones import load_backbone

    want = (spec, device, precision)
    _MODEL, _MODEL_LOCK = _model_slot()
    with _MODEL_LOCK:
        if _MODEL.get("key") != want:
            old = _MODEL.pop("model", None)
            _MODEL.clear()
            busy = any(j.key.startswith(("embed:", "demo-path:")) and j.thread is not threading.current_thread()
                       for j in get_jobs().jobs(running_only=True))
            if old is not None and hasattr(old, "close") and not busy:
                old.close()  # frees its (GPU) memory before the next model loads; in use → gc frees it later
            _MODEL["model"] = load_backbone(spec, device=device, precision=precision)
            _MODEL["key"] = want
        return _MODEL["model"]


def loaded_backbone(spec: str):
    """The shared model if this process already holds it for ``spec`` (any device / precision), else None;
    never loads anything."""
    model, lock = _model_slot()
    with lock:
        key = model.get("key")
        return model.get("model") if key is not None and key[0] == spec else None


def embed_worker(bench_spec_: dict, spec: str, device: str = "auto", precision: str = "auto",
                 batch_size: int = 64, progress=None, cancel=None):
    """Worker of the Embed page: load benchmark + backbone, :func:`clipcal.embed.embed_benchmark`."""
    from clipcal.data import load_benchmark
    from clipcal.embed import embed_benchmark

    if progress:
        progress(0, None, f"loading {spec}")
    bench = load_benchmark(bench_spec_["name"], root=bench_spec_.get("root"), **(bench_spec_.get("options") or {}))
    bb = shared_backbone(spec, device, precision)
    emb = embed_benchmark(bench, bb, store=get_store(), batch_size=batch_size, device=device,
                          precision=precision, progress=progress, cancel=cancel)
    forget("emb")
    return emb


def start_embedding(bench_spec_: dict, spec: str, **kw):
    """Start (or return the running) embedding job of (benchmark, backbone)."""
    return get_jobs().submit(embed_job_key(bench_spec_, spec), embed_worker, bench_spec_=dict(bench_spec_),
                             spec=spec, label=f"Embedding with {spec}", **kw)


def embedding_summary(emb) -> None:
    """What is stored for an embedding set: counts, dimensions, text tower, skipped samples with reasons."""
    n = len(emb.sample_ids)
    skipped = getattr(emb, "skipped", None)
    n_skip = 0 if skipped is None else len(skipped)
    st.success(f"Embedded **{n:,}** images with **{emb.backbone_spec}**"
               + (f"; **{n_skip}** skipped (reasons below)" if n_skip else "; none skipped") + ".")
    m = st.columns(4)
    m[0].metric("images", f"{n:,}")
    m[1].metric("feature dim d", emb.features.shape[1])
    m[2].metric("embedding dim e", emb.embeddings.shape[1])
    m[3].metric("text tower", "yes" if emb.has_text else "no")
    st.caption(f"Projection: {emb.projection}"
               + (" (the model's own last layer; CFR recalibrates it)" if emb.projection == "exact"
                  else " (approximation: the embedding is the feature; CFR learns a new projection)"))
    if n_skip:
        st.dataframe(skipped, hide_index=True, key="embed.skipped")


# ---------------------------------------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------------------------------------
def selection_rules() -> dict[str, str]:
    """``{rule: one-line description}`` of the model-selection rules the methods accept."""
    try:
        from clipcal.methods._train import SELECTION_RULES

        return dict(SELECTION_RULES)
    except ImportError:
        return {"worst-class": "validation worst-class accuracy (annotation-free)",
                "worst-group": "validation worst-group accuracy (uses group labels)"}


#: Hyperparameters the page does not offer: filled by the run (backbone) or left automatic (device).
HIDDEN_HPARAMS = ("backbone", "device")


def hparam_widgets(method: str, hparams: dict, seed: int | None = None, selection: str | None = None,
                   choices: dict | None = None) -> dict:
    """One widget per hyperparameter (default = the method's, help = its one-line explanation); values
    survive a visit to another page (Streamlit's ``persist_state="session"``).

    ``seed`` and ``selection`` are set page-wide and not drawn again; names in ``choices`` (the method's
    ``CHOICES``) get a select box of their allowed values. Returns ``{name: value}``.
    """
    out = {}
    choices = choices or {}
    for name, (default, help_) in hparams.items():
        key = f"calib.hp.{method}.{name}"
        if name in HIDDEN_HPARAMS:
            continue
        if name == "seed" and seed is not None:
            out[name] = int(seed)
        elif name == "selection" and selection is not None:
            out[name] = selection
        elif name in choices:
            opts = list(choices[name])
            out[name] = st.selectbox(name, opts, index=opts.index(default) if default in opts else 0,
                                     help=help_, key=key, persist_state="session")
        elif isinstance(default, bool):
            out[name] = st.checkbox(name, value=default, help=help_, key=key, persist_state="session")
        elif isinstance(default, int):
            out[name] = int(st.number_input(name, value=default, step=1, help=help_, key=key,
                                            persist_state="session"))
        elif isinstance(default, float):
            out[name] = float(st.number_input(name, value=default, format="%g", help=help_, key=key,
                                              step=max(abs(default) / 10, 1e-6) if default else 0.01,
                                              persist_state="session"))
        elif default is None:
            raw = st.text_input(name, value="", help=f"{help_} (empty = automatic)", key=key,
                                persist_state="session")
            out[name] = _parse_value(raw) if raw.strip() else None
        else:
            raw = st.text_input(name, value=str(default), help=help_, key=key, persist_state="session")
            out[name] = _parse_value(raw) if not isinstance(default, str) else raw
    return out


def _parse_value(raw: str):
    """A typed value from a text field: JSON if it parses (numbers, lists), else the string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw.strip()


# ---------------------------------------------------------------------------------------------------------
# runs (the only place that knows the Run object of clipcal.runs)
# ---------------------------------------------------------------------------------------------------------
def _runs_module():
    import clipcal.runs as runs

    return runs


def calib_worker(bench_spec_: dict, spec: str, methods: list[str], hparams: dict, seed: int = 0,
                 selection: str | None = None, progress=None, cancel=None):
    """Worker of the Calibrate page: load benchmark + embeddings, :func:`clipcal.runs.run_calibration`
    (fits every method, stores the run; a cancelled run stores nothing). Returns ``(run key, summary)``."""
    bench = load_bench(bench_spec_)
    emb = load_embeddings(bench, spec)
    if emb is None:
        raise ClipcalError(f"no embeddings of this benchmark with {spec} in the store",
                           hint="embed it first on the Embed page")
    run = _runs_module().run_calibration(bench, emb, methods=methods, hparams=hparams, store=get_store(),
                                         progress=progress, cancel=cancel, seed=seed, selection=selection)
    return run.key, f"{len(run.results)} of {len(methods)} methods ran" + (
        f"; not applicable: {'; '.join(f'{m}: {why}' for m, why in run.not_applicable.items())}"
        if run.not_applicable else "")


def show_new_run_once(job) -> None:
    """Make the run a finished calibration job stored the current one (once per job), then rerun so the
    sidebar shows it."""
    seen = st.session_state.setdefault("cc.seen_jobs", set())
    if id(job) in seen:
        return
    seen.add(id(job))
    st.session_state[K_RUN] = job.result[0]
    st.rerun()


def start_calibration(bench_spec_: dict, spec: str, methods: list[str], hparams: dict, seed: int = 0,
                      selection: str | None = None):
    """Start (or return the running) calibration job of (benchmark, backbone).

    Raises:
        MethodError: a hyperparameter value a method refuses (:func:`clipcal.runs.resolve_hparams`), before any
            work.
    """
    _runs_module().resolve_hparams(list(methods), hparams, int(seed), selection)
    return get_jobs().submit(calib_job_key(bench_spec_, spec), calib_worker, bench_spec_=dict(bench_spec_),
                             spec=spec, methods=list(methods), hparams=dict(hparams), seed=int(seed),
                             selection=selection, label=f"Calibrating {', '.join(methods)}")


def feature_data(bench, emb):
    """:meth:`FeatureData.from_store` of (benchmark, embeddings): the row order every method result follows."""
    from clipcal.methods import FeatureData

    return memo(("fd", fingerprint(bench), emb.backbone_spec, str(getattr(emb, "key", ""))),
                lambda: FeatureData.from_store(bench, emb))


def runs_for(bench, spec: str) -> list[dict]:
    """Stored runs of (benchmark, backbone), newest first: dicts ``id`` (store key), ``created``, ``methods``,
    ``test_worst_group`` (:func:`clipcal.runs.list_runs`)."""
    emb = load_embeddings(bench, spec)
    canonical = emb.backbone_spec if emb is not None else spec
    table = memo(("runs", fingerprint(bench), canonical, store_stamp("runs")),
                 lambda: _runs_module().list_runs(get_store(), bench, canonical))
    return [{"id": r["key"], "created": r["created"], "methods": [m for m in r["methods"].split(",") if m],
             "test_worst_group": r["test_worst_group"], "changed": r.get("changed", "")}
            for _, r in table.iterrows()]


def get_run(run_id: str):
    """The stored run ``run_id`` (:func:`clipcal.runs.load_run`; memoised, arrays memory-mapped)."""
    return memo(("run", run_id), lambda: _runs_module().load_run(run_id, store=get_store()))


def run_label(info: dict) -> str:
    """``"2026-11-29 08:40 UTC · ERM, JTT, CFR · CFR worst-group 0.81"`` for a run listing entry."""
    methods = info.get("methods") or []
    wg = info.get("test_worst_group") or {}
    best = max(((v, k) for k, v in wg.items() if isinstance(v, (int, float)) and v == v), default=None)
    tail = f" · best test worst-group {best[0]:.2f} ({method_short(best[1])})" if best else ""
    changed = str(info.get("changed") or "")  # non-default settings tell otherwise identical runs apart
    changed = f" · {changed[:57] + '…' if len(changed) > 58 else changed}" if changed else ""
    return f"{_fmt_time(info.get('created'))} · {', '.join(method_short(m) for m in methods)}{changed}{tail}"


def _sync_run() -> None:
    st.session_state[K_RUN] = st.session_state.get("sb.run")


def run_picker(runs: list[dict]) -> str:
    """The sidebar's run selectbox (widget key ``sb.run``) bound to the shared ``K_RUN``; returns the id.

    ``K_RUN`` is ``None`` or unknown → the newest run.
    """
    ids = [r["id"] for r in runs]
    if st.session_state.get(K_RUN) not in ids:
        st.session_state[K_RUN] = ids[0]
    st.session_state["sb.run"] = st.session_state[K_RUN]
    labels = {r["id"]: run_label(r) for r in runs}
    st.selectbox("Calibration run", ids, format_func=labels.get, key="sb.run", on_change=_sync_run,
                 help="Shown on Calibrate (results), Groups, Representations and Spurious attributes")
    return st.session_state[K_RUN]


def current_run_with_embeddings(page: str):
    """``(benchmark, run, embeddings)`` of the current selection inside one guarded block; ``run`` and
    ``embeddings`` are None when missing (what is missing is rendered by :func:`current_run`)."""
    run = bench = emb = None
    with guarded("loading"):
        bench, run = current_run(page)
        if run is not None:
            emb = load_embeddings(bench)
            if emb is None:
                no_embeddings_notice(backbone_spec())
    return bench, run, emb


def current_run(page: str):
    """``(benchmark, run)`` of the current selection (the run chosen in the sidebar, default the newest),
    rendering what is missing; ``(bench | None, None)`` if there is no run yet or the run has no results."""
    bench = load_bench()
    if bench is None:
        no_benchmark_notice()
        return None, None
    runs = runs_for(bench, backbone_spec())
    if not runs:
        st.info(f"No calibration run of **{bench_label(bench_spec())}** with **{backbone_spec()}** yet.")
        st.page_link(PAGE["calibrate"], label="Go to Calibrate", icon="🎯")
        return bench, None
    run = shown_run(runs)
    if run is not None and not run.results:  # stored by versions that kept runs in which nothing ran
        why = "; ".join(f"{method_label(m)}: {r}" for m, r in (run.not_applicable or {}).items())
        st.warning(f"None of this run's methods could run ({why or 'no reason recorded'}), so there is "
                   "nothing to show. Choose another run in the sidebar, or calibrate again on Calibrate.")
        return bench, None
    return bench, run


def shown_run(runs: list[dict]):
    """Load the run ``K_RUN`` (or the newest) and say which one it is."""
    ids = [r["id"] for r in runs]
    rid = st.session_state.get(K_RUN)
    rid = rid if rid in ids else ids[0]
    st.caption(f"Calibration run: **{run_label(runs[ids.index(rid)])}** (choose another in the sidebar)")
    return get_run(rid)


def run_methods(run) -> list[str]:
    """Method names in a run, in the order they ran."""
    return list(run.results)


def method_result(run, method: str):
    """The :class:`MethodResult` of ``method`` in ``run``."""
    return run.results[method]


def method_label(name: str) -> str:
    """Display label of a method name (``cfr`` → ``CFR``)."""
    cls = method_classes().get(name)
    return getattr(cls, "label", name) if cls is not None else name


def method_short(name: str) -> str:
    """Short display name (``cfr`` → ``CFR``, ``zeroshot`` → ``zero-shot``) for tight places."""
    return {"zeroshot": "zero-shot"}.get(name, name.upper())


def default_method_index(methods: list[str]) -> int:
    """Index of the method shown first: the shared ``K_METHOD``, else CFR, else the first."""
    for want in (st.session_state.get(K_METHOD), "cfr"):
        if want in methods:
            return methods.index(want)
    return 0


# ---------------------------------------------------------------------------------------------------------
# metrics (Groups page; numbers from clipcal.metrics)
# ---------------------------------------------------------------------------------------------------------
METRIC_COLUMNS = {"worst_group": "worst-group", "overall": "overall", "mean_group": "mean of groups",
                  "train_weighted": "train-weighted", "worst_class": "worst-class"}


def _run_id(run) -> str:
    return str(getattr(run, "key", None) or getattr(run, "id", None) or id(run))


def run_feature_data(run, bench, spec: str | None = None):
    """FeatureData of the embeddings the run was computed from, in the run's row order (worker threads must
    pass ``spec``: they cannot read the session).

    Raises:
        ClipcalError: the embeddings are gone from the store, or their rows differ from the run's.
    """
    emb = load_embeddings(bench, spec)
    if emb is None:
        raise ClipcalError("the embeddings this run was computed from are no longer in the store",
                           hint="embed the benchmark again on the Embed page")
    fd = feature_data(bench, emb)
    labels = getattr(run, "labels", None)
    if labels is not None and (len(labels) != fd.n or not np.array_equal(labels["sample_id"].to_numpy(str),
                                                                          fd.sample_ids)):
        raise ClipcalError(f"run {_run_id(run)} was computed on other embeddings than the stored ones "
                           f"({len(labels)} vs {fd.n} rows)",
                           hint="calibrate again on the Calibrate page (the embeddings were recomputed)")
    return fd


def metrics_table(run, bench, split: str = "test", numbers_only: bool = False) -> pd.DataFrame:
    """The run's :func:`clipcal.metrics.method_table` rows of ``split`` (computed and stored with the run):
    ``method, label, split, n, worst_group, overall, mean_group, train_weighted, worst_class,
    uses_group_labels, selection_rule, chosen_epoch, status``; methods that could not run keep a row whose
    ``status`` says why — unless ``numbers_only``: then those rows are left out (their cells would all be
    empty and n = 0; :func:`not_applicable_notes` lists them with the reason)."""
    t = run.headline(split)
    if numbers_only and "method" in t:
        t = t[~t["method"].isin(list(getattr(run, "not_applicable", {}) or {}))].reset_index(drop=True)
    return t


def not_applicable_notes(run) -> list[str]:
    """``["Zero-shot — not applicable: <reason>", …]`` for the methods of the run that could not run."""
    out = []
    for m, why in (getattr(run, "not_applicable", {}) or {}).items():
        why = str(why)
        out.append(f"{method_label(m)} — {why if why.startswith('not applicable') else 'not applicable: ' + why}")
    return out


def fallback_notes(run, only: str | None = None) -> list[str]:
    """One warning per method of the run (or only for ``only``) whose result is in fact another method's:
    CFR with an empty calibration set returns ERM; JTT with an empty error set retrains exactly like ERM. Says
    what that means for its numbers and plots and what to do."""
    out = []
    for name in run_methods(run):
        if only is not None and name != only:
            continue
        rec = method_result(run, name).record or {}
        if rec.get("fallback"):
            cross = str((rec.get("calibration_set") or {}).get("source", "")).startswith("cross-fit")
            why = ("the ERM models trained on the other folds also classified every held-out training image "
                   "correctly" if cross else "the ERM model classified every training image correctly")
            out.append(
                f"{method_label(name)} fell back to {str(rec['fallback']).upper()}: its calibration set was empty "
                f"({why}), so its numbers and its 'after' representation are ERM's. "
                + ("" if cross else
                   "On Calibrate, set CFR's calibration_errors to 'cross-fit' to take the images ERM gets wrong "
                   "when it has not trained on them (still no group labels)."))
        elif name == "jtt" and rec.get("error_set_size") == 0:
            out.append(f"{method_label(name)} equals ERM here: its error set was empty (the ERM model classified "
                       "every training image correctly), so nothing was up-weighted.")
    return out


def metrics_dataframe(table: pd.DataFrame, key: str) -> None:
    """The method × metric table (best value per metric bold), each metric labelled with its definition."""
    from clipcal.figures import method_summary_style
    from clipcal.metrics import METRIC_DEFINITIONS

    shown = table.drop(columns=[c for c in ("method", "split") if c in table])
    cfg = {"label": st.column_config.TextColumn("method"),
           "uses_group_labels": st.column_config.TextColumn("group labels"),
           "selection_rule": st.column_config.TextColumn("model selection"),
           "chosen_epoch": st.column_config.NumberColumn("chosen epoch")}
    for col, label in METRIC_COLUMNS.items():
        cfg[col] = st.column_config.Column(label, help=METRIC_DEFINITIONS.get(col))
    st.dataframe(method_summary_style(shown), hide_index=True, column_config=cfg, key=key)


def metric_definitions() -> None:
    """The metric definitions as a compact list (from :data:`clipcal.metrics.METRIC_DEFINITIONS`)."""
    from clipcal.metrics import METRIC_DEFINITIONS

    st.markdown("\n".join(f"- **{METRIC_COLUMNS[k]}** — {METRIC_DEFINITIONS[k]}" for k in METRIC_COLUMNS
                          if k in METRIC_DEFINITIONS))


def group_tables(run, bench, split: str = "test") -> pd.DataFrame:
    """Per-group accuracy with 95 % intervals of every method on ``split`` (stored with the run; columns of
    :func:`clipcal.metrics.group_table` plus ``method``, labelled for display)."""
    g = run.group_tables
    g = g[g["split"] == split].drop(columns=["split"]).copy()
    g = g[~g["method"].isin(list(getattr(run, "not_applicable", {}) or {}))]  # no numbers, listed apart
    g["method"] = g["method"].map(method_label)
    return g.reset_index(drop=True)


def records_table(run) -> pd.DataFrame:
    """How each method was trained and selected: group labels, selection rule, seed, chosen epoch, notes."""
    rows = []
    for name in run_methods(run):
        rec = method_result(run, name).record or {}
        rows.append({"method": method_label(name),
                     "uses group labels": "yes" if rec.get("uses_group_labels") else "no",
                     "selection rule": rec.get("selection_rule", ""), "seed": rec.get("seed"),
                     "chosen epoch": rec.get("chosen_epoch"),
                     "hyperparameters": json.dumps(rec.get("hparams", {}), default=str),
                     "notes": "; ".join(map(str, rec.get("notes") or []))})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------
# Representations (joint UMAP via clipcal.projection, selection via clipcal.plot_selection)
# ---------------------------------------------------------------------------------------------------------
UMAP_PARAMS = {"seed": 0, "n_neighbors": 15, "min_dist": 0.1, "metric": "cosine"}  # joint_umap's defaults


def fd_table(bench, fd) -> pd.DataFrame:
    """The sample table in the run's row order (FeatureData order: the benchmark table minus skipped
    images): ``sample_id, path, split, y, a, group``."""
    def build():
        t = bench.table.set_index("sample_id", drop=False).loc[list(fd.sample_ids)].reset_index(drop=True)
        t["split"] = t["split"].astype(str)
        return t

    return memo(("fd_table", fingerprint(bench), len(fd.sample_ids), str(fd.sample_ids[:1])), build)


def methods_with_after(run) -> list[str]:
    """Methods of the run that changed the embeddings (``embeddings_after`` not None), e.g. CFR."""
    return [m for m in run_methods(run) if getattr(method_result(run, m), "embeddings_after", None) is not None]


def default_after_index(methods: list[str]) -> int:
    """Index of the default "after" method (shared ``K_METHOD``, else CFR, else the first)."""
    return default_method_index(methods) if methods else 0


def _umap_key_fields(bench, run, method: str | None) -> dict:
    return {"benchmark": fingerprint(bench), "backbone": backbone_spec(), "run": _run_id(run),
            "method": method or "before"}


def _umap_inputs(run, bench, method: str | None, spec: str | None = None):
    fd = run_feature_data(run, bench, spec)
    after = None if method is None else method_result(run, method).embeddings_after
    return fd.embeddings, (None if after is None else np.asarray(after, dtype=np.float32))


def umap_worker(run_id: str, bench_spec_: dict, spec: str, method: str | None, progress=None):
    """Worker: fit (or read) the joint UMAP of before/after for ``method`` and store it."""
    from clipcal.projection import joint_umap

    bench = load_bench(bench_spec_)
    run = get_run(run_id)
    before, after = _umap_inputs(run, bench, method, spec)
    if progress:
        progress(0, 1, f"UMAP of {len(before) * (2 if after is not None else 1):,} points "
                 "(the first fit in a process compiles numba: ~15–30 s)")
    key_fields = {"benchmark": fingerprint(bench), "backbone": spec, "run": run_id, "method": method or "before"}
    xy = joint_umap(before, after, store=get_store(), key_fields=key_fields, progress=progress, **UMAP_PARAMS)
    if progress:
        progress(1, 1, "done")
    return xy


def projection_or_job(run, bench, emb, method: str | None):
    """``(xy_before, xy_after | None)`` if the joint UMAP is in the store, else start (or show) the job that
    computes it and return ``None``."""
    from clipcal.projection import KIND, projection_key

    run_id = _run_id(run)
    mkey = ("umap", run_id, method or "before")
    hit = memo_peek(mkey)
    if hit is not None:
        return hit
    before, after = _umap_inputs(run, bench, method)
    key = projection_key(before, after, _umap_key_fields(bench, run, method), UMAP_PARAMS)
    entry = get_store().get(KIND, key)
    if entry is not None:
        xy = np.asarray(entry.array("xy", mmap=False), dtype=np.float32)
        n = len(before)
        value = (xy[:n], xy[n:] if after is not None else None)
        return memo(mkey, lambda: value)
    jkey = f"umap:{run_id}:{method}"
    job = get_jobs().get(jkey)
    if job is None or (not job.is_running and job.status == "done"):
        job = get_jobs().submit(jkey, umap_worker, run_id=run_id, bench_spec_=bench_spec(), spec=backbone_spec(),
                                method=method, label="Computing the shared UMAP map")
    if job.status == "failed" and st.button("Try again", key="repr.umap_retry"):
        get_jobs().submit(jkey, umap_worker, run_id=run_id, bench_spec_=bench_spec(), spec=backbone_spec(),
                          method=method, label="Computing the shared UMAP map")
        st.rerun()
    st.info("The shared UMAP map of this run is computed once and then kept in the store.")
    job_status(jkey)
    return None


def color_options(run, bench) -> dict[str, str]:
    """``{label: points column}`` of what the map can be coloured by."""
    opts = {"class": "class"}
    if bench.has_attributes:
        opts["spurious attribute"] = "attribute"
        opts["group"] = "group"
    for m in run_methods(run):
        opts[f"correct / incorrect: {method_label(m)}"] = f"correct: {method_label(m)}"
    for m in run_methods(run):
        if getattr(method_result(run, m), "calibration_set", None) is not None:
            opts[f"calibration set: {method_label(m)}"] = f"calibration set: {method_label(m)}"
    opts["split"] = "split"
    opts["crossed the decision boundary"] = "crossed"
    return opts


def baseline_method(run) -> str | None:
    """The "before" classifier for boundary crossings: ERM (linear probe on the frozen embeddings) if run."""
    methods = run_methods(run)
    for want in ("erm", "zeroshot"):
        if want in methods:
            return want
    return None


def points_table(run, bench, emb, method: str | None, xy) -> pd.DataFrame:
    """One row per sample: ``sample_id, path, split, class, attribute, group``, every colour column,
    ``x_before, y_before`` and (with an "after") ``x_after, y_after, move_2d, cos_change``."""
    from clipcal.projection import crossed_boundary, displacement

    def build():
        fd = run_feature_data(run, bench)
        t = fd_table(bench, fd)
        p = pd.DataFrame({"sample_id": t["sample_id"].astype(str), "path": t["path"], "split": t["split"],
                          "class": [fd.class_names[i] for i in fd.y]})
        if bench.has_attributes:
            p["attribute"] = [fd.attr_names[i] if i >= 0 else "unknown" for i in fd.a]
            p["group"] = [bench.group_name(int(g)) for g in fd.group]
        for m in run_methods(run):
            res = method_result(run, m)
            p[f"correct: {method_label(m)}"] = np.where(np.asarray(res.pred) == fd.y, "correct", "wrong")
            cs = getattr(res, "calibration_set", None)
            if cs is not None:
                member = np.zeros(len(fd.y), bool)
                member[np.asarray(cs, dtype=np.int64)] = True
                p[f"calibration set: {method_label(m)}"] = np.where(member, "in calibration set",
                                                                    "not in calibration set")
        bm = baseline_method(run)
        if method is not None and bm is not None and bm != method:
            p["crossed"] = np.asarray(crossed_boundary(method_result(run, bm).pred, method_result(run, method).pred,
                                                       fd.y, detailed=True)).astype(str)
        else:
            p["crossed"] = "unknown"
        p["x_before"], p["y_before"] = xy[0][:, 0], xy[0][:, 1]
        if xy[1] is not None:
            p["x_after"], p["y_after"] = xy[1][:, 0], xy[1][:, 1]
            before, after = _umap_inputs(run, bench, method)
            d = displacement(xy[0], xy[1], before, after)
            p["move_2d"], p["cos_change"] = d["move_2d"].to_numpy(), d["cos_change"].to_numpy()
        return p

    return memo(("points", _run_id(run), method or "before"), build)


def umap_figure(points: pd.DataFrame, color: str, layout: str):
    """The joint map (:func:`clipcal.figures.umap_figure`): side by side or overlaid; ``sample_id`` is every
    point's ``custom_data[0]`` (clipcal.plot_selection reads it back)."""
    from clipcal.figures import umap_figure as _fig

    hover = [c for c in ("class", "attribute", "split", "crossed") if c in points and c != color]
    return _fig(points, color=color, mode="overlay" if layout == "overlaid" else "side_by_side", hover=hover,
                line_order="move_2d" if "move_2d" in points else None, lines=150)


def selected_ids(event, shown: pd.DataFrame) -> list[str]:
    """Sample ids of the box/lasso selection (:func:`clipcal.plot_selection.ids_from_selection`)."""
    from clipcal.plot_selection import ids_from_selection

    return ids_from_selection(event)


def selection_table(points: pd.DataFrame, ids: list[str]) -> pd.DataFrame:
    """Rows of the selected samples in selection order (:func:`clipcal.plot_selection.selection_table`)."""
    from clipcal.plot_selection import selection_table as _table

    cols = [c for c in points.columns if c not in ("x_before", "y_before", "x_after", "y_after")]
    return _table(points[cols], ids)


MAP_VIEWS = ("Selection (lasso/box)", "Hover thumbnails")


def hover_images(bench, shown: pd.DataFrame) -> np.ndarray:
    """The ``image`` column (thumbnail data URIs, ``""`` beyond the cap or unreadable) for the shown points
    (:func:`clipcal.figures.hover_thumbnails`); each thumbnail is encoded once per process."""
    from clipcal.figures import HOVER_THUMB_QUALITY, HOVER_THUMB_SIZE, hover_thumbnails, thumbnail_data_uri

    def encode(path: str) -> str:
        return memo(("thumb_uri", path, HOVER_THUMB_SIZE, HOVER_THUMB_QUALITY),
                    lambda: thumbnail_data_uri(path, HOVER_THUMB_SIZE, HOVER_THUMB_QUALITY))

    paths = [str(bench.image_path(p)) for p in shown["path"].astype(str)]
    return hover_thumbnails(paths, encode=encode).to_numpy()


def umap_hover_spec(run, bench, shown: pd.DataFrame, color: str, layout: str, method: str | None):
    """The joint map with image hover cards for the shown points, as a Vega-Lite dict for
    ``st.vega_lite_chart`` (:func:`clipcal.figures.umap_hover_spec`): card = thumbnail, sample id, colour,
    class, attribute, split and the predictions of the baseline (:func:`baseline_method`) and of ``method``,
    each named.

    Returns ``(spec, points with a thumbnail, points that should have one)``; memoised per run, method,
    colour, layout and shown rows (the thumbnails are shared, not copied, between the kept specs)."""
    from clipcal.figures import HOVER_THUMB_CAP
    from clipcal.figures import umap_hover_spec as _spec

    def build():
        p = shown.copy()
        hover = [c for c in ("class", "attribute", "split") if c in p]
        # both classifiers, each named: the card is the same on the before and the after panel, so one
        # unnamed "prediction" would pass the after-method's answer off as the baseline's
        for pm in dict.fromkeys(m for m in (baseline_method(run), method) if m is not None):
            fd = run_feature_data(run, bench)
            pred = np.asarray(method_result(run, pm).pred)[p.index.to_numpy()]  # points rows = FeatureData rows
            col = f"prediction ({method_short(pm)})"
            p[col] = [fd.class_names[int(i)] for i in pred]
            hover.append(col)
        imgs = memo(("hover_imgs", _run_id(run), tuple(sorted(p["split"].unique()))), lambda: hover_images(bench, p))
        p["image"] = pd.Series(imgs, index=p.index, dtype=object)
        spec = _spec(p, color, mode="overlay" if layout == "overlaid" else "side_by_side", hover=hover,
                     line_order="move_2d" if "move_2d" in p else None, lines=150)
        return spec, int(sum(1 for u in imgs if u)), min(len(p), HOVER_THUMB_CAP)

    splits = tuple(sorted(shown["split"].unique()))
    return memo(("umap_hover", _run_id(run), method, color, layout, splits), build)


def movement_section(run, bench, emb, method: str, xy, points: pd.DataFrame) -> None:
    """Points that moved most between before and after, boundary crossings, and group centroid shifts."""
    from clipcal.figures import centroid_shift_figure, crossing_figure
    from clipcal.projection import group_centroid_shifts

    fd = run_feature_data(run, bench)
    left, right = st.columns(2)
    with left:
        st.markdown("**Moved most** — distance in the map; `cos_change` = 1 − cosine between the embeddings")
        cols = [c for c in ("sample_id", "class", "attribute", "split", "move_2d", "cos_change", "crossed")
                if c in points]
        st.dataframe(points.sort_values("move_2d", ascending=False).head(20)[cols], hide_index=True,
                     key="repr.moved", height=300,
                     column_config={"move_2d": st.column_config.NumberColumn(format="%.3f"),
                                    "cos_change": st.column_config.NumberColumn(format="%.2e")})
    with right:
        bm = baseline_method(run)
        if bm and bm != method:
            test = points[points["split"] == "test"]
            by = "group" if "group" in test else "class"
            st.plotly_chart(crossing_figure(test, group_col=by, crossing_col="crossed",
                                            # two lines: one ran past the half-width column's edge
                                            title=f"Test samples that crossed the decision boundary<br>"
                                                  f"<sup>{method_label(bm)} → {method_label(method)}</sup>"),
                            key="repr.crossed")
        else:
            st.caption("Boundary crossings need an ERM run to compare with.")
    if bench.has_attributes:
        before, after = _umap_inputs(run, bench, method)
        shifts = memo(("shifts", _run_id(run), method), lambda: group_centroid_shifts(
            xy[0], xy[1], before, after, fd.group, bench.group_names()))
        st.plotly_chart(centroid_shift_figure(shifts), key="repr.shifts")


# ---------------------------------------------------------------------------------------------------------
# Spurious attributes (clipcal.concepts)
# ---------------------------------------------------------------------------------------------------------
def _grid_from_ids(bench, fd, ids, limit: int = 12, columns: int = 6, captions: dict | None = None) -> None:
    from clipcal.plot_selection import image_grid_items

    items = image_grid_items(fd_table(bench, fd), list(ids), bench, limit=limit, captions=captions)
    image_grid([p for p, _ in items], [cap for _, cap in items], columns=columns, size=112)


def concepts_section(run, bench, emb, method: str) -> None:
    """(a) Text concepts scored per class (:func:`clipcal.concepts.concept_scores`)."""
    from clipcal.concepts import concept_prompts, concept_scores, load_concept_vocabulary

    vocab = load_concept_vocabulary()
    typed = st.text_input("Your candidate concepts (comma-separated)", key="spur.concepts",
                          placeholder="e.g. water, forest, bamboo, ocean, sky")
    use_vocab = st.checkbox(f"also score the shipped vocabulary ({len(vocab)} concepts)", value=True,
                            key="spur.vocab")
    concepts = [c.strip() for c in typed.split(",") if c.strip()] + (vocab if use_vocab else [])
    concepts = list(dict.fromkeys(concepts))
    if not concepts:
        st.caption("Type a concept or tick the vocabulary.")
        return
    fd = run_feature_data(run, bench)
    res = method_result(run, method)
    test = fd.mask("test") | fd.mask("val")

    def text_emb():
        from clipcal.embed import text_embeddings

        # the store caches the concept embeddings; on a miss a text-only copy of the model is loaded and
        # released (keeping a whole CLIP for a few prompts cost +1.7 GB with ViT-L/14, bench/app_memory.py),
        # unless this process already holds the model
        return text_embeddings(loaded_backbone(backbone_spec()) or backbone_spec(), concept_prompts(concepts),
                               store=get_store())

    with st.spinner("Embedding the concepts with the text tower…"):
        t = memo(("concept_text", backbone_spec(), tuple(concepts)), text_emb)
    scores = memo(("concepts", _run_id(run), method, tuple(concepts)), lambda: concept_scores(
        fd.embeddings[test], fd.y[test], np.asarray(res.pred)[test], t, concepts, fd.class_names))
    st.caption(f"Scored on the val + test images with {method_label(method)}'s predictions. "
               "score = mean cosine similarity to the misclassified − to the correctly classified images.")
    from clipcal.figures import concept_scores_figure

    for k, sub in scores.groupby("class", sort=False):
        if sub["score"].isna().all():
            nw, nr = int(sub["n_wrong"].iloc[0]), int(sub["n_correct"].iloc[0])
            why = (f"{method_short(method)} classified all {nr} of them correctly: no errors to explain"
                   if nw == 0 else f"{method_short(method)} got all {nw} of them wrong: no correct images to "
                   "compare with — pick another method above")
            st.info(f"**{k}** ({nw + nr} val + test images): {why}.")

    st.plotly_chart(memo(("fig_concepts", _run_id(run), method, tuple(concepts)),
                         lambda: concept_scores_figure(scores, top=10)), key="spur.concepts_fig")
    with st.expander("All scores"):
        st.dataframe(scores.drop(columns=["class_index"]), hide_index=True, key="spur.concepts_table")


def decodability_section(run, bench, emb) -> None:
    """(b) Attribute decodability before vs after (:func:`clipcal.concepts.attribute_decodability`)."""
    from clipcal.concepts import attribute_decodability

    fd = run_feature_data(run, bench)
    after_methods = methods_with_after(run)
    rows = []
    for m in after_methods or [None]:
        after = None if m is None else method_result(run, m).embeddings_after
        r = memo(("decod", _run_id(run), m), lambda: attribute_decodability(fd.embeddings, after, fd.a, fd.split))
        if not r.available:
            st.info(r.reason)
            return
        t = r.table.copy()
        t["representation"] = t["representation"].map(
            {"before": "before (frozen)", "after": f"after ({method_label(m)})" if m else "after"})
        rows.append(t if not rows else t[t["representation"] != "before (frozen)"])
    table = pd.concat(rows, ignore_index=True)
    from clipcal.figures import decodability_figure

    st.plotly_chart(memo(("fig_decod", _run_id(run)), lambda: decodability_figure(table)), key="spur.decod_fig")
    st.dataframe(table, hide_index=True, key="spur.decod")
    if not after_methods:
        st.caption("No method of this run changed the embeddings, so there is no \"after\".")
    no_after = [m for m in run_methods(run) if m not in after_methods]
    if no_after:
        st.caption(no_after_note(no_after))


def no_after_note(methods: list[str]) -> str:
    """Why some methods have no "after" row in decodability: they retrain only the classifier."""
    names = ", ".join(method_label(m) for m in methods)
    return (f"No \"after\" for {names}: these change only the classifier on top of the frozen embeddings "
            "(e.g. DFR retrains the last layer), not the representation, so their embeddings are the "
            "\"before\" ones.")


def clusters_section(run, bench, emb, method: str) -> None:
    """(c) k-means within each class with per-cluster accuracy and grids (:func:`discover_clusters`)."""
    from clipcal.concepts import discover_clusters

    fd = run_feature_data(run, bench)
    a, b = st.columns(2)
    k = a.slider("clusters per class", 2, 8, 4, key="spur.k")
    rep = b.radio("on the embeddings", ["before"] + [f"after ({method_label(m)})" for m in methods_with_after(run)],
                  horizontal=True, key="spur.rep")
    m_after = next((m for m in methods_with_after(run) if rep == f"after ({method_label(m)})"), None)
    x = fd.embeddings if m_after is None else method_result(run, m_after).embeddings_after
    res = method_result(run, method)
    correct = np.asarray(res.pred) == fd.y
    cl = memo(("clusters", _run_id(run), method, k, rep), lambda: discover_clusters(
        x, fd.y, correct, k=k, a=fd.a if bench.has_attributes else None, sample_ids=fd.sample_ids,
        class_names=fd.class_names, attr_names=fd.attr_names or None))
    table = cl.table.drop(columns=["ids"])
    from clipcal.figures import cluster_accuracy_figure

    st.plotly_chart(memo(("fig_clusters", _run_id(run), method, k, rep), lambda: cluster_accuracy_figure(table)),
                    key="spur.clusters_fig")
    with st.expander("Cluster table"):
        st.dataframe(table, hide_index=True, key="spur.clusters")
    if not bench.has_attributes:
        st.caption("No attribute labels: the clusters are the only view of hidden groups here.")
    worst = cl.table.sort_values("accuracy").head(2 * len(fd.class_names))
    for _, r in worst.iterrows():
        st.markdown(f"**{r['class']} · cluster {r['cluster']}** — {r['n']} images, accuracy {r['accuracy']:.2f}"
                    + (f", mostly {r['majority_attribute']} ({r['purity']:.0%})" if bench.has_attributes else ""))
        _grid_from_ids(bench, fd, r["ids"], limit=8, columns=8)


def calibration_set_section(run, bench, method: str | None = None) -> None:
    """(d) The calibration / error set of ``method`` (the page's method picker) against the true groups; if
    that method selects none, the first method of the run that does (said on the page)."""
    from clipcal.concepts import calibration_set_vs_groups

    fd = run_feature_data(run, bench)
    with_sets = [m for m in run_methods(run) if getattr(method_result(run, m), "calibration_set", None) is not None]
    if not with_sets:
        st.info("No method of this run selects a calibration set (CFR does; JTT's error set too).")
        return
    if method in with_sets:
        m = method
    else:  # one method picker per page: the page's; fall back and say so
        m = with_sets[default_method_index(with_sets)]
        st.caption(f"{method_label(method) if method else 'The chosen method'} selects no calibration set; "
                   f"showing {method_label(m)}'s (methods with one: "
                   f"{', '.join(method_label(x) for x in with_sets)}).")
    rep = memo(("calset", _run_id(run), m), lambda: calibration_set_vs_groups(
        method_result(run, m).calibration_set, fd_table(bench, fd),
        group_names=bench.group_names() if bench.has_attributes else None))
    c1, c2, c3 = st.columns(3)
    c1.metric("set size", rep.n_set)
    c2.metric("minority share (precision)", "—" if np.isnan(rep.precision) else f"{rep.precision:.0%}")
    c3.metric("minority found (recall)", "—" if np.isnan(rep.recall) else f"{rep.recall:.0%}")
    if not rep.available:
        st.info(rep.reason)
    from clipcal.figures import calibration_set_figure

    if rep.available:
        st.plotly_chart(memo(("fig_calset", _run_id(run), m), lambda: calibration_set_figure(rep.table)),
                        key="spur.calset_fig")
    st.dataframe(rep.table, hide_index=True, key="spur.calset")
    st.caption(f"Pool: {', '.join(rep.pool)}. Enrichment > 1 = the group is over-represented in the set.")


def gallery_section(run, bench, method: str) -> None:
    """(e) Misclassified test images of the worst group, most confident first."""
    from clipcal.concepts import worst_group_gallery

    fd = run_feature_data(run, bench)
    res = method_result(run, method)
    g = memo(("gallery", _run_id(run), method), lambda: worst_group_gallery(fd_table(bench, fd), res.pred,
                                                                           res.probs, n=24))
    name = bench.group_name(g.group) if g.by == "group" else fd.class_names[g.group]
    st.markdown(f"Worst {g.by} for **{method_label(method)}**: **{name}** — accuracy {g.accuracy:.2f} "
                f"on {g.n} test images; {len(g.items)} misclassified shown.")
    if len(g.items) == 0:
        st.success("No errors in this group.")
        return
    caps = {r.sample_id: f"pred {fd.class_names[int(r.pred)]} ({r.confidence:.2f})" for r in g.items.itertuples()}
    _grid_from_ids(bench, fd, list(g.items["sample_id"]), limit=24, columns=8, captions=caps)


def selection_grid(bench, run, ids, limit: int = 24) -> None:
    """Thumbnails of the first ``limit`` selected samples, captioned class / attribute · split."""
    fd = run_feature_data(run, bench)
    _grid_from_ids(bench, fd, list(ids), limit=limit, columns=8)


def results_table(run, bench, key: str) -> None:
    """The run's method × metric table on the test split (definitions in the column help)."""
    st.markdown("Test split. Hover a column title for its definition; the best value per metric is bold.")
    metrics_dataframe(metrics_table(run, bench, "test"), key=key)


def curves_section(run) -> None:
    """Training curves of every method of the run that has any."""
    for name in run_methods(run):
        curves = getattr(method_result(run, name), "curves", None)
        if curves is not None and len(curves):
            with st.expander(f"Training curves — {method_label(name)}"):
                training_curves_chart(curves, key=f"curves.{name}",
                                      title=f"{method_label(name)}: loss terms and validation metrics per epoch",
                                      cache_key=("curves_fig", _run_id(run), name))
