"""Devices and precision: ``"auto"`` resolved once, checked, and recorded (``precision`` is part of the store key)."""

from __future__ import annotations

from clipcal.errors import BackboneError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str | None = "auto") -> str:
    """The one check of a device string: ``"auto"`` → ``"cuda"`` when available, else ``"cpu"``; anything else is
    parsed by ``torch.device`` (case-insensitive) and checked against this machine, then returned canonical
    (``"cuda"``, ``"cuda:1"``, ``"cpu"``, ``"mps"``). The methods' own device (``methods._train.resolve_device``)
    goes through here, so the CLI, the pages and every method accept and refuse the same strings.

    Raises:
        BackboneError: not a device (``cudax``), CUDA asked for but not available, a CUDA index this machine does
            not have (``cuda:7`` on one GPU), or ``mps`` where Apple's Metal backend is not available.
    """
    import torch

    d = str(device or "auto").strip().lower()
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(d)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise BackboneError(f"unknown device {device!r}", hint="use auto, cpu, cuda, cuda:<index> or mps")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackboneError(f"device {device!r} requested but CUDA is not available here",
                                hint="use --device cpu (or auto), or install a CUDA build of torch")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise BackboneError(f"device {device!r}: this machine has {n} CUDA device(s)",
                                hint=f"use cuda (the current device) or cuda:0 … cuda:{n - 1}")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise BackboneError(f"device {device!r} requested but Apple's Metal backend (mps) is not available here",
                            hint="use --device cpu (or auto)")
    return str(dev)


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
