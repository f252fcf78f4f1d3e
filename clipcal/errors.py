"""User-facing errors.

Every error a user can cause derives from :class:`ClipcalError` and carries a ``hint`` saying what to do.
The CLI prints ``str(err)`` without a traceback and the dashboard shows it as a message.
"""

from __future__ import annotations


class ClipcalError(Exception):
    """An error caused by input or environment, with a message a user can act on.

    Args:
        message: what went wrong, naming the file, row or column involved.
        hint: what to do about it (optional); appended to ``str(err)``.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  → {self.hint}" if self.hint else self.message


class DataError(ClipcalError):
    """A benchmark's files, metadata or sample table are missing or malformed."""


class BackboneError(ClipcalError):
    """A backbone spec is unknown, or its weights cannot be loaded."""


class WeightsUnavailableError(BackboneError):
    """Weights need a download that is not possible (offline, or the hub refused)."""


class NoTextTowerError(BackboneError):
    """A text-based feature (zero-shot, concept probing) was asked of an image-only backbone."""


class StoreError(ClipcalError):
    """A store entry is corrupt or cannot be written."""


class MethodError(ClipcalError):
    """A calibration method cannot run on the given features (bad shapes, NaN, missing labels)."""


class Cancelled(ClipcalError):
    """A long job was cancelled by the user; what it finished so far is kept."""


class MissingDependencyError(ClipcalError):
    """A Python package a task needs is not installed (raised by ``clipcal.deps.require`` before any work)."""
