"""Hyperparameter domains, declared once per method and checked before any work.

A method declares ``PARAM_CONSTRAINTS = {name: [constraint, …]}`` — the value must satisfy at least one of the
listed constraints — in the style of scikit-learn's parameter constraints (``sklearn/utils/_param_validation.py``,
``Interval(Real, 0, None, closed="neither")``, ``StrOptions({...})``). scikit-learn's module is private (leading
underscore, changed between releases) and its unbounded ``Interval`` accepts ``inf``; this is the small
declarative equivalent, with two differences on purpose:

* every number must be finite: NaN and ±inf are refused by every :class:`Interval` (no hyperparameter here has a
  meaning at infinity, and NaN passes every ``<`` / ``>`` test as False);
* the error is a :class:`~clipcal.errors.MethodError` naming ``method.name``, the value and the domain in words
  (``"erm.lr must be a finite number > 0, got nan"``), with a hint giving the default.

Constraints: :class:`Interval` (numbers, whole numbers), :class:`StrOptions` (one of a few strings, in display
order), :class:`Boolean`, :class:`InstanceOf` (e.g. a device string), :class:`ListOf` (a non-empty list whose
items satisfy a constraint), :class:`HasAttr` (a loaded object), and ``None`` (the value ``None`` is allowed,
e.g. "automatic"). :func:`validate_params` checks a ``{name: value}`` dict; :meth:`Method.check_params` calls it.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Iterable

import numpy as np

from clipcal.errors import MethodError

__all__ = ["Interval", "StrOptions", "Boolean", "InstanceOf", "ListOf", "HasAttr", "Integral", "Real",
           "validate_params", "describe", "choices_of", "bounds_of"]


def _fmt(x: float) -> str:
    return str(x) if isinstance(x, (int, np.integer)) else f"{x:g}"


class Interval:
    """A finite number (``Real``) or whole number (``Integral``) in an interval.

    Args:
        type_: ``numbers.Real`` or ``numbers.Integral``. Booleans are never numbers here; for ``Integral`` a
            float is refused (``2.5`` and ``2.0`` alike: a count is typed as one).
        left, right: bounds, ``None`` = unbounded on that side (but still finite).
        closed: ``"left"``, ``"right"``, ``"both"`` or ``"neither"`` — which bounds belong to the interval.
    """

    def __init__(self, type_, left: float | None, right: float | None, *, closed: str):
        if type_ not in (Real, Integral):
            raise TypeError("Interval type must be numbers.Real or numbers.Integral")
        if closed not in ("left", "right", "both", "neither"):
            raise ValueError(f"closed must be left, right, both or neither, got {closed!r}")
        self.type = type_
        self.left, self.right, self.closed = left, right, closed

    def is_satisfied_by(self, v: Any) -> bool:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (Real, np.number)):
            return False
        if self.type is Integral and not isinstance(v, (Integral, np.integer)):
            return False
        if not math.isfinite(float(v)):
            return False
        lo_in = self.closed in ("left", "both")
        hi_in = self.closed in ("right", "both")
        if self.left is not None and (v < self.left or (v == self.left and not lo_in)):
            return False
        if self.right is not None and (v > self.right or (v == self.right and not hi_in)):
            return False
        return True

    def __str__(self) -> str:
        bounded = self.left is not None and self.right is not None
        what = "a whole number" if self.type is Integral else "a number" if bounded else "a finite number"
        lo_in = self.closed in ("left", "both")
        hi_in = self.closed in ("right", "both")
        if self.left is not None and self.right is not None:
            return (f"{what} in {'[' if lo_in else '('}{_fmt(self.left)}, {_fmt(self.right)}"
                    f"{']' if hi_in else ')'}")
        if self.left is not None:
            return f"{what} {'≥' if lo_in else '>'} {_fmt(self.left)}"
        if self.right is not None:
            return f"{what} {'≤' if hi_in else '<'} {_fmt(self.right)}"
        return what


class StrOptions:
    """One of a few strings; ``options`` keeps its order (the dashboard's select box shows it)."""

    def __init__(self, options: Iterable[str]):
        self.options = tuple(options)

    def is_satisfied_by(self, v: Any) -> bool:
        return isinstance(v, str) and v in self.options

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)


class Boolean:
    """``True`` or ``False`` (numpy booleans too; not 0 / 1)."""

    def is_satisfied_by(self, v: Any) -> bool:
        return isinstance(v, (bool, np.bool_))

    def __str__(self) -> str:
        return "true or false"


class InstanceOf:
    """An instance of ``type_`` (e.g. ``str`` for a device name checked later by the device resolver)."""

    def __init__(self, type_: type, what: str | None = None):
        self.type = type_
        self.what = what or {str: "text"}.get(type_, f"a {type_.__name__}")

    def is_satisfied_by(self, v: Any) -> bool:
        return isinstance(v, self.type) and not (self.type is not bool and isinstance(v, bool))

    def __str__(self) -> str:
        return self.what


class HasAttr:
    """An object with attribute ``attr`` (e.g. a loaded backbone: ``has_text``)."""

    def __init__(self, attr: str, what: str):
        self.attr, self.what = attr, what

    def is_satisfied_by(self, v: Any) -> bool:
        return v is not None and not isinstance(v, (str, bytes, Real)) and hasattr(v, self.attr)

    def __str__(self) -> str:
        return self.what


class ListOf:
    """A non-empty list (or tuple / 1-D array) whose every item satisfies ``item``."""

    def __init__(self, item, min_len: int = 1):
        self.item, self.min_len = item, int(min_len)

    def is_satisfied_by(self, v: Any) -> bool:
        if isinstance(v, np.ndarray):
            v = v.tolist() if v.ndim == 1 else None
        if not isinstance(v, (list, tuple)) or len(v) < self.min_len:
            return False
        return all(self.item.is_satisfied_by(x) for x in v)

    def __str__(self) -> str:
        n = "a non-empty list" if self.min_len == 1 else f"a list of ≥ {self.min_len} items"
        return f"{n}, each item {self.item}"


def _satisfied(c, v) -> bool:
    return v is None if c is None else c.is_satisfied_by(v)


def describe(constraints: list) -> str:
    """The domain in words: ``"None or a whole number ≥ 1"``."""
    return " or ".join("None" if c is None else str(c) for c in constraints)


def validate_params(constraints: dict[str, list], params: dict[str, Any], caller: str,
                    defaults: dict[str, Any] | None = None) -> None:
    """Check every value of ``params`` against its declared domain.

    Args:
        constraints: ``{name: [constraint, …]}`` (any one may hold; ``None`` in the list allows ``None``).
        params: ``{name: value}``, e.g. ``Method.get_params()``.
        caller: method name used in messages (``"erm"``).
        defaults: ``{name: default}`` for the hint.

    Raises:
        MethodError: ``"<caller>.<name> must be <domain>, got <value>"`` for the first value outside its domain,
            or a parameter without a declared domain (a programming error, named as such).
    """
    defaults = defaults or {}
    for name, v in params.items():
        if name not in constraints:
            raise MethodError(f"{caller}.{name} has no declared domain (PARAM_CONSTRAINTS)",
                              hint="declare it next to the method's other hyperparameters")
        cs = constraints[name]
        if any(_satisfied(c, v) for c in cs):
            continue
        shown = repr(v) if not isinstance(v, float) else _fmt(v)
        hint = f"e.g. {caller}.{name}={_json(defaults[name])} (the default)" if name in defaults else ""
        raise MethodError(f"{caller}.{name} must be {describe(cs)}, got {shown}", hint=hint)


def _json(v) -> str:
    import json

    try:
        return json.dumps(list(v) if isinstance(v, tuple) else v)
    except TypeError:
        return repr(v)


def choices_of(constraints: dict[str, list]) -> dict[str, tuple]:
    """``{name: options}`` for the hyperparameters whose domain is one :class:`StrOptions` (select boxes)."""
    return {k: cs[0].options for k, cs in constraints.items() if len(cs) == 1 and isinstance(cs[0], StrOptions)}


def bounds_of(constraints: dict[str, list], name: str) -> tuple[float | None, float | None]:
    """``(low, high)`` of the single numeric :class:`Interval` in ``name``'s domain (``None`` = open end or no
    interval) — e.g. for a number input's ``min_value`` / ``max_value``. Open ends are given as the bound
    itself; the check still refuses the bound where the interval excludes it."""
    ivs = [c for c in constraints.get(name, []) if isinstance(c, Interval)]
    if len(ivs) != 1:
        return None, None
    return ivs[0].left, ivs[0].right
