"""Plain JSON values from the objects manifests and records hold (one converter for the whole package).

The store's key fields and manifests, a benchmark's ``describe()`` and a method's recorded hyperparameters
all go to JSON; each needs the same conversion and differs only in what to do with a value JSON cannot hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np


def jsonable(value: Any, fallback: Callable[[Any], Any] | None = None) -> Any:
    """``value`` with every part turned into a plain JSON type, recursively.

    dict → dict with ``str`` keys; list / tuple → list; ``Path`` → str; numpy scalar → Python scalar
    (``np.int64(3)`` → ``3``); numpy array → nested lists; ``None``, bool, int, float, str unchanged.

    Args:
        value: what to convert.
        fallback: applied to any other value (e.g. ``str``, or a function that raises); ``None`` keeps such a
            value unchanged (JSON encoding fails later if it cannot be written).

    Returns:
        The converted value (a new dict / list where ``value`` is one; other objects are not copied).
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v, fallback) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, fallback) for v in value]
    if isinstance(value, np.generic):  # before the plain types: np.float64 is a float, but not a plain one
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value if fallback is None else fallback(value)
