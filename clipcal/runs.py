"""Calibration runs: fit several methods on one embedding set, score them, store everything reproducibly.

A run is one call of :func:`run_calibration`: the same cached features go through every requested method
(registry :data:`clipcal.methods.METHODS`, CFR imported lazily), the metrics of every method on every split
are computed (:mod:`clipcal.metrics`), and the whole outcome goes into the store (kind ``runs``):

* key fields: benchmark fingerprint, embedding-set key, backbone spec, methods, resolved hyperparameters
  (the device each method ran on, resolved: ``"cuda:0"`` / ``"cpu"``, never ``"auto"``), seed, format — so the
  same request on the same device finds the same entry;
* arrays per method ``<m>__probs`` [N, K] float32, ``<m>__pred`` [N] int64, ``<m>__embeddings_after``
  [N, e] float32 (when the method changes them), ``<m>__calibration_set`` int64 rows (when it has one),
  ``<m>__curves_csv`` ([1] str), and the fitted model (:class:`~clipcal.methods.fitted.FittedLastLayer`, when
  the method has one) ``<m>__W`` [d, e] float32, ``<m>__head`` [K, e] float32, ``<m>__bias`` [K] float32,
  ``<m>__scale`` [1] float64 — so :meth:`Run.fitted` and :mod:`clipcal.export` rebuild it without refitting; shared ``sample_ids, split, y, a, group``; ``metrics_csv`` and
  ``group_tables_csv`` ([1] str arrays holding the CSV text);
* meta (``manifest.json``): the reproducibility manifest — versions (python, numpy, torch, sklearn,
  clipcal, open_clip when loaded), ``devices`` (requested / resolved per method; GPU name, CUDA / cuDNN versions,
  TF32 and determinism flags per device used), seed, full configuration (hyperparameters after defaults), benchmark
  ``describe()``, backbone identity, each method's record, methods that were not applicable and why, the
  metric tables as JSON records, metric definitions, start / end timestamps (UTC ISO) and wall times.

A method that cannot run (zero-shot without a text tower, DFR without attribute labels, CFR not installed …)
is recorded as ``"not applicable: <reason>"`` and the others still run; :class:`~clipcal.errors.Cancelled`
stops the whole run and nothing is stored.
"""

from __future__ import annotations

import io
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from clipcal.errors import Cancelled, ClipcalError, MethodError, StoreError
from clipcal.methods import METHODS, get_method, make_method
from clipcal.methods.applicability import not_applicable_reason
from clipcal._json import jsonable as _jsonable
from clipcal.methods.base import DeviceOutOfMemoryError, FeatureData, MethodResult, NonFiniteError, Progress
from clipcal.methods.fit_memo import fit_memo
from clipcal.methods.fitted import FittedLastLayer
from clipcal.metrics import METRIC_DEFINITIONS, group_table, method_table, training_groups_unknown

KIND = "runs"
RUN_FORMAT = 1

#: Python packages each method imports beyond numpy / pandas, as ``(module, why)`` for ``clipcal.deps.require``
#: (every method imports ``clipcal.methods._train``, hence torch). Checked by :func:`check_method_dependencies`
#: before any work.
METHOD_REQUIREMENTS = {
    "zeroshot": (("torch", "zero-shot classification"),),
    "erm": (("torch", "ERM (last-layer training)"),),
    "jtt": (("torch", "JTT (last-layer training)"),),
    "afr": (("torch", "AFR (last-layer training)"), ("scipy", "AFR (L-BFGS reweighting, scipy.optimize)")),
    "dfr": (("torch", "DFR"), ("sklearn", "DFR (logistic regression on the validation set)")),
    "cfr": (("torch", "CFR (contrastive feature recalibration)"),),
}


def check_method_dependencies(methods) -> None:
    """Raise :class:`~clipcal.errors.MissingDependencyError` (naming the pip package and the method) now if a
    package one of ``methods`` needs is not installed — before a benchmark is loaded or a method trains.

    Args:
        methods: method names (unknown names are left to :func:`run_calibration` to report).
    """
    from clipcal.deps import require_all

    for m in methods:
        require_all(METHOD_REQUIREMENTS.get(str(m).strip().lower(), ()))
SPLITS = ("train", "val", "test")


@dataclass
class Run:
    """One stored calibration run.

    Attributes:
        key: store key.
        config: the configuration (benchmark, embeddings, backbone, methods, hparams, seed, selection).
        results: ``{method: MethodResult}`` of the methods that ran (curves included).
        not_applicable: ``{method: "not applicable: <reason>"}``.
        metrics: :func:`clipcal.metrics.method_table` — one row per method per split (val, test) plus one
            row per method that did not run.
        group_tables: per-group table of every method and split (columns ``method, split`` + the columns of
            :func:`clipcal.metrics.group_table`).
        labels: DataFrame ``sample_id, split, y, a, group`` of the rows the arrays refer to.
        manifest: the store entry's manifest (``meta`` holds the reproducibility manifest).
        data: the FeatureData when the run was computed in this process, else ``None``.
    """

    key: str
    config: dict
    results: dict[str, MethodResult]
    not_applicable: dict[str, str]
    metrics: pd.DataFrame
    group_tables: pd.DataFrame
    labels: pd.DataFrame
    manifest: dict = field(default_factory=dict)
    data: FeatureData | None = None

    @property
    def methods(self) -> list[str]:
        """Methods requested, in order."""
        return list(self.config.get("methods", []))

    @property
    def created(self) -> str:
        """Creation time (UTC ISO) of the store entry."""
        return str(self.manifest.get("created", ""))

    def result(self, method: str) -> MethodResult:
        """The :class:`MethodResult` of ``method``; MethodError if it did not run (says why)."""
        if method in self.results:
            return self.results[method]
        why = self.not_applicable.get(method, "it was not part of this run")
        raise MethodError(f"method {method!r} has no result in run {self.key}: {why}")

    def fitted(self, method: str) -> FittedLastLayer:
        """The fitted last layer and head of ``method`` (``W``, ``head``, ``scale``, ``bias``, ``classes``), to
        apply to new pre-projection features (``predict_proba(h)``, ``transform(h)``) or export.

        Raises:
            MethodError: the method did not run, has no last layer (zero-shot / DFR without a stored
                projection), or the run was stored before fitted layers were kept (run it again).
        """
        r = self.result(method)
        if r.fitted is None:
            raise MethodError(f"run {self.key} holds no fitted last layer for {method!r}",
                              hint="runs stored before fitted layers were kept (or zero-shot / DFR on an embedding "
                                   "set without a projection) cannot be applied to new images; calibrate again")
        return r.fitted

    def headline(self, split: str = "test") -> pd.DataFrame:
        """The metrics rows of one split (methods that did not run keep their status row)."""
        m = self.metrics
        return m[(m["split"] == split) | (m["status"] != "ok")].reset_index(drop=True)


def versions() -> dict:
    """Versions of what a run depends on (python, numpy, pandas, torch, sklearn, clipcal, open_clip if loaded).

    Read from the installed packages' metadata (``None`` when absent): storing a run must not import a package
    its methods did not need (a missing scikit-learn used to crash here after every method had trained)."""
    from importlib import metadata

    from clipcal import __version__

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    torch = sys.modules.get("torch")  # imported by every trained method; a zero-shot-only run may not need it
    out = {"python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__,
           "torch": torch.__version__ if torch is not None else version("torch"), "sklearn": version("scikit-learn"), "clipcal": __version__,
           "cuda": torch.version.cuda if torch is not None and torch.cuda.is_available() else None}
    if "open_clip" in sys.modules:
        out["open_clip"] = getattr(sys.modules["open_clip"], "__version__", "?")
    return out


def resolve_hparams(methods: list[str], hparams: dict | None, seed: int, selection: str | None) -> dict:
    """Full hyperparameters per method: class defaults, then ``seed`` / ``selection``, then ``hparams``.

    Entries for methods not in ``methods`` are ignored (a page may keep settings of every method); unknown
    hyperparameters and values a method refuses (:meth:`Method.check_params`: choices, counts ≥ 1, ranges)
    raise :class:`MethodError` — before any work, so a bad value never becomes a "not applicable" row. The
    CLI and the Calibrate page call this to check what the user typed. Methods whose module is missing get
    ``{}`` (reported as not applicable later).
    """
    hparams = {str(k).lower(): dict(v) for k, v in (hparams or {}).items()}
    out = {}
    for m in methods:
        try:
            cls = get_method(m)
        except MethodError:
            out[m] = dict(hparams.get(m, {}))
            continue
        names = cls._param_names()
        p = dict(cls.defaults())
        if "seed" in names:
            p["seed"] = int(seed)
        if selection is not None and "selection" in names:
            p["selection"] = selection
        bad = [k for k in hparams.get(m, {}) if k not in names]
        if bad:
            raise MethodError(f"{m} has no hyperparameter(s) {bad}", hint=f"known: {', '.join(names)}")
        p.update(hparams.get(m, {}))
        p = {k: v for k, v in p.items() if k in names}
        cls(**p).check_params()
        out[m] = _jsonable(p)
    return out


def resolve_devices(full: dict) -> dict:
    """Replace each method's requested ``device`` (and ``precision``: ``"auto"`` → ``"fp32"`` / ``"bf16"``) in
    ``full`` (from :func:`resolve_hparams`) by the device (precision) it will use — ``"auto"`` → ``"cuda:0"`` or
    ``"cpu"`` (:func:`clipcal.methods._train.resolved_device_name`) — so the run key says where and how the numbers
    were computed (issue 15.5: a CPU and a GPU run of the same request differ in the last bits and were stored
    under one key). Runs stored before keep their key and load as they are.

    Returns:
        ``{method: requested device}`` of the methods that have one.

    Raises:
        BackboneError: a device string this machine cannot use.
    """
    requested = {m: p["device"] for m, p in full.items() if isinstance(p.get("device"), str)}
    if requested:
        from clipcal.methods._train import resolve_calibration_precision, resolved_device_name

        for m, dev in requested.items():
            full[m]["device"] = resolved_device_name(dev)
            if isinstance(full[m].get("precision"), str):  # "auto" → what ran: a bf16 run is another result
                full[m]["precision"] = resolve_calibration_precision(full[m]["precision"], full[m]["device"])
    return requested


def _device_meta(full: dict, requested: dict) -> dict:
    """The run manifest's ``devices``: each method's requested and resolved device, and per resolved device
    its GPU name, CUDA / cuDNN versions and numerics flags (:func:`clipcal.methods._train.device_manifest`)."""
    if not requested:
        return {}
    from clipcal.methods._train import device_manifest

    used = sorted({(full[m]["device"], full[m].get("precision", "fp32")) for m in requested})
    return {"methods": {m: {"requested": requested[m], "resolved": full[m]["device"],
                            "precision": full[m].get("precision", "fp32")} for m in requested},
            "used": {f"{d} {p}": device_manifest(d, p) for d, p in used}}


def _method_progress(progress, i: int, n: int, label: str):
    if progress is None:
        return None

    def inner(p: Progress) -> None:
        frac = float(p.done) / float(p.total) if p.total else 0.0
        progress(Progress(done=i + min(max(frac, 0.0), 1.0), total=n, message=f"{label}: {p.message}",
                          stage=p.stage or label, metrics=dict(p.metrics, method=label)))

    return inner


def _text_head(benchmark, embedding_set, methods, store, notes) -> np.ndarray | None:
    head = getattr(embedding_set, "text_head", None)
    if head is not None or not getattr(embedding_set, "has_text", False):
        return head
    if not set(methods) & {"zeroshot", "erm", "jtt", "afr", "cfr"}:
        return None
    try:
        from clipcal.embed import class_text_embeddings

        return class_text_embeddings(embedding_set.backbone_spec, list(benchmark.class_names), store=store)
    except ClipcalError as err:
        notes.append(f"zero-shot text head unavailable ({err.message}); heads start from class means")
        return None


def run_calibration(benchmark, embedding_set, methods, hparams: dict | None = None, store=None, progress=None,
                    cancel=None, seed: int = 0, selection: str | None = None,
                    text_head: np.ndarray | None = None) -> Run:
    """Fit every method on one benchmark's cached embeddings, score and store the run.

    Args:
        benchmark: the :class:`~clipcal.data.base.Benchmark`.
        embedding_set: a ``clipcal.embed.EmbeddingSet`` (or an object with its attributes, e.g.
            ``clipcal.synthetic.SyntheticDataset.embedding_set()``).
        methods: method names (list or comma-separated string) from :data:`clipcal.methods.METHODS`.
        hparams: ``{method: {hyperparameter: value}}`` overrides.
        store: :class:`clipcal.store.Store` (default ``Store()``).
        progress: callback receiving :class:`~clipcal.methods.base.Progress` with ``done`` counted in methods
            (fractional within a method) out of ``total = len(methods)``.
        cancel: ``threading.Event``; when set the run stops (``Cancelled``) and nothing is stored.
        seed: seed given to every method that has one (unless ``hparams`` sets it).
        selection: model-selection rule for every method that has one (``"worst-class"`` / ``"worst-group"``).
        text_head: [K, e] zero-shot head; default computed with ``clipcal.embed.class_text_embeddings`` when
            the backbone has a text tower (and a method uses it).

    Returns:
        The stored :class:`Run`.

    Raises:
        MethodError: unknown method names / hyperparameters, bad features (lengths, NaN — named rows), or
            not one method could run (each one's reason in the message; nothing is stored).
        Cancelled: ``cancel`` was set. StoreError: the run cannot be written.
        MissingDependencyError: a package a chosen method imports is not installed (raised before any work).
    """
    from clipcal.store import Store

    store = store if store is not None else Store()
    if isinstance(methods, str):
        methods = [m for m in methods.split(",") if m.strip()]
    methods = [str(m).strip().lower() for m in methods]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise MethodError(f"unknown method(s) {unknown}" if unknown else "no methods given",
                          hint=f"choose from {', '.join(METHODS)}")
    methods = list(dict.fromkeys(methods))
    check_method_dependencies(methods)  # a missing package fails here, not after training (issue 10)
    full = resolve_hparams(methods, hparams, seed, selection)
    requested_devices = resolve_devices(full)
    store.check_writable()  # a read-only store fails here, not after training (issue 10 item 8)
    started = datetime.now(timezone.utc)
    notes: list[str] = []
    head = text_head if text_head is not None else _text_head(benchmark, embedding_set, methods, store, notes)
    data = FeatureData.from_store(benchmark, embedding_set, text_head=head)
    results: dict[str, MethodResult] = {}
    not_applicable: dict[str, str] = {}
    failures: dict[str, str] = {}
    labels: dict[str, str] = {}
    timings: dict[str, float] = {}
    # fit once, reuse (issue 13): ERM, JTT's identification model and CFR's stage 1 make the identical call
    with fit_memo():  # one run; the demo path's two runs can share one by opening it around both
        for i, name in enumerate(methods):
            if cancel is not None and cancel.is_set():
                raise Cancelled("calibration run cancelled", hint="nothing of this run was stored")
            t0 = time.perf_counter()
            try:
                cls = get_method(name)
                labels[name] = cls.label
                why = not_applicable_reason(cls, data.has_text, data.has_attributes, full[name].get("selection"))
                if why is not None:  # the rule the CLI and the dashboard use, asked before any work
                    raise MethodError(f"not applicable: {why.short()}")
                est = make_method(name, **full[name])
                est.fit(data, progress=_method_progress(progress, i, len(methods), cls.label), cancel=cancel)
                results[name] = est.result_
            except Cancelled:
                raise
            except ClipcalError as err:
                msg = err.message
                # it applied, and failed: say what to change
                if isinstance(err, (NonFiniteError, DeviceOutOfMemoryError)):
                    not_applicable[name] = f"failed: {msg} ({err.hint})"
                else:
                    not_applicable[name] = msg if msg.startswith("not applicable") else f"not applicable: {msg}"
            except Exception as err:  # a bug in one method must not lose the others' results
                not_applicable[name] = f"failed: {type(err).__name__}: {err}"
                failures[name] = traceback.format_exc()
            timings[name] = round(time.perf_counter() - t0, 3)
            if progress is not None:
                progress(Progress(done=i + 1, total=len(methods), message=f"{labels.get(name, name)} done",
                                  stage=name))
    if not results:  # a run with no method's result would only shadow the useful runs in every list
        raise MethodError("no method could run, so nothing was stored: " + "; ".join(
            f"{labels.get(m, m)}: {why}" for m, why in not_applicable.items()),
            hint="choose methods that apply to this benchmark and backbone (e.g. ERM, CFR); methods that use "
                 "group labels and worst-group selection need a spurious-attribute column")
    metrics = method_table(results, data, splits=("val", "test"), not_applicable=not_applicable, labels=labels)
    gtabs = _group_tables(results, data)
    finished = datetime.now(timezone.utc)
    emb_manifest = getattr(embedding_set, "manifest", {}) or {}
    backbone_identity = (emb_manifest.get("key_fields", {}) or {}).get("backbone") or \
        emb_manifest.get("backbone") or {"spec": data.backbone_spec}
    key_fields = {
        "format": RUN_FORMAT, "benchmark": benchmark.fingerprint(), "embeddings": str(embedding_set.key),
        "backbone": data.backbone_spec, "methods": methods, "hparams": full, "seed": int(seed),
        "selection": selection,
    }
    config = {**key_fields, "benchmark_name": benchmark.name}
    meta = {
        "config": config,
        "benchmark": benchmark.describe(),
        "backbone": backbone_identity,
        "embeddings": {"key": str(embedding_set.key), "projection": data.projection, "has_text": data.has_text,
                       "feature_dim": data.feature_dim, "embed_dim": data.embed_dim, "n_rows": data.n},
        "versions": versions(),
        "devices": _device_meta(full, requested_devices),
        "seed": int(seed),
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "seconds": timings,
        "records": {m: r.record for m, r in results.items()},
        "not_applicable": not_applicable,
        "failures": failures,
        "labels": labels,
        "notes": data.notes + notes,
        "metrics": _records(metrics),
        "group_tables": _records(gtabs),
        "metric_definitions": METRIC_DEFINITIONS,
    }
    arrays: dict[str, np.ndarray] = {
        "sample_ids": data.sample_ids, "split": data.split, "y": data.y, "a": data.a, "group": data.group,
        "metrics_csv": np.array([metrics.to_csv(index=False)]),
        "group_tables_csv": np.array([gtabs.to_csv(index=False)]),
    }
    for m, r in results.items():
        arrays[f"{m}__probs"] = r.probs
        arrays[f"{m}__pred"] = r.pred
        if r.embeddings_after is not None:
            arrays[f"{m}__embeddings_after"] = r.embeddings_after
        if r.calibration_set is not None:
            arrays[f"{m}__calibration_set"] = r.calibration_set
        if r.fitted is not None:
            arrays.update(r.fitted.arrays(f"{m}__"))
        arrays[f"{m}__curves_csv"] = np.array([r.curves.to_csv(index=False)])
    entry = store.put(KIND, key_fields, arrays, meta)
    return Run(key=entry.key, config=config, results=results, not_applicable=not_applicable, metrics=metrics,
               group_tables=gtabs, labels=_labels(data), manifest=entry.manifest, data=data)


def _labels(data: FeatureData) -> pd.DataFrame:
    return pd.DataFrame({"sample_id": data.sample_ids, "split": data.split, "y": data.y, "a": data.a,
                         "group": data.group})


def _records(df: pd.DataFrame) -> list[dict]:
    """DataFrame → JSON-able records (NaN → None)."""
    return [{k: (None if isinstance(v, float) and not np.isfinite(v) else _jsonable(v)) for k, v in r.items()}
            for r in df.to_dict(orient="records")]


def _group_tables(results: dict[str, MethodResult], data: FeatureData) -> pd.DataFrame:
    frames = []
    for m, r in results.items():
        for split in SPLITS:
            mask = data.mask(split)
            t = group_table(data.y[mask], r.pred[mask], data.group[mask], data.class_names, data.attr_names)
            t.insert(0, "split", split)
            t.insert(0, "method", m)
            frames.append(t)
    cols = ["method", "split", "group", "class", "attribute", "n", "correct", "accuracy", "ci_low", "ci_high"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def _read_csv(entry, name: str) -> pd.DataFrame:
    text = str(np.asarray(entry.array(name, mmap=False)).reshape(-1)[0])
    return pd.read_csv(io.StringIO(text)) if text.strip() else pd.DataFrame()


def _entry_by_key(store, key: str):
    for m in reversed(store.list(KIND)):
        if m.get("key") == key:
            return store.get(KIND, m["key_fields"])
    return None


def _fitted(entry, method: str) -> FittedLastLayer:
    """The stored fitted last layer of ``method`` (class names from the benchmark's description)."""
    def get(name):
        return entry.array(name, mmap=False)

    k = get(f"{method}__head").shape[0]
    names = (entry.meta.get("benchmark") or {}).get("class_names") or [str(i) for i in range(k)]
    return FittedLastLayer.from_arrays(get, f"{method}__", names)


def load_run(key: str, store=None) -> Run:
    """Load a stored run by its key (from :func:`list_runs` or ``Run.key``).

    Raises:
        StoreError: no (intact) run with that key — a corrupt entry is moved aside by the store.
    """
    from clipcal.store import Store

    store = store if store is not None else Store()
    entry = _entry_by_key(store, key)
    if entry is None:
        raise StoreError(f"no calibration run with key {key!r} in {store.root}",
                         hint="list stored runs with clipcal.runs.list_runs() or run `python -m clipcal calibrate`")
    meta = entry.meta
    names = set(entry.names)
    results = {}
    for m in meta["config"]["methods"]:
        if f"{m}__probs" not in names:
            continue
        curves = _read_csv(entry, f"{m}__curves_csv") if f"{m}__curves_csv" in names else None
        results[m] = MethodResult(
            method=m, probs=entry.array(f"{m}__probs", mmap=False), pred=entry.array(f"{m}__pred", mmap=False),
            embeddings_after=entry.array(f"{m}__embeddings_after") if f"{m}__embeddings_after" in names else None,
            calibration_set=entry.array(f"{m}__calibration_set", mmap=False)
            if f"{m}__calibration_set" in names else None,
            record=dict(meta.get("records", {}).get(m, {})),
            curves=curves if curves is not None and len(curves.columns) else None,
            fitted=_fitted(entry, m) if f"{m}__W" in names else None)
    labels = pd.DataFrame({c: entry.array(c, mmap=False) for c in ("sample_id", "split", "y", "a", "group")
                           if c != "sample_id"})
    labels.insert(0, "sample_id", entry.array("sample_ids", mmap=False).astype(str))
    labels["split"] = labels["split"].astype(str)
    metrics = _read_csv(entry, "metrics_csv")
    if "split" in metrics:
        metrics["split"] = metrics["split"].fillna("")
    if "train_weighted" in metrics and training_groups_unknown(labels["group"], labels["split"]):
        # runs stored before metrics.train_group_weights weighted by the labelled rows only
        metrics["train_weighted"] = np.nan
    return Run(key=entry.key, config=meta["config"], results=results,
               not_applicable=dict(meta.get("not_applicable", {})), metrics=metrics,
               group_tables=_read_csv(entry, "group_tables_csv"), labels=labels, manifest=entry.manifest)


def list_runs(store=None, benchmark=None, backbone: str | None = None) -> pd.DataFrame:
    """Stored runs, newest first, optionally only those of a benchmark (same fingerprint) / backbone spec.

    Returns:
        DataFrame with columns ``key, created, benchmark, backbone, methods, seed, selection, not_applicable,
        test_worst_group`` (dict method → test worst-group accuracy), ``changed`` (hyperparameters that differ
        from the method's defaults, e.g. ``"cfr.calibration_errors=cross-fit"``; ``""`` when none).
    """
    from clipcal.store import Store

    store = store if store is not None else Store()
    fp = benchmark.fingerprint() if benchmark is not None else None
    rows = []
    for m in reversed(store.list(KIND)):
        kf = m.get("key_fields", {})
        if fp is not None and kf.get("benchmark") != fp:
            continue
        if backbone is not None and kf.get("backbone") != backbone:
            continue
        meta = m.get("meta", {})
        wg = {r["method"]: r.get("worst_group") for r in meta.get("metrics", []) if r.get("split") == "test"}
        rows.append({"key": m.get("key"), "created": m.get("created", ""),
                     "benchmark": meta.get("config", {}).get("benchmark_name", ""), "backbone": kf.get("backbone"),
                     "methods": ",".join(kf.get("methods", [])), "seed": kf.get("seed"),
                     "selection": kf.get("selection"), "not_applicable": ",".join(meta.get("not_applicable", {})),
                     "test_worst_group": wg, "changed": _changed_hparams(kf.get("hparams") or {})})
    cols = ["key", "created", "benchmark", "backbone", "methods", "seed", "selection", "not_applicable",
            "test_worst_group", "changed"]
    return pd.DataFrame(rows, columns=cols)


def latest_run(store=None, benchmark=None, backbone: str | None = None) -> Run | None:
    """The newest stored run matching the filters of :func:`list_runs`, or ``None``."""
    runs = list_runs(store, benchmark, backbone)
    return load_run(runs["key"].iloc[0], store) if len(runs) else None


def _changed_hparams(hparams: dict) -> str:
    """``"cfr.lr=0.001, cfr.calibration_errors=cross-fit"``: values that differ from each method's defaults
    (seed, selection and device are shown elsewhere; a precision equal to what ``"auto"`` resolves to is not a
    change)."""
    from clipcal.methods import get_method

    out = []
    for m, values in hparams.items():
        try:
            defaults = get_method(m).defaults()
        except ClipcalError:
            continue
        for k, v in (values or {}).items():
            if k in ("seed", "selection", "device") or k not in defaults:
                continue
            d = defaults[k]
            if k == "precision":  # keys hold the resolved precision ("auto" → "fp32")
                from clipcal.methods._train import resolve_calibration_precision

                d = resolve_calibration_precision(d, "cpu")
            same = (list(v) == list(d)) if isinstance(v, (list, tuple)) and isinstance(d, (list, tuple)) else v == d
            if not same:
                out.append(f"{m}.{k}={v}")
    return ", ".join(out)
