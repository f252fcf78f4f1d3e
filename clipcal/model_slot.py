"""One loaded backbone shared by threads, held through leases (the dashboard's model slot, issue 15).

A model is resident on the device once per process: every user of it — an embedding job, the demo path, a
concept probe, text prompts — takes a **lease** for as long as it uses the model, and a model is closed
(:meth:`clipcal.backbones.Backbone.close`, which frees its device memory) only when no lease is held on it:

* :meth:`ModelSlot.lease` loads the asked (spec, device, precision) if the slot holds another one and returns it
  leased. The model it replaces leaves the slot at once: closed before the new one loads when nobody holds it
  (so two models are not resident together), else **retired** and closed by its last lease's release — a
  finishing job or a switch of backbone never closes a model under a running probe;
* :meth:`ModelSlot.peek` leases the model only if the slot already holds it for the spec (never loads);
* :meth:`ModelSlot.close` empties the slot (same rule: closed now, or when its last lease ends).

Nothing waits on a lease, so a thread that holds one and asks for another model cannot deadlock. Loads are
serialised (two threads asking for the same model load it once). No Streamlit here: the dashboard keeps one
``ModelSlot`` in ``st.cache_resource`` (``pages/ui/resources.py``); the CLI's demo path uses a private one that
it closes at the end (:func:`clipcal.pipeline.demo_path`).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator


def _default_loader(spec: str, device: str, precision: str):
    from clipcal.backbones import load_backbone

    return load_backbone(spec, device=device, precision=precision)


class ModelSlot:
    """One loaded model shared by threads; leases keep it open (see the module docstring).

    Args:
        loader: ``loader(spec, device, precision) -> model`` (default :func:`clipcal.backbones.load_backbone`);
            the model must have ``close()``.

    Attributes:
        loads: how many models this slot loaded (for tests and benchmarks).
    """

    def __init__(self, loader: Callable[[str, str, str], Any] | None = None):
        self._loader = loader or _default_loader
        self._lock = threading.Lock()  # guards the fields below; never held during a load or a close
        self._load_lock = threading.Lock()  # one load (and the swap before it) at a time
        self._key: tuple[str, str, str] | None = None
        self._model: Any = None
        self._leases: dict[int, int] = {}  # id(model) -> leases held (only > 0)
        self._retired: dict[int, Any] = {}  # models out of the slot, closed by their last release
        self.loads = 0

    # -- leases --------------------------------------------------------------------------------------------
    @contextmanager
    def lease(self, spec: str, device: str = "auto", precision: str = "auto") -> Iterator[Any]:
        """``with slot.lease(spec) as model:`` — the slot's model for (spec, device, precision), loaded if the
        slot holds another (which is closed now if unleased, else when its last lease ends).

        Raises:
            as the loader (e.g. ``BackboneError``, ``WeightsUnavailableError``); the slot is then empty.
        """
        model = self._acquire((str(spec), str(device), str(precision)))
        try:
            yield model
        finally:
            self._release(model)

    @contextmanager
    def peek(self, spec: str) -> Iterator[Any]:
        """``with slot.peek(spec) as model:`` — the model the slot holds for ``spec`` (any device / precision),
        leased, or ``None`` (never loads)."""
        with self._lock:
            model = self._model if self._key is not None and self._key[0] == str(spec) else None
            if model is not None:
                self._leases[id(model)] = self._leases.get(id(model), 0) + 1
        try:
            yield model
        finally:
            if model is not None:
                self._release(model)

    def close(self) -> None:
        """Empty the slot: its model is closed now if no lease is held on it, else by its last release."""
        with self._load_lock:
            with self._lock:
                old = self._detach()
            if old is not None:
                old.close()

    # -- state, for pages and tests ------------------------------------------------------------------------
    @property
    def key(self) -> tuple[str, str, str] | None:
        """(spec, device, precision) of the model in the slot, or ``None``."""
        with self._lock:
            return self._key

    def resident(self) -> int:
        """Models loaded by this slot and not closed yet (the slot's own one plus retired ones still leased)."""
        with self._lock:
            return (self._model is not None) + len(self._retired)

    # -- internals -----------------------------------------------------------------------------------------
    def _acquire(self, want: tuple[str, str, str]):
        with self._load_lock:
            with self._lock:
                if self._key == want:
                    self._leases[id(self._model)] = self._leases.get(id(self._model), 0) + 1
                    return self._model
                old = self._detach()
            if old is not None:
                old.close()  # before the next load: its device memory is free for the new model
            model = self._loader(*want)
            with self._lock:
                self.loads += 1
                self._key, self._model = want, model
                self._leases[id(model)] = 1
            return model

    def _detach(self):
        """Take the model out of the slot (caller holds ``_lock``); returns it if it must be closed now."""
        old, self._key, self._model = self._model, None, None
        if old is None:
            return None
        if self._leases.get(id(old), 0) > 0:
            self._retired[id(old)] = old
            return None
        return old

    def _release(self, model) -> None:
        with self._lock:
            n = self._leases.get(id(model), 0) - 1
            if n > 0:
                self._leases[id(model)] = n
                return
            self._leases.pop(id(model), None)
            retired = self._retired.pop(id(model), None)
        if retired is not None:
            retired.close()
