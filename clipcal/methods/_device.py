"""The methods' device and precision helpers (issues 15.5, 15.7, 13.2): the device name a run records, host →
device copies that do not make the host wait, a run's device manifest, and the calibration precision (fp32, or
bf16 matrix products with fp32 master weights and losses)."""

from __future__ import annotations

import torch

from clipcal.errors import MethodError


#: calibration precisions: the projections' matrix products in fp32, or in bf16 (autocast) with fp32 master
#: weights, fp32 losses and fp32 evaluation; ``"auto"`` resolves by :func:`resolve_calibration_precision`
CALIBRATION_PRECISIONS = ("auto", "fp32", "bf16")


def resolved_device_name(device: str | torch.device = "auto") -> str:
    """The name of the device a method given ``device`` runs on, with its index: ``"auto"`` → ``"cuda:0"`` (the
    current CUDA device) or ``"cpu"`` — what a run's key records (issue 15.5). Raises BackboneError like
    :func:`clipcal.methods._train.resolve_device`."""
    from clipcal.backbones.devices import concrete_device, resolve_device

    return concrete_device(resolve_device(str(device) if device is not None else "auto"))


def device_manifest(device: str | torch.device, precision: str = "fp32") -> dict:
    """What a run on ``device`` records beyond its name (issue 15.5): the GPU's name and capability, torch / CUDA /
    cuDNN versions, TF32 and cuDNN flags (:func:`clipcal.backbones.devices.compute_record`, shared with the
    embeddings), whether deterministic algorithms are on, and the calibration precision. Meta, not key: the
    resolved device and precision are in the key."""
    from clipcal.backbones.devices import compute_record

    return {**compute_record(str(device), precision),
            "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled())}


def bf16_native(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bf16 matrices natively (CPU: AVX-512 BF16 / AMX; CUDA: capability ≥ 8.0);
    elsewhere bf16 is emulated — on this project's AVX2 build machine 36× *slower* than fp32."""
    from clipcal.backbones.devices import cpu_bf16_native, cuda_bf16_native

    dev = torch.device(device)
    if dev.type == "cuda":
        return cuda_bf16_native(str(dev))
    return dev.type == "cpu" and cpu_bf16_native()


#: the one help line of every method's ``precision`` (the dashboard and the CLI show it)
PRECISION_HELP = ("matrix products of the training projections: fp32, or bf16 (fp32 weights and losses; test "
                  "worst-group within 0.2 points of fp32 on the synthetic bench, 3 seeds; matmuls ~4x faster where "
                  "the CPU has AVX-512 BF16 / AMX or the GPU is Ampere or later, many times slower where bf16 is "
                  "emulated, e.g. AVX2-only CPUs); auto = fp32 until the demo's fidelity check is in")


def resolve_calibration_precision(precision: str, device: torch.device | str) -> str:
    """``"fp32"`` or ``"bf16"`` for a method's ``precision`` on ``device``.

    ``"auto"`` is fp32: the fidelity check (bench/calibrate_precision.py) decides whether bf16 becomes the default
    where it is native (:func:`bf16_native`); it passed on the synthetic bench (2026-11-30, 3 seeds: CFR test
    worst-group +0.07 points, its stage-1 ERM −0.13) and the demo's is pending, so bf16 is opt-in for now. An
    explicit ``"bf16"`` is honoured everywhere (CFR's record notes when it was emulated).

    Raises:
        MethodError: an unknown precision.
    """
    p = str(precision).lower()
    if p not in CALIBRATION_PRECISIONS:
        raise MethodError(f"unknown calibration precision {precision!r}",
                          hint=f"use one of {', '.join(CALIBRATION_PRECISIONS)}")
    return "fp32" if p == "auto" else p


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without making the host wait: pinned memory and a non-blocking copy on CUDA
    (a copy from pageable memory waits for the device's queue to drain); unchanged on the CPU."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


