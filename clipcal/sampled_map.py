"""Maps of many samples: the joint before/after UMAP fitted on a seeded, stratified sample of the samples, and
every other point placed into the fitted map with ``umap.UMAP.transform`` (issue 14 item 3).

A full UMAP of 2 × 202,599 CelebA points runs for a long time on a CPU (single-threaded, since a fixed seed makes
UMAP single-threaded) and its neighbour graph alone holds millions of edges; a sample of
:data:`LARGE_MAP_FIT_SAMPLES` samples fitted jointly shows the same structure, and the other points land
next to their nearest fitted neighbours. Small groups are kept in the fit by a per-stratum floor. Used by
:func:`clipcal.projection.joint_umap` above :data:`LARGE_MAP_THRESHOLD` samples; the sample's parameters are part
of the projection's store key (:func:`large_map_params`).
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from clipcal import projection as P
from clipcal.errors import MethodError
from clipcal.store import release_pages


#: Above this many samples (rows per side), the joint map is fitted on a seeded, stratified sample of the
#: samples and every other point is placed into the fitted map (:func:`sampled_map`). At or below it the map is
#: fitted on every point, as before (same store key as before this existed).
LARGE_MAP_THRESHOLD = 50_000
#: Samples in the fit of a large map (each with its before and after rows: 2 × this many points for a joint map).
LARGE_MAP_FIT_SAMPLES = 25_000
#: Every stratum (group) contributes at least min(its size, this) samples to the fit, so that small groups
#: (CelebA's blond men: 1,387 of 162,770 training images) shape the map and are not only placed into it.
LARGE_MAP_STRATUM_FLOOR = 1_000
#: Rows per ``umap.UMAP.transform`` call. Fixed: transform draws its random numbers per call (seeded by the
#: model's ``transform_seed``), and new points never interact with each other (their graph links them to fitted
#: points only), so a fixed chunking makes the placement repeatable.
PLACE_CHUNK = 50_000
#: Optimisation epochs of the placement, the same for every chunk (umap's own default for > 10,000 new rows is
#: 30 and 100 below that, which would place a short last chunk differently).
PLACE_EPOCHS = 30


def large_map_params(n: int, strata=None) -> dict:
    """Key fields of the sampled map of ``n`` samples per side: ``{}`` at or below :data:`LARGE_MAP_THRESHOLD`
    (so small maps keep their keys), else the sample size, stratum floor, threshold, placement chunking and the
    sha256 of the strata (the group of each sample, as codes in sorted label order) — changing any of them
    changes the map, so each is part of its store key."""
    if n <= LARGE_MAP_THRESHOLD:
        return {}
    codes = None if strata is None else _strata_codes(strata, n)
    return {"sampled": "stratified sample fitted, rest placed with umap transform",
            "sample_threshold": LARGE_MAP_THRESHOLD, "fit_samples": LARGE_MAP_FIT_SAMPLES,
            "stratum_floor": LARGE_MAP_STRATUM_FLOOR, "place_chunk": PLACE_CHUNK, "place_epochs": PLACE_EPOCHS,
            "strata_sha256": "none" if codes is None else P.array_digest(codes)}


def _strata_codes(strata, n: int) -> np.ndarray:
    s = np.asarray(strata).reshape(-1)
    if len(s) != n:
        raise MethodError(f"strata has {len(s)} labels for {n} samples", hint="pass one group label per sample")
    return np.unique(s, return_inverse=True)[1].reshape(-1).astype(np.int64)


def stratified_sample(strata, n: int, size: int = LARGE_MAP_FIT_SAMPLES, floor: int = LARGE_MAP_STRATUM_FLOOR,
                      seed: int = 0) -> np.ndarray:
    """Seeded stratified sample of ``range(n)``: each stratum gets its share of ``size`` (rounded), at least
    min(its size, ``floor``) (the floor is capped at ``size`` / number of strata); ``strata=None`` is one stratum
    (a plain random sample of ``size``).

    Returns:
        Sorted int64 row indices (about ``size`` of them; more when floors lift small strata). Same
        arguments → same indices (``numpy.random.default_rng(seed)``, strata visited in sorted label order).
    """
    codes = np.zeros(n, np.int64) if strata is None else _strata_codes(strata, n)
    counts = np.bincount(codes)
    floor = min(int(floor), int(size) // len(counts))  # floors never add up to more than the sample
    want = np.minimum(counts, np.maximum(np.minimum(counts, floor), np.round(size * counts / n).astype(np.int64)))
    rng = np.random.default_rng(seed)
    parts = [rng.choice(np.flatnonzero(codes == g), int(k), replace=False) for g, k in enumerate(want) if k]
    return np.sort(np.concatenate(parts)).astype(np.int64)


def _take(before: np.ndarray, after: np.ndarray | None, rows: np.ndarray) -> np.ndarray:
    """Rows of ``[before; after]`` (row ``n + i`` = ``after[i]``) without concatenating the two arrays."""
    n = before.shape[0]
    out = np.empty((len(rows), before.shape[1]), np.float32)
    low = rows < n
    out[low] = before[rows[low]]
    if after is not None:
        out[~low] = after[rows[~low] - n]
    return out


def _row_ids(before: np.ndarray, after: np.ndarray | None, rows: np.ndarray) -> np.ndarray:
    """For each of ``rows`` of ``[before; after]``, the position in ``rows`` of the first row with the same bytes
    (exact duplicates found by a 16-byte blake2b of each row, then checked equal)."""
    n = before.shape[0]
    digests = [hashlib.blake2b(memoryview(np.ascontiguousarray(before[r] if r < n else after[r - n])).cast("B"),
                               digest_size=16).digest() for r in rows]
    release_pages(before, after)  # the digests read every row: drop the pages of a store-mapped ``after``
    first = pd.Series(np.arange(len(rows))).groupby(pd.Index(digests)).transform("min").to_numpy()
    dup = np.flatnonzero(first != np.arange(len(rows)))
    for lo in range(0, len(dup), PLACE_CHUNK):
        d = dup[lo:lo + PLACE_CHUNK]
        if not np.array_equal(_take(before, after, rows[d]), _take(before, after, rows[first[d]])):
            raise MethodError("two different rows share a blake2b digest",  # pragma: no cover - 2^-128
                              hint="report this as a bug")
    return first


def sampled_map(before: np.ndarray, after: np.ndarray | None, strata=None, seed: int | None = 0,
                n_neighbors: int = 15, min_dist: float = 0.1, metric: str = "cosine",
                progress: Callable[[str], None] | None = None) -> tuple[np.ndarray, dict]:
    """The joint map of many samples: UMAP fitted on a stratified sample, the other points placed into it.

    1. :func:`stratified_sample` of the N samples (``strata`` = their groups; seeded by ``seed``, 0 if None);
    2. UMAP (NN-descent neighbours) fitted on those samples' before and after rows together — the joint map of
       :func:`clipcal.projection.joint_umap`, on the sample;
    3. every other point placed with ``umap.UMAP.transform`` (McInnes et al. 2018 §3: new points initialised
       at the weighted mean of their fitted neighbours, then optimised against the fixed fitted points), in
       fixed chunks of :data:`PLACE_CHUNK` rows with :data:`PLACE_EPOCHS` epochs. An "after" row that is the
       same point as its "before" row (:data:`clipcal.projection.DUPLICATE_TOL`) takes the before row's place,
       and exact duplicate rows are placed once, so the map shows no movement the embeddings do not have.

    Args: as :func:`clipcal.projection.joint_umap` (arrays already checked, float32).

    Returns:
        ``(xy [N or 2N, 2] float32, info)`` — rows before then after; ``info`` as
        :class:`clipcal.projection.JointMap`'s.

    Raises:
        MethodError: the sample has fewer than 4 distinct points (nothing to place the rest into).
    """
    n = before.shape[0]
    total = n * (2 if after is not None else 1)
    fit = stratified_sample(strata, n, LARGE_MAP_FIT_SAMPLES, LARGE_MAP_STRATUM_FLOOR, 0 if seed is None else seed)
    x_fit = before[fit] if after is None else np.concatenate([before[fit], after[fit]])
    release_pages(before, after)  # each pass over a store-mapped ``after`` (622 MB at CelebA size) drops its pages
    if progress:
        progress(f"fitting UMAP on {len(x_fit):,} of {total:,} points (a stratified sample)")
    xy_fit, model = P._fit(x_fit, seed, n_neighbors, min_dist, metric, force_approximation=True,
                           return_model=True)
    if model is None:
        raise MethodError(f"the map's sample of {len(fit):,} samples has fewer than 4 distinct embeddings",
                          hint="the embeddings are (nearly) all equal; check the embedding step")
    model.n_epochs = 3 * PLACE_EPOCHS  # transform runs n_epochs // 3 epochs on every chunk
    xy = np.empty((total, 2), np.float32)
    xy[fit] = xy_fit[:len(fit)]
    rest = np.setdiff1d(np.arange(n), fit)
    rows = rest
    same = np.zeros(0, bool)
    if after is not None:
        xy[n + fit] = xy_fit[len(fit):]
        parts = []
        for c in np.array_split(rest, max(1, len(rest) // 10_000)):  # float64: chunks
            parts.append(P._same_rows(before[c], after[c], metric, P.DUPLICATE_TOL))
            release_pages(before, after)
        same = np.concatenate(parts)
        rows = np.concatenate([rest, n + rest[~same]])
    # exact duplicates (of fitted rows, or of each other) are placed once: fitted rows come first, so a copy of a
    # fitted row takes its place
    fitted = fit if after is None else np.concatenate([fit, n + fit])
    cand = np.concatenate([fitted, rows])
    first = _row_ids(before, after, cand)
    todo = cand[len(fitted):][first[len(fitted):] == np.arange(len(fitted), len(cand))]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*overridden.*")
        for lo in range(0, len(todo), PLACE_CHUNK):
            if progress:
                progress(f"placing the other points into the map: {lo:,} / {len(todo):,}")
            chunk = todo[lo:lo + PLACE_CHUNK]
            xy[chunk] = np.asarray(model.transform(_take(before, after, chunk)), np.float32)
            release_pages(before, after)
    xy[cand] = xy[cand[first]]
    if after is not None:
        xy[n + rest[same]] = xy[rest[same]]
    info = {"n": n, "points": total, "fitted_samples": len(fit), "fitted_points": len(x_fit),
            "placed_points": total - len(x_fit), "stratified_by": None if strata is None else "group",
            "seed": seed}
    return xy, info


def map_note(info: Mapping[str, Any] | None) -> str:
    """One sentence for the page on how a map was made: empty for a map fitted on every point."""
    if not info or not info.get("placed_points"):
        return ""
    strat = ("a random sample stratified by group (every group at least "
             f"{LARGE_MAP_STRATUM_FLOOR:,} samples or all it has)" if info.get("stratified_by") else
             "a random sample")
    return (f"This map has {info['points']:,} points, more than UMAP fits here in minutes: it was fitted on "
            f"{info['fitted_points']:,} of them — {info['fitted_samples']:,} samples drawn as {strat}, seed "
            f"{info.get('seed')} — and the other {info['placed_points']:,} were placed into it with UMAP's "
            "transform (each starts at the weighted mean of its nearest fitted points, then is optimised against "
            "the fixed map). Placed points sit where their neighbours are; they do not shape the map.")
