"""Row blocks: read an [N, e] array a few megabytes at a time, so no temporary of its full size is made.

At CelebA size (202,599 × 768) one float64 copy of an embedding array is 1.2 GB; the dashboard's per-row and
per-group statistics therefore walk the rows in blocks whose float64 temporaries stay small
(issue 14.3: the server's peak RSS ≤ 4 GB).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

#: Bytes of one block's float64 temporary (32 MiB: large enough that the per-block Python overhead is nil).
BLOCK_BYTES = 32 * 2**20


def row_blocks(n: int, width: int, block_bytes: int | None = None, itemsize: int = 8) -> Iterator[slice]:
    """Slices covering ``range(n)`` in order, each of at most ``block_bytes`` of rows of ``width`` items of
    ``itemsize`` bytes (at least one row per slice).

    Args:
        n: rows. width: items per row (e.g. the embedding dimension e). block_bytes: bytes per block
            (default :data:`BLOCK_BYTES`, read at each call).
        itemsize: bytes per item of the temporary the caller makes per block (8: float64).

    Yields:
        ``slice(start, stop)`` with ``0 <= start < stop <= n``; nothing when ``n == 0``.
    """
    step = max(1, int(block_bytes or BLOCK_BYTES) // (int(itemsize) * max(1, int(width))))
    for start in range(0, int(n), step):
        yield slice(start, min(start + step, int(n)))


def mapped_base(x):
    """The read-only ``np.memmap`` an array's data lies in (walking ``.base``: ``np.asarray`` of a store array, as
    :class:`clipcal.methods.base.MethodResult` keeps ``embeddings_after``, is a plain ndarray over the map), or
    ``None`` for an array in memory."""
    while x is not None and not isinstance(x, np.memmap):
        x = getattr(x, "base", None)
    return x


def take_rows(x, rows=None, dtype=np.float64, block_bytes: int | None = None) -> np.ndarray:
    """``np.asarray(x[rows], dtype)`` built a block of rows at a time, releasing the pages of a memory-mapped
    ``x`` after each block (:func:`clipcal.store.release_pages`): the result is the only array of its size, and reading scattered rows
    of a store array (a split's rows of ``embeddings_after``) does not leave the whole file resident.

    Args:
        x: [N, e] array (``np.memmap`` or a view of one welcome). rows: ``None`` (all), [N] bool mask or int
            positions (order kept). dtype: of the result. block_bytes: bytes of the result per block (default
            :data:`BLOCK_BYTES`).

    Returns:
        [len(rows), e] array of ``dtype``, equal to ``np.asarray(x[rows], dtype)``.
    """
    from clipcal.store import release_pages

    idx = None if rows is None else np.asarray(rows)
    if idx is not None and idx.dtype == bool:
        idx = np.flatnonzero(idx)
    n = x.shape[0] if idx is None else len(idx)
    out = np.empty((n,) + tuple(x.shape[1:]), dtype=dtype)
    width = int(np.prod(x.shape[1:], dtype=np.int64)) if x.ndim > 1 else 1
    for sl in row_blocks(n, width, block_bytes, np.dtype(dtype).itemsize):
        out[sl] = x[sl] if idx is None else x[idx[sl]]
        release_pages(x)
    return out
