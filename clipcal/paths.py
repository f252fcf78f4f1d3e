"""Where clipcal keeps things on disk.

The store lives in ``$CLIPCAL_CACHE`` if set, else ``./cache`` beside the project (``cache/`` at the
repository root). Numba's JIT cache goes under it so that UMAP compiles once per machine (offline.md).

Every folder clipcal writes under the cache is made with :func:`writable_dir`, so a read-only store, a full disk
or ``CLIPCAL_CACHE`` naming a file is one :class:`~clipcal.errors.StoreError` naming the folder and what to do,
never a raw ``OSError`` traceback.
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

from clipcal.errors import StoreError

PROJECT_ROOT = Path(__file__).resolve().parent.parent

_REASONS = {
    errno.EROFS: "it is on a read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
}


def cache_root() -> Path:
    """The store root path (``$CLIPCAL_CACHE`` or ``<repo>/cache``), resolved, without creating it."""
    return Path(os.environ.get("CLIPCAL_CACHE") or PROJECT_ROOT / "cache").expanduser().resolve()


def cache_dir() -> Path:
    """Return the store root (created if missing). ``$CLIPCAL_CACHE`` overrides ``<repo>/cache``.

    Raises:
        StoreError: the folder cannot be created (a file is in the way, read-only, permission denied).
    """
    return writable_dir(cache_root(), "store folder", probe=False)


def unwritable(path: str | os.PathLike, err: OSError, what: str = "store folder",
               hint: str | None = None) -> StoreError:
    """The :class:`StoreError` for an ``OSError`` met while writing under ``path`` (the folder, named).

    The message says why in words (read-only file system, permission denied, disk full, a file in the way); the
    hint (unless given) says to set ``CLIPCAL_CACHE`` to a writable folder or fix this one.
    """
    path = Path(path)
    blocker = _file_in_the_way(path)
    if blocker is not None:
        why = f"{blocker} is a file, not a folder"
    else:
        why = _REASONS.get(err.errno or 0, err.strerror or str(err))
    if blocker is not None:
        fix = f"or move the file {blocker} out of the way"
    elif err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "or free some disk space there"
    else:
        fix = f"or make {path} writable"
    return StoreError(
        f"cannot write to the {what} {path}: {why}",
        hint=hint or f"set CLIPCAL_CACHE to a writable folder (e.g. export CLIPCAL_CACHE=$HOME/clipcal-cache), {fix}")


def _file_in_the_way(path: Path) -> Path | None:
    """The first existing non-folder on the way to ``path`` (``path`` itself included), if any."""
    for p in [*reversed(path.parents), path]:
        if p.exists() and not p.is_dir():
            return p
    return None


def writable_dir(path: str | os.PathLike, what: str = "store folder", probe: bool = True,
                 hint: str | None = None) -> Path:
    """Create ``path`` (with parents) if missing and make sure files can be created in it.

    Args:
        path: the folder.
        what: how the message names it (``"store folder"``, ``"Numba cache folder"``, ``"datasets folder"``).
        probe: also create and remove a small file there — catches a read-only mount or a folder without write
            permission before any work starts (``mkdir`` of an existing folder succeeds on a read-only mount).

    Returns:
        ``Path(path)``.

    Raises:
        StoreError: from :func:`unwritable`.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if probe:
            tmp = path / f".write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            os.unlink(tmp)
    except OSError as err:
        raise unwritable(path, err, what, hint) from None
    return path


def configure_numba_cache() -> Path:
    """Point ``NUMBA_CACHE_DIR`` at ``<cache>/numba`` unless the user set it; return the folder used.

    Raises:
        StoreError: the folder cannot be written (``NUMBA_CACHE_DIR`` is then left unset).
    """
    own = os.environ.get("NUMBA_CACHE_DIR")
    path = Path(own or cache_root() / "numba")
    writable_dir(path, "Numba cache folder",
                 hint=f"set NUMBA_CACHE_DIR to a writable folder, or make {path} writable" if own else None)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(path))
    return path
