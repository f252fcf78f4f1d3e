"""The shared interface of every calibration method: :class:`FeatureData` in, :class:`MethodResult` out.

All methods work on cached features only (no images, no Streamlit). A method is a scikit-learn style
estimator (style.md): hyperparameters are constructor arguments stored unchanged, all work happens in
:meth:`Method.fit`, which validates its input and returns ``self``; the outcome is ``result_``.

Progress: long methods call ``progress(Progress(done, total, message, stage, metrics))`` — one object, the
same shape :class:`clipcal.jobs.JobManager` reads (``done``/``total``/``message``; other fields go to the job's
``extra``). ``cancel`` is a ``threading.Event``; when it is set a method raises
:class:`~clipcal.errors.Cancelled` at its next check (between epochs / steps).

Usage::

    data = FeatureData.from_store(benchmark, embedding_set, text_head=head)
    erm = ERM(epochs=50, seed=0).fit(data)
    erm.result_.probs          # [N, K] float32, every row it was fitted on (a view of the fitted model)
    erm.predict_proba(h_new)   # [n, K] float32 for NEW pre-projection features h [n, d] (inductive)
    erm.transform(h_new)       # [n, e] float32 calibrated embeddings normalize(h W_)
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import pandas as pd

from clipcal._json import jsonable
from clipcal.errors import Cancelled, MethodError
from clipcal.rowblocks import mapped_base, row_blocks, take_rows
from clipcal.methods.fitted import FittedLastLayer, NotFittedError
from clipcal.methods.params import choices_of, validate_params

SPLITS = ("train", "val", "test")
CURVE_COLUMNS = ("epoch", "stage", "split", "metric", "value")


# ---------------------------------------------------------------------------------------------------------
# progress / cancel
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """One progress report of a method.

    Attributes:
        done: units finished (epochs, grid points … — whatever ``total`` counts).
        total: units in all (> 0).
        message: one line for a status bar, e.g. ``"ERM epoch 12/50 · val worst-class 0.81"``.
        stage: the method's stage, e.g. ``"erm"``, ``"cfr"``, ``"dfr"``.
        metrics: latest figures (``{"train_loss": 0.31, "val_score": 0.81}``) for live curves.
    """

    done: float
    total: float
    message: str = ""
    stage: str = ""
    metrics: dict = field(default_factory=dict)


ProgressFn = Callable[[Progress], None]


def report(progress: ProgressFn | None, done: float, total: float, message: str = "", stage: str = "",
           **metrics: float) -> None:
    """Call ``progress`` (if given) with a :class:`Progress`; a no-op for ``None``."""
    if progress is not None:
        progress(Progress(done=done, total=total, message=message, stage=stage, metrics=dict(metrics)))


def check_cancel(cancel) -> None:
    """Raise :class:`~clipcal.errors.Cancelled` when ``cancel`` (a ``threading.Event`` or ``None``) is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("calibration cancelled", hint="nothing of this method's run was stored; start it again")


class NonFiniteError(MethodError):
    """Training produced NaN or ±inf (loss, model outputs or validation score): the method stops, nothing of it
    is kept. The message names the method, stage and epoch; the hint the likely cause (lr too large …)."""


class DeviceOutOfMemoryError(MethodError):
    """The device ran out of memory while a method trained (issue 15.6): the message names the method, the stage
    (and epoch) and the device; the hint what to change (a smaller batch, the CPU). Raised after the failed
    step's tensors and the method's device copies are released and the allocator's cache emptied."""


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a device out-of-memory error — :func:`clipcal.embed._is_oom`, the one recogniser (CUDA
    caching allocator, and cuBLAS / cuDNN allocation failures where it knows them)."""
    from clipcal.embed import _is_oom

    return _is_oom(err)


def free_device_memory() -> None:
    """Collect garbage and return the CUDA caching allocator's free blocks. Call it *outside* an ``except``
    block: inside one, the traceback still references the failed step's tensors."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


OOM_HINT = ("try a smaller batch_size, or device='cpu' (slower; limited by RAM instead of GPU memory); other "
            "programs on the GPU take memory too (nvidia-smi lists them)")


# ---------------------------------------------------------------------------------------------------------
# FeatureData
# ---------------------------------------------------------------------------------------------------------


def _is_float32_map(arr) -> bool:
    """Whether ``arr`` is a read-only, C-contiguous float32 view of a store memory map (:func:`mapped_base`)."""
    return (isinstance(arr, np.ndarray) and mapped_base(arr) is not None and arr.dtype == np.float32
            and arr.ndim == 2 and arr.flags.c_contiguous and not arr.flags.writeable)


def _writable(arr, dtype) -> np.ndarray:
    """``arr`` as a C-contiguous, writable array of ``dtype`` (copied only when needed)."""
    a = np.ascontiguousarray(np.asarray(arr, dtype=dtype))
    return a if a.flags.writeable else a.copy()


#: |value| above which a feature is refused: no backbone's features come near it, and float32 products of such
#: values overflow to inf (the largest float32 is 3.4e38) — seen as corrupt store bytes (|h| ≈ 3.4e38)
MAX_ABS_FEATURE = 1e18


def _selection_notes(table: pd.DataFrame, class_names: list[str]) -> list[str]:
    """Notes when the validation split that every trained method selects on misses a class: its worst-class
    (or worst-group) score then rests on the other classes only (new-user report: a val split of one class made
    "validation worst-class accuracy" that class's accuracy, unsaid)."""
    val = table["y"][table["split"].astype(str) == "val"].to_numpy()
    if not len(val):
        return []
    missing = [class_names[k] if k < len(class_names) else str(k)
               for k in sorted(set(range(len(class_names))) - set(np.unique(val).tolist()))]
    if not missing:
        return []
    return [f"the validation split has no images of class(es) {missing}: model selection (best validation epoch, "
            "hyperparameters) rests on the other class(es) only — add validation images of every class"]


def _bad_rows(arr: np.ndarray) -> np.ndarray:
    """Row indices (int64, ascending) of a 2-D array holding NaN, ±inf or a value beyond ±``MAX_ABS_FEATURE``.

    Checked in row blocks (:func:`clipcal.rowblocks.row_blocks`): ``np.abs`` of all of [N, d] was a temporary as
    large as the array (830 MB for CelebA's 202,599 × 1,024 float32 features) plus an [N, d] bool mask.
    """
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise MethodError(f"expected a 2-D array [rows, columns], got shape {arr.shape}")
    bad = []
    with np.errstate(invalid="ignore"):
        for sl in row_blocks(arr.shape[0], arr.shape[1], itemsize=max(arr.itemsize, 1)):
            bad.append(np.flatnonzero(~(np.abs(arr[sl]) <= MAX_ABS_FEATURE).all(axis=1)) + sl.start)
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


@dataclass
class FeatureData:
    """Cached features of one benchmark under one backbone, joined to the sample table.

    Rows are samples (all splits together, in the sample table's order minus skipped images).

    Attributes:
        features: ``h`` [N, d] float32 — the frozen pre-projection feature (ViT: CLS token after the final
            layer norm; image-only / non-linear-projection backbones: the final embedding itself).
        embeddings: ``z`` [N, e] float32, L2-normalised — the backbone's own image embedding.
        y: [N] int64 class index in ``[0, K)``.
        a: [N] int64 spurious-attribute index, -1 where unknown.
        group: [N] int64 ``y * n_attrs + a``, -1 where unknown.
        split: [N] str array of ``train`` / ``val`` / ``test``.
        sample_ids: [N] str array, unique.
        class_names: K names (index = ``y``).
        attr_names: attribute value names (index = ``a``); empty without attribute labels.
        proj_weight: [d, e] float32 — the backbone's own last layer (``projection == "exact"``), or ``None``.
        projection: ``"exact"`` (``proj_weight`` is the model's own projection) or ``"identity"``
            (an identity-initialised approximation, cfr-method.md "Last layer W").
        text_head: [K, e] float32 zero-shot classifier (unit rows), or ``None`` (no text tower / not computed).
        has_text: whether the backbone has a text tower (zero-shot possible in principle).
        backbone_spec: backbone spec string (for zero-shot with custom prompts and for records).
        benchmark_name: benchmark name (records only).
        last_layer: where ``proj_weight`` comes from, ``{"kind", "source", "description"}``
            (:attr:`clipcal.embed.EmbeddingSet.last_layer`), or ``None`` (not known: synthetic data).
        notes: what was done to the data on the way in (e.g. skipped images dropped).
        features_mapped: keep ``features`` as the store's read-only memory map (float32, C-contiguous) instead
            of a writable copy in memory — the dashboard's choice (:meth:`from_store` with
            ``features_in_memory=False``): its views read ``h`` rarely, and at CelebA size the copy is 830 MB of
            server memory. Anything else given with ``True`` is copied as usual. Training reads a mapped ``h``
            through :meth:`device_features` (a copy made for the fit, released when it ends).

    Raises (on construction):
        MethodError: arrays of different lengths (names both), features/embeddings with NaN or inf (names
            the first rows and sample ids), labels out of range, unknown split values, duplicate ids.
    """

    features: np.ndarray
    embeddings: np.ndarray
    y: np.ndarray
    a: np.ndarray
    group: np.ndarray
    split: np.ndarray
    sample_ids: np.ndarray
    class_names: list[str]
    attr_names: list[str] = field(default_factory=list)
    proj_weight: np.ndarray | None = None
    projection: str = "identity"
    text_head: np.ndarray | None = None
    has_text: bool = False
    backbone_spec: str = ""
    benchmark_name: str = ""
    notes: list[str] = field(default_factory=list)
    last_layer: dict | None = None
    features_mapped: bool = False
    #: {device name: features as a torch tensor on it} — :meth:`device_features`
    _device_copies: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # writable, contiguous float32 (store arrays are read-only memory maps; torch warns on those) — unless
        # the caller keeps h as the store's map (features_mapped)
        self.features_mapped = bool(self.features_mapped) and _is_float32_map(self.features)
        self.features = self.features if self.features_mapped else _writable(self.features, np.float32)
        self.embeddings = _writable(self.embeddings, np.float32)
        if self.features.ndim != 2 or self.embeddings.ndim != 2:
            raise MethodError(f"features must be 2-D [N, d] and embeddings [N, e]; got shapes "
                              f"{self.features.shape} and {self.embeddings.shape}")
        n = len(self.features)
        self.y = _writable(self.y, np.int64).reshape(-1)
        self.a = _writable(self.a, np.int64).reshape(-1)
        self.group = _writable(self.group, np.int64).reshape(-1)
        self.split = np.asarray(self.split).astype(str)
        self.sample_ids = np.asarray(self.sample_ids).astype(str)
        self.class_names = [str(c) for c in self.class_names]
        self.attr_names = [str(c) for c in self.attr_names]
        lengths = {"features": n, "embeddings": len(self.embeddings), "y": len(self.y), "a": len(self.a),
                   "group": len(self.group), "split": len(self.split), "sample_ids": len(self.sample_ids)}
        if len(set(lengths.values())) != 1:
            raise MethodError(
                f"feature arrays and sample table have different lengths: {lengths}",
                hint="the embeddings belong to another version of the benchmark table; re-embed the benchmark")
        for name, arr in (("features", self.features), ("embeddings", self.embeddings)):
            bad = _bad_rows(arr)
            if name == "features" and self.features_mapped:
                from clipcal.store import release_pages

                release_pages(arr)  # the check read every page of the map: do not leave them resident
            if len(bad):
                ids = [str(self.sample_ids[i]) for i in bad[:5]]
                raise MethodError(
                    f"{name} contain NaN, inf or values beyond ±{MAX_ABS_FEATURE:g} in {len(bad)} row(s): rows "
                    f"{bad[:5].tolist()} (sample_id {ids})",
                    hint="these images gave broken features (precision overflow, corrupt file or corrupt "
                         "store); re-embed in float32 or remove them from the benchmark")
        k = len(self.class_names)
        if k < 2:
            raise MethodError(f"need at least 2 classes, got {k} ({self.class_names})")
        if n and (self.y.min() < 0 or self.y.max() >= k):
            rows = np.flatnonzero((self.y < 0) | (self.y >= k))[:5].tolist()
            raise MethodError(f"class index y out of range [0, {k}) in rows {rows}")
        bad_split = ~np.isin(self.split, SPLITS)
        if bad_split.any():
            raise MethodError(f"unknown split value(s) {sorted(set(self.split[bad_split]))[:5]} "
                              f"in rows {np.flatnonzero(bad_split)[:5].tolist()}")
        if len(set(self.sample_ids.tolist())) != n:
            raise MethodError("duplicate sample_ids in feature data")
        if self.proj_weight is not None:
            self.proj_weight = np.asarray(self.proj_weight, dtype=np.float32)
            if self.proj_weight.shape != (self.feature_dim, self.embed_dim):
                raise MethodError(f"proj_weight has shape {self.proj_weight.shape}, expected "
                                  f"[d, e] = {(self.feature_dim, self.embed_dim)}")
            if len(_bad_rows(self.proj_weight)):
                raise MethodError("the stored projection (proj_weight) contains NaN, inf or huge values",
                                  hint="the backbone's weights or the embedding store are corrupt; re-embed")
        if self.text_head is not None:
            self.text_head = np.asarray(self.text_head, dtype=np.float32)
            if self.text_head.shape != (k, self.embed_dim):
                raise MethodError(f"text_head has shape {self.text_head.shape}, expected [K, e] = "
                                  f"{(k, self.embed_dim)}",
                                  hint="compute the text head with the same backbone and class names")
            if len(_bad_rows(self.text_head)):
                raise MethodError("the zero-shot text head contains NaN, inf or huge values",
                                  hint="recompute it (clipcal.embed.class_text_embeddings) with the same backbone")
        if self.projection not in ("exact", "identity"):
            raise MethodError(f"projection must be 'exact' or 'identity', got {self.projection!r}")
        self.notes = list(self.notes)

    # -- sizes ------------------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        """N, the number of samples (all splits)."""
        return len(self.y)

    @property
    def n_classes(self) -> int:
        """K."""
        return len(self.class_names)

    @property
    def n_attrs(self) -> int:
        """Number of attribute values (0 without attribute labels)."""
        return len(self.attr_names)

    @property
    def n_groups(self) -> int:
        """K × n_attrs (0 without attribute labels)."""
        return self.n_classes * self.n_attrs

    @property
    def feature_dim(self) -> int:
        """d, width of ``features``."""
        return int(self.features.shape[1])

    @property
    def embed_dim(self) -> int:
        """e, width of ``embeddings``."""
        return int(self.embeddings.shape[1])

    @property
    def has_attributes(self) -> bool:
        """True when attribute names exist and at least one row has a known attribute."""
        return self.n_attrs > 0 and bool((self.a >= 0).any())

    def group_names(self) -> list[str]:
        """``"<class> / <attribute>"`` for groups 0 … n_groups-1 (same order as ``Benchmark.group_names``)."""
        return [f"{c} / {a}" for c in self.class_names for a in self.attr_names]

    # -- selection --------------------------------------------------------------------------------------
    def mask(self, split: str) -> np.ndarray:
        """[N] bool, rows of ``split``."""
        if split not in SPLITS:
            raise MethodError(f"unknown split {split!r}; expected one of {SPLITS}")
        return self.split == split

    def indices(self, split: str) -> np.ndarray:
        """[n_split] int64 row indices of ``split``, ascending."""
        return np.flatnonzero(self.mask(split)).astype(np.int64)

    def subset(self, split_or_idx) -> "FeatureData":
        """A new FeatureData with only the rows of a split name or an index / bool array (copies)."""
        idx = self.indices(split_or_idx) if isinstance(split_or_idx, str) else np.asarray(split_or_idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return FeatureData(
            features=self.features[idx], embeddings=self.embeddings[idx], y=self.y[idx], a=self.a[idx],
            group=self.group[idx], split=self.split[idx], sample_ids=self.sample_ids[idx],
            class_names=self.class_names, attr_names=self.attr_names, proj_weight=self.proj_weight,
            projection=self.projection, text_head=self.text_head, has_text=self.has_text,
            backbone_spec=self.backbone_spec, benchmark_name=self.benchmark_name, notes=self.notes,
            last_layer=self.last_layer)

    def group_counts(self, split: str = "train") -> np.ndarray:
        """[n_groups] int64 counts of each group in ``split`` (zeros allowed); empty without attributes."""
        g = self.group[self.mask(split)]
        return np.bincount(g[g >= 0], minlength=self.n_groups).astype(np.int64)[: self.n_groups]

    def class_counts(self, split: str = "train") -> np.ndarray:
        """[K] int64 counts of each class in ``split``."""
        return np.bincount(self.y[self.mask(split)], minlength=self.n_classes).astype(np.int64)

    # -- the features on a device -------------------------------------------------------------------------
    def device_features(self, device):
        """``features`` as a float32 torch tensor [N, d] on ``device``, made once per device and shared by every
        evaluator, training loop and stage of the methods fitted on this FeatureData (issue 15.6: each used to
        copy all N × d features — CFR's stage 2 held two copies, cross-fit three). On the CPU a view of the
        array (no copy) — except for features kept as a read-only store map (``features_mapped``), which are
        copied. :meth:`Method.fit` releases the copies it made when it returns.

        Args:
            device: a ``torch.device`` or its name (``"cuda"`` means the current CUDA device).

        Returns:
            torch.Tensor, read-only by convention (never modified in place).
        """
        import torch

        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        key = str(dev)
        t = self._device_copies.get(key)
        if t is None:
            # a read-only store map (features_mapped) is copied: torch tensors over read-only memory are unsafe
            t = self._device_copies[key] = torch.from_numpy(_writable(self.features, np.float32)).to(dev)
        return t

    def release_device_copies(self, keep=()) -> None:
        """Drop the device copies of the features (all but the device names in ``keep``)."""
        for key in [k for k in self._device_copies if k not in keep]:
            del self._device_copies[key]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_device_copies"] = {}  # never pickle a GPU tensor (jobs, workers): it is rebuilt on demand
        return state

    # -- checks -----------------------------------------------------------------------------------------
    def check_trainable(self, need_val: bool = True) -> None:
        """Raise :class:`MethodError` unless every class has training samples (and, if asked, val exists).

        Called by every method that trains; zero-shot does not need it.
        """
        counts = self.class_counts("train")
        absent = [self.class_names[k] for k in np.flatnonzero(counts == 0)]
        if absent:
            raise MethodError(
                f"class(es) {absent} have no training samples (train counts per class: "
                f"{dict(zip(self.class_names, counts.tolist()))})",
                hint="every class needs training images; fix the split column or drop the class")
        if need_val and not self.mask("val").any():
            raise MethodError("the benchmark has no validation samples; model selection needs them",
                              hint="add rows with split = val (e.g. hold out part of train)")

    def check_attributes(self, split: str = "val") -> None:
        """Raise :class:`MethodError` unless ``split`` has attribute (group) labels (methods that use them)."""
        if not self.has_attributes or not (self.a[self.mask(split)] >= 0).any():
            raise MethodError(
                f"this method needs spurious-attribute (group) labels on the {split} split, and there are none",
                hint="use an annotation-free method (ERM, JTT, AFR, CFR) or add an attribute column 'a'")

    # -- construction -----------------------------------------------------------------------------------
    @classmethod
    def from_store(cls, benchmark, embedding_set, text_head: np.ndarray | None = None,
                   features_in_memory: bool = True) -> "FeatureData":
        """Join a :class:`~clipcal.data.base.Benchmark` table with an ``EmbeddingSet`` by ``sample_id``.

        Rows of the table that have no embedding (images skipped while embedding, see
        ``embedding_set.skipped``) are dropped and a note records how many and why.

        Args:
            benchmark: the Benchmark (``table``, ``class_names``, ``attr_names``).
            embedding_set: ``clipcal.embed.EmbeddingSet`` (``sample_ids``, ``features``, ``embeddings``,
                ``proj_weight``, ``projection``, ``has_text``, ``backbone_spec``, ``skipped``, ``last_layer``).
            text_head: [K, e] zero-shot head (e.g. ``clipcal.embed.class_text_embeddings``) or ``None``.
            features_in_memory: ``False`` keeps ``features`` as the store's read-only memory map when the table's
                rows are the stored rows in stored order (``features_mapped``; the dashboard, issue 14: 830 MB
                less per server at CelebA size); otherwise, and by default, they are copied into memory.

        Raises:
            MethodError: the embedding set holds ids the table does not know (stale embeddings), or any
                check of the constructor fails.
        """
        table = benchmark.table
        ids = np.asarray(embedding_set.sample_ids).astype(str)
        pos = pd.Series(np.arange(len(ids)), index=ids)
        unknown = ~pd.Index(ids).isin(table["sample_id"])
        if unknown.any():
            raise MethodError(
                f"{int(unknown.sum())} embedded sample_id(s) are not in the benchmark table, e.g. "
                f"{ids[unknown][:3].tolist()}",
                hint="the embeddings were made from another version of the benchmark; re-embed it")
        have = table["sample_id"].isin(pos.index).to_numpy()
        notes = []
        if not have.all():
            skipped = getattr(embedding_set, "skipped", None)
            reasons = ""
            if skipped is not None and len(skipped) and "reason" in skipped:
                top = skipped["reason"].astype(str).value_counts().head(3)
                reasons = "; reasons: " + ", ".join(f"{r} ({c})" for r, c in top.items())
            notes.append(f"{int((~have).sum())} sample(s) without embeddings (skipped images) dropped{reasons}")
        t = table[have]
        notes += _selection_notes(t, list(benchmark.class_names))
        rows = pos.loc[t["sample_id"].to_numpy()].to_numpy()
        # row blocks releasing a store map's pages as they go: no second full-size copy beside the mapped file
        # (issue 14.3: CelebA's features + embeddings were 1.45 GB of pages next to their copies)
        stored = np.asarray(embedding_set.features)
        keep_map = (not features_in_memory and _is_float32_map(stored) and len(rows) == len(stored)
                    and bool((rows == np.arange(len(stored))).all()))
        feats = stored if keep_map else take_rows(stored, rows, stored.dtype)
        embs = np.asarray(embedding_set.embeddings)
        embs = take_rows(embs, rows, embs.dtype)
        return cls(
            features=feats, features_mapped=keep_map, embeddings=embs, y=t["y"].to_numpy(),
            a=t["a"].to_numpy(),
            group=t["group"].to_numpy(), split=t["split"].astype(str).to_numpy(),
            sample_ids=t["sample_id"].to_numpy(), class_names=list(benchmark.class_names),
            attr_names=list(benchmark.attr_names),
            proj_weight=getattr(embedding_set, "proj_weight", None),
            projection=getattr(embedding_set, "projection", "identity") or "identity",
            text_head=text_head, has_text=bool(getattr(embedding_set, "has_text", False)),
            backbone_spec=str(getattr(embedding_set, "backbone_spec", "")),
            benchmark_name=str(getattr(benchmark, "name", "")), notes=notes,
            last_layer=getattr(embedding_set, "last_layer", None) or None)


# ---------------------------------------------------------------------------------------------------------
# MethodResult
# ---------------------------------------------------------------------------------------------------------


def empty_curves() -> pd.DataFrame:
    """An empty curves table with the standard columns (epoch, stage, split, metric, value)."""
    return pd.DataFrame({"epoch": pd.Series(dtype="int64"), "stage": pd.Series(dtype="str"),
                         "split": pd.Series(dtype="str"), "metric": pd.Series(dtype="str"),
                         "value": pd.Series(dtype="float64")})


@dataclass
class MethodResult:
    """What a fitted method produced, for every sample of the FeatureData it was fitted on.

    Attributes:
        method: registry name (``"erm"``, ``"cfr"`` …).
        probs: [N, K] float32 class probabilities (rows sum to 1), every split.
        pred: [N] int64 argmax of ``probs``.
        embeddings_after: [N, e] float32 L2-normalised calibrated embeddings ``normalize(h W)``, or
            ``None`` when the method does not change the representation (zero-shot, DFR).
        calibration_set: int64 row indices (into the FeatureData) of the calibration / error set, or ``None``.
        record: JSON-able dict — ``uses_group_labels`` (bool), ``selection_rule`` (str), ``hparams`` (dict),
            ``seed`` (int | None), ``chosen_epoch`` (int | None), ``notes`` (list of str: fall-backs,
            replacement sampling …), plus method-specific keys (``device``, ``fit_seconds``, ``train_loss``…).
        curves: DataFrame with columns ``epoch, stage, split, metric, value`` (long format; may be empty).
        fitted: the fitted last layer and head (:class:`~clipcal.methods.fitted.FittedLastLayer`) that gives
            ``probs`` and ``embeddings_after`` from the features, or ``None`` (a method, or a stored run from
            before fitted layers were kept, that cannot be applied to new features).
    """

    method: str
    probs: np.ndarray
    pred: np.ndarray
    embeddings_after: np.ndarray | None = None
    calibration_set: np.ndarray | None = None
    record: dict = field(default_factory=dict)
    curves: pd.DataFrame = field(default_factory=empty_curves)
    fitted: FittedLastLayer | None = None

    def __post_init__(self) -> None:
        self.probs = np.asarray(self.probs, dtype=np.float32)
        self.pred = np.asarray(self.pred, dtype=np.int64)
        if self.embeddings_after is not None:
            self.embeddings_after = np.asarray(self.embeddings_after, dtype=np.float32)
        if self.calibration_set is not None:
            self.calibration_set = np.asarray(self.calibration_set, dtype=np.int64)
        for key, default in (("uses_group_labels", False), ("selection_rule", ""), ("hparams", {}),
                             ("seed", None), ("chosen_epoch", None), ("notes", [])):
            self.record.setdefault(key, default)
        if self.curves is None or len(self.curves.columns) == 0:
            self.curves = empty_curves()

    @property
    def notes(self) -> list[str]:
        """``record["notes"]``."""
        return self.record["notes"]


# ---------------------------------------------------------------------------------------------------------
# Method
# ---------------------------------------------------------------------------------------------------------


class Method:
    """Base class of calibration methods (scikit-learn style estimator over :class:`FeatureData`).

    Subclasses set the class attributes, define ``__init__`` with every hyperparameter as a keyword argument
    (stored unchanged under the same name, defaults equal to ``HPARAMS``), and implement
    ``_fit(data, progress, cancel) -> MethodResult``.

    Class attributes:
        name: registry key, e.g. ``"erm"``.
        label: display name, e.g. ``"ERM (last layer)"``.
        uses_group_labels: True when training or model selection reads attribute (group) labels.
        needs_text: True when the backbone must have a text tower.
        needs_training: True when the method trains on the train split (checks every class is present).
        description: one line for the dashboard.
        HPARAMS: ``{name: (default, one-line help)}`` for every constructor argument, in display order.
        PARAM_CONSTRAINTS: ``{name: [constraint, …]}`` — the domain of every constructor argument, declared
            once (:mod:`clipcal.methods.params`: ``Interval(Real, 0, None, closed="neither")``,
            ``StrOptions(…)``, ``Boolean()``, ``None`` …; any one constraint may hold). Shared last-layer
            hyperparameters come from one dict (``clipcal.methods._train.LAST_LAYER_CONSTRAINTS``).
        CHOICES: ``{name: (allowed values, …)}`` — derived from ``PARAM_CONSTRAINTS`` (every hyperparameter
            whose domain is one ``StrOptions``), for the dashboard's select boxes. Not declared by hand.
    """

    name: ClassVar[str] = "base"
    label: ClassVar[str] = "base"
    uses_group_labels: ClassVar[bool] = False
    needs_text: ClassVar[bool] = False
    needs_training: ClassVar[bool] = True
    description: ClassVar[str] = ""
    HPARAMS: ClassVar[dict[str, tuple[Any, str]]] = {}
    PARAM_CONSTRAINTS: ClassVar[dict[str, list]] = {}
    CHOICES: ClassVar[dict[str, tuple]] = {}

    result_: MethodResult
    #: fitted state, set by :meth:`fit` (absent before): the last layer [d, e], class head [K, e], logit scale,
    #: bias [K] and class names — see :class:`~clipcal.methods.fitted.FittedLastLayer`
    W_: np.ndarray
    head_: np.ndarray
    scale_: float
    bias_: np.ndarray
    classes_: list[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.CHOICES = choices_of(cls.PARAM_CONSTRAINTS)  # one declaration: the domains

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def get_params(self) -> dict:
        """Hyperparameters as given to the constructor (JSON-able values expected)."""
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params) -> "Method":
        """Set hyperparameters by name; unknown names raise :class:`MethodError`."""
        names = self._param_names()
        for k, v in params.items():
            if k not in names:
                raise MethodError(f"{self.name} has no hyperparameter {k!r}",
                                  hint=f"known: {', '.join(names)}")
            setattr(self, k, v)
        return self

    def check_params(self) -> None:
        """Check every hyperparameter value against its declared domain (``PARAM_CONSTRAINTS``), before any work.

        The one entry point for value checks: :meth:`fit` calls it, and :func:`clipcal.runs.resolve_hparams`
        (used by the CLI and the Calibrate page) calls it on what the user typed. Subclasses add checks that
        involve several hyperparameters by overriding and calling ``super().check_params()`` first.

        Raises:
            MethodError: ``"<method>.<name> must be <domain>, got <value>"`` (NaN and ±inf are outside every
                numeric domain), with the default in the hint.
        """
        validate_params(self.PARAM_CONSTRAINTS, self.get_params(), self.name, self.defaults())

    @classmethod
    def defaults(cls) -> dict:
        """``{name: default}`` from ``HPARAMS``."""
        return {k: v[0] for k, v in cls.HPARAMS.items()}

    def fit(self, data: FeatureData, progress: ProgressFn | None = None, cancel=None) -> "Method":
        """Fit on ``data`` (train for fitting, val for model selection) and set ``result_``.

        Args:
            data: the FeatureData (all splits).
            progress: optional callback receiving :class:`Progress`.
            cancel: optional ``threading.Event``; when set, raises :class:`~clipcal.errors.Cancelled`.

        Returns:
            self.

        Raises:
            MethodError: a hyperparameter outside its domain; input the method cannot use (class absent from
                train, no validation split, missing group labels for DFR …). NoTextTowerError: zero-shot on an
                image-only backbone. NonFiniteError (a MethodError): the training loss, the model's outputs or
                the validation score became NaN / inf — the method stops and returns nothing.
                DeviceOutOfMemoryError (a MethodError): the device ran out of memory (stage and what to do
                named; memory released).
            Cancelled: ``cancel`` was set.
        """
        if not isinstance(data, FeatureData):
            raise MethodError(f"{self.name}.fit expects a FeatureData, got {type(data).__name__}")
        self.check_params()
        if self.needs_training:
            data.check_trainable()
        check_cancel(cancel)
        had = tuple(data._device_copies)
        oom = None
        try:
            result = self._fit(data, progress, cancel)
        except NonFiniteError as err:  # name the method: the stage alone ("erm") is ambiguous inside CFR / JTT
            raise NonFiniteError(f"{self.name}: {err.message}", hint=err.hint) from None
        except DeviceOutOfMemoryError as err:  # from the epoch loop, which names the stage
            oom = (err.message, err.hint)
        except RuntimeError as err:           # elsewhere (first device copy, evaluation, negative mining)
            if not is_out_of_memory(err):
                raise
            oom = (f"out of device memory while fitting ({str(err).splitlines()[0][:200]})", OOM_HINT)
        finally:
            data.release_device_copies(keep=had)  # the copies this fit made; a caller's own stay
        if oom is not None:  # outside the except: the failed step's tensors are no longer referenced
            free_device_memory()
            raise DeviceOutOfMemoryError(f"{self.name}: {oom[0]}", hint=oom[1])
        result.record["hparams"] = jsonable(self.get_params())
        result.record.setdefault("uses_group_labels", self.uses_group_labels)
        result.record["uses_group_labels"] = bool(result.record["uses_group_labels"])
        result.record["notes"] = list(data.notes) + list(result.record.get("notes", []))
        if result.probs.shape != (data.n, data.n_classes):
            raise AssertionError(f"{self.name} returned probs of shape {result.probs.shape}")
        for attr in ("W_", "head_", "scale_", "bias_"):  # a refit never keeps a previous fit's layer
            self.__dict__.pop(attr, None)
        if result.fitted is not None:
            f = result.fitted
            self.W_, self.head_, self.scale_, self.bias_ = f.W, f.head, f.scale, f.bias
        self.classes_ = list(data.class_names)
        self.result_ = result
        return self

    # -- inductive use of the fitted model ---------------------------------------------------------------
    def fitted_last_layer(self, what: str = "fitted_last_layer") -> FittedLastLayer:
        """The fitted last layer and head as a :class:`~clipcal.methods.fitted.FittedLastLayer`.

        Raises:
            NotFittedError: :meth:`fit` has not been called (sklearn's wording: "not fitted yet").
            MethodError: the method has no last layer to apply to new features (zero-shot / DFR on an embedding
                set that stores no projection and whose features are not the embeddings).
        """
        if "result_" not in self.__dict__:
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet: call fit(data) before "
                                 f"using {what}",
                                 hint=f"e.g. {type(self).__name__}().fit(FeatureData.from_store(benchmark, "
                                      "embedding_set)) — or rebuild a stored run's model with Run.fitted(method)")
        if "W_" not in self.__dict__:
            raise MethodError(f"{self.name} has no last layer to apply to new features: the embedding set stores "
                              "no projection and its features are not the embeddings",
                              hint="use the fitted result (result_) for the rows it was fitted on")
        return FittedLastLayer(W=self.W_, head=self.head_, scale=self.scale_, bias=self.bias_,
                               classes=tuple(self.classes_))

    def predict_proba(self, h) -> np.ndarray:
        """Class probabilities [n, K] float32 for new pre-projection features ``h`` [n, d] (float32).

        ``softmax(scale_ · normalize(h W_) head_ᵀ + bias_)`` — for the rows the method was fitted on, equal to
        ``result_.probs`` (≈ 1e-6). Raises NotFittedError before :meth:`fit`; MethodError for features of the
        wrong width or with NaN / inf (the rows are named)."""
        return self.fitted_last_layer("predict_proba").predict_proba(h)

    def predict(self, h) -> np.ndarray:
        """Class indices [n] int64 for new pre-projection features ``h`` [n, d] (argmax of the logits)."""
        return self.fitted_last_layer("predict").predict(h)

    def transform(self, h) -> np.ndarray:
        """Calibrated L2-normalised embeddings ``normalize(h W_)`` [n, e] float32 for features ``h`` [n, d]."""
        return self.fitted_last_layer("transform").transform(h)

    def _fit(self, data: FeatureData, progress: ProgressFn | None, cancel) -> MethodResult:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [N, K] logits → float32 probabilities (stable: max subtracted)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
