"""Devices and precision: ``"auto"`` resolved once, checked, and recorded (``precision`` is part of the store key).

Precisions: ``fp32`` is true fp32 everywhere — on CUDA with TF32 off for cuBLAS matmuls *and* cuDNN convolutions
(:func:`fp32_math`; torch's default leaves cuDNN's TF32 on, so a CUDA "fp32" embedding differed from the CPU one
by ~1e-3 while sharing its store key); ``tf32`` (CUDA only) is fp32 weights with TF32 tensor-core math, its own
key; ``bf16`` / ``fp16`` are ``torch.autocast`` with fp32 weights. How an embedding was computed (device with its
index, GPU name, torch / CUDA / cuDNN versions, TF32 and cuDNN flags) is recorded by :func:`compute_record`.
"""

from __future__ import annotations

import contextlib

from clipcal.errors import BackboneError

PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")

#: whether ``--precision auto`` picks bf16 on a CPU with native bf16 (AVX-512 BF16 / AMX). Decided by
#: bench/precision_fidelity.py against issue 13's rule (mean cosine ≥ 0.999 to fp32 and every method's test
#: worst-group within ±1 point, mean of 3 seeds, on the demo with Lite0 and tiny:clip). 2026-11-30: not met —
#: Lite0's bf16 embeddings have mean cosine 0.99856 (min 0.9887) to fp32 (800-image stratified subset of the
#: demo); tiny:clip's agree (0.99999) but JTT's worst-group moved −7.3 points, AFR +2.5, DFR +1.5.
CPU_AUTO_BF16 = False

#: what each precision means, for ``--precision`` and the Embed page (each precision is its own store entry)
PRECISION_HELP = (
    "auto = bf16 on a GPU with native bf16 (Ampere or later), fp16 on older GPUs, fp32 on the CPU; fp32 = true "
    "fp32 (TF32 off on GPUs, so the same embeddings as the CPU); tf32 = fp32 weights with TF32 tensor-core math "
    "(GPU only); bf16 / fp16 = autocast. Part of the store key. On the CPU bf16 is opt-in: about 2× faster than "
    "fp32 where the CPU has native bf16 (AVX-512 BF16 / AMX; Lite0 channels-last 338 vs 144 img/s) and emulated, "
    "several times slower, elsewhere. Measured against fp32 on the demo (bench/precision_fidelity.py): Lite0 "
    "embeddings' mean cosine 0.9986 (min 0.989), below the 0.999 that would make bf16 the default; tiny:clip "
    "0.99999, but JTT's test worst-group moved 7 points (mean of 3 seeds).")


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
    itself), ``fp16`` on other CUDA devices; on the CPU ``bf16`` where :data:`CPU_AUTO_BF16` is set and the CPU
    has native bf16 (:func:`cpu_bf16_native`), else ``fp32``; ``fp32`` elsewhere.

    Raises:
        BackboneError: unknown precision, or ``fp16`` on the CPU.
    """
    p = (precision or "auto").lower()
    if p not in PRECISIONS:
        raise BackboneError(f"unknown precision {precision!r}", hint=f"use one of {', '.join(PRECISIONS)}")
    if p == "auto":
        if device.startswith("cuda"):
            return "bf16" if cuda_bf16_native(device) else "fp16"
        return "bf16" if device == "cpu" and CPU_AUTO_BF16 and cpu_bf16_native() else "fp32"
    if p == "fp16" and device == "cpu":
        raise BackboneError("fp16 is not supported on the CPU", hint="use fp32 or bf16 on the CPU")
    if p == "tf32" and not device.startswith("cuda"):
        raise BackboneError(f"tf32 is a CUDA precision (tensor-core math); {device} has none",
                            hint="use fp32 (or bf16) on this device")
    return p


def concrete_device(device: str) -> str:
    """The device with its index where it has one (``"cuda"`` → ``"cuda:0"``, the current device), for records."""
    return f"cuda:{cuda_index(device)}" if str(device).startswith("cuda") else str(device)


def _tf32_state() -> tuple[str, tuple]:
    """Which TF32 switch this torch has, and its current values (to restore)."""
    import torch

    m, c = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(m, "fp32_precision") and hasattr(getattr(c, "conv", None), "fp32_precision"):  # torch ≥ 2.9
        return "new", (m.fp32_precision, c.conv.fp32_precision)
    return "legacy", (m.allow_tf32, c.allow_tf32)


def _set_tf32(api: str, values: tuple) -> None:
    import torch

    m, c = torch.backends.cuda.matmul, torch.backends.cudnn
    if api == "new":
        m.fp32_precision, c.conv.fp32_precision = values
    else:
        m.allow_tf32, c.allow_tf32 = values


def tf32_flags() -> dict:
    """``{"matmul": bool, "cudnn": bool}``: whether fp32 cuBLAS matmuls / cuDNN convolutions may use TF32 now
    (torch ≥ 2.9's ``fp32_precision``, falling back to the legacy ``allow_tf32`` flags where it says ``none``)."""
    import torch

    api, (mm, conv) = _tf32_state()
    if api == "legacy":
        return {"matmul": bool(mm), "cudnn": bool(conv)}
    cudnn_all = getattr(torch.backends.cudnn, "fp32_precision", "none")
    conv = conv if conv != "none" else cudnn_all
    return {"matmul": mm == "tf32" if mm != "none" else bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn": conv == "tf32" if conv != "none" else bool(torch.backends.cudnn.allow_tf32)}


@contextlib.contextmanager
def fp32_math(device: str, precision: str):
    """Run the enclosed CUDA work with TF32 decided by ``precision``: on for ``tf32``, off otherwise (so ``fp32``
    on CUDA is IEEE fp32 like the CPU, and autocast's remaining fp32 ops too); restored afterwards. The flags are
    process-wide: another thread's CUDA work during the block runs with them. A no-op off CUDA."""
    if not str(device).startswith("cuda"):
        yield
        return
    api, before = _tf32_state()
    want = precision == "tf32"
    _set_tf32(api, ("tf32", "tf32") if api == "new" and want else ("ieee", "ieee") if api == "new" else (want, want))
    try:
        yield
    finally:
        _set_tf32(api, before)


def compute_record(device: str, precision: str, memory_format: str = "contiguous") -> dict:
    """How embeddings are computed, for the manifest (``meta["compute"]``); call it inside :func:`fp32_math`.

    Returns:
        ``{"device", "gpu", "capability", "torch", "cuda", "cudnn", "precision", "autocast", "memory_format",
        "tf32_matmul", "tf32_cudnn", "cudnn_deterministic", "cudnn_benchmark", "cpu_bf16_native"}``; device with
        its index (``cuda:0``); the CUDA fields say ``"n/a"`` off CUDA.
    """
    import torch

    on_cuda = str(device).startswith("cuda")
    rec = {"device": concrete_device(device), "gpu": "n/a", "capability": "n/a", "torch": torch.__version__,
           "cuda": "n/a", "cudnn": "n/a", "precision": precision,
           "autocast": {"bf16": "bfloat16", "fp16": "float16"}.get(precision), "memory_format": memory_format,
           "tf32_matmul": "n/a", "tf32_cudnn": "n/a", "cudnn_deterministic": "n/a", "cudnn_benchmark": "n/a",
           "cpu_bf16_native": cpu_bf16_native() if str(device) == "cpu" else "n/a"}
    if on_cuda:
        i = cuda_index(device)
        flags = tf32_flags()
        rec.update(gpu=torch.cuda.get_device_name(i), capability=".".join(map(str, torch.cuda.get_device_capability(i))),
                   cuda=torch.version.cuda or "n/a", cudnn=str(torch.backends.cudnn.version() or "n/a"),
                   tf32_matmul=flags["matmul"], tf32_cudnn=flags["cudnn"],
                   cudnn_deterministic=bool(torch.backends.cudnn.deterministic),
                   cudnn_benchmark=bool(torch.backends.cudnn.benchmark))
    return rec


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX-BF16, as torch's CPU feature check reports);
    elsewhere torch emulates bf16 on the CPU, slower than fp32."""
    import torch

    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def compute_line(rec: dict | None) -> str:
    """One line for pages and the CLI on how a stored embedding was computed (from :func:`compute_record`);
    sets stored before it was recorded say so."""
    if not rec:
        return "Computed with: not recorded (stored by an older version)"
    prec = rec.get("precision", "?")
    how = {"fp32": "fp32", "tf32": "fp32 weights, TF32 math", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}
    text = f"Computed with: {how.get(prec, prec)} on {rec.get('device', '?')}"
    if rec.get("gpu") not in (None, "n/a"):
        text += f" ({rec['gpu']}; CUDA {rec.get('cuda')}, cuDNN {rec.get('cudnn')}; TF32 matmul " \
                f"{'on' if rec.get('tf32_matmul') is True else 'off'}, conv {'on' if rec.get('tf32_cudnn') is True else 'off'})"
    if rec.get("memory_format") == "channels_last":
        text += ", channels-last"
    return text + f"; torch {rec.get('torch', '?')}"
