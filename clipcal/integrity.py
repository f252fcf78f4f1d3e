"""Content identity of files: checksums, and stat stamps that say when a checksum must be taken again.

Used by the store (``clipcal.store``: array files of an entry) and by the benchmark fingerprint
(``clipcal.data.base.Benchmark.fingerprint``: every image file). Both follow one rule: **content is identified by
its sha256; a file's stat stamp only decides whether a recorded sha256 can be reused without reading the file.**

The stamp is ``(size, st_mtime_ns, st_ctime_ns, st_ino, st_dev)``. Threat model, honestly:

* It catches accidental corruption and careless edits: any write through the file system changes ``st_ctime``
  (the kernel sets it; ``utime``/``touch -r``/``cp -p``/rsync can restore ``mtime`` but not ``ctime``), and a
  file replaced by another (rename, copy, extraction, a copied store) has another inode or device.
* Timestamps are coarse (one kernel clock tick, a few ms), so a stamp taken within :data:`RACY_NS` of the file's
  last change is never trusted ("racily clean", as git's index): the next check hashes the file again.
* It does not stop a deliberate attacker with write access: such a person can rewrite an array *and* the sha256
  recorded beside it (there is no secret key), change the system clock, or edit the raw block device. A store
  shared with untrusted writers needs file-system permissions or signatures, not this module.
* Bit rot below the file system (a sector flipping without any write) changes no stamp; ``verify="full"``
  (``Store.get``) or a fresh checkout re-hashes everything.

Stamps and caches of stamps are local to one machine (inodes, ctimes); the recorded sha256 values are not, so a
copied store or a copied image folder re-hashes once and is then served as before.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

# A stamp younger than this (file changed less than 2 s before the stamp was taken) is not trusted.
RACY_NS = 2_000_000_000
DIGEST_BYTES = 16  # of sha256, for the per-image digests (collisions irrelevant at 2**-64 for 1e9 files)
MISSING = np.full(DIGEST_BYTES, 0xFF, dtype=np.uint8)  # digest used for a missing / unreadable file


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def stat_stamp(st: os.stat_result) -> list[int]:
    """``[size, mtime_ns, ctime_ns, inode, device]`` of an ``os.stat`` result (module docstring)."""
    return [int(st.st_size), int(st.st_mtime_ns), int(st.st_ctime_ns), int(st.st_ino), int(st.st_dev)]


def is_racy(st: os.stat_result, now_ns: int | None = None) -> bool:
    """True when the file changed less than :data:`RACY_NS` before ``now_ns`` (default: now): its stamp
    may not change on a further write within the same clock tick, so it must not be trusted."""
    now = time.time_ns() if now_ns is None else now_ns
    return now - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_NS


def _digest_one(path: str) -> tuple[np.ndarray, list[int] | None, int]:
    """(16-byte digest, stamp to record or None, size) of one file; MISSING / None / -1 when unreadable."""
    try:
        with open(path, "rb") as f:
            before = os.fstat(f.fileno())
            h = hashlib.sha256()
            while block := f.read(1 << 20):
                h.update(block)
            after = os.fstat(f.fileno())
    except OSError:
        return MISSING, None, -1
    digest = np.frombuffer(h.digest()[:DIGEST_BYTES], dtype=np.uint8)
    stamp = stat_stamp(after)
    if stat_stamp(before) != stamp or is_racy(after):
        return digest, None, int(after.st_size)  # changed while read, or too recent: hash again next time
    return digest, stamp, int(after.st_size)


def path_hashes(paths: Sequence[str]) -> np.ndarray:
    """[N] uint64 stable hashes of path strings (pandas' fixed-key SipHash), the key of the digest cache."""
    import pandas as pd

    return pd.util.hash_array(np.asarray(list(paths), dtype=object)).astype(np.uint64)


def file_digests(paths: Sequence[str], cache_file: str | os.PathLike | None = None,
                 threads: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Content digests of many files, reading only files whose stamp changed since they were last hashed.

    Args:
        paths: N absolute file paths.
        cache_file: an ``.npz`` holding earlier digests with the stamps they were taken at (read if present,
            rewritten atomically when new digests were taken; failures to read or write it only cost time).
            ``None``: hash every file.
        threads: hashing threads for the files to read (default ``min(8, cpu_count)``; hashlib and file reads
            release the GIL).

    Returns:
        ``(digests [N, 16] uint8, sizes [N] int64, stats)``: the first 16 bytes of each file's sha256
        (:data:`MISSING` and size -1 for a missing or unreadable file); ``stats`` counts ``files, hashed,
        reused, missing, bytes_hashed`` and ``seconds``.
    """
    t0 = time.perf_counter()
    paths = [str(p) for p in paths]
    n = len(paths)
    keys = path_hashes(paths) if n else np.zeros(0, np.uint64)
    stamps = np.full((n, 5), -1, dtype=np.int64)
    for i, p in enumerate(paths):
        try:
            stamps[i] = stat_stamp(os.stat(p))
        except (OSError, ValueError):
            pass
    present = stamps[:, 0] >= 0
    digests = np.tile(MISSING, (n, 1))
    sizes = np.where(present, stamps[:, 0], -1).astype(np.int64)
    old = _load_cache(cache_file)
    hit = np.zeros(n, dtype=bool)
    if old is not None and n:
        import pandas as pd

        idx = pd.Index(old["path_hash"]).get_indexer(keys)
        found = idx >= 0
        same = np.zeros(n, dtype=bool)
        same[found] = (old["stamp"][idx[found]] == stamps[found]).all(axis=1)
        hit = same & present
        digests[hit] = old["digest"][idx[hit]]
    todo = np.flatnonzero(present & ~hit)
    record = np.zeros(n, dtype=bool)
    bytes_hashed = 0
    if len(todo):
        workers = threads or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for i, (dg, stamp, size) in zip(todo, pool.map(_digest_one, [paths[i] for i in todo])):
                digests[i] = dg
                sizes[i] = size
                bytes_hashed += max(size, 0)
                if stamp is not None:
                    stamps[i] = stamp
                    record[i] = True
    if cache_file is not None and record.any():
        keep = hit | record
        new = {"path_hash": keys[keep], "stamp": stamps[keep], "digest": digests[keep]}
        if old is not None:  # keep other files' digests (another benchmark over the same folder)
            others = ~np.isin(old["path_hash"], keys)
            new = {k: np.concatenate([old[k][others], v]) for k, v in new.items()}
        _save_cache(cache_file, new)
    stats = {"files": n, "hashed": int(len(todo)), "reused": int(hit.sum()), "missing": int((~present).sum()),
             "bytes_hashed": int(bytes_hashed), "seconds": round(time.perf_counter() - t0, 4)}
    return digests, sizes, stats


def _load_cache(cache_file) -> dict | None:
    if cache_file is None:
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as z:
            out = {k: z[k] for k in ("path_hash", "stamp", "digest")}
    except (OSError, ValueError, KeyError):
        return None
    m = len(out["path_hash"])
    if out["stamp"].shape != (m, 5) or out["digest"].shape != (m, DIGEST_BYTES):
        return None
    return out


def _save_cache(cache_file, arrays: dict) -> None:
    """Write the digest cache atomically; a cache that cannot be written is skipped (it only saves time)."""
    path = Path(cache_file)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
