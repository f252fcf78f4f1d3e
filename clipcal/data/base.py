"""The :class:`Benchmark` and its canonical sample table (design.md, "Canonical sample table").

Every loader returns a ``Benchmark`` whose ``table`` has one row per image:

=============  ==========================================  ==============================================
column         dtype                                       meaning
=============  ==========================================  ==============================================
``sample_id``  str, unique                                 stable id (relative path or dataset id)
``path``       str                                         image path, absolute or relative to ``root``
``split``      category ``train`` / ``val`` / ``test``
``y``          int64 ≥ 0                                   class index into ``class_names``
``a``          int64 ≥ 0, or -1 unknown                    spurious attribute index into ``attr_names``
``group``      int64, or -1                                ``y * n_attributes + a`` (-1 where ``a`` is -1)
=============  ==========================================  ==============================================
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from clipcal._json import jsonable
from clipcal.errors import DataError

SPLITS = ("train", "val", "test")
TABLE_COLUMNS = ("sample_id", "path", "split", "y", "a", "group")


@dataclass
class Benchmark:
    """A benchmark: where its images are, its sample table, and the names of classes and attributes.

    Attributes:
        name: registry name (``waterbirds``, ``celeba``, ``metashift``, ``csv``, ``demo``).
        root: folder that relative ``path`` values are resolved against.
        table: the canonical sample table (module docstring); index is a plain RangeIndex.
        class_names: K names, index = ``y``.
        attr_names: names of the spurious attribute's values, index = ``a``; empty when unknown.
        params: the loader arguments that define this benchmark (recorded in store manifests).
        target_name / attr_name: what ``y`` and ``a`` mean, e.g. ``"bird type"`` / ``"background"``.
        notes: what the loader assumed while reading (a guessed text encoding, paths matched by Unicode
            normal form, a count line that disagrees with the rows, …); shown as warnings by validation, not
            part of the fingerprint.

    Image paths must stay inside ``root`` (no absolute path elsewhere, no ``..`` leaving it) unless
    ``params["allow_outside_root"]`` is true: a dashboard may be shared, and a metadata file must not make it
    show any image the server can read (:func:`refuse_outside_root`).
    """

    name: str
    root: Path
    table: pd.DataFrame
    class_names: list[str]
    attr_names: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    target_name: str = "class"
    attr_name: str = "spurious attribute"
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.table = finalize_table(self.table, len(self.class_names), len(self.attr_names))
        refuse_outside_root(self.table["path"], self.root, bool((self.params or {}).get("allow_outside_root")))

    @property
    def n_classes(self) -> int:
        """K, the number of classes."""
        return len(self.class_names)

    @property
    def n_attrs(self) -> int:
        """Number of spurious-attribute values (0 when the benchmark has no attribute labels)."""
        return len(self.attr_names)

    @property
    def n_groups(self) -> int:
        """K × n_attrs; 0 when there are no attribute labels."""
        return self.n_classes * self.n_attrs

    @property
    def has_attributes(self) -> bool:
        """True when at least one row has a known spurious attribute.

        Scanned once per (table object, attribute names) — pages ask several times per rerun, and the table of a
        large benchmark (CelebA: 202,599 rows) is not re-read for it; assigning another table or other names
        scans again (the table is not meant to be edited in place after construction)."""
        memo = self.__dict__.get("_has_attributes")
        if memo is None or memo[0] is not self.table or memo[1] != self.n_attrs:
            memo = (self.table, self.n_attrs, self.n_attrs > 0 and bool((self.table["a"] >= 0).any()))
            self.__dict__["_has_attributes"] = memo
        return memo[2]

    def group_names(self) -> list[str]:
        """Names ``"<class> / <attribute>"`` for groups 0 … n_groups-1."""
        return [f"{c} / {a}" for c in self.class_names for a in self.attr_names]

    def group_name(self, g: int) -> str:
        """Name of group ``g``; ``"unknown"`` for -1."""
        return "unknown" if g < 0 else self.group_names()[g]

    def image_path(self, path: str) -> Path:
        """Resolve a table ``path`` value against ``root``."""
        p = Path(path)
        return p if p.is_absolute() else self.root / p

    def fingerprint(self) -> str:
        """sha256 (hex, 16 chars) of what defines the samples: name, names, table rows and image contents.

        Two loads of the same files give the same fingerprint; any change of a row, label, split or name
        changes it, and so does any change of an image file's bytes (replaced — even by a file of the same size —,
        re-encoded, truncated or removed: embeddings of the old files are then not reused). Content, not stat
        fields, so the same files elsewhere (a copied store, the demo built twice) keep the fingerprint.

        Cost: every image is hashed once per machine (sha256, 8 threads); the digests are kept in
        ``<cache>/.integrity/`` with each file's (size, mtime_ns, ctime_ns, inode) stamp, and a later call
        stats every file and re-hashes only those whose stamp changed (:func:`clipcal.integrity.file_digests`;
        ``bench/store_verify.py`` measures both). Computed once per Benchmark object.
        """
        h = hashlib.sha256()
        h.update(json.dumps([self.name, self.class_names, self.attr_names], sort_keys=True).encode())
        cols = self.table[["sample_id", "path", "split", "y", "a"]].astype(str)
        h.update(pd.util.hash_pandas_object(cols, index=False).values.tobytes())
        digests, sizes = self._file_digests()
        h.update(sizes.tobytes())
        h.update(digests.tobytes())
        return h.hexdigest()[:16]

    def _file_digests(self) -> tuple[np.ndarray, np.ndarray]:
        """([N, 16] uint8 content digests, [N] int64 sizes) of the image files (missing: 0xff…, -1); computed
        once per object, through the digest cache under the store folder (best-effort: never written if the
        store is read-only)."""
        cached = self.__dict__.get("_digests")
        if cached is not None:
            return cached
        from clipcal.integrity import file_digests
        from clipcal.paths import cache_root

        paths = [str(self.image_path(p)) if p else "" for p in self.table["path"].tolist()]
        root = os.path.abspath(self.root)
        cache = cache_root() / ".integrity" / f"images-{hashlib.sha256(root.encode()).hexdigest()[:16]}.npz"
        digests, sizes, stats = file_digests(paths, cache)
        self.__dict__["_digests"] = (digests, sizes)
        self.__dict__["_digest_stats"] = stats
        return digests, sizes

    def describe(self) -> dict:
        """JSON-able summary (name, params, names, sizes, fingerprint) for manifests."""
        return {
            "name": self.name,
            "params": {k: jsonable(v, fallback=str) for k, v in self.params.items()},  # reopens with these types
            "class_names": list(self.class_names),
            "attr_names": list(self.attr_names),
            "n_samples": int(len(self.table)),
            "fingerprint": self.fingerprint(),
        }

    def group_counts(self) -> pd.DataFrame:
        """Counts per (split, group) as a tidy table with columns split, group, class, attribute, n.

        Every group of every split appears, empty ones with n = 0; without attribute labels the rows are
        per class (group -1 is not used, ``attribute`` is "unknown").
        """
        t = self.table
        rows = []
        for split in SPLITS:
            s = t[t["split"] == split]
            if self.n_attrs:
                for y in range(self.n_classes):
                    for a in range(self.n_attrs):
                        n = int(((s["y"] == y) & (s["a"] == a)).sum())
                        rows.append((split, y * self.n_attrs + a, self.class_names[y], self.attr_names[a], n))
            else:
                for y in range(self.n_classes):
                    rows.append((split, -1, self.class_names[y], "unknown", int((s["y"] == y).sum())))
        return pd.DataFrame(rows, columns=["split", "group", "class", "attribute", "n"])


_WIN_ABS = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\|//)")  # C:\…, C:/…, \\server\…, //server/…


def paths_outside_root(paths: pd.Series, root: str | Path) -> pd.Series:
    """Which table paths leave ``root`` by their text alone (no file system access).

    A path leaves the root when it is absolute and not under ``root`` (POSIX ``/…``; Windows ``C:\\…`` and
    ``\\\\server\\…``, which never name a file here), or relative with ``..`` reaching above it (``../x.jpg``,
    ``a/../../x.jpg``). Symlinks are not followed here; :func:`clipcal.data.validate` also lists files that
    resolve outside the root through a symlink.

    Args:
        paths: table ``path`` values (any index, kept).
        root: the benchmark root.

    Returns:
        Series of str reasons (``"absolute path outside the root"``, ``"Windows absolute path …"``,
        ``"'..' leads out of the root"``) indexed like ``paths``, only for the paths that leave it.
    """
    s = paths.astype(str)
    # vectorised pre-filter, so CelebA's 202,599 plain ids cost one pass
    cand = s.str.startswith(("/", "\\")) | s.str.contains("..", regex=False) | s.str.match(_WIN_ABS)
    out = {}
    real_root = None
    for i, p in s[cand].items():
        if _WIN_ABS.match(p) and not p.startswith("//"):
            out[i] = "Windows absolute path (not a file on this machine)"
        elif posixpath.isabs(p):
            real_root = real_root or posixpath.normpath(os.path.abspath(root))
            q = posixpath.normpath(p)
            if not (q == real_root or q.startswith(real_root.rstrip("/") + "/")):
                out[i] = "absolute path outside the root"
        else:
            q = posixpath.normpath(p.replace("\\", "/"))
            if q == ".." or q.startswith("../"):
                out[i] = "'..' leads out of the root"
    return pd.Series(out, index=[i for i in s.index if i in out], dtype=object)


def refuse_outside_root(paths: pd.Series, root: str | Path, allow: bool, source: str | Path | None = None) -> None:
    """Raise ``DataError`` when image paths leave ``root`` (:func:`paths_outside_root`) and ``allow`` is false.

    Args:
        paths: image paths; with ``source`` their index is the 1-based line number in that file.
        root: the benchmark root.
        allow: the user's ``allow_outside_root`` (CLI ``--allow-outside-root``).
        source: the metadata file the paths were read from (named in the message with the lines).

    Raises:
        DataError: naming the file, the first lines (or table rows) with their paths and why, and what to do.
    """
    if allow:
        return
    bad = paths_outside_root(paths, root)
    if bad.empty:
        return
    where = "line" if source is not None else "row"
    shown = "; ".join(f"{where} {i}: {paths[i]!r} ({why})" for i, why in list(bad.items())[:5])
    more = f" … ({len(bad)} in all)" if len(bad) > 5 else ""
    raise DataError(
        f"{source or 'benchmark'}: {len(bad)} image path(s) leave the benchmark root {root}: {shown}{more}",
        hint="clipcal reads images only inside the root by default (a dashboard may be shared: a metadata file "
        "must not make it show any image the server can read). Make the paths relative to the root (move or "
        "link the images into it, or point the root / --image-dir at a folder holding them all); if you "
        "trust this metadata, pass --allow-outside-root (Python: allow_outside_root=True) — `data validate` "
        "then lists these paths.")


def finalize_table(table: pd.DataFrame, n_classes: int, n_attrs: int) -> pd.DataFrame:
    """Check and normalise a sample table to the canonical dtypes; compute ``group``.

    Args:
        table: DataFrame with at least ``sample_id, path, split, y`` (``a`` optional → -1).
        n_classes: K; every ``y`` must be in ``[0, K)``.
        n_attrs: number of attribute values; every known ``a`` must be in ``[0, n_attrs)``.

    Returns:
        A new DataFrame with exactly :data:`TABLE_COLUMNS`, RangeIndex, ``split`` categorical.

    Raises:
        DataError: missing columns (named, with the expected schema), labels out of range, unknown split
            values, duplicate ``sample_id`` (first few listed).
    """
    t = table.copy()
    if "a" not in t.columns:
        t["a"] = -1
    missing = [c for c in ("sample_id", "path", "split", "y") if c not in t.columns]
    if missing:
        raise DataError(
            f"sample table is missing column(s) {missing}",
            hint="expected columns: sample_id (str), path (str), split (train/val/test), y (int ≥ 0), "
            "a (int ≥ 0 or -1, optional)",
        )
    t["sample_id"] = t["sample_id"].astype(str)
    t["path"] = t["path"].astype(str)
    bad_split = ~t["split"].isin(SPLITS)
    if bad_split.any():
        vals = sorted(map(str, t.loc[bad_split, "split"].unique()))[:5]
        raise DataError(f"unknown split value(s) {vals} in rows {list(t.index[bad_split][:5])}",
                        hint="split must be one of train / val / test (loaders map 0/1/2)")
    t["split"] = pd.Categorical(t["split"], categories=list(SPLITS))
    for col, hi in (("y", n_classes), ("a", n_attrs)):
        v = pd.to_numeric(t[col], errors="coerce")
        if v.isna().any():
            rows = list(t.index[v.isna()][:5])
            raise DataError(f"column {col!r} has non-integer values in rows {rows}")
        t[col] = v.astype(np.int64)
    if ((t["y"] < 0) | (t["y"] >= n_classes)).any():
        rows = list(t.index[(t["y"] < 0) | (t["y"] >= n_classes)][:5])
        raise DataError(f"class index y out of range [0, {n_classes}) in rows {rows}")
    bad_a = (t["a"] < -1) | (t["a"] >= max(n_attrs, 0))
    bad_a &= t["a"] != -1
    if bad_a.any():
        raise DataError(f"attribute index a out of range [0, {n_attrs}) in rows {list(t.index[bad_a][:5])}")
    dup = t["sample_id"].duplicated(keep=False)
    if dup.any():
        ids = list(t.loc[dup, "sample_id"].unique()[:5])
        raise DataError(f"duplicate sample_id values: {ids}", hint="every row needs a unique id")
    t["group"] = np.where(t["a"] >= 0, t["y"] * max(n_attrs, 1) + t["a"], -1).astype(np.int64)
    return t[list(TABLE_COLUMNS)].reset_index(drop=True)
