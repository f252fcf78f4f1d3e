"""One shared 2-D map of the representations before and after calibration, and what moved in it.

UMAP (McInnes, Healy & Melville 2018, arXiv 1802.03426; library ``umap-learn``) is fitted ONCE on the
concatenation ``[before; after]`` so both halves live in the same coordinates. Projecting "after" into a
map fitted on "before" (``UMAP.transform``) is avoided on purpose: transform results depend on the batch
and the new points are squeezed onto the old manifold (field-notes.md, pitfall 5).

Facts this module is built around (offline.md): ``import umap`` and the first fit compile with numba
(tens of seconds cold); numba's JIT cache is pointed at ``<cache>/numba`` by
:func:`clipcal.paths.configure_numba_cache` before umap is imported; a fixed ``random_state`` makes UMAP
single-threaded and repeatable; numba's threading layer is not safe under concurrent server threads, so a
process-wide lock lets only one UMAP run at a time. Results are stored in the store (kind
``projections``), keyed by a sha256 of the input arrays plus the parameters, and never recomputed.
"""

from __future__ import annotations

import hashlib
import threading
import time
import warnings
from importlib import metadata
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from clipcal.errors import MethodError
from clipcal.paths import configure_numba_cache

#: Store kind for projections (docs/interfaces.md, clipcal.store).
KIND = "projections"
#: Bump when the way a projection is computed changes, so old store entries are not reused.
PROJECTION_VERSION = 2

_UMAP_LOCK = threading.Lock()  # one UMAP at a time in this process (numba threading is not thread-safe)
_WARM = False
#: How many UMAP fits this process has run (tests use it to prove the store served a repeat call).
FIT_COUNT = 0


def _umap_module():
    """Import umap after pointing numba's cache at the store (import compiles; ~3 s warm, ~25 s cold)."""
    configure_numba_cache()
    import umap  # noqa: PLC0415 - deliberately late: slow import, needs NUMBA_CACHE_DIR first

    return umap


def _umap_version() -> str:
    try:
        return metadata.version("umap-learn")
    except metadata.PackageNotFoundError:  # pragma: no cover - umap-learn is a pinned requirement
        return "unknown"


def array_digest(*arrays: np.ndarray | None) -> str:
    """sha256 (hex) of the arrays' dtype, shape and bytes, in order; ``None`` hashes as a marker.

    Fast (≈1 GB/s): 2 × 6,000 × 768 float32 hash in well under a second.
    """
    h = hashlib.sha256()
    for arr in arrays:
        if arr is None:
            h.update(b"<none>")
            continue
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype.str}|{a.shape}|".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _check(name: str, arr: np.ndarray) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 2:
        raise MethodError(f"{name} embeddings must be a 2-D array [N, e], got shape {a.shape}",
                          hint="pass one row per sample")
    if not np.isfinite(a).all():
        bad = np.flatnonzero(~np.isfinite(a).all(axis=1))[:5].tolist()
        raise MethodError(f"{name} embeddings contain NaN or inf in rows {bad}",
                          hint="re-embed the benchmark or check the calibration run that produced them")
    return a.astype(np.float32, copy=False)


def projection_key(before: np.ndarray, after: np.ndarray | None, key_fields: Mapping[str, Any] | None,
                   params: Mapping[str, Any]) -> dict:
    """The store key of a projection: caller's key fields + input content hash + UMAP parameters.

    Arrays are hashed as float32 (what :func:`joint_umap` fits), so float64 inputs give the same key.
    ``params``: ``{"seed", "n_neighbors", "min_dist", "metric"}``; prefer :func:`stored_joint_umap` for
    look-ups, which builds them exactly as :func:`joint_umap` does.
    """
    before = np.asarray(before, dtype=np.float32)
    after = None if after is None else np.asarray(after, dtype=np.float32)
    key = {str(k): (v if isinstance(v, (str, int, float, bool)) or v is None else str(v))
           for k, v in dict(key_fields or {}).items()}
    key.update({
        "input_sha256": array_digest(before, after),
        "n": int(before.shape[0]),
        "dim": int(before.shape[1]),
        "has_after": after is not None,
        "umap": _umap_version(),
        "projection_version": PROJECTION_VERSION,
    })
    key.update({k: v for k, v in params.items()})
    return key


def _params(seed, n_neighbors, min_dist, metric) -> dict:
    return {"seed": None if seed is None else int(seed), "n_neighbors": int(n_neighbors),
            "min_dist": float(min_dist), "metric": str(metric)}


def stored_joint_umap(before: np.ndarray, after: np.ndarray | None, store, key_fields: Mapping[str, Any] | None = None,
                      seed: int | None = 0, n_neighbors: int = 15, min_dist: float = 0.1, metric: str = "cosine"
                      ) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The stored result of :func:`joint_umap` for these inputs, or ``None`` if not computed yet.

    Never fits (no numba, no lock): for a page that shows the map when it exists and otherwise starts a
    background job running :func:`joint_umap` with the same arguments.
    """
    n = len(before)
    key = projection_key(before, after, key_fields, _params(seed, n_neighbors, min_dist, metric))
    entry = store.get(KIND, key)
    if entry is None:
        return None
    xy = np.asarray(entry.array("xy", mmap=False), dtype=np.float32)
    if xy.shape != (n * (2 if after is not None else 1), 2):
        return None
    return xy[:n], (xy[n:] if after is not None else None)


#: Up to this many rows (before + after), neighbours are computed exactly with blockwise BLAS (seconds for
#: 12,000 × 768) and handed to UMAP as ``precomputed_knn``. This skips pynndescent, whose JIT costs ~80 s of
#: CPU per process even with a warm numba cache (measured on the 2-core build machine). Larger inputs use
#: UMAP's own NN-descent.
EXACT_KNN_MAX_ROWS = 20_000
_EXACT_METRICS = ("cosine", "euclidean")


def exact_knn(x: np.ndarray, k: int, metric: str = "cosine", block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of every row, itself first (UMAP's ``precomputed_knn`` convention).

    Args:
        x: [M, e] float array. k: neighbours per row including itself (≤ M).
        metric: ``"cosine"`` (1 − cosine similarity) or ``"euclidean"``.
        block: rows per matrix product (memory ≈ block × M × 4 bytes).

    Returns:
        ``(indices [M, k] int32, distances [M, k] float32)``, ascending distance, ties by index.
    """
    x = np.asarray(x, dtype=np.float32)
    m = x.shape[0]
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sq = (x * x).sum(axis=1)
    idx_out = np.empty((m, k), dtype=np.int32)
    dist_out = np.empty((m, k), dtype=np.float32)
    for start in range(0, m, block):
        stop = min(start + block, m)
        g = x[start:stop] @ x.T  # [b, M]
        if metric == "cosine":
            d = 1.0 - g
        else:
            d = np.sqrt(np.maximum(sq[start:stop, None] + sq[None, :] - 2.0 * g, 0.0))
        rows = np.arange(stop - start)
        d[rows, rows + start] = -1.0  # itself first, whatever rounding says
        part = np.argpartition(d, k - 1, axis=1)[:, :k] if k < m else np.tile(np.arange(m), (stop - start, 1))
        pd_ = np.take_along_axis(d, part, axis=1)
        order = np.lexsort((part, pd_), axis=1)
        idx = np.take_along_axis(part, order, axis=1)
        dist = np.take_along_axis(pd_, order, axis=1)
        dist[:, 0] = 0.0
        idx_out[start:stop] = idx
        dist_out[start:stop] = np.maximum(dist, 0.0)
    return idx_out, dist_out


def _fit(x: np.ndarray, seed: int | None, n_neighbors: int, min_dist: float, metric: str,
         force_approximation: bool = False) -> np.ndarray:
    """Run one UMAP fit on ``x`` [M, e] → [M, 2] float32. Caller holds ``_UMAP_LOCK``.

    ``force_approximation`` makes UMAP use its own NN-descent (used only to warm that path up).
    """
    global FIT_COUNT
    umap = _umap_module()
    m = x.shape[0]
    k = int(max(2, min(n_neighbors, m - 1)))
    kw: dict[str, Any] = dict(
        n_components=2,
        n_neighbors=k,
        min_dist=float(min_dist),
        metric=metric,
        # spectral init needs a connected-enough graph; tiny inputs use random init
        init="spectral" if m >= 32 else "random",
        force_approximation_algorithm=force_approximation,
    )
    if seed is None:
        kw["n_jobs"] = -1
    else:
        kw["random_state"] = int(seed)
        kw["n_jobs"] = 1  # what umap does anyway with random_state; said explicitly to silence its warning
    if metric in _EXACT_METRICS and m <= EXACT_KNN_MAX_ROWS and not force_approximation:
        knn_i, knn_d = exact_knn(x, k, metric)
        kw["precomputed_knn"] = (knn_i, knn_d)
    with warnings.catch_warnings():
        # "precomputed_knn[2] is not an NNDescent object": we never call transform (module docstring)
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")
        warnings.filterwarnings("ignore", message=".*n_jobs value.*overridden.*")
        xy = umap.UMAP(**kw).fit_transform(x)
    FIT_COUNT += 1
    return np.asarray(xy, dtype=np.float32)


def joint_umap(before: np.ndarray, after: np.ndarray | None = None, store=None,
               key_fields: Mapping[str, Any] | None = None, seed: int | None = 0, n_neighbors: int = 15,
               min_dist: float = 0.1, metric: str = "cosine",
               progress: Callable[[str], None] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """2-D UMAP coordinates of the same N samples before and after calibration, in ONE shared map.

    Args:
        before: embeddings before calibration, [N, e] float (any float dtype; used as float32).
        after: embeddings after calibration, [N, e] (same shape), or ``None`` to map ``before`` alone.
        store: a :class:`clipcal.store.Store` (kind ``projections``) or ``None`` to compute without caching.
        key_fields: JSON-able fields describing the inputs (benchmark fingerprint, backbone, run id …),
            recorded in the key; the content hash of the arrays is always added, so stale entries are
            never served.
        seed: UMAP ``random_state``; same inputs + seed → same map. ``None`` = multi-threaded,
            not repeatable.
        n_neighbors, min_dist, metric: UMAP parameters (``umap.UMAP``); ``n_neighbors`` is clipped to N-1.
        progress: optional callable receiving short status messages.

    Returns:
        ``(xy_before [N, 2] float32, xy_after [N, 2] float32 | None)``; rows follow the input rows.

    Raises:
        MethodError: arrays are not 2-D, shapes differ, fewer than 4 samples, or NaN/inf present.

    The fit runs on ``np.concatenate([before, after])``; only one UMAP runs at a time in the process, and
    a second caller with the same inputs waits and then reads the stored result.
    """
    before = _check("before", before)
    if after is not None:
        after = _check("after", after)
        if after.shape != before.shape:
            raise MethodError(f"before {before.shape} and after {after.shape} embeddings differ in shape",
                              hint="both must hold the same samples in the same order and dimension")
    n = before.shape[0]
    total = n * (2 if after is not None else 1)
    if total < 4:
        raise MethodError(f"UMAP needs at least 4 points, got {total}", hint="select more samples")
    key = projection_key(before, after, key_fields, _params(seed, n_neighbors, min_dist, metric)) \
        if store is not None else None

    def split(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return xy[:n], (xy[n:] if after is not None else None)

    def from_store():
        entry = store.get(KIND, key)
        if entry is None:
            return None
        xy = np.asarray(entry.array("xy", mmap=False), dtype=np.float32)
        return split(xy) if xy.shape == (total, 2) else None

    if store is not None:
        hit = from_store()
        if hit is not None:
            return hit
    if progress:
        progress("waiting for another projection to finish" if _UMAP_LOCK.locked() else "fitting UMAP")
    with _UMAP_LOCK:
        if store is None:
            x = before if after is None else np.concatenate([before, after])
            return split(_fit(x, seed, n_neighbors, min_dist, metric))
        with store.lock(KIND, key):  # another process may be computing the same map
            hit = from_store()
            if hit is not None:
                return hit
            if progress:
                progress("fitting UMAP")
            t0 = time.perf_counter()
            x = before if after is None else np.concatenate([before, after])
            xy = _fit(x, seed, n_neighbors, min_dist, metric)
            meta = {"fit_seconds": round(time.perf_counter() - t0, 3), "n_points": int(total),
                    "rows": "before then after" if after is not None else "before"}
            store.put(KIND, key, {"xy": xy}, meta)
    return split(xy)


def warm_up(approximate: bool = False) -> float:
    """Compile UMAP's numba code once in this process on a tiny input; return the seconds it took.

    Compiles the path real inputs of up to :data:`EXACT_KNN_MAX_ROWS` rows take (exact neighbours +
    UMAP's graph, spectral init and layout). ``approximate=True`` also compiles pynndescent's NN-descent
    (~80 s of CPU), needed only for larger inputs. Later calls return 0.0 at once.
    """
    global _WARM
    if _WARM and not approximate:
        return 0.0
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    with _UMAP_LOCK:
        if not _WARM:
            _fit(x, 0, 15, 0.1, "cosine")
            _fit(x[:20], 0, 15, 0.1, "cosine")
            _WARM = True
        if approximate:
            _fit(x, 0, 15, 0.1, "cosine", force_approximation=True)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------------
# What moved


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def displacement(xy_before: np.ndarray, xy_after: np.ndarray, emb_before: np.ndarray, emb_after: np.ndarray,
                 sample_ids=None) -> pd.DataFrame:
    """Per-point movement between the before and after representations.

    Args:
        xy_before, xy_after: [N, 2] joint-UMAP coordinates (:func:`joint_umap`).
        emb_before, emb_after: [N, e] embeddings (same e).
        sample_ids: optional [N] ids, added as column ``sample_id``.

    Returns:
        DataFrame, one row per point in input order, columns ``dx, dy`` (map units), ``move_2d``
        (Euclidean distance in the map), ``move_emb`` (Euclidean distance between the L2-normalised
        embeddings, 0…2), ``cos_change`` (1 − cosine similarity of before and after, 0…2), and
        ``rank_2d`` (1 = moved most in the map).

    Raises:
        MethodError: row counts differ.
    """
    xb, xa = np.asarray(xy_before, float), np.asarray(xy_after, float)
    eb, ea = np.asarray(emb_before), np.asarray(emb_after)
    n = xb.shape[0]
    if not (xa.shape[0] == eb.shape[0] == ea.shape[0] == n) or eb.shape != ea.shape:
        raise MethodError(f"displacement inputs disagree: xy {xb.shape}/{xa.shape}, emb {eb.shape}/{ea.shape}",
                          hint="pass the before/after arrays of the same samples")
    ub, ua = _unit(eb), _unit(ea)
    cos = np.clip((ub * ua).sum(axis=1), -1.0, 1.0)
    d = xa - xb
    out = pd.DataFrame({
        "dx": d[:, 0], "dy": d[:, 1],
        "move_2d": np.hypot(d[:, 0], d[:, 1]),
        "move_emb": np.linalg.norm(ua - ub, axis=1),
        "cos_change": 1.0 - cos,
    })
    out["rank_2d"] = out["move_2d"].rank(ascending=False, method="first").astype(np.int64)
    if sample_ids is not None:
        out.insert(0, "sample_id", np.asarray(sample_ids).astype(str))
    return out


#: Labels of :func:`crossed_boundary`.
CROSSING_LABELS = ("fixed", "broken", "unchanged")
CROSSING_LABELS_DETAILED = ("fixed", "broken", "still correct", "still wrong")


def crossed_boundary(pred_before, pred_after, y, detailed: bool = False) -> pd.Categorical:
    """Which samples crossed the decision boundary between two methods' predictions.

    Args:
        pred_before, pred_after, y: [N] int class indices (prediction before / after, true class).
        detailed: split ``"unchanged"`` into ``"still correct"`` and ``"still wrong"``.

    Returns:
        Categorical [N]: ``"fixed"`` (wrong before, right after), ``"broken"`` (right before, wrong after),
        ``"unchanged"`` (same correctness; with ``detailed``, ``"still correct"`` / ``"still wrong"``).
    """
    pb, pa, yy = (np.asarray(v) for v in (pred_before, pred_after, y))
    if not (pb.shape == pa.shape == yy.shape):
        raise MethodError(f"prediction/label shapes differ: {pb.shape}, {pa.shape}, {yy.shape}")
    cb, ca = pb == yy, pa == yy
    if detailed:
        lab = np.where(~cb & ca, "fixed", np.where(cb & ~ca, "broken",
                                                   np.where(ca, "still correct", "still wrong")))
        return pd.Categorical(lab, categories=list(CROSSING_LABELS_DETAILED))
    lab = np.where(~cb & ca, "fixed", np.where(cb & ~ca, "broken", "unchanged"))
    return pd.Categorical(lab, categories=list(CROSSING_LABELS))


def group_centroid_shifts(xy_before: np.ndarray, xy_after: np.ndarray, emb_before: np.ndarray,
                          emb_after: np.ndarray, groups, group_names: Mapping | list | None = None
                          ) -> pd.DataFrame:
    """How far each group's centre moved, in the map and in embedding space.

    Args:
        xy_before, xy_after: [N, 2] joint-UMAP coordinates.
        emb_before, emb_after: [N, e] embeddings.
        groups: [N] group labels (any hashable: group index, class, cluster …); -1 / NaN rows are a
            group of their own named "unknown".
        group_names: optional mapping or list from label to display name.

    Returns:
        DataFrame per group (sorted by label): ``group, name, n, x_before, y_before, x_after, y_after,
        shift_2d`` (distance between the map centroids) and ``cos_shift`` (1 − cosine between the mean
        L2-normalised embeddings before and after).
    """
    g = pd.Series(np.asarray(groups)).fillna(-1).to_numpy()
    ub, ua = _unit(emb_before), _unit(emb_after)
    xb, xa = np.asarray(xy_before, float), np.asarray(xy_after, float)
    rows = []
    for lab in sorted(pd.unique(g), key=lambda v: (str(type(v)), v)):
        m = g == lab
        cb, ca = xb[m].mean(axis=0), xa[m].mean(axis=0)
        mb, ma = ub[m].mean(axis=0), ua[m].mean(axis=0)
        cos = float(mb @ ma / max(np.linalg.norm(mb) * np.linalg.norm(ma), 1e-12))
        if group_names is not None:
            try:
                name = group_names[lab]
            except (KeyError, IndexError, TypeError):
                name = "unknown" if lab == -1 else str(lab)
            if isinstance(lab, (int, np.integer)) and lab < 0:
                name = "unknown"
        else:
            name = "unknown" if (isinstance(lab, (int, np.integer)) and lab < 0) else str(lab)
        rows.append((lab, name, int(m.sum()), cb[0], cb[1], ca[0], ca[1], float(np.hypot(*(ca - cb))),
                     1.0 - cos))
    return pd.DataFrame(rows, columns=["group", "name", "n", "x_before", "y_before", "x_after", "y_after",
                                       "shift_2d", "cos_shift"])
