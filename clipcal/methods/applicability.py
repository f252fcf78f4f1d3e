"""Which methods can run here: the one rule the CLI, the run and the dashboard all ask.

A method cannot run when it needs something the backbone or the benchmark lacks:

* a **text tower** (``needs_text``, e.g. zero-shot) on an image-only backbone;
* **spurious-attribute (group) labels** on a benchmark without them — because it trains or selects with them
  (``uses_group_labels``, e.g. DFR), or because its model selection is ``worst-group``.

Callers: ``clipcal.commands.calibrate.check_applicable`` (refuses named methods before any work),
:func:`clipcal.runs.run_calibration` (records the others as "not applicable: …" and runs the rest), the
Calibrate page and the demo path (offer / run only :func:`applicable_methods`). Importing this module does not
import torch (method classes are loaded through :func:`clipcal.methods.get_method` only when asked).
"""

from __future__ import annotations

from dataclasses import dataclass

from clipcal.errors import MethodError
from clipcal.methods import METHODS, get_method


@dataclass(frozen=True)
class NotApplicable:
    """Why ``method`` cannot run here.

    Attributes:
        method: registry name (``"zeroshot"``).
        needs: what it lacks — ``"text"`` (a text tower), ``"group labels"`` (it trains or selects with them),
            ``"worst-group selection"`` (its model selection reads them).
    """

    method: str
    needs: str

    def short(self, backbone: str = "this backbone", benchmark: str = "this benchmark") -> str:
        """``"this backbone has no text tower"`` — the reason a run records (after ``"not applicable: "``)."""
        if self.needs == "text":
            return f"{backbone} has no text tower"
        why = "it uses group labels" if self.needs == "group labels" else "it selects by worst-group accuracy"
        return f"{benchmark} has no spurious-attribute labels ({why})"

    def sentence(self, backbone: str = "this backbone", benchmark: str = "this benchmark") -> str:
        """``"zeroshot needs a text tower and bundled:efficientnet-lite0 is image-only"`` — the CLI's wording."""
        if self.needs == "text":
            return f"{self.method} needs a text tower and {backbone} is image-only"
        why = "uses group labels" if self.needs == "group labels" else "selects by worst-group accuracy"
        return f"{self.method} {why} and {benchmark} has no spurious-attribute labels"


def not_applicable_reason(method, has_text: bool, has_attributes: bool | None,
                          selection: str | None = None) -> NotApplicable | None:
    """Why ``method`` cannot run on this backbone and benchmark, or ``None`` when it can.

    Args:
        method: registry name or Method class.
        has_text: the backbone has a text tower.
        has_attributes: the benchmark has spurious-attribute labels; ``None`` = not known yet (the benchmark
            is not loaded): only the backbone is checked.
        selection: the method's model-selection rule (``"worst-class"`` / ``"worst-group"``), counted only for
            methods that have a ``selection`` hyperparameter.

    Raises:
        MethodError: unknown name, or the method's module is missing (:func:`clipcal.methods.get_method`).
    """
    cls = get_method(method) if isinstance(method, str) else method
    name = getattr(cls, "name", str(method))
    if getattr(cls, "needs_text", False) and not has_text:
        return NotApplicable(name, "text")
    if has_attributes is False:
        if getattr(cls, "uses_group_labels", False):
            return NotApplicable(name, "group labels")
        if selection == "worst-group" and "selection" in cls._param_names():
            return NotApplicable(name, "worst-group selection")
    return None


def available_methods() -> dict[str, type]:
    """``{name: Method class}`` of every registered method whose module imports, in display order."""
    out = {}
    for name in METHODS:
        try:
            out[name] = get_method(name)
        except MethodError:  # a method module not installed: not offered
            continue
    return out


def applicable_methods(has_text: bool, has_attributes: bool | None, methods=None,
                       selection: str | None = None) -> list[str]:
    """Names of the methods (default: every available one, display order) that can run here.

    Args: as :func:`not_applicable_reason`; ``methods`` is an iterable of names to filter (order kept).
    """
    names = list(available_methods()) if methods is None else list(methods)
    return [m for m in names if not_applicable_reason(m, has_text, has_attributes, selection) is None]
