"""Memoised, process-wide objects of the dashboard: the job manager, the store, loaded benchmarks, embedding
sets, runs and the one loaded backbone model (:func:`model_slot`).

They live in ``st.cache_resource`` (shared by sessions and worker threads, never pickled; big arrays stay
memory-mapped from the store). A loader that finds nothing returns ``None`` and is not kept, so results appear
as soon as a job stored them. Backbones (models) are held one at a time, through leases: choosing another
releases the previous as soon as nobody uses it.
Callers use the module's attributes (``resources.get_run(…)``), so tests can replace a loader.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import pandas as pd
import streamlit as st

from clipcal import catalog, pipeline
from pages.ui import state


@st.cache_resource(show_spinner=False)
def get_jobs():
    """The process-wide :class:`clipcal.jobs.JobManager` (survives reruns, page switches and sessions)."""
    from clipcal.jobs import JobManager

    return JobManager()


@st.cache_resource(show_spinner=False)
def _memo_holder() -> tuple[dict, threading.Lock]:
    return {}, threading.Lock()


def memo(key: tuple, load: Callable[[], Any]) -> Any:
    """Process-wide memo for loaded objects: the cached value of ``key``, or ``load()`` kept under it.

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


def store_embeddings() -> pd.DataFrame:
    """:func:`clipcal.catalog.embeddings_table` of the store, memoised until an embedding set is stored."""
    return memo(("emb_list", store_stamp("embeddings")), lambda: catalog.embeddings_table(get_store()))


def store_runs() -> pd.DataFrame:
    """:func:`clipcal.catalog.runs_table` of every run in the store, memoised until a run is stored."""
    from clipcal.runs import list_runs

    return catalog.runs_table(memo(("all_runs", store_stamp("runs")), lambda: list_runs(get_store())))


def load_bench(spec: dict | None = None):
    """The :class:`~clipcal.data.Benchmark` of ``spec`` (default: current), or ``None`` for a demo not built
    yet (generating it is a job: :func:`pages.ui.jobs.start_demo_build`).

    Raises:
        ClipcalError: as :func:`clipcal.data.load_benchmark` (missing root, bad metadata …).
    """
    spec = spec or state.bench_spec()
    if spec["name"] == "demo" and not spec.get("root") and not catalog.demo_built(spec.get("options") or {}):
        return None
    return memo(("bench", catalog.spec_key(spec)), lambda: pipeline.load_bench(spec))


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

    spec = spec or state.backbone_spec()
    return memo(("emb", fingerprint(bench), spec), lambda: _load(bench, spec, store=get_store()))


def list_backbones() -> pd.DataFrame:
    """:func:`clipcal.backbones.list_backbones`, memoised for the process (it scans the weight caches)."""
    from clipcal.backbones import list_backbones as _list

    return memo(("backbones",), _list)


def method_classes() -> dict:
    """:func:`clipcal.methods.applicability.available_methods`, memoised (``{name: Method class}``)."""
    from clipcal.methods.applicability import available_methods

    return memo(("method_classes",), available_methods)


@st.cache_resource(show_spinner=False)
def model_slot():
    """The process's one :class:`clipcal.model_slot.ModelSlot`: the loaded backbone that sessions and worker
    threads share, held through leases (a model is closed only when nobody uses it)."""
    from clipcal.model_slot import ModelSlot

    return ModelSlot()


def model_lease(spec: str, device: str = "auto", precision: str = "auto"):
    """``with resources.model_lease(spec) as model:`` — the shared model for (spec, device, precision), loaded if
    the slot holds another (:meth:`ModelSlot.lease`: the model it replaces is closed now if unused, else when its
    last user releases it, so GPU memory is not held by a model nobody uses; field-notes pitfall 8).

    Raises:
        BackboneError / WeightsUnavailableError: as :func:`clipcal.backbones.load_backbone`.
    """
    return model_slot().lease(spec, device, precision)


def loaded_model(spec: str):
    """``with resources.loaded_model(spec) as model:`` — the shared model if this process already holds it for
    ``spec`` (any device / precision), leased so no job closes it meanwhile, else ``None``; never loads."""
    return model_slot().peek(spec)


def feature_data(bench, emb):
    """:meth:`FeatureData.from_store` of (benchmark, embeddings): the row order every method result follows.

    The pre-projection features ``h`` stay the store's read-only memory map (``features_in_memory=False``): no
    view reads them except the concept-vector job, and at CelebA size the copy was 830 MB of server memory
    (issue 14). The embeddings are copied into memory (every chart reads them); the pages of the store's maps
    read on the way are then released (:func:`clipcal.store.release_pages`) — at CelebA size they held another
    1.45 GB of RSS."""
    from clipcal.methods import FeatureData
    from clipcal.store import release_pages

    def build():
        fd = FeatureData.from_store(bench, emb, features_in_memory=False)
        release_pages(getattr(emb, "features", None), getattr(emb, "embeddings", None))
        return fd

    return memo(_fd_key(bench, emb), build)


def _fd_key(bench, emb) -> tuple:
    """The memo key of :func:`feature_data` (benchmark fingerprint, backbone, embeddings' store key)."""
    return ("fd", fingerprint(bench), emb.backbone_spec, str(getattr(emb, "key", "")))


def runs_for(bench, spec: str) -> list[dict]:
    """Stored runs of (benchmark, backbone), newest first (:func:`clipcal.catalog.run_entries`)."""
    from clipcal.runs import list_runs

    emb = load_embeddings(bench, spec)
    canonical = emb.backbone_spec if emb is not None else spec
    table = memo(("runs", fingerprint(bench), canonical, store_stamp("runs")),
                 lambda: list_runs(get_store(), bench, canonical))
    return catalog.run_entries(table)


def get_run(run_id: str):
    """The stored run ``run_id`` (:func:`clipcal.runs.load_run`; memoised, arrays memory-mapped)."""
    from clipcal.runs import load_run

    return memo(("run", run_id), lambda: load_run(run_id, store=get_store()))


def run_feature_data(run, bench, spec: str | None = None):
    """FeatureData of the embeddings the run was computed from, in the run's row order (worker threads must
    pass ``spec``: they cannot read the session).

    Raises:
        ClipcalError: the embeddings are gone from the store, or their rows differ from the run's.
    """
    from clipcal.errors import ClipcalError

    emb = load_embeddings(bench, spec)
    if emb is None:
        raise ClipcalError("the embeddings this run was computed from are no longer in the store",
                           hint="embed the benchmark again on the Embed page")
    fd = feature_data(bench, emb)
    # once per (run, embeddings): the check compares all N sample ids (0.1–0.3 s at CelebA size) and both are
    # immutable store entries; a failed check is not memoised, so it raises on every rerun
    memo(("rows_checked", pipeline.run_key(run), _fd_key(bench, emb)), lambda: pipeline.check_run_rows(run, fd) or True)
    return fd


def sample_table(bench, fd) -> pd.DataFrame:
    """:func:`clipcal.views.sample_table` of the run's rows, memoised per benchmark and rows."""
    from clipcal.views import sample_table as _table

    return memo(("fd_table", fingerprint(bench), len(fd.sample_ids), str(fd.sample_ids[:1])),
                lambda: _table(bench.table, fd.sample_ids))
