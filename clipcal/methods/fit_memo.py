"""Fit once, reuse: an explicit, scoped memo of last-layer fits (issue 13, calibration time).

In one calibration run the same last layer is often trained several times — ERM, JTT's identification model and
CFR's stage 1 all call :func:`clipcal.methods._train.train_last_layer` with the same data, recipe and seed (and
the demo path's first-results run trains ERM again in its full run). Inside ``with fit_memo():`` an *identical*
call returns the stored result instead of training again::

    from clipcal.methods import _train as T
    with T.fit_memo():
        ERM().fit(data)          # trains
        CFR().fit(data)          # stage 1: the identical call → ERM's fit, bit for bit

Identical means: the FeatureData's content (:func:`data_digest`: features, embeddings, labels, groups, splits,
class / attribute names, projection and text head — the arrays' bytes, not the object, so two FeatureData
loaded from the same store match), every keyword argument (arrays by their bytes) with the device and precision
*resolved* (``"auto"`` and ``"cpu"`` are the same call on a CPU), and the CPU's intra-op thread count (it can
change the summation order of the matrix products). ``progress`` and ``cancel`` are not part of the call.

The memo is off unless a caller opens it (library users get one training per call, as before), lives for the
``with`` block only, and is per thread / task (a :class:`contextvars.ContextVar`): concurrent dashboard jobs
never share fits. Nested blocks join the outermost memo. A result handed out is a copy (model deep-copied,
curves and lists copied, a fresh Evaluator on the caller's FeatureData), so a caller that changes it cannot
change what the next identical call receives; it says ``reused=True`` and keeps the training time it reused in
``trained_seconds``.
"""

from __future__ import annotations

import copy
import dataclasses
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

import numpy as np

_ACTIVE: ContextVar["FitMemo | None"] = ContextVar("clipcal_fit_memo", default=None)


def data_digest(data) -> str:
    """sha256 (hex) of everything of a :class:`~clipcal.methods.base.FeatureData` a last-layer fit reads:
    ``features``, ``embeddings``, ``y``, ``a``, ``group``, ``split``, ``proj_weight``, ``text_head`` (bytes,
    dtype and shape — :func:`clipcal.projection.array_digest`), ``class_names``, ``attr_names`` and
    ``projection``. About 1 GB/s: ≈ 0.1 s for Waterbirds-shaped features (11,788 × (1,024 + 768) float32)."""
    from clipcal.projection import array_digest

    names = repr((list(data.class_names), list(data.attr_names), data.projection)).encode()
    return array_digest(np.frombuffer(names, np.uint8), data.features, data.embeddings, data.y, data.a,
                        data.group, np.asarray(data.split).astype("U"), data.proj_weight, data.text_head)


def call_key(data, call: dict, digest: str | None = None) -> tuple:
    """The memo key of one call: ``(data_digest(data), (name, value) …)`` sorted by name; arrays (and tuples of
    arrays, e.g. ``init``) by :func:`~clipcal.projection.array_digest`, everything else by ``repr``. ``digest``:
    ``data_digest(data)`` when the caller already has it (:meth:`FitMemo.key`)."""
    from clipcal.projection import array_digest

    def part(v):
        if isinstance(v, np.ndarray):
            return "array:" + array_digest(v)
        if isinstance(v, tuple) and any(isinstance(x, np.ndarray) for x in v):
            return "arrays:" + array_digest(*[np.asarray(x) for x in v])
        return repr(v)

    return (digest or data_digest(data),) + tuple((k, part(v)) for k, v in sorted(call.items()))


class FitMemo:
    """The fits stored in one ``with fit_memo():`` block.

    Attributes:
        hits / misses: calls answered from the memo / trained (and stored).
    """

    def __init__(self) -> None:
        self._entries: dict[tuple, object] = {}
        self._digests: dict[int, tuple[object, str]] = {}  # id(data) → (data, digest): the data kept alive
        self.hits = 0
        self.misses = 0

    def key(self, data, call: dict) -> tuple:
        """:func:`call_key` of ``call`` on ``data``, hashing each FeatureData object once per memo (ERM, JTT's two
        fits, CFR's stage 1 and its cross-fit folds read the same object: ≈ 1.5 s of hashing each at CelebA size).
        A FeatureData changed in place inside one memo block is therefore not noticed — the methods never do that."""
        held = self._digests.get(id(data))
        if held is None or held[0] is not data:
            held = self._digests[id(data)] = (data, data_digest(data))
        return call_key(data, call, held[1])

    def get(self, key: tuple, make_evaluator: Callable[[], object]):
        """A copy of the stored result for ``key`` (``reused=True``, a fresh evaluator from ``make_evaluator``),
        or ``None``. The stored snapshot itself is never handed out."""
        snap = self._entries.get(key)
        if snap is None:
            self.misses += 1
            return None
        self.hits += 1
        return dataclasses.replace(
            snap, model=copy.deepcopy(snap.model), evaluator=make_evaluator(), curves=snap.curves.copy(),
            train_losses=list(snap.train_losses), init=dict(snap.init), notes=list(snap.notes), reused=True)

    def put(self, key: tuple, result) -> None:
        """Store a snapshot of a freshly trained result (model deep-copied; the evaluator is not kept — it holds
        the FeatureData and its device copy of the features)."""
        self._entries[key] = dataclasses.replace(
            result, model=copy.deepcopy(result.model), evaluator=None, curves=result.curves.copy(),
            train_losses=list(result.train_losses), init=dict(result.init), notes=list(result.notes))

    def __len__(self) -> int:
        return len(self._entries)


@contextmanager
def fit_memo() -> Iterator[FitMemo]:
    """Open a fit memo for the ``with`` block (see the module docstring); a nested block joins the open one.

    Yields:
        the :class:`FitMemo` (its ``hits`` / ``misses`` say what was reused).
    """
    outer = _ACTIVE.get()
    if outer is not None:
        yield outer
        return
    memo = FitMemo()
    token = _ACTIVE.set(memo)
    try:
        yield memo
    finally:
        _ACTIVE.reset(token)


def active_memo() -> FitMemo | None:
    """The memo open in this thread / task, or ``None`` (the default: every call trains)."""
    return _ACTIVE.get()


def reuse_notes(result, what: str) -> list[str]:
    """The record note of a reused fit (``[]`` when ``result.reused`` is False): what was reused and that its
    training time was spent where it was first trained, not in this fit.

    Args:
        result: a :class:`~clipcal.methods._train.TrainedLastLayer`.
        what: the stage it stands for, e.g. ``"stage 1 (ERM)"``."""
    if not getattr(result, "reused", False):
        return []
    return [f"{what}: the identical fit made earlier in this calibration run was reused (fit memo, bit-equal: "
            f"same data, recipe, seed, device and precision); its training took {result.trained_seconds:.1f} s "
            f"there and {result.seconds:.2f} s here"]
