"""Where clipcal keeps things on disk.

The store lives in ``$CLIPCAL_CACHE`` if set, else ``./cache`` beside the project (``cache/`` at the
repository root). Numba's JIT cache goes under it so that UMAP compiles once per machine (offline.md).
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Return the store root (created if missing). ``$CLIPCAL_CACHE`` overrides ``<repo>/cache``."""
    root = Path(os.environ.get("CLIPCAL_CACHE") or PROJECT_ROOT / "cache").expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def configure_numba_cache() -> Path:
    """Point ``NUMBA_CACHE_DIR`` at ``<cache>/numba`` unless the user set it; return the folder used."""
    if "NUMBA_CACHE_DIR" not in os.environ:
        os.environ["NUMBA_CACHE_DIR"] = str(cache_dir() / "numba")
    path = Path(os.environ["NUMBA_CACHE_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    return path
