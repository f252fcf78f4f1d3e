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


def cuda_index(device: str) -> int:
    """The CUDA device index a device string means: its own (``"cuda:1"`` → 1), or the current device for a bare
    ``"cuda"`` (``torch.cuda.current_device()``)."""
    import torch

    dev = torch.device(device)
    return dev.index if dev.index is not None else torch.cuda.current_device()


def cuda_bf16_native(device: str) -> bool:
    """Whether the CUDA device ``device`` computes bf16 natively: compute capability ≥ 8.0 (Ampere and later).
    T4 (7.5) and V100 (7.0) only emulate it, slower than fp16, though ``torch.cuda.is_bf16_supported()`` says yes
    there — and it checks the current device, not the requested one."""
    import torch

    return tuple(torch.cuda.get_device_capability(cuda_index(device))) >= (8, 0)


def resolve_precision(precision: str | None, device: str) -> str:
    """``"auto"`` → ``bf16`` on a CUDA device with native bf16 (:func:`cuda_bf16_native`, checked on ``device``
    itself), ``fp16`` on other CUDA devices, ``fp32`` elsewhere.

    Raises:
        BackboneError: unknown precision, or ``fp16`` on the CPU.
    """
    p = (precision or "auto").lower()
    if p not in PRECISIONS:
        raise BackboneError(f"unknown precision {precision!r}", hint=f"use one of {', '.join(PRECISIONS)}")
    if p == "auto":
        if device.startswith("cuda"):
            return "bf16" if cuda_bf16_native(device) else "fp16"
        return "fp32"
    if p == "fp16" and device == "cpu":
        raise BackboneError("fp16 is not supported on the CPU", hint="use fp32 or bf16 on the CPU")
    return p
