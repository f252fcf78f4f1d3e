"""Devices and precision: ``"auto"`` resolved once, checked, and recorded (``precision`` is part of the store key)."""

from __future__ import annotations

from clipcal.errors import BackboneError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str | None = "auto") -> str:
    """``"auto"`` → ``"cuda"`` when available, else ``"cpu"``; other values are checked and returned.

    Raises:
        BackboneError: ``cuda`` asked for but not available.
    """
    import torch

    d = (device or "auto").lower()
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise BackboneError(f"device {device!r} requested but CUDA is not available here",
                            hint="use --device cpu (or auto), or install a CUDA build of torch")
    if d not in ("cpu", "mps") and not d.startswith("cuda"):
        raise BackboneError(f"unknown device {device!r}", hint="use auto, cpu, cuda or cuda:<index>")
    return d


def resolve_precision(precision: str | None, device: str) -> str:
    """``"auto"`` → ``bf16`` on CUDA where supported (else ``fp16``), ``fp32`` elsewhere.

    Raises:
        BackboneError: unknown precision, or ``fp16`` on the CPU.
    """
    import torch

    p = (precision or "auto").lower()
    if p not in PRECISIONS:
        raise BackboneError(f"unknown precision {precision!r}", hint=f"use one of {', '.join(PRECISIONS)}")
    if p == "auto":
        if device.startswith("cuda"):
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if p == "fp16" and device == "cpu":
        raise BackboneError("fp16 is not supported on the CPU", hint="use fp32 or bf16 on the CPU")
    return p
