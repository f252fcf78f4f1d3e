"""Batched, resumable embedding of a benchmark with a backbone, cached in the store (design.md, "Store").

``embed_benchmark`` reads images with the one image reader (:func:`clipcal.data.images.load_image`) in
DataLoader workers, preprocesses them there, encodes batches under ``torch.inference_mode`` (autocast bf16 /
fp16 on CUDA), and writes **shards** of ``SHARD_SIZE`` table rows into ``store.partial_dir``: per shard
``shard-<i>.features.npy``, ``.embeddings.npy``, ``.rows.npy`` and, last and atomically, ``shard-<i>.json``
(rows covered, images skipped with their reasons, the sha256 of each array file, and a checksum of itself).
A killed or cancelled run keeps its finished shards; the next run reuses a shard only if it passes those
checksums (a corrupt one is embedded again) and embeds the others. When every shard exists they are verified
again, assembled into one store entry (kind ``embeddings``) and the shards are removed:

=============== ============================= ==============================================================
array           shape, dtype                  meaning
=============== ============================= ==============================================================
``features``    [N, d] float32                pre-projection feature h (what CFR trains from)
``embeddings``  [N, e] float32                final embedding z, L2-normalised
``sample_ids``  [N] unicode                   the benchmark's ``sample_id`` of each row (table order)
``proj_weight`` [d, e] float32                the backbone's last layer W with z = normalize(h W)
=============== ============================= ==============================================================

``manifest["meta"]["compute"]`` records how they were computed (device with its index, GPU name, torch / CUDA /
cuDNN versions, precision, TF32 and cuDNN flags; :func:`clipcal.backbones.devices.compute_record`).

N is the number of images that could be read; the others are listed in ``manifest["meta"]["skipped"]`` and in
:attr:`EmbeddingSet.skipped` (``sample_id, reason``) — never dropped silently. The key is
``{"benchmark": fingerprint, "backbone": Backbone.identity(), "format": 1}``, so a second call embeds nothing,
and two processes embedding the same key take turns (the second finds the first one's entry).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from clipcal.errors import BackboneError, Cancelled, ClipcalError, DataError, StoreError
from clipcal.paths import unwritable
from clipcal.store import Entry, Store, check_seal, seal

SHARD_SIZE = 1024
EMBED_FORMAT = 1
KIND = "embeddings"


@dataclass(frozen=True)
class Progress:
    """One progress report of :func:`embed_benchmark`.

    Attributes:
        done: table rows finished (embedded or skipped), including shards finished by earlier runs.
        total: rows in the benchmark.
        images_per_s: rows per second in this run (``None`` before the first batch).
        eta_s: seconds left at that rate (``None`` when unknown).
        message: what is happening (``"embedding"``, ``"resuming: 3 of 5 shards done"``, …).
    """

    done: int
    total: int
    images_per_s: float | None = None
    eta_s: float | None = None
    message: str = ""


@dataclass
class EmbeddingSet:
    """Embeddings of one benchmark by one backbone, as stored.

    Attributes:
        sample_ids: [N] str array, the benchmark's ``sample_id`` per row (table order, skipped rows left out).
        features: [N, d] float32, pre-projection features h (read-only memory map when loaded from the store).
        embeddings: [N, e] float32, L2-normalised final embeddings z.
        proj_weight: [d, e] float32 with z = normalize(h @ proj_weight), or None.
        projection: ``"exact"`` or ``"identity"`` (see :class:`clipcal.backbones.Backbone`).
        has_text: whether the backbone has a text tower.
        backbone_spec: canonical spec string.
        skipped: DataFrame ``sample_id, reason`` of unreadable images.
        key: store key; manifest: the entry's manifest.
        n_computed: images encoded by the call that returned this (0 when everything came from the store;
            skipped rows never count).
        last_layer: where ``proj_weight`` comes from, ``{"kind", "source", "description"}``
            (:attr:`clipcal.backbones.Backbone.last_layer`, recorded at embedding time; derived from the spec for
            sets stored before it was recorded) — what methods read instead of the spec.
    """

    sample_ids: np.ndarray
    features: np.ndarray
    embeddings: np.ndarray
    proj_weight: np.ndarray | None
    projection: str
    has_text: bool
    backbone_spec: str
    skipped: pd.DataFrame
    key: str
    manifest: dict = field(default_factory=dict)
    n_computed: int = 0
    last_layer: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def summary(self) -> str:
        """One line on what this call produced, e.g. ``"embedded 5 images in this run; 3 skipped (…)"``
        (the CLI prints it; the Embed page can show it): counts images *encoded*, not table rows walked."""
        n, new = len(self), self.n_computed
        if new == 0:
            text = f"already embedded: {n:,} image{'s' * (n != 1)} from the store"
        else:
            text = f"embedded {new:,} image{'s' * (new != 1)} in this run"
            if n > new:
                text += f" ({n - new:,} more from an earlier, interrupted run)"
        k = len(self.skipped)
        return text + (f"; {k:,} skipped (unreadable or missing, listed with reasons)" if k else "")

    @classmethod
    def from_entry(cls, entry: Entry, n_computed: int = 0) -> "EmbeddingSet":
        """Build from a store entry (arrays memory-mapped, read-only)."""
        from clipcal.backbones import stored_last_layer

        meta = entry.meta
        sk = meta.get("skipped", [])
        spec = meta.get("backbone_spec", entry.key_fields.get("backbone", {}).get("spec", "?"))
        return cls(
            sample_ids=entry.array("sample_ids", mmap=False).astype(str),
            features=entry.array("features"),
            embeddings=entry.array("embeddings"),
            proj_weight=entry.array("proj_weight", mmap=False) if "proj_weight" in entry.names else None,
            projection=meta.get("projection", "identity"),
            has_text=bool(meta.get("has_text", False)),
            backbone_spec=spec,
            skipped=pd.DataFrame(sk, columns=["sample_id", "reason"]) if sk else
            pd.DataFrame({"sample_id": pd.Series(dtype=str), "reason": pd.Series(dtype=str)}),
            key=entry.key,
            manifest=entry.manifest,
            n_computed=n_computed,
            last_layer=meta.get("last_layer") or stored_last_layer(spec, meta.get("projection", "identity")),
        )


class NothingEmbeddedError(DataError):
    """No image of a benchmark could be embedded (all missing or unreadable): nothing was stored.

    Attributes:
        skipped: DataFrame ``sample_id, reason`` of every row (for a table next to the message).
    """

    def __init__(self, benchmark_name: str, skipped: pd.DataFrame):
        self.skipped = skipped
        n = len(skipped)
        if n == 0:
            super().__init__(f"{benchmark_name} has no rows: there is nothing to embed, and nothing was stored",
                             hint="check the metadata file (and the split / path columns it is read with)")
            return
        top = skipped["reason"].map(_reason_kind).value_counts()
        why = ", ".join(f"{c} × {r}" for r, c in top.head(3).items())
        first = "; ".join(f"{s}: {r}" for s, r in skipped.head(3).itertuples(index=False))
        super().__init__(
            f"no image could be embedded: all {n:,} of {n:,} rows of {benchmark_name} were skipped ({why}; "
            f"e.g. {first}); nothing was stored",
            hint=f"`python -m clipcal data validate --benchmark {benchmark_name} …` lists every problem; check "
                 "--root / --image-dir and the path column, or fetch the files (git lfs pull, git annex get)")


def _reason_kind(reason: str) -> str:
    """The kind of a skip reason without its path (``"image not found: /x/1.jpg"`` → ``"image not found"``)."""
    return str(reason).split(":", 1)[0]


def _usable(entry: Entry | None) -> Entry | None:
    """``entry`` unless it is no valid result for its key: it holds no embedding at all (stored by versions before
    :class:`NothingEmbeddedError`), or it is an ``fp32`` set computed on CUDA before TF32 was decided explicitly
    (no ``meta["compute"]``: torch's default had cuDNN convolutions in TF32, so it is not the true-fp32 set its key
    names). Such entries are never served; embedding again replaces them."""
    if entry is None:
        return None
    shape = entry.manifest.get("arrays", {}).get("sample_ids", {}).get("shape") or [1]
    meta = entry.manifest.get("meta") or {}
    legacy_tf32 = (entry.key_fields.get("backbone", {}).get("precision") == "fp32" and "compute" not in meta
                   and str(meta.get("device", "")).startswith("cuda"))
    return entry if int(shape[0]) > 0 and not legacy_tf32 else None


def embedding_key(benchmark, identity: dict) -> dict:
    """Store key fields of a benchmark × backbone identity (:meth:`Backbone.identity`)."""
    return {"format": EMBED_FORMAT, "benchmark": benchmark.fingerprint(), "backbone": identity}


#: Images per forward pass on the CPU when the caller gives none. Lite0 @160 px, fp32 channels-last, on the
#: 2-core CPU (issue 13.3; measured under load 8–11, so CPU seconds per image, not wall): 14–19 ms at batch 16
#: against 21–26 ms at 64 for the raw forward, 20 vs 24 ms in the pipeline — a batch's activations (32 × 80 × 80
#: floats per image in the first layers) then stay in the cache. The embeddings are the same bytes at every
#: batch size (hashes compared at 8, 16, 32 and 64).
CPU_BATCH_SIZE = 16
#: Images per forward pass elsewhere (CUDA, MPS) when the caller gives none.
DEVICE_BATCH_SIZE = 64


def default_batch_size(device: str) -> int:
    """Images per forward pass when the caller gives none: :data:`CPU_BATCH_SIZE` on the CPU,
    :data:`DEVICE_BATCH_SIZE` on an accelerator (``device`` as :attr:`clipcal.backbones.Backbone.device`)."""
    return CPU_BATCH_SIZE if str(device).split(":")[0] == "cpu" else DEVICE_BATCH_SIZE


def default_num_workers(device: str) -> int:
    """DataLoader workers: on CUDA up to 8 (cores − 1); on the CPU ``max(1, cores // 2)``, capped at 4,
    since the forward pass itself uses the cores (measured in bench/embed_throughput.py)."""
    n = os.cpu_count() or 1
    if device.startswith("cuda"):
        return max(1, min(8, n - 1))
    return max(1, min(4, n // 2))


# ---------------------------------------------------------------------------------------------------------
# data loading
# ---------------------------------------------------------------------------------------------------------
def _read_image(path):
    try:
        from clipcal.data.images import load_image
    except ImportError:  # pragma: no cover - the data package ships it; minimal fallback
        from PIL import Image

        def load_image(p):
            with Image.open(p) as im:
                return im.convert("RGB")

    return load_image(path)


class _ImageDataset:
    """Map-style dataset: row index → (row, tensor [3,H,W] or None, reason).

    ``preprocess`` must be a plain picklable transform (:attr:`clipcal.backbones.Backbone.transform`), not a bound
    method of the backbone: DataLoader workers receive this object pickled (spawn / forkserver), model and all.
    """

    def __init__(self, paths: list[str], preprocess: Callable):
        self.paths = paths
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            x = self.preprocess(_read_image(self.paths[i]))
            return i, x, ""
        except DataError as err:
            return i, None, err.message
        except Exception as err:  # noqa: BLE001 - any decode/preprocess failure is reported, not fatal
            return i, None, f"{type(err).__name__}: {err}"


def _collate(items):
    import torch

    good = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, r) for i, x, r in items if x is None]
    rows = [i for i, _ in good]
    x = torch.stack([x for _, x in good]) if good else None
    return rows, x, bad


# ---------------------------------------------------------------------------------------------------------
# shards
# ---------------------------------------------------------------------------------------------------------
def _shard_name(i: int) -> str:
    return f"shard-{i:05d}"


_SHARD_PARTS = ("features", "embeddings", "rows")
_SHARD_SEAL = "shard_sha256"


def _write_shard(folder: Path, i: int, start: int, stop: int, rows: list[int], feats: np.ndarray,
                 embs: np.ndarray, skipped: list[tuple[int, str, str]]) -> None:
    """Write one shard: arrays under temporary names, renamed, then the json (its presence = complete).

    The json records the sha256 of each array file's bytes (hashed from the bytes written) and a checksum of
    itself (:func:`clipcal.store.seal`), so a shard that changed on disk before it is reused is detected
    (:func:`_read_shard`) instead of being sealed into the entry with a fresh, valid checksum.

    Raises:
        StoreError: the shard folder cannot be written (read-only store, disk full).
    """
    name = _shard_name(i)
    tag = uuid.uuid4().hex[:8]
    sums = {}
    try:
        for suffix, arr in zip(_SHARD_PARTS, (feats, embs, np.asarray(rows, dtype=np.int64))):
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
            data = buf.getvalue()
            sums[suffix] = hashlib.sha256(data).hexdigest()
            tmp = folder / f".{name}.{suffix}.{tag}.npy"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, folder / f"{name}.{suffix}.npy")
        info = seal({"index": i, "start": start, "stop": stop, "n": len(rows),
                     "skipped": [[r, sid, reason] for r, sid, reason in skipped], "sha256": sums},
                    field=_SHARD_SEAL)
        tmp = folder / f".{name}.{tag}.json"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(info, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / f"{name}.json")
    except OSError as err:
        raise unwritable(folder, err, "shard folder of the store") from None


def _read_shard(folder: Path, i: int, start: int, stop: int, d: int, e: int) -> dict | None:
    """Load a finished shard, verified by content, or return None (missing, partial, changed or inconsistent
    with its plan → embed it again).

    Checks: the json's own checksum; each array file's sha256 against the one recorded when it was written
    (hashed from the same bytes that are then parsed, so one read); shapes, dtypes, and rows strictly
    increasing inside ``[start, stop)``.
    """
    name = _shard_name(i)
    try:
        info = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
        if not check_seal(info, _SHARD_SEAL) or (info.get("index"), info.get("start"), info.get("stop")) != \
                (i, start, stop):
            return None
        arrays = {}
        for suffix in _SHARD_PARTS:
            data = (folder / f"{name}.{suffix}.npy").read_bytes()
            if hashlib.sha256(data).hexdigest() != info["sha256"][suffix]:
                return None
            arrays[suffix] = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    feats, embs, rows = arrays["features"], arrays["embeddings"], arrays["rows"]
    n = info.get("n")
    if feats.shape != (n, d) or embs.shape != (n, e) or rows.shape != (n,):
        return None
    if feats.dtype != np.float32 or embs.dtype != np.float32 or rows.dtype != np.int64:
        return None
    if n and (rows[0] < start or rows[-1] >= stop or (np.diff(rows) <= 0).any()):
        return None
    return {"info": info, "features": feats, "embeddings": embs, "rows": rows}


def _plan(folder: Path, plan: dict) -> None:
    """Make the shard folder match ``plan`` (rows, shard size, ids); clear it when an old plan differs."""
    pf = folder / "plan.json"
    try:
        old = json.loads(pf.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if old != plan:
        try:
            for p in folder.iterdir():
                if p.is_file():
                    p.unlink()
            tmp = folder / ".plan.json.tmp"
            tmp.write_text(json.dumps(plan), encoding="utf-8")
            os.replace(tmp, pf)
        except OSError as err:
            raise unwritable(folder, err, "shard folder of the store") from None


# ---------------------------------------------------------------------------------------------------------
# the embedding loop
# ---------------------------------------------------------------------------------------------------------
#: allocation failures as the CUDA libraries name them in torch's error text (upper case; matched as substrings):
#: the caching allocator ("CUDA out of memory", also MPS's "MPS backend out of memory"), the CUDA runtime
#: ("CUDA error: out of memory"), cuBLAS ("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
#: cuDNN ≤ 8 ("cuDNN error: CUDNN_STATUS_ALLOC_FAILED") and cuDNN 9's split codes (…_DEVICE_ALLOCATION_FAILED /
#: …_HOST_ALLOCATION_FAILED), cuSOLVER, and torch's CPU allocator. Not here: a bare CUDNN_STATUS_INTERNAL_ERROR or
#: CUBLAS_STATUS_EXECUTION_FAILED (often a bug or a bad input, not memory: halving would hide it).
OOM_MARKERS = ("OUT OF MEMORY", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
               "CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED",
               "CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED", "CUSOLVER_STATUS_ALLOC_FAILED",
               "DEFAULTCPUALLOCATOR: CAN'T ALLOCATE MEMORY")


def _is_oom(err: BaseException) -> bool:
    """Whether ``err`` is a failed memory allocation that a smaller batch may avoid: ``torch.OutOfMemoryError``
    (``torch.cuda.OutOfMemoryError``) or a ``RuntimeError`` naming one of :data:`OOM_MARKERS`."""
    import torch

    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err).upper()
    return isinstance(err, RuntimeError) and any(m in text for m in OOM_MARKERS)


def _release_memory(device: str) -> None:
    """Return the caching allocator's free blocks to the device after an out-of-memory error. Called after the
    ``except`` block has ended, so that the exception's traceback — whose frames hold the failed batch's
    activations — is gone and those tensors are freed first (``gc.collect`` breaks any cycle through the frames)."""
    import gc

    import torch

    gc.collect()
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


class _Encoder:
    """Calls ``backbone.encode_images`` in micro-batches; on out-of-memory (:func:`_is_oom`) releases the memory
    and retries with half the micro-batch."""

    def __init__(self, backbone, batch_size: int, report: Callable[[str], None]):
        self.backbone = backbone
        self.micro = batch_size
        self.report = report

    def __call__(self, x):
        import torch

        hs, zs = [], []
        i = 0
        while i < len(x):
            chunk = x[i:i + self.micro]
            oom = False
            try:
                h, z = self.backbone.encode_images(chunk)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
                if not _is_oom(err):
                    raise
                oom = True  # the memory is released below, once `err` and its traceback are dropped
            if oom:
                del chunk
                _release_memory(self.backbone.device)
                if self.micro <= 1:
                    raise BackboneError("out of memory even with batch size 1",
                                        hint="use a smaller model, --precision bf16/fp16, or another device")
                self.micro = max(1, self.micro // 2)
                self.report(f"out of memory: batch size halved to {self.micro}")
                continue
            hs.append(h.numpy())
            zs.append(z.numpy())
            i += len(chunk)
        return np.concatenate(hs), np.concatenate(zs)


def _acquire(lock, cancel: threading.Event | None, on_wait: Callable[[], None]) -> None:
    """Acquire a FileLock while watching ``cancel``; call ``on_wait`` once if we have to wait."""
    import filelock

    waited = False
    while True:
        try:
            lock.acquire(timeout=0.5)
            return
        except filelock.Timeout:
            if not waited:
                on_wait()
                waited = True
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled while waiting for another process embedding the same images")


def embed_benchmark(benchmark, backbone, store: Store | None = None, batch_size: int | None = None,
                    num_workers: int | None = None, device: str = "auto", precision: str = "auto",
                    progress: Callable[[Progress], Any] | None = None, cancel: threading.Event | None = None,
                    shard_size: int = SHARD_SIZE, engine: str = "local", address: str | None = None,
                    max_retries: int | None = None) -> EmbeddingSet:
    """Embed every image of a benchmark (or return the stored result), resumably.

    Args:
        benchmark: a :class:`clipcal.data.base.Benchmark`.
        backbone: a loaded :class:`clipcal.backbones.Backbone`, or a spec string (then loaded with ``device``
            and ``precision``, which are otherwise the backbone's own).
        store: the :class:`~clipcal.store.Store` (default: ``Store()`` at ``clipcal.paths.cache_dir()``).
        batch_size: images per forward pass (halved automatically on CUDA out-of-memory); ``None`` →
            :func:`default_batch_size` of the backbone's device (16 on the CPU, 64 on CUDA).
        num_workers: DataLoader worker processes decoding images; ``None`` → :func:`default_num_workers`;
            0 decodes in this thread.
        device, precision: used only when ``backbone`` is a spec string.
        progress: called with a :class:`Progress` after each batch (and on resume / wait / OOM messages).
        cancel: a ``threading.Event``; when set, the run stops after the current batch.
        shard_size: table rows per shard (resume granularity).
        engine: ``"local"`` (this process) or ``"ray"`` (Ray actors encode the shards; this process plans, holds
            the lock and writes the entry, which is the same: :mod:`clipcal.embed_ray`, docs/scale.md). With
            ``"ray"``, ``device`` says which devices the workers use (``"cpu"``, else GPUs where the cluster has
            them) and ``num_workers`` is per worker.
        address: ``"ray"`` only: ``HOST:PORT`` of a running cluster; ``None`` starts a local one for the job.
        max_retries: ``"ray"`` only: how often a failed shard is submitted again (default 2).

    Returns:
        :class:`EmbeddingSet` (from the store; ``n_computed`` says how many images this call encoded).

    Raises:
        Cancelled: ``cancel`` was set; finished shards are kept and the next call resumes from them.
        NothingEmbeddedError: no image could be read (a :class:`~clipcal.errors.DataError`; ``.skipped`` lists
            every row's reason); nothing is stored.
        BackboneError / WeightsUnavailableError: loading the backbone failed, or out of memory at batch 1.
        StoreError: the store cannot be written.
        MissingDependencyError: torch or Pillow (or, for ``engine="ray"``, ray) is not installed (before any work).
        ShardFailedError: ``engine="ray"``: a shard failed more than ``max_retries`` times (finished shards kept).
    """
    from clipcal.deps import require_all

    require_all([("torch", "embedding images"), ("PIL", "reading images")])
    run_shards = _run_shards
    if (engine, address, max_retries) != ("local", None, None):  # checked (ray installed?) before any work
        from clipcal.embed_ray import shard_runner

        run_shards = shard_runner(engine, address, max_retries, device)
    import torch

    if isinstance(backbone, str):  # load it for this call only, and free it afterwards
        from clipcal.backbones import load_backbone

        bb = load_backbone(backbone, device=device, precision=precision)
        try:
            return embed_benchmark(benchmark, bb, store=store, batch_size=batch_size, num_workers=num_workers,
                                   device=device, progress=progress, cancel=cancel, shard_size=shard_size,
                                   engine=engine, address=address, max_retries=max_retries)
        finally:
            bb.close()
    store = store if store is not None else Store()
    batch_size = default_batch_size(backbone.device) if batch_size is None else batch_size
    if batch_size < 1 or shard_size < 1:
        raise ClipcalError(f"batch_size ({batch_size}) and shard_size ({shard_size}) must be ≥ 1")
    key_fields = embedding_key(benchmark, backbone.identity())
    table = benchmark.table
    total = len(table)

    def report(done, rate=None, eta=None, message=""):
        if progress is not None:
            progress(Progress(int(done), total, rate, eta, message))

    entry = _usable(store.get(KIND, key_fields))
    if entry is not None:
        report(total, message="already embedded (from the store)")
        return EmbeddingSet.from_entry(entry)

    lock = store.lock(KIND, key_fields)
    _acquire(lock, cancel, lambda: report(0, message="waiting for another process embedding the same images"))
    try:
        entry = _usable(store.get(KIND, key_fields))  # the process we waited for may have finished it
        if entry is not None:
            report(total, message="already embedded (from the store)")
            return EmbeddingSet.from_entry(entry)
        return _embed_locked(benchmark, backbone, store, key_fields, batch_size, num_workers, report, cancel,
                             shard_size, torch, run_shards)
    finally:
        lock.release()


def _embed_locked(benchmark, backbone, store, key_fields, batch_size, num_workers, report, cancel, shard_size,
                  torch, run_shards=None) -> EmbeddingSet:
    t_start = time.monotonic()
    table = benchmark.table
    total = len(table)
    ids = table["sample_id"].astype(str).to_numpy()
    paths = [str(benchmark.image_path(p)) for p in table["path"]]
    d, e = backbone.feature_dim, backbone.embed_dim
    folder = store.partial_dir(KIND, key_fields)
    ids_sha = hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()[:16]
    _plan(folder, {"n": total, "shard_size": shard_size, "ids_sha256": ids_sha, "d": d, "e": e})

    n_shards = (total + shard_size - 1) // shard_size
    bounds = [(i, i * shard_size, min(total, (i + 1) * shard_size)) for i in range(n_shards)]
    todo = [b for b in bounds if _read_shard(folder, *b, d, e) is None]
    done = sum(stop - start for i, start, stop in bounds if (i, start, stop) not in todo)
    if done:
        report(done, message=f"resuming: {n_shards - len(todo)} of {n_shards} shards already done")
    else:  # a report before the first batch, so a progress bar's clock starts before the first batch
        report(0, message="starting")

    n_computed = 0
    if todo:
        n_computed = (run_shards or _run_shards)(backbone, paths, ids, todo, folder, batch_size, num_workers,
                                                 report, cancel, done, torch)

    # assemble
    shards = [_read_shard(folder, *b, d, e) for b in bounds]  # verified again: they may have changed since
    bad = [b[0] for b, s in zip(bounds, shards) if s is None]
    if bad:
        for i in bad:  # so that the next run embeds them again
            (folder / f"{_shard_name(i)}.json").unlink(missing_ok=True)
        raise StoreError(f"{len(bad)} embedding shard(s) in {folder} changed or disappeared while this run "
                         f"embedded the others (first: {_shard_name(bad[0])})",
                         hint="another program wrote there; run again to embed those images again")
    feats = np.concatenate([s["features"] for s in shards]) if shards else np.zeros((0, d), np.float32)
    embs = np.concatenate([s["embeddings"] for s in shards]) if shards else np.zeros((0, e), np.float32)
    rows = np.concatenate([s["rows"] for s in shards]) if shards else np.zeros(0, np.int64)
    skipped = [{"sample_id": sid, "reason": reason} for s in shards for _r, sid, reason in s["info"]["skipped"]]
    if not len(rows):  # a job that produced nothing says so (issue 10.7): no empty entry, no leftovers
        store.clear_partial(KIND, key_fields)
        store.delete(KIND, key_fields)  # an empty entry of an older version
        raise NothingEmbeddedError(benchmark.name, pd.DataFrame(skipped, columns=["sample_id", "reason"]))
    sample_ids = ids[rows] if len(rows) else np.zeros(0, dtype="<U1")
    meta = {
        "benchmark": benchmark.describe(),
        "backbone_spec": backbone.spec,
        "projection": backbone.projection,
        "last_layer": getattr(backbone, "last_layer", None),  # where proj_weight comes from (methods read this)
        "has_text": backbone.has_text,
        "feature_dim": d,
        "embed_dim": e,
        "n_embedded": int(len(rows)),
        "n_skipped": len(skipped),
        "skipped": skipped,
        "device": backbone.device,
        # device with index, GPU, versions, precision, TF32 / cuDNN flags (clipcal.backbones.devices.compute_record)
        "compute": backbone.compute_record() if hasattr(backbone, "compute_record") else None,
        # activation / preprocessing used and why (a checkpoint file's may be a guess: its warning is kept)
        "model_settings": backbone.settings.as_dict() if hasattr(backbone, "settings") else None,
        "batch_size": batch_size,
        "elapsed_s_last_run": round(time.monotonic() - t_start, 3),
    }
    entry = store.put(KIND, key_fields, {
        "features": feats.astype(np.float32, copy=False),
        "embeddings": embs.astype(np.float32, copy=False),
        "sample_ids": sample_ids.astype(str),
        "proj_weight": backbone.proj_weight(),
    }, meta=meta)
    store.clear_partial(KIND, key_fields)
    report(total, message=f"stored {len(rows)} embeddings ({len(skipped)} skipped)")
    return EmbeddingSet.from_entry(entry, n_computed=n_computed)


def _run_shards(backbone, paths, ids, todo, folder, batch_size, num_workers, report, cancel, done0, torch) -> int:
    """Embed the rows of the shards in ``todo``; write each shard when complete. Returns images encoded
    (skipped rows not counted)."""
    from torch.utils.data import DataLoader

    nw = default_num_workers(backbone.device) if num_workers is None else max(0, int(num_workers))
    batches = []  # no batch crosses a shard boundary, so a shard completes exactly at one of its batches
    for _i, start, stop in todo:
        batches += [list(range(s, min(stop, s + batch_size))) for s in range(start, stop, batch_size)]
    loader = DataLoader(_ImageDataset(paths, backbone.transform), batch_sampler=batches, num_workers=nw,
                        collate_fn=_collate, pin_memory=backbone.device.startswith("cuda"),
                        persistent_workers=False)
    encoder = _Encoder(backbone, batch_size, lambda m: report(done, message=m))
    todo_iter = iter(todo)
    cur = next(todo_iter)
    buf_rows, buf_h, buf_z, buf_skip = [], [], [], []
    covered = 0
    done = done0
    n_new = 0
    n_encoded = 0  # images encoded (n_new also counts the skipped rows walked, for the rate)
    t0 = None
    remaining = sum(stop - start for _, start, stop in todo)
    it = iter(loader)

    def stop_if_cancelled() -> None:
        if cancel is None or not cancel.is_set():
            return
        kept = done - covered  # images in finished shards; the current shard's are dropped
        shard = cur[2] - cur[1] if cur is not None else 0
        raise Cancelled(f"embedding cancelled after {done:,} of {len(paths):,} images; {kept:,} of them are "
                        f"stored (finished shards of up to {shard:,} images)",
                        hint=f"run again to resume after image {kept:,}" if kept else
                        "nothing was stored yet (the first shard was not finished): run again to start over")

    try:
        for rows, x, bad in it:
            stop_if_cancelled()
            if t0 is None:
                t0 = time.monotonic()
            if x is not None:
                h, z = encoder(x)
                buf_h.append(h)
                buf_z.append(z)
                buf_rows += rows
                n_encoded += len(rows)
            buf_skip += [(r, str(ids[r]), reason) for r, reason in bad]
            n = len(rows) + len(bad)
            covered += n
            done += n
            n_new += n
            i, start, stop = cur
            if covered == stop - start:
                fh = np.concatenate(buf_h) if buf_h else np.zeros((0, backbone.feature_dim), np.float32)
                fz = np.concatenate(buf_z) if buf_z else np.zeros((0, backbone.embed_dim), np.float32)
                _write_shard(folder, i, start, stop, buf_rows, fh.astype(np.float32), fz.astype(np.float32),
                             sorted(buf_skip))
                buf_rows, buf_h, buf_z, buf_skip, covered = [], [], [], [], 0
                cur = next(todo_iter, None)
            elapsed = max(time.monotonic() - t0, 1e-9)
            rate = n_new / elapsed
            eta = (remaining - n_new) / rate if rate > 0 else None
            stop_if_cancelled()  # before report(), whose own Cancelled would not say what was stored
            report(done, rate, eta, "embedding")
    finally:
        del it  # shuts the worker processes down, also on cancel / Ctrl-C
    return n_encoded


# ---------------------------------------------------------------------------------------------------------
# reading back
# ---------------------------------------------------------------------------------------------------------
def load_embeddings(benchmark, backbone_spec, store: Store | None = None, precision: str | None = None,
                    device: str = "auto") -> EmbeddingSet | None:
    """The stored embeddings of ``benchmark`` by ``backbone_spec``, or ``None`` — never embeds.

    Args:
        benchmark: the :class:`~clipcal.data.base.Benchmark`.
        backbone_spec: spec string or loaded :class:`~clipcal.backbones.Backbone`. Weights are identified without
            loading the model (checkpoint fingerprint / tag).
        store: default ``Store()``.
        precision: ``None`` takes the newest entry of any precision; ``"fp32"``, ``"bf16"``… (or ``"auto"``,
            resolved for ``device``) asks for that one.
        device: only used to resolve ``precision="auto"``.

    Returns:
        :class:`EmbeddingSet` or ``None``.
    """
    from clipcal.backbones import Backbone, backbone_identity

    store = store if store is not None else Store()
    if isinstance(backbone_spec, Backbone):
        ident = backbone_spec.identity()
        if precision is None:
            precision = ident["precision"]
    else:
        try:
            ident = backbone_identity(backbone_spec, device=device if precision else "cpu",
                                      precision=precision or "fp32")
        except BackboneError:
            return None
    if precision is not None:
        ident = {**ident}
        if precision != "auto":
            ident["precision"] = precision
        entry = _usable(store.get(KIND, embedding_key(benchmark, ident)))
        return EmbeddingSet.from_entry(entry) if entry else None
    fp = benchmark.fingerprint()
    want = {k: v for k, v in ident.items() if k != "precision"}
    for m in reversed(store.list(KIND)):
        kf = m.get("key_fields", {})
        b = kf.get("backbone", {})
        if kf.get("benchmark") == fp and kf.get("format") == EMBED_FORMAT and \
                {k: v for k, v in b.items() if k != "precision"} == want:
            entry = _usable(store.get(KIND, kf))
            if entry is not None:
                return EmbeddingSet.from_entry(entry)
    return None


# text-tower embeddings live in clipcal.text_embeddings; imported here, where callers have always found them
from clipcal.text_embeddings import class_text_embeddings, text_embeddings  # noqa: E402,F401
