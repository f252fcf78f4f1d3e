"""One shared 2-D map of the representations before and after calibration, and what moved in it.

UMAP (McInnes, Healy & Melville 2018, arXiv 1802.03426; library ``umap-learn``) is fitted ONCE on the
concatenation ``[before; after]`` so both halves live in the same coordinates. Projecting "after" into a
map fitted on "before" (``UMAP.transform``) is avoided on purpose: transform results depend on the batch
and the new points are squeezed onto the old manifold (field-notes.md, pitfall 5). Maps of more than
:data:`clipcal.sampled_map.LARGE_MAP_THRESHOLD` samples are fitted jointly on a stratified sample of the samples
(before and after rows together) and only the other points are placed with ``transform``, in fixed chunks
(:mod:`clipcal.sampled_map`); :class:`JointMap` ``.info`` says how many points were fitted and how many placed.

Facts this module is built around (offline.md): ``import umap`` and the first fit compile with numba
(tens of seconds cold); numba's JIT cache is pointed at ``<cache>/numba`` by
:func:`clipcal.paths.configure_numba_cache` before umap is imported; a fixed ``random_state`` makes UMAP
single-threaded and repeatable; numba's threading layer is not safe under concurrent server threads, so a
process-wide lock lets only one UMAP run at a time. UMAP spreads identical rows over the map (more of
them than ``n_neighbors`` form a clique that repulsion pulls apart), so rows that are one point are fitted
once (:func:`merge_duplicates`) and "what moved" is ranked by the embedding change, the map distance being a
cue only (:func:`moved_most`). Results are stored in the store (kind
``projections``), keyed by a sha256 of the input arrays plus the parameters, and never recomputed.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
import time
import warnings
from importlib import metadata
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from clipcal.errors import MethodError
from clipcal.paths import configure_numba_cache

#: (title, markdown) shown on the dashboard's Representations page.
TEACHING = (
    "How to read the UMAP plot",
    "Each dot is one image; UMAP places images with similar embeddings close together. "
    "\"Before\" and \"after\" are fitted **together** in one map, so positions are comparable. If the "
    "spurious attribute drives the representation, points cluster by background (colour by "
    "*attribute*); after a good calibration they should cluster by **class** instead. Distances between "
    "far-apart clusters mean little; neighbourhoods mean a lot. Drag a box or lasso to see the images.",
)

#: Store kind for projections (docs/interfaces.md, clipcal.store).
KIND = "projections"
#: Bump when the way a projection is computed changes, so old store entries are not reused.
#: 3: duplicate and float-noise-equal rows are merged before the fit (they used to be spread over the map).
PROJECTION_VERSION = 3
#: 1 − cosine at or below which two embeddings are the same point: the map merges them before UMAP
#: (:func:`merge_duplicates`) and :func:`moved_most` counts a sample as unchanged. float32 rounding (also of
#: TF32 matmuls) perturbs 1 − cos of one image by < 1e-7 (1 − cos is second order in the perturbation);
#: 1e-6 is an angle of 0.08°, far below the change of any calibration (≥ 1e-3 on the benchmarks) and
#: below the gap between distinct images.
DUPLICATE_TOL = 1e-6

_UMAP_LOCK = threading.Lock()  # one UMAP at a time in this process (numba threading is not thread-safe)
_WARM = False
#: How many UMAP fits this process has run (tests use it to prove the store served a repeat call).
FIT_COUNT = 0


def _umap_module():
    """Import umap after pointing numba's cache at the store (import compiles; ~3 s warm, ~25 s cold)."""
    from clipcal.deps import require_all

    require_all([(m, "UMAP projections (the before/after maps)") for m in ("umap", "numba", "sklearn")])
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
    from clipcal.rowblocks import row_blocks  # noqa: PLC0415
    from clipcal.store import release_pages  # noqa: PLC0415

    h = hashlib.sha256()
    for arr in arrays:
        if arr is None:
            h.update(b"<none>")
            continue
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype.str}|{a.shape}|".encode())
        if a.ndim < 2:
            h.update(memoryview(a).cast("B"))
            continue
        # the same bytes in the same order, a block of rows at a time, so that the pages of a memory-mapped
        # store array (a run's embeddings_after, 622 MB at CelebA size) are released as they are read
        for sl in row_blocks(a.shape[0], int(np.prod(a.shape[1:])), itemsize=a.itemsize):
            h.update(memoryview(a[sl]).cast("B"))
            release_pages(a)
    return h.hexdigest()


def _check(name: str, arr: np.ndarray) -> np.ndarray:
    from clipcal.rowblocks import row_blocks  # noqa: PLC0415
    from clipcal.store import release_pages  # noqa: PLC0415

    a = np.asarray(arr)
    if a.ndim != 2:
        raise MethodError(f"{name} embeddings must be a 2-D array [N, e], got shape {a.shape}",
                          hint="pass one row per sample")
    finite = np.ones(a.shape[0], bool)
    for sl in row_blocks(a.shape[0], a.shape[1], itemsize=1):  # no [N, e] bool mask; a store map's pages released
        finite[sl] = np.isfinite(a[sl]).all(axis=1)
        release_pages(a)
    if not finite.all():
        bad = np.flatnonzero(~finite)[:5].tolist()
        raise MethodError(f"{name} embeddings contain NaN or inf in rows {bad}",
                          hint="re-embed the benchmark or check the calibration run that produced them")
    return a.astype(np.float32, copy=False)


def projection_key(before: np.ndarray, after: np.ndarray | None, key_fields: Mapping[str, Any] | None,
                   params: Mapping[str, Any], strata=None) -> dict:
    """The store key of a projection: caller's key fields + input content hash + UMAP parameters, and above
    :data:`clipcal.sampled_map.LARGE_MAP_THRESHOLD` samples the sample's parameters and the strata's hash
    (:func:`clipcal.sampled_map.large_map_params`; nothing is added for smaller maps, whose keys stay as they were).

    Arrays are hashed as float32 (what :func:`joint_umap` fits), so float64 inputs give the same key.
    ``params``: ``{"seed", "n_neighbors", "min_dist", "metric"}``; prefer :func:`stored_joint_umap` for
    look-ups, which builds them exactly as :func:`joint_umap` does.
    """
    from clipcal.sampled_map import large_map_params  # noqa: PLC0415 - it imports this module

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
        "duplicates": f"merged where 1 - cos <= {DUPLICATE_TOL:g}",
    })
    key.update({k: v for k, v in params.items()})
    key.update(large_map_params(int(before.shape[0]), strata))
    return key


def _params(seed, n_neighbors, min_dist, metric) -> dict:
    return {"seed": None if seed is None else int(seed), "n_neighbors": int(n_neighbors),
            "min_dist": float(min_dist), "metric": str(metric)}


def stored_joint_umap(before: np.ndarray, after: np.ndarray | None, store, key_fields: Mapping[str, Any] | None = None,
                      seed: int | None = 0, n_neighbors: int = 15, min_dist: float = 0.1, metric: str = "cosine",
                      strata=None) -> JointMap | None:
    """The stored result of :func:`joint_umap` for these inputs, or ``None`` if not computed yet.

    Never fits (no numba, no lock): for a page that shows the map when it exists and otherwise starts a
    background job running :func:`joint_umap` with the same arguments.
    """
    key = projection_key(before, after, key_fields, _params(seed, n_neighbors, min_dist, metric), strata)
    return _read(store, key, len(before), after is not None)


def _read(store, key: dict, n: int, has_after: bool) -> JointMap | None:
    """The stored map under ``key`` if it has the expected shape ([N or 2N, 2]), else ``None``."""
    entry = store.get(KIND, key)
    if entry is None:
        return None
    xy = np.asarray(entry.array("xy", mmap=False), dtype=np.float32)
    total = n * (2 if has_after else 1)
    if xy.shape != (total, 2):
        return None
    info = entry.meta.get("map") or {"n": n, "points": total, "fitted_points": total, "placed_points": 0}
    return JointMap(xy[:n], xy[n:] if has_after else None, info)


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


def _cos_change(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 − cosine similarity of matching rows, in float64, as ½‖a/‖a‖ − b/‖b‖‖² (exactly 0 for equal rows;
    no cancellation for small changes, unlike 1 − a·b). [N, e], [N, e] → [N] in [0, 2]."""
    d = _unit(a) - _unit(b)
    return np.clip(0.5 * np.einsum("ij,ij->i", d, d), 0.0, 2.0)


def _same_point(x: np.ndarray, i: np.ndarray, j: np.ndarray, metric: str, tol: float) -> np.ndarray:
    """Whether rows ``i`` and ``j`` of ``x`` are one point: 1 − cos ≤ tol (cosine), or for euclidean
    ‖a − b‖² ≤ 2·tol·‖a‖‖b‖ (the same for unit vectors, and also needs equal lengths)."""
    return _same_rows(x[i], x[j], metric, tol)


def _same_rows(a: np.ndarray, b: np.ndarray, metric: str, tol: float) -> np.ndarray:
    """Whether ``a[r]`` and ``b[r]`` are one point, row by row ([R, e], [R, e] → [R] bool; :func:`_same_point`)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if metric == "cosine":
        return _cos_change(a, b) <= tol
    d2 = ((a - b) ** 2).sum(axis=1)
    return d2 <= 2.0 * tol * np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)


def _merge(x: np.ndarray, metric: str, n_neighbors: int, tol: float, allow_exact: bool = True
           ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None, bool]:
    """:func:`merge_duplicates`, also returning the exact neighbours of ``x[keep]`` (``None`` if not computed)
    and whether the exact-neighbour path applies (``allow_exact``, metric, ≤ EXACT_KNN_MAX_ROWS distinct rows)."""
    from scipy.sparse import coo_matrix  # noqa: PLC0415
    from scipy.sparse.csgraph import connected_components  # noqa: PLC0415

    # exact duplicates: what umap-learn's UMAP(unique=True) does (np.unique(axis=0)); done here because umap
    # refuses unique=True together with precomputed_knn. Representatives keep input order, so an input
    # without duplicates is fitted exactly as before.
    _, first, inverse = np.unique(x, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    pos = np.empty_like(order)
    pos[order] = np.arange(len(order))
    keep, inverse = first[order].astype(np.int64), pos[inverse.reshape(-1)].astype(np.int64)
    exact_nn = allow_exact and metric in _EXACT_METRICS and len(keep) <= EXACT_KNN_MAX_ROWS
    if not exact_nn:
        return keep, inverse, None, False
    while True:
        xu = x[keep]
        m = len(keep)
        if m < 2:
            return keep, inverse, None, True
        k = int(max(2, min(n_neighbors, m - 1)))
        knn_i, knn_d = exact_knn(xu, k, metric)
        # float32 distances are coarse near 0 (≈1e-7): screen loosely, decide in float64
        loose = 100.0 * tol if metric == "cosine" else \
            float(np.sqrt(200.0 * tol) * np.linalg.norm(xu, axis=1).max())
        r, c = np.nonzero(knn_d[:, 1:] <= loose)
        i, j = r, knn_i[r, c + 1].astype(np.int64)
        same = _same_point(xu, i, j, metric, tol) if len(i) else np.zeros(0, bool)
        if not same.any():
            return keep, inverse, (knn_i, knn_d), True
        # near-duplicates: one point per connected component (a group larger than k is linked through
        # its members' neighbour lists; the loop catches any split that is left)
        g = coo_matrix((np.ones(int(same.sum())), (i[same], j[same])), shape=(m, m))
        _, label = connected_components(g, directed=False)
        rep = np.full(label.max() + 1, m, dtype=np.int64)
        np.minimum.at(rep, label, np.arange(m))  # earliest member represents its component
        comp_order = np.argsort(rep, kind="stable")
        comp_pos = np.empty_like(comp_order)
        comp_pos[comp_order] = np.arange(len(comp_order))
        keep, inverse = keep[rep[comp_order]], comp_pos[label][inverse]


def merge_duplicates(x: np.ndarray, metric: str = "cosine", n_neighbors: int = 15, tol: float = DUPLICATE_TOL
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Which rows of ``x`` are one point of the map: exact duplicates, and rows equal within ``tol``.

    UMAP spreads identical rows (more of them than ``n_neighbors``) over the map, inventing structure and,
    in a joint [before; after] fit, movement; the map is therefore fitted on one row per point and the
    coordinates copied back. Exact duplicates are found as ``umap.UMAP(unique=True)`` finds them
    (``np.unique(axis=0)``). Rows within ``tol`` (1 − cos ≤ tol for ``metric="cosine"``; for
    ``"euclidean"`` ‖a − b‖² ≤ 2·tol·‖a‖‖b‖) are merged too, by single linkage over the exact neighbour
    lists, when the exact path applies (``metric`` cosine/euclidean and at most :data:`EXACT_KNN_MAX_ROWS`
    distinct rows); above that only exact duplicates are merged.

    Args:
        x: [M, e] float32 rows (before and after stacked, for a joint map).
        metric, n_neighbors: as given to UMAP (the neighbour lists searched for near-duplicates).
        tol: see :data:`DUPLICATE_TOL`.

    Returns:
        ``(keep [U] int64, inverse [M] int64)``: the representative rows (earliest row of each point,
        ascending) and, for every row, its position in ``keep`` — ``xy[inverse]`` spreads a [U, 2] map back.
    """
    keep, inverse, _, _ = _merge(np.asarray(x, dtype=np.float32), metric, n_neighbors, tol)
    return keep, inverse


def _few_points_layout(x: np.ndarray, metric: str) -> np.ndarray:
    """2-D places of 1-3 distinct points, too few for UMAP: classical MDS of their exact distances."""
    m = len(x)
    if m == 1:
        return np.zeros((1, 2), dtype=np.float32)
    if metric == "cosine":
        u = _unit(x)
        d2 = np.clip(2.0 - 2.0 * (u @ u.T), 0.0, None)  # squared chord length = 2(1 − cos)
    else:
        xf = np.asarray(x, np.float64)
        d2 = ((xf[:, None, :] - xf[None, :, :]) ** 2).sum(-1)
    j = np.eye(m) - 1.0 / m
    w, v = np.linalg.eigh(-0.5 * j @ d2 @ j)
    top = np.argsort(w)[::-1][:2]
    xy = v[:, top] * np.sqrt(np.clip(w[top], 0.0, None))
    return np.pad(xy, ((0, 0), (0, 2 - xy.shape[1]))).astype(np.float32)


def _fit(x: np.ndarray, seed: int | None, n_neighbors: int, min_dist: float, metric: str,
         force_approximation: bool = False, return_model: bool = False):
    """Run one UMAP fit on ``x`` [M, e] → [M, 2] float32. Caller holds ``_UMAP_LOCK``.

    Rows that are one point (:func:`merge_duplicates`) are fitted once and share their coordinates, so
    identical rows — in a joint map, a sample whose "after" equals its "before" — land on the same point.
    ``force_approximation`` makes UMAP use its own NN-descent (to warm that path up, and for a sampled map, whose
    model must keep NN-descent's search index to place the other points). ``return_model``: return
    ``(xy, fitted umap.UMAP)`` instead of ``xy`` (the model is fitted on the distinct rows ``x[keep]``).
    """
    global FIT_COUNT
    umap = _umap_module()
    keep, inverse, knn, exact_nn = _merge(x, metric, n_neighbors, DUPLICATE_TOL, not force_approximation)
    xu = x[keep]
    m = xu.shape[0]
    if m < 4:  # UMAP needs a few distinct points; 1-3 are placed by their exact distances
        FIT_COUNT += 1
        xy = _few_points_layout(xu, metric)[inverse]
        return (xy, None) if return_model else xy
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
    if exact_nn:
        kw["precomputed_knn"] = knn if knn is not None else exact_knn(xu, k, metric)
    with warnings.catch_warnings():
        # "precomputed_knn[2] is not an NNDescent object": we never call transform (module docstring)
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")
        warnings.filterwarnings("ignore", message=".*n_jobs value.*overridden.*")
        model = umap.UMAP(**kw)
        xy = model.fit_transform(xu)
    FIT_COUNT += 1
    xy = np.asarray(xy, dtype=np.float32)[inverse]
    return (xy, model) if return_model else xy


class JointMap(tuple):
    """``(xy_before, xy_after | None)`` — what :func:`joint_umap` returns — with ``info``: how the map was made.

    ``info`` keys: ``n`` (samples), ``points`` (rows mapped), ``fitted_samples`` / ``fitted_points`` (rows UMAP
    was fitted on; all of them for a small map), ``placed_points`` (rows placed with ``umap.UMAP.transform``),
    ``stratified_by`` (``"group"``, or ``None`` without strata), ``seed``. A plain tuple for every other use.
    """

    info: dict

    def __new__(cls, xy_before, xy_after, info: Mapping[str, Any] | None = None):
        obj = super().__new__(cls, (xy_before, xy_after))
        obj.info = dict(info or {})
        return obj


def joint_umap(before: np.ndarray, after: np.ndarray | None = None, store=None,
               key_fields: Mapping[str, Any] | None = None, seed: int | None = 0, n_neighbors: int = 15,
               min_dist: float = 0.1, metric: str = "cosine",
               progress: Callable[[str], None] | None = None, strata=None) -> JointMap:
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
        strata: optional [N] group label of each sample; used only above
            :data:`clipcal.sampled_map.LARGE_MAP_THRESHOLD` samples, where the map is fitted on a sample
            stratified by it and the other points are placed into it (:func:`clipcal.sampled_map.sampled_map`).

    Returns:
        :class:`JointMap` ``(xy_before [N, 2] float32, xy_after [N, 2] float32 | None)``, rows following the
        input rows, with ``.info`` saying how many points were fitted and how many placed.

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
    key = projection_key(before, after, key_fields, _params(seed, n_neighbors, min_dist, metric), strata) \
        if store is not None else None

    def from_store():
        return _read(store, key, n, after is not None)

    def fit() -> tuple[np.ndarray, dict]:
        from clipcal.sampled_map import LARGE_MAP_THRESHOLD, sampled_map  # noqa: PLC0415 - it imports this module

        if n > LARGE_MAP_THRESHOLD:
            return sampled_map(before, after, strata, seed, n_neighbors, min_dist, metric, progress)
        x = before if after is None else np.concatenate([before, after])
        return _fit(x, seed, n_neighbors, min_dist, metric), {"n": n, "points": total, "fitted_points": total,
                                                               "fitted_samples": n, "placed_points": 0}

    if store is not None:
        hit = from_store()
        if hit is not None:
            return hit
    if progress:
        progress("waiting for another projection to finish" if _UMAP_LOCK.locked() else "fitting UMAP")
    with _UMAP_LOCK:
        if store is None:
            xy, info = fit()
            return JointMap(xy[:n], xy[n:] if after is not None else None, info)
        with store.lock(KIND, key):  # another process may be computing the same map
            hit = from_store()
            if hit is not None:
                return hit
            if progress:
                progress("fitting UMAP")
            t0 = time.perf_counter()
            xy, info = fit()
            meta = {"fit_seconds": round(time.perf_counter() - t0, 3), "n_points": int(total),
                    "rows": "before then after" if after is not None else "before", "map": info}
            store.put(KIND, key, {"xy": xy}, meta)
    return JointMap(xy[:n], xy[n:] if after is not None else None, info)


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
        embeddings, 0…2), ``cos_change`` (1 − cosine similarity of before and after, 0…2, computed as
        ½·move_emb² so that an unchanged embedding gives exactly 0), ``rank_change`` (1 = largest
        embedding change; ties by ``move_2d``, then input order) and ``rank_2d`` (1 = moved most in the
        map). Rank what moved by ``cos_change`` (:func:`moved_most`): the map distance is a cue only, UMAP
        does not preserve distances.

    Raises:
        MethodError: row counts differ.
    """
    xb, xa = np.asarray(xy_before, float), np.asarray(xy_after, float)
    eb, ea = np.asarray(emb_before), np.asarray(emb_after)
    n = xb.shape[0]
    if not (xa.shape[0] == eb.shape[0] == ea.shape[0] == n) or eb.shape != ea.shape:
        raise MethodError(f"displacement inputs disagree: xy {xb.shape}/{xa.shape}, emb {eb.shape}/{ea.shape}",
                          hint="pass the before/after arrays of the same samples")
    change = _cos_change(eb, ea)
    d = xa - xb
    out = pd.DataFrame({
        "dx": d[:, 0], "dy": d[:, 1],
        "move_2d": np.hypot(d[:, 0], d[:, 1]),
        "move_emb": np.sqrt(2.0 * change),
        "cos_change": change,
    })
    order = np.lexsort((np.arange(n), -out["move_2d"].to_numpy(), -change))
    out["rank_change"] = np.empty(n, np.int64)
    out.loc[order, "rank_change"] = np.arange(1, n + 1)
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


def unit_group_sums(x: np.ndarray, codes: np.ndarray, n_groups: int, block_bytes: int | None = None) -> np.ndarray:
    """Per group, the sum of the L2-normalised rows of ``x`` (rows as :func:`_unit`: float64, norm floored at 1e-12).

    Reads ``x`` in row blocks (:func:`clipcal.rowblocks.row_blocks`) and adds each block into float64 accumulators
    with a sparse one-hot product (``scipy.sparse.csr_matrix @ block``), so no [N, e] float64 copy and no per-group
    fancy-index copy is made (at CelebA size, 202,599 × 768, those were 3.6 GB); the pages of a memory-mapped
    store array (a run's ``embeddings_after``) are released after each block (:func:`clipcal.store.release_pages`).

    Args:
        x: [N, e] float array (float32 or float64; ``np.memmap`` welcome).
        codes: [N] int group index in ``[0, n_groups)``; rows with a negative code are left out.
        n_groups: G. block_bytes: float64 bytes per block (default :data:`clipcal.rowblocks.BLOCK_BYTES`).

    Returns:
        [G, e] float64 sums (divide by the group sizes for the mean unit vector).
    """
    from scipy.sparse import csr_matrix  # noqa: PLC0415

    from clipcal.rowblocks import row_blocks  # noqa: PLC0415
    from clipcal.store import release_pages  # noqa: PLC0415

    codes = np.asarray(codes, dtype=np.int64)
    sums = np.zeros((int(n_groups), x.shape[1]), dtype=np.float64)
    for sl in row_blocks(x.shape[0], x.shape[1], block_bytes):
        c = codes[sl]
        keep = np.flatnonzero(c >= 0)
        onehot = csr_matrix((np.ones(len(keep)), (c[keep], keep)), shape=(len(sums), sl.stop - sl.start))
        sums += onehot @ _unit(x[sl])
        release_pages(x)
    return sums


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
    labels = sorted(pd.unique(g), key=lambda v: (str(type(v)), v))
    codes = pd.Categorical(g, categories=labels).codes  # row → position of its label in ``labels``
    xb, xa = np.asarray(xy_before, float), np.asarray(xy_after, float)
    sum_b, sum_a = (unit_group_sums(e, codes, len(labels)) for e in (emb_before, emb_after))
    rows = []
    for i, lab in enumerate(labels):
        m = codes == i
        cb, ca = xb[m].mean(axis=0), xa[m].mean(axis=0)
        mb, ma = sum_b[i] / m.sum(), sum_a[i] / m.sum()  # mean unit vectors
        cos_shift = float(_cos_change(mb[None], ma[None])[0])  # exactly 0 for an unchanged group
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
                     cos_shift))
    return pd.DataFrame(rows, columns=["group", "name", "n", "x_before", "y_before", "x_after", "y_after",
                                       "shift_2d", "cos_shift"])


#: Columns :func:`moved_most` carries over from the points table, in this order, when present.
MOVED_COLUMNS = ("sample_id", "class", "attribute", "group", "split", "cos_change", "move_2d", "crossed")


@dataclass(frozen=True)
class MovedRanking:
    """What :func:`moved_most` returns.

    Attributes:
        table: the ``top`` samples whose embedding changed most, ranked: ``rank`` (1 = largest change) then
            the :data:`MOVED_COLUMNS` present in the input. Empty when no embedding changed.
        n_changed / n_unchanged: samples with 1 − cos above / at or below ``tol``.
        tol: the tolerance used (:data:`DUPLICATE_TOL` by default).
        note: one sentence for under the table (what it is ranked by, how many did not change).
    """

    table: pd.DataFrame
    n_changed: int
    n_unchanged: int
    tol: float
    note: str


def moved_most(points: pd.DataFrame, top: int = 20, tol: float = DUPLICATE_TOL) -> MovedRanking:
    """The samples whose embedding changed most between before and after calibration, ranked.

    Ranked by the change in embedding space, ``cos_change`` = 1 − cosine between a sample's before and after
    embedding (:func:`displacement`), never by the 2-D move: UMAP distances are not embedding distances,
    and a map can show movement the embeddings do not have. ``move_2d`` is kept as a secondary cue and only
    breaks exact ties (then input order). Samples with ``cos_change <= tol`` did not change (float noise
    included, :data:`DUPLICATE_TOL`); they are counted, never listed.

    Args:
        points: one row per sample with ``cos_change`` (and ideally ``sample_id``, ``move_2d``, ``class``,
            ``attribute``, ``group``, ``split``, ``crossed`` — e.g. the Representations points table).
        top: most rows in the table.
        tol: 1 − cos at or below which a sample counts as unchanged.

    Returns:
        :class:`MovedRanking`.

    Raises:
        MethodError: ``cos_change`` is missing or has NaN values (rows named).
    """
    if "cos_change" not in points:
        raise MethodError("the points table has no cos_change column (1 − cos between before and after)",
                          hint="build it with clipcal.projection.displacement from a method with an 'after'")
    change = points["cos_change"].astype(float)
    if change.isna().any():
        bad = points.index[change.isna()][:5].tolist()
        raise MethodError(f"cos_change is missing for rows {bad}",
                          hint="compute displacement for every sample of the map")
    n = len(points)
    changed = change > tol
    cols = [c for c in MOVED_COLUMNS if c in points]
    sub = points.loc[changed, cols].copy()
    keys = [sub["cos_change"].to_numpy(float)]
    if "move_2d" in sub:
        keys.insert(0, sub["move_2d"].to_numpy(float))
    order = np.lexsort([np.arange(len(sub))] + [-k for k in keys])
    table = sub.iloc[order[:max(int(top), 0)]].reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1, dtype=np.int64))
    n_changed = int(changed.sum())
    if n_changed == 0:
        note = (f"None of the {n} samples' embeddings changed (1 − cos ≤ {tol:g} for every one), "
                "so nothing moved: the map shows each sample at the same place before and after.")
    else:
        note = (f"{n_changed} of the {n} samples' embeddings changed; ranked by the embedding change "
                "(1 − cos between before and after). The 2-D move is the distance in the map, a cue only: "
                "UMAP does not preserve distances.")
        if n_changed < n:
            note += f" {n - n_changed} of the {n} did not change (1 − cos ≤ {tol:g}) and are not listed."
    return MovedRanking(table=table, n_changed=n_changed, n_unchanged=n - n_changed, tol=float(tol), note=note)
