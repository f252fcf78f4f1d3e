"""How well a representation separates the classes inside each group: the class purity of its neighbourhoods.

A UMAP map shows neighbourhoods, but a map cannot be measured; this module measures them in the embedding space
itself, so a page can say (and lead with) where the "after" representation changed. For every image, the share
of its k nearest neighbours (cosine distance, the image itself excluded) that belong to its own class; averaged
over a group. A spurious representation puts a minority-group image (a landbird on water) among images of the
other class (waterbirds on water): low purity. A calibration that recovers the class raises it.

Neighbours: :class:`sklearn.neighbors.NearestNeighbors` (brute force, exact), ``kneighbors()`` without a query,
which leaves each point out of its own neighbours; the distances are computed in chunks of
:data:`KNN_WORKING_MEMORY_MB` (sklearn's ``working_memory``), so memory stays flat at CelebA size.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from clipcal.errors import MethodError
from clipcal.rowblocks import take_rows

#: neighbours per image (the issue's k = 10): enough to average out single near-duplicates, few enough that a
#: neighbourhood stays local in groups of a few dozen test images
DEFAULT_K = 10
#: what the purity numbers mean, shown beside them (the pages read it from here)
PURITY_DEFINITION = (
    "Neighbourhood class purity: for each test image, the share of its {k} nearest test images (cosine distance "
    "in the embedding itself, not the map) that belong to its own class, averaged over the group. Low purity = "
    "the group sits among the other class (the representation follows the spurious attribute); a rise after "
    "calibration = the group moved toward its own class.")
#: MiB of one chunk of the distance matrix (``sklearn.config_context(working_memory=…)``, default 1,024): at
#: CelebA's 19,962 test images sklearn's default chunk, its ranking and the copies around them raised the
#: server's RSS by 3.2 GB; 64 MiB chunks give the same neighbours (each row's distances are computed whole).
KNN_WORKING_MEMORY_MB = 64
#: columns of :func:`neighbourhood_purity`
PURITY_COLUMNS = ["group", "name", "n", "purity_before", "purity_after", "change"]


def knn_class_purity(embeddings: np.ndarray, y: np.ndarray, k: int = DEFAULT_K) -> np.ndarray:
    """Per image, the share of its ``k`` nearest neighbours (cosine, itself excluded) of its own class.

    Args:
        embeddings: [N, e] float array (any norm; cosine distance ignores it).
        y: [N] int class labels.
        k: neighbours per image; capped at N − 1.

    Returns:
        [N] float64 in [0, 1] (exact multiples of 1/k).

    Raises:
        MethodError: fewer than 2 rows, or shapes that disagree.
    """
    import sklearn
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(embeddings, dtype=np.float64)
    yy = np.asarray(y)
    if x.ndim != 2 or len(x) != len(yy):
        raise MethodError(f"neighbourhood purity needs [N, e] embeddings and [N] labels, got {x.shape} and "
                          f"{yy.shape}", hint="pass the embeddings and labels of the same images")
    if len(x) < 2:
        raise MethodError(f"neighbourhood purity needs at least 2 images, got {len(x)}")
    k = int(min(k, len(x) - 1))
    # sklearn computes the cosine distances of a chunk of rows to all rows at a time
    # (pairwise_distances_chunked); its default chunk is 1 GB, with two more of its size for the ranking
    with sklearn.config_context(working_memory=KNN_WORKING_MEMORY_MB):
        idx = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(x).kneighbors(
            return_distance=False)
    return (yy[idx] == yy[:, None]).mean(axis=1)


def neighbourhood_purity(before: np.ndarray, after: np.ndarray, y: np.ndarray, groups: np.ndarray,
                         group_names: Mapping | Sequence | None = None, k: int = DEFAULT_K,
                         rows: np.ndarray | None = None) -> pd.DataFrame:
    """Class purity of each group's k-nearest-neighbour neighbourhoods, before vs after calibration.

    The neighbours of an image are searched among the ``rows`` only (e.g. the test split), in each
    representation separately; identical ``before`` and ``after`` give a change of exactly 0.

    Args:
        before, after: [N, e] and [N, e'] embeddings of the same images (frozen backbone; a method's
            ``embeddings_after``).
        y: [N] int classes. groups: [N] int groups (−1 = unknown attribute: one "unknown" group).
        group_names: label → display name (mapping or list indexed by the label); default ``str(label)``.
        k: neighbours per image (:data:`DEFAULT_K`).
        rows: row indices to measure on (default all).

    Returns:
        DataFrame :data:`PURITY_COLUMNS`, one row per group present (ascending label): ``n`` images,
        ``purity_before`` / ``purity_after`` (mean share of own-class neighbours, 0–1) and ``change``
        (after − before); ``attrs["k"]`` = the k used.

    Raises:
        MethodError: row counts disagree, or fewer than 2 rows.
    """
    b, a = np.asarray(before), np.asarray(after)  # views: a memory map stays one (rowblocks.mapped_base)
    y, g = np.asarray(y), np.asarray(groups)
    if not (len(b) == len(a) == len(y) == len(g)):
        raise MethodError(f"neighbourhood purity: before {len(b)}, after {len(a)}, labels {len(y)}, groups "
                          f"{len(g)} rows", hint="pass the arrays of the same images")
    r = np.arange(len(y)) if rows is None else np.asarray(rows, dtype=np.int64)
    # the rows as the float64 copy sklearn works on, gathered in blocks: no float32 copy beside it, and a
    # memory-mapped "after" (a stored run's) is not left resident after its scattered rows are read
    pb = knn_class_purity(take_rows(b, r), y[r], k)
    pa = knn_class_purity(take_rows(a, r), y[r], k)
    gr = g[r]
    out = []
    for lab in sorted(pd.unique(gr)):
        m = gr == lab
        if group_names is None or (isinstance(lab, (int, np.integer)) and lab < 0):
            name = "unknown" if lab < 0 else str(lab)
        else:
            try:
                name = str(group_names[lab])
            except (KeyError, IndexError, TypeError):
                name = str(lab)
        before_m, after_m = float(pb[m].mean()), float(pa[m].mean())
        out.append((int(lab), name, int(m.sum()), before_m, after_m, after_m - before_m))
    table = pd.DataFrame(out, columns=PURITY_COLUMNS)
    table.attrs["k"] = int(min(k, len(r) - 1))
    return table
