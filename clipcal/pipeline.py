"""The steps from a benchmark spec to stored results — load, embed, calibrate, project, and the whole demo path —
as the dashboard's background jobs run them (and as a notebook or a headless script can).

Each step takes plain arguments (a benchmark spec dict, a backbone spec or loaded backbone, a store) and
progress / cancel hooks (``progress(done, total, message)`` or a ``Progress`` object; ``cancel`` a
``threading.Event``), writes to the store and returns what it stored. Which methods run is decided by
:func:`clipcal.methods.applicability.applicable_methods`, the rule the CLI and :func:`clipcal.runs.run_calibration`
use too. Job keys (one running job per key, :class:`clipcal.jobs.JobManager`) are built here so that the
pages and the tests name the same job.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack

import numpy as np

from clipcal.catalog import spec_key
from clipcal.errors import ClipcalError

#: The joint UMAP's parameters everywhere (those of :func:`clipcal.projection.joint_umap`).
UMAP_PARAMS = {"seed": 0, "n_neighbors": 15, "min_dist": 0.1, "metric": "cosine"}


# ---------------------------------------------------------------------------------------------------------
# job keys
# ---------------------------------------------------------------------------------------------------------
def embed_job_key(bench_spec: dict, backbone: str) -> str:
    """Key of the embedding job of (benchmark, backbone); starts with ``"embed:"``."""
    return f"embed:{spec_key(bench_spec)}:{backbone}"


def calib_job_key(bench_spec: dict, backbone: str) -> str:
    """Key of the calibration job of (benchmark, backbone)."""
    return f"calibrate:{spec_key(bench_spec)}:{backbone}"


def demo_job_key(bench_spec: dict, backbone: str) -> str:
    """Key of the demo-path job (:func:`demo_path`); starts with ``"demo-path:"``."""
    return f"demo-path:{spec_key(bench_spec)}:{backbone}"


def demo_build_key(options: dict) -> str:
    """Key of the job that generates the demo images with these options."""
    return f"demo-build:{spec_key(options)}"


def umap_job_key(run_key: str, method: str | None) -> str:
    """Key of the job that fits the joint UMAP of a run's before / ``method``'s after embeddings."""
    return f"umap:{run_key}:{method}"


# ---------------------------------------------------------------------------------------------------------
# steps
# ---------------------------------------------------------------------------------------------------------
def staged(progress, stage: str):
    """Wrap a progress callback so every report names ``stage`` (``"2/3 embedding: 12.5 images/s"``).

    Accepts what the steps report: ``(done, total[, message])``, keyword fields, or one object with ``done``,
    ``total``, ``message`` and a rate (``images_per_s`` / ``rate``, ``eta_s``). ``None`` stays ``None``.
    """
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


def load_bench(bench_spec: dict, progress=None):
    """:func:`clipcal.data.load_benchmark` of a benchmark spec dict (the demo is built on first use, reporting to
    ``progress``). Raises ClipcalError as ``load_benchmark`` (missing root, bad metadata …)."""
    from clipcal.data import load_benchmark

    extra = {"progress": progress} if progress is not None and bench_spec["name"] == "demo" else {}
    return load_benchmark(bench_spec["name"], root=bench_spec.get("root"), **extra,
                          **(bench_spec.get("options") or {}))


def embed(bench_spec: dict, backbone, store=None, device: str = "auto", precision: str = "auto",
          batch_size: int | None = None, progress=None, cancel=None):
    """Load the benchmark and embed it (:func:`clipcal.embed.embed_benchmark`: resumes from the store).

    Args:
        bench_spec: benchmark spec dict (:mod:`clipcal.catalog`).
        backbone: a backbone spec string or a loaded :class:`clipcal.backbones.Backbone`.
        store: :class:`clipcal.store.Store` (default ``Store()``).
        batch_size: images per forward pass (None: :func:`clipcal.embed.default_batch_size` of the device).

    Returns:
        The stored ``EmbeddingSet``.
    """
    from clipcal.embed import embed_benchmark

    bench = load_bench(bench_spec)
    return embed_benchmark(bench, backbone, store=store, batch_size=batch_size, device=device,
                           precision=precision, progress=progress, cancel=cancel)


def calibrate(bench, embeddings, methods: list[str], hparams: dict, store=None, seed: int = 0,
              selection: str | None = None, progress=None, cancel=None):
    """Fit and store ``methods`` on stored embeddings (:func:`clipcal.runs.run_calibration`; a cancelled run
    stores nothing). Returns the :class:`clipcal.runs.Run`.

    Raises:
        ClipcalError: ``embeddings`` is ``None`` (not embedded yet); as ``run_calibration`` otherwise.
    """
    from clipcal.runs import run_calibration

    if embeddings is None:
        raise ClipcalError("no embeddings of this benchmark with this backbone in the store",
                           hint="embed it first on the Embed page (or `python -m clipcal embed`)")
    return run_calibration(bench, embeddings, methods=methods, hparams=hparams, store=store, progress=progress,
                           cancel=cancel, seed=seed, selection=selection)


def calibration_summary(run, methods: list[str]) -> str:
    """``"2 of 3 methods ran; failed: cfr: …; not applicable: dfr: …"`` — one line on a finished calibration (a
    method that applied and failed, e.g. on a NaN loss, is named as failed, not as "not applicable")."""
    failed = {m: str(why).removeprefix("failed:").strip() for m, why in run.not_applicable.items()
              if str(why).startswith("failed:")}
    na = {m: why for m, why in run.not_applicable.items() if m not in failed}
    text = f"{len(run.results)} of {len(methods)} methods ran"
    if failed:
        text += f"; failed: {'; '.join(f'{m}: {why}' for m, why in failed.items())}"
    if na:
        text += f"; not applicable: {'; '.join(f'{m}: {why}' for m, why in na.items())}"
    return text


#: Methods the demo path fits first, stored as a run of their own — the first calibrated result, seconds after
#: the embedding, while the slower ones train. On the default demo (bench/demo_path_speed.py, load ≈ 15, one
#: run): ERM 38 s, DFR 3 s, zero-shot none (not applicable to Lite0) — against JTT 75 s, AFR 42 s, CFR 365 s.
FIRST_METHODS = ("zeroshot", "erm", "dfr")


def demo_path(bench_spec: dict, backbone, methods: list[str] | None = None, store=None, progress=None,
              cancel=None) -> str:
    """The one-click path: build / load the benchmark → embed (resumes from the store) → calibrate with every
    method that applies (:func:`~clipcal.methods.applicability.applicable_methods`) at its defaults.

    Ordered for the first result: the model loads and the calibration's libraries are imported
    (:data:`WARM_IMPORTS`) while the benchmark is built (other threads, beside the demo's image threads, which
    spend most of their time in Pillow without the GIL), and the fast methods (:data:`FIRST_METHODS` among
    those) are fitted and stored first, as a run of their own, so the first calibrated result is in the store
    while the others train; then the run of every method is stored (the one the result pages compare). Both runs
    share one :func:`~clipcal.methods.fit_memo.fit_memo`: the full run's ERM, JTT's identification model and
    CFR's stage 1 are the first run's ERM fit, bit-equal, not trained again (DFR's fit of seconds is repeated).

    Args:
        bench_spec: benchmark spec dict (:mod:`clipcal.catalog`).
        backbone: a spec string — loaded (while the benchmark builds) for this call only and closed when it ends,
            so no model outlives it; a loaded :class:`~clipcal.backbones.Backbone` the caller owns; or a
            ``concurrent.futures.Future`` of one the caller is loading (the dashboard passes its shared model,
            leased for the job: no second copy on the device).
        methods: the methods to run (default: every one that applies).
        store: :class:`clipcal.store.Store` (default ``Store()``).

    Progress messages start with the stage (``"1/3 benchmark"``, ``"2/3 embedding"``, ``"3/3 calibrating"``;
    the first run's reports say ``"3/3 calibrating (first results)"``).

    Returns:
        One line: ``"2400 images embedded, 6 methods calibrated (zeroshot, erm, …)"``.

    Raises:
        ClipcalError: as :func:`load_bench`, :func:`clipcal.backbones.load_backbone`,
        :func:`clipcal.embed.embed_benchmark` and :func:`clipcal.runs.run_calibration`; Cancelled: ``cancel`` was
        set (a first run already stored stays).
    """
    from clipcal.embed import embed_benchmark
    from clipcal.methods.applicability import applicable_methods
    from clipcal.methods.fit_memo import fit_memo
    from clipcal.runs import run_calibration

    with ExitStack() as stack:
        pool = stack.enter_context(ThreadPoolExecutor(2, thread_name_prefix="clipcal-demo"))
        model = _model_future(backbone, stack, pool)
        pool.submit(_warm_imports)
        bench = load_bench(bench_spec, progress=staged(progress, "1/3 benchmark"))
        emb = embed_benchmark(bench, model.result(), store=store, progress=staged(progress, "2/3 embedding"),
                              cancel=cancel)
    methods = methods or applicable_methods(bool(getattr(emb, "has_text", False)), bench.has_attributes)
    first = [m for m in methods if m in FIRST_METHODS]
    with fit_memo():  # the full run's ERM, JTT's identification model and CFR's stage 1 reuse the first run's ERM
        if first and len(first) < len(methods):
            run_calibration(bench, emb, methods=first, hparams={}, store=store,
                            progress=staged(progress, "3/3 calibrating (first results)"), cancel=cancel)
        run_calibration(bench, emb, methods=methods, hparams={}, store=store,
                        progress=staged(progress, "3/3 calibrating"), cancel=cancel)
    return f"{len(emb.sample_ids)} images embedded, {len(methods)} methods calibrated ({', '.join(methods)})"


def _model_future(backbone, stack: ExitStack, pool: ThreadPoolExecutor) -> Future:
    """``backbone`` as a Future of a loaded model: a Future as is, a loaded model as a done one, a spec string
    loaded in ``pool`` and closed when ``stack`` exits (after its load finished, even on error)."""
    if isinstance(backbone, Future):
        return backbone
    if not isinstance(backbone, str):
        done: Future = Future()
        done.set_result(backbone)
        return done
    from clipcal.backbones import load_backbone

    loading = pool.submit(load_backbone, backbone)
    stack.callback(lambda: loading.exception() is None and loading.result().close())
    return loading


#: Modules the embedding and calibration import on first use (torch: ~2 s of CPU; scikit-learn, DFR's
#: logistic regression: ~1.8 s), imported by the demo path while the benchmark builds (``python -X importtime``).
WARM_IMPORTS = ("torch", "sklearn.linear_model")


def _warm_imports() -> None:
    """Import :data:`WARM_IMPORTS` (a missing one is left for the step that needs it to report)."""
    import importlib

    for name in WARM_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


# ---------------------------------------------------------------------------------------------------------
# the joint projection of a run
# ---------------------------------------------------------------------------------------------------------
def check_run_rows(run, fd) -> None:
    """Raise unless ``run`` was computed on the rows of ``fd`` (the stored embeddings' FeatureData).

    Raises:
        ClipcalError: the row count or the sample ids differ (the embeddings were recomputed since).
    """
    labels = getattr(run, "labels", None)
    if labels is not None and (len(labels) != fd.n or not np.array_equal(labels["sample_id"].to_numpy(str),
                                                                          fd.sample_ids)):
        raise ClipcalError(f"run {run_key(run)} was computed on other embeddings than the stored ones "
                           f"({len(labels)} vs {fd.n} rows)",
                           hint="calibrate again on the Calibrate page (the embeddings were recomputed)")


def run_key(run) -> str:
    """The store key of a run (``run.key``; objects without one: their ``id``)."""
    return str(getattr(run, "key", None) or getattr(run, "id", None) or id(run))


def projection_inputs(run, fd, method: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(before [N, e], after [N, e] float32 | None)``: the stored embeddings and ``method``'s calibrated ones."""
    after = None if method is None else run.results[method].embeddings_after
    return fd.embeddings, (None if after is None else np.asarray(after, dtype=np.float32))


def projection_key_fields(fingerprint: str, backbone: str, run_id: str, method: str | None) -> dict:
    """Store key fields of a run's joint UMAP (benchmark fingerprint, backbone spec, run key, method)."""
    return {"benchmark": fingerprint, "backbone": backbone, "run": run_id, "method": method or "before"}


def projection_strata(fd) -> np.ndarray | None:
    """The strata of a run's map: ``fd.group`` ([N] int64, -1 where unknown), or ``None`` if ``fd`` has none.
    Used only by maps above :data:`clipcal.sampled_map.LARGE_MAP_THRESHOLD` samples, whose fit sample keeps every
    group (and whose store key holds the strata's hash); smaller maps ignore it."""
    return getattr(fd, "group", None)


def stored_projection(run, fd, method: str | None, fingerprint: str, backbone: str, store):
    """``(xy_before, xy_after | None)`` of the run's joint UMAP if it is in the store, else ``None`` (never fits;
    :func:`clipcal.projection.stored_joint_umap`, stratified by :func:`projection_strata`)."""
    from clipcal.projection import stored_joint_umap

    before, after = projection_inputs(run, fd, method)
    return stored_joint_umap(before, after, store,
                             projection_key_fields(fingerprint, backbone, run_key(run), method), **UMAP_PARAMS,
                             strata=projection_strata(fd))


def project(run, fd, method: str | None, fingerprint: str, backbone: str, store, progress=None):
    """Fit (or read) and store the joint UMAP of the run's before / ``method``'s after embeddings
    (:func:`clipcal.projection.joint_umap`; a large map's fit sample stratified by :func:`projection_strata`).
    Returns ``(xy_before [N, 2], xy_after [N, 2] | None)`` (a :class:`clipcal.projection.JointMap`)."""
    from clipcal.projection import joint_umap

    before, after = projection_inputs(run, fd, method)
    if progress:
        progress(0, 1, f"UMAP of {len(before) * (2 if after is not None else 1):,} points "
                 "(the first fit in a process warms up numba: ≈ 7 s on an idle 2-core CPU)")
    xy = joint_umap(before, after, store=store, progress=progress,
                    key_fields=projection_key_fields(fingerprint, backbone, run_key(run), method), **UMAP_PARAMS,
                    strata=projection_strata(fd))
    if progress:
        progress(1, 1, "done")
    return xy
