"""The keyed on-disk store: ``.npy`` arrays + ``manifest.json``, atomic writes, checksums, locks (design.md, "Store").

Layout under the store root (``clipcal.paths.cache_dir()`` unless given)::

    <root>/<kind>/<key>/manifest.json      written LAST; an entry without a valid one is not an entry
    <root>/<kind>/<key>/<name>.npy         one file per array, never pickled (``allow_pickle=False``)
    <root>/.tmp/…                          entries being written (moved into place with ``os.replace``)
    <root>/.partial/<kind>/<key>/          shards of long jobs (``Store.partial_dir``), kept across crashes
    <root>/.locks/<kind>-<key>.lock        one ``filelock.FileLock`` per key
    <root>/.trash/<kind>-<key>-<time>/     corrupt or partial entries moved aside by ``get``

``key = sha256(canonical JSON of the key fields)[:16]`` (sorted keys, no whitespace, UTF-8). Key fields are
whatever defines the content: for embeddings the benchmark fingerprint and the backbone identity
(weights, preprocessing, precision); for text embeddings the backbone identity, class names and templates.

Verification on ``get`` (``verify="auto"``, the default): the manifest must parse, carry a valid
``manifest_sha256`` (sha256 of its canonical JSON without that field, so *every* field — key fields, array
table, ``meta`` — is covered; :func:`check_seal`) and name the same kind and key; each array file must exist with
the recorded byte size, shape and dtype (read from the ``.npy`` header). The sha256 of every array is checked
in full the first time; the entry then records, in a hidden ``.verified.json``, each file's stat stamp
(size, mtime_ns, ctime_ns, inode, device; :mod:`clipcal.integrity`, which also states the threat model) with
the sha256 it was checked against, and later gets re-hash only files whose stamp changed. Stamps younger than
``clipcal.integrity.RACY_NS`` are not recorded (timestamps are coarse). ``verify="full"`` always hashes;
``verify="shape"`` never hashes. :meth:`Store.list` checks the manifest checksum too (no array hashing). A
corrupt entry is moved to ``.trash`` and ``get`` returns ``None`` so the caller rebuilds it; an entry written
before manifests carried a checksum counts as corrupt (it cannot be verified).

Writes: every folder the store writes to is checked with :func:`clipcal.paths.writable_dir`, and every
``OSError`` of a write becomes one :class:`~clipcal.errors.StoreError` naming the folder (read-only store, a
file in place of a folder, disk full) with what to do. Reading an intact entry from a read-only store works.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import filelock
import numpy as np

from clipcal import filekind, integrity
from clipcal._json import jsonable
from clipcal.errors import StoreError
from clipcal.integrity import sha256_file  # noqa: F401 - public here since the store's first version
from clipcal.paths import cache_dir, unwritable, writable_dir

KINDS = ("embeddings", "text", "runs", "projections", "inspect")
MANIFEST = "manifest.json"
VERIFIED = ".verified.json"
SEAL = "manifest_sha256"
FORMAT_VERSION = 2  # 2: manifests carry SEAL

_LOCKS: dict[str, filelock.FileLock] = {}
_LOCKS_GUARD = threading.Lock()


def _jsonable(value: Any) -> Any:
    """Normalise key fields to plain JSON types (:func:`clipcal._json.jsonable`); anything else is refused."""
    return jsonable(value, fallback=_not_json)


def _not_json(value: Any):
    raise StoreError(f"store key field of type {type(value).__name__} is not JSON-serialisable: {value!r}",
                     hint="key fields must be str, int, float, bool, None, lists or dicts of those")


def canonical_json(key_fields: dict) -> str:
    """The canonical JSON text of ``key_fields``: sorted keys, no whitespace, non-ASCII kept."""
    return json.dumps(_jsonable(key_fields), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def make_key(key_fields: dict) -> str:
    """``sha256(canonical_json(key_fields))`` as 16 hex characters."""
    return hashlib.sha256(canonical_json(key_fields).encode("utf-8")).hexdigest()[:16]


def json_checksum(obj: dict, field: str = SEAL) -> str:
    """sha256 (hex) of ``obj`` without ``field``, as canonical JSON (sorted keys, no whitespace, ASCII).

    Over the parsed content, not the file's bytes, so re-indenting a manifest is no change while any edited
    value is.
    """
    body = {k: v for k, v in obj.items() if k != field}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def seal(obj: dict, field: str = SEAL) -> dict:
    """``obj`` (made JSON-plain by a round trip) with ``field`` = :func:`json_checksum` of the rest."""
    plain = json.loads(json.dumps({k: v for k, v in obj.items() if k != field}, allow_nan=True))
    return {**plain, field: json_checksum(plain, field)}


def check_seal(obj: Any, field: str = SEAL) -> bool:
    """True when ``obj`` is a dict whose ``field`` equals :func:`json_checksum` of the rest."""
    return isinstance(obj, dict) and isinstance(obj.get(field), str) and obj[field] == json_checksum(obj, field)


def _as_storable(name: str, arr: Any) -> np.ndarray:
    """Turn an array-like into something ``np.save`` writes without pickling (strings → fixed-width unicode)."""
    a = np.asarray(arr)
    if a.dtype == object:
        if all(isinstance(v, str) for v in a.ravel()):
            width = max((len(v) for v in a.ravel()), default=1)
            a = a.astype(f"<U{max(width, 1)}")
        else:
            raise StoreError(f"array {name!r} has dtype object, which would need pickling",
                             hint="store numbers as numeric arrays and strings as str arrays")
    if a.dtype.hasobject:
        raise StoreError(f"array {name!r} contains Python objects", hint="use plain numeric or str dtypes")
    return np.ascontiguousarray(a)


def _npy_header(path: Path) -> tuple[tuple, str]:
    """(shape, dtype.str) from a ``.npy`` header without reading the data."""
    with open(path, "rb") as f:
        major, _minor = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read(f)
    return tuple(shape), np.dtype(dtype).str


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_npy(path: str | os.PathLike, arr: Any) -> dict:
    """Write one array as ``.npy`` (no pickle, fsynced) and return its manifest record.

    Returns:
        ``{"file", "shape", "dtype", "bytes", "sha256"}`` for the written file.
    """
    path = Path(path)
    a = _as_storable(path.stem, arr)
    with open(path, "wb") as f:
        np.save(f, a, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return {"file": path.name, "shape": list(a.shape), "dtype": a.dtype.str, "bytes": path.stat().st_size,
            "sha256": sha256_file(path)}


def release_pages(*arrays: Any) -> int:
    """Drop this process's resident pages of read-only memory-mapped store arrays (:meth:`Entry.array` with
    ``mmap=True``), so that data already copied elsewhere stops counting in the process's RSS.

    ``madvise(MADV_DONTNEED)`` on the whole file mapping (``mmap.mmap.madvise``): for a read-only shared file
    mapping the pages only leave this process's page tables — the array stays valid and a later read faults them
    back in from the page cache or the file. An array viewing such a map (``np.asarray`` of it, a slice) releases
    the map. Anything else (in-memory arrays, copy-on-write maps, ``None``, a
    platform without ``MADV_DONTNEED``) is left alone.

    Returns:
        How many of ``arrays`` were released.
    """
    import mmap

    from clipcal.rowblocks import mapped_base

    advice = getattr(mmap, "MADV_DONTNEED", None)
    done = 0
    for a in arrays:
        a = mapped_base(a)  # np.asarray of a store array is a plain ndarray over the map: release the map
        m = getattr(a, "_mmap", None)  # np.memmap (and its views) keep the mapping of the file
        if advice is None or getattr(a, "mode", None) != "r" or not isinstance(m, mmap.mmap) or m.closed:
            continue
        m.madvise(advice)
        done += 1
    return done


def _versions() -> dict:
    out = {"format": FORMAT_VERSION, "python": platform.python_version(), "numpy": np.__version__}
    try:
        from clipcal import __version__

        out["clipcal"] = __version__
    except ImportError:  # pragma: no cover - package always has a version
        pass
    for mod, name in (("torch", "torch"), ("open_clip", "open_clip"), ("timm", "timm")):
        if mod in sys.modules:  # record versions of what is loaded; never import torch just for this
            out[name] = getattr(sys.modules[mod], "__version__", "?")
    return out


@dataclass
class Entry:
    """A complete, verified store entry.

    Attributes:
        path: the entry folder ``<root>/<kind>/<key>``.
        manifest: the parsed ``manifest.json`` (kind, key, key_fields, versions, arrays, created, meta).
        kind / key: as in the store.
    """

    path: Path
    manifest: dict

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def meta(self) -> dict:
        """The caller's ``meta`` dict given to :meth:`Store.put`."""
        return self.manifest.get("meta", {})

    @property
    def key_fields(self) -> dict:
        return self.manifest["key_fields"]

    @property
    def names(self) -> list[str]:
        """Names of the stored arrays."""
        return list(self.manifest["arrays"])

    def array(self, name: str, mmap: bool = True) -> np.ndarray:
        """Load array ``name`` (memory-mapped read-only by default; ``mmap=False`` reads it into memory).

        Raises:
            StoreError: no such array in this entry.
        """
        rec = self.manifest["arrays"].get(name)
        if rec is None:
            raise StoreError(f"store entry {self.path} has no array {name!r} (has {self.names})")
        return np.load(self.path / rec["file"], mmap_mode="r" if mmap else None, allow_pickle=False)


class Store:
    """The keyed on-disk store (module docstring).

    Args:
        root: store folder; default ``clipcal.paths.cache_dir()`` (``$CLIPCAL_CACHE`` or ``<repo>/cache``).
    """

    def __init__(self, root: str | os.PathLike | None = None):
        # created if missing, but not probed: a read-only store can still be read
        self.root = writable_dir(Path(root).expanduser().resolve(), probe=False) if root is not None \
            else cache_dir()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def check_writable(self) -> None:
        """Raise :class:`StoreError` (naming the folder and what to do) unless entries can be written here.

        A read-only store opens and serves its entries; call this before starting work that must store its
        result (embedding, a calibration run, a projection) to say so up front instead of after the work.
        """
        writable_dir(self.root)

    # -- paths ---------------------------------------------------------------------------------------------
    @staticmethod
    def _check_kind(kind: str) -> str:
        if not kind or not kind.replace("_", "").replace("-", "").isalnum():
            raise StoreError(f"invalid store kind {kind!r}", hint=f"use one of {KINDS} or a plain word")
        return kind

    def key(self, key_fields: dict) -> str:
        """The 16-hex key of ``key_fields`` (see :func:`make_key`)."""
        return make_key(key_fields)

    def entry_path(self, kind: str, key_fields: dict) -> Path:
        """``<root>/<kind>/<key>`` (may not exist)."""
        return self.root / self._check_kind(kind) / make_key(key_fields)

    def partial_dir(self, kind: str, key_fields: dict) -> Path:
        """A folder for the shards of a long job on this key (created); survives crashes until deleted.

        Callers should hold :meth:`lock` while writing there, write each shard atomically and remove the folder
        (:meth:`clear_partial`) once the final entry is put.
        """
        p = self.root / ".partial" / self._check_kind(kind) / make_key(key_fields)
        return writable_dir(p)

    def clear_partial(self, kind: str, key_fields: dict) -> None:
        """Remove the shard folder of this key, if any."""
        shutil.rmtree(self.root / ".partial" / self._check_kind(kind) / make_key(key_fields), ignore_errors=True)

    def lock(self, kind: str, key_fields: dict, timeout: float = -1) -> filelock.FileLock:
        """The inter-process lock of one key (a ``filelock.FileLock``; use as a context manager).

        One lock object per key and process is reused, so a thread that holds it can re-enter (``put`` inside a
        ``with store.lock(...)`` block does not deadlock). Other processes, and other threads, wait.

        Args:
            timeout: seconds to wait in ``acquire`` when used as a context manager; -1 waits forever.

        Raises:
            StoreError: the lock folder cannot be written (here, or later from ``acquire``).
        """
        return self._lock(self._check_kind(kind), make_key(key_fields), timeout)

    def _lock(self, kind: str, key: str, timeout: float) -> filelock.FileLock:
        path = self.root / ".locks" / f"{kind}-{key}.lock"
        writable_dir(path.parent)
        with _LOCKS_GUARD:
            lk = _LOCKS.get(str(path))
            if lk is None:
                lk = _LOCKS[str(path)] = _StoreLock(str(path), timeout=timeout)
        lk.timeout = timeout
        return lk

    # -- read ----------------------------------------------------------------------------------------------
    def get(self, kind: str, key_fields: dict, verify: str = "auto") -> Entry | None:
        """Return the complete entry of ``key_fields`` or ``None``.

        Args:
            kind: store kind (``embeddings``, ``text``, ``runs``, ``projections``, ``inspect``).
            key_fields: the dict that defines the entry.
            verify: ``"auto"`` (hash files not verified before or changed since), ``"full"`` (always hash),
                ``"shape"`` (size, shape and dtype only).

        Returns:
            An :class:`Entry`, or ``None`` if there is none. A corrupt, partial or foreign entry is moved to
            ``<root>/.trash/`` (nothing is deleted) and ``None`` is returned so the caller rebuilds it.
        """
        path = self.entry_path(kind, key_fields)
        if not path.is_dir():
            return None
        key = make_key(key_fields)
        try:
            return self._verify(path, kind, key, verify)
        except _Corrupt as err:
            self._trash(path, kind, key, str(err))
            return None

    def _verify(self, path: Path, kind: str, key: str, verify: str) -> Entry:
        mf = path / MANIFEST
        if not mf.is_file():
            raise _Corrupt("no manifest.json (incomplete write)")
        try:
            manifest = json.loads(mf.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise _Corrupt(f"unreadable manifest: {err}") from None
        _check_manifest(manifest)
        if manifest.get("kind") != kind or manifest.get("key") != key:
            raise _Corrupt("manifest names another kind or key")
        arrays = manifest.get("arrays")
        if not isinstance(arrays, dict):
            raise _Corrupt("manifest has no array table")
        verified = {}
        if verify == "auto":
            try:
                verified = json.loads((path / VERIFIED).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                verified = {}
        new_verified = {}
        for name, rec in arrays.items():
            f = path / rec["file"]
            try:
                st = f.stat()
            except OSError:
                raise _Corrupt(f"array file {rec['file']} is missing") from None
            if st.st_size != rec["bytes"]:
                raise _Corrupt(f"{rec['file']} has {st.st_size} bytes, manifest says {rec['bytes']}"
                               + filekind.note(f))  # names an LFS pointer / HTML page / empty file
            try:
                shape, dtype = _npy_header(f)
            except (OSError, ValueError) as err:
                raise _Corrupt(f"{rec['file']} has a bad .npy header: {err}" + filekind.note(f)) from None
            if list(shape) != list(rec["shape"]) or dtype != rec["dtype"]:
                raise _Corrupt(f"{rec['file']} is {shape} {dtype}, manifest says {rec['shape']} {rec['dtype']}")
            # the stamp is trusted only for the sha256 it was checked against (a new manifest → hash again)
            stamp = {"stamp": integrity.stat_stamp(st), "sha256": rec["sha256"]}
            if verify == "full" or (verify == "auto" and verified.get(name) != stamp):
                if integrity.sha256_file(f) != rec["sha256"]:
                    raise _Corrupt(f"{rec['file']} fails its sha256 check")
            if not integrity.is_racy(st):
                new_verified[name] = stamp
        if verify in ("auto", "full") and (new_verified != verified or not (path / VERIFIED).exists()):
            try:
                _write_json_atomic(path / VERIFIED, new_verified)
            except OSError:  # read-only store: verification still happened, it is just not remembered
                pass
        return Entry(path=path, manifest=manifest)

    def _trash(self, path: Path, kind: str, key: str, reason: str) -> None:
        """Move a corrupt entry aside (never delete). On a read-only store it stays (and is still not served)."""
        try:
            lk = self._lock(kind, key, timeout=0)
            with lk:
                if not path.exists():
                    return
                dest = self.root / ".trash" / f"{kind}-{path.name}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, dest)
                (dest / "TRASHED_BECAUSE.txt").write_text(reason + "\n", encoding="utf-8")
        except filelock.Timeout:  # a writer holds the key: it is replacing the entry right now
            return
        except (OSError, StoreError):  # cannot move it: get/list still refuse it each time
            return

    def list(self, kind: str) -> list[dict]:
        """Manifests of the entries of ``kind`` whose manifest is intact (checksum, kind, key; arrays are not
        hashed — :meth:`get` does that before any array is served).

        An entry whose manifest fails its checksum is moved to ``.trash`` and left out, so a listing never
        shows an edited value. Each dict is the manifest plus ``"path"`` (str). Sorted by creation time,
        oldest first.
        """
        base = self.root / self._check_kind(kind)
        out = []
        if base.is_dir():
            for p in base.iterdir():
                if p.name.startswith(".") or not (p / MANIFEST).is_file():
                    continue
                try:
                    m = json.loads((p / MANIFEST).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue
                try:
                    _check_manifest(m)
                    if m.get("kind") != kind or m.get("key") != p.name:
                        raise _Corrupt("manifest names another kind or key")
                except _Corrupt as err:
                    self._trash(p, kind, p.name, str(err))
                    continue
                m["path"] = str(p)
                out.append(m)
        return sorted(out, key=lambda m: m.get("created", ""))

    # -- write ---------------------------------------------------------------------------------------------
    def put(self, kind: str, key_fields: dict, arrays: dict[str, Any], meta: dict | None = None) -> Entry:
        """Write an entry atomically: arrays into a temporary folder, ``manifest.json`` last, then ``os.replace``.

        Holds the key's lock while writing; an existing entry of the same key is moved to ``.trash`` first.

        Args:
            kind: store kind.
            key_fields: dict defining the entry (JSON types; recorded in the manifest).
            arrays: name → array; strings become fixed-width unicode, object arrays are refused.
            meta: JSON-able extra information recorded in the manifest (``manifest["meta"]``).

        Returns:
            The written :class:`Entry`.

        Raises:
            StoreError: bad names or dtypes, non-JSON meta, or a failed write (nothing is left half-written).
        """
        key = make_key(key_fields)
        dest = self.entry_path(kind, key_fields)
        for name in arrays:
            if not name or "/" in name or name.startswith(".") or name == MANIFEST:
                raise StoreError(f"invalid array name {name!r}", hint="use simple names like 'features'")
        tmp = writable_dir(self.root / ".tmp") / f"{kind}-{key}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            recs = {name: save_npy(tmp / f"{name}.npy", a) for name, a in arrays.items()}
            manifest = seal({
                "kind": kind,
                "key": key,
                "key_fields": _jsonable(key_fields),
                "versions": _versions(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "arrays": recs,
                "meta": _jsonable(meta or {}),
            })
            _write_json_atomic(tmp / MANIFEST, manifest)
            with self.lock(kind, key_fields):
                dest.parent.mkdir(parents=True, exist_ok=True)
                if dest.exists():
                    old = self.root / ".trash" / f"{kind}-{key}-replaced-{uuid.uuid4().hex[:8]}"
                    old.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(dest, old)
                    shutil.rmtree(old, ignore_errors=True)
                os.replace(tmp, dest)
        except StoreError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise unwritable(self.root, err) from None
        return Entry(path=dest, manifest=manifest)

    def delete(self, kind: str, key_fields: dict) -> bool:
        """Remove an entry (and its shards). Returns True if an entry existed.

        Raises:
            StoreError: the store cannot be written.
        """
        path = self.entry_path(kind, key_fields)
        with self.lock(kind, key_fields):
            existed = path.exists()
            try:
                if existed:
                    shutil.rmtree(path)
            except OSError as err:
                raise unwritable(self.root, err) from None
            self.clear_partial(kind, key_fields)
        return existed

    def clean_tmp(self, older_than_s: float = 3600) -> int:
        """Remove temporary folders left by crashed writers older than ``older_than_s``; return how many."""
        n = 0
        base = self.root / ".tmp"
        if base.is_dir():
            now = time.time()
            for p in base.iterdir():
                try:
                    if now - p.stat().st_mtime > older_than_s:
                        shutil.rmtree(p)
                        n += 1
                except OSError:  # vanished meanwhile, or a read-only store: nothing to clean here
                    continue
        return n


class _Corrupt(Exception):
    """Internal: an entry failed verification (reason in the message)."""


def _check_manifest(manifest: Any) -> None:
    """Raise :class:`_Corrupt` unless ``manifest`` is a dict with a valid checksum."""
    if not isinstance(manifest, dict):
        raise _Corrupt("manifest.json is not a JSON object")
    if SEAL not in manifest:
        raise _Corrupt("manifest.json has no checksum (written by clipcal before store format 2, or edited): "
                       "it cannot be verified, so the entry is rebuilt")
    if not check_seal(manifest):
        raise _Corrupt("manifest.json fails its checksum: it was edited or damaged after it was written")


class _StoreLock(filelock.FileLock):
    """``filelock.FileLock`` whose ``acquire`` turns a failure to create the lock file into a StoreError."""

    def acquire(self, *args, **kwargs):
        try:
            return super().acquire(*args, **kwargs)
        except filelock.Timeout:
            raise
        except OSError as err:
            raise unwritable(Path(self.lock_file).parent.parent, err) from None


def iter_kinds(store: Store) -> Iterable[str]:
    """Kinds that have a folder in the store (for maintenance views)."""
    return sorted(p.name for p in store.root.iterdir() if p.is_dir() and not p.name.startswith("."))
