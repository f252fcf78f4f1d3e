"""Calibration methods over cached features — one file per method, one interface (``methods/base.py``).

Public API (docs/interfaces.md, "clipcal.methods")::

    FeatureData, MethodResult, Method, Progress        # methods/base.py (no torch import)
    FittedLastLayer, NotFittedError                    # methods/fitted.py: the fitted model on new features
    METHODS                                            # name -> "module:Class", imported lazily
    get_method(name) -> type[Method]                   # raises MethodError for unknown / missing modules
    make_method(name, **hparams) -> Method
    ZeroShot, ERM, JTT, AFR, DFR, CFR                  # attribute access imports the module

Importing this package does not import torch: pages can read ``METHODS`` and each class's ``HPARAMS``
through :func:`get_method` only when they need them.
"""

from __future__ import annotations

import importlib

from clipcal.errors import MethodError
from clipcal.methods.base import FeatureData, Method, MethodResult, Progress
from clipcal.methods.fitted import FittedLastLayer, NotFittedError

#: registry name → "module:Class"; order = display order.
METHODS: dict[str, str] = {
    "zeroshot": "clipcal.methods.zeroshot:ZeroShot",
    "erm": "clipcal.methods.erm:ERM",
    "jtt": "clipcal.methods.jtt:JTT",
    "afr": "clipcal.methods.afr:AFR",
    "dfr": "clipcal.methods.dfr:DFR",
    "cfr": "clipcal.methods.cfr:CFR",
}

_CLASSES = {target.split(":")[1]: name for name, target in METHODS.items()}


def get_method(name: str) -> type[Method]:
    """The Method class registered under ``name`` (case-insensitive).

    Raises:
        MethodError: unknown name (lists the known ones), or its module is not available (e.g. a method
            still being written) — the message names the module.
    """
    key = str(name).strip().lower()
    if key not in METHODS:
        raise MethodError(f"unknown method {name!r}", hint=f"choose from {', '.join(METHODS)}")
    module, cls = METHODS[key].split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        raise MethodError(f"method {key!r} is not available: module {module} is missing",
                          hint="this installation does not include it yet") from err
    return getattr(mod, cls)


def make_method(name: str, **hparams) -> Method:
    """Instantiate ``get_method(name)(**hparams)``; unknown hyperparameters raise MethodError."""
    cls = get_method(name)
    known = cls._param_names()
    bad = [k for k in hparams if k not in known]
    if bad:
        raise MethodError(f"{name} has no hyperparameter(s) {bad}", hint=f"known: {', '.join(known)}")
    return cls(**hparams)


def __getattr__(attr: str):
    if attr in _CLASSES:
        return get_method(_CLASSES[attr])
    raise AttributeError(f"module 'clipcal.methods' has no attribute {attr!r}")


__all__ = ["FeatureData", "MethodResult", "Method", "Progress", "FittedLastLayer", "NotFittedError", "METHODS",
           "get_method", "make_method",
           *_CLASSES]
