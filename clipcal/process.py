"""Housekeeping for a long-lived process that imports heavy libraries (the dashboard server)."""

from __future__ import annotations

import gc
import sys

_FROZEN_MODULES = [0]  # len(sys.modules) when freeze_imported_objects last froze


def freeze_imported_objects() -> bool:
    """Move every object alive now out of the cyclic garbage collector's sight (``gc.freeze()``, CPython ≥ 3.7)
    when new modules were imported since the last call; app.py calls it after each run.

    Why: with torch, open_clip, umap, numba and plotly loaded the process tracks ≈ 0.5 M container objects,
    nearly all of them library code that lives as long as the process. Python's automatic full collections
    then take ≈ 0.5 s each and hold the GIL: every few reruns a page took a second instead of half that
    (bench/page_rerun.py), and worker threads stalled. Frozen objects are still freed by reference counting;
    only cyclic garbage among them would be kept, so the garbage present is collected first and the freeze
    happens only after new imports (a handful of times per process). Returns True when it froze.
    """
    n = len(sys.modules)
    if n <= _FROZEN_MODULES[0]:
        return False
    gc.collect()
    gc.freeze()
    _FROZEN_MODULES[0] = n
    return True
