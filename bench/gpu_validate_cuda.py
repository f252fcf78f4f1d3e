"""The checks of bench/gpu_validate.py that need CUDA (run them through it: ``python bench/gpu_validate.py``; the
table of every check and its threshold is in that file's docstring). Each calls ``ctx.need_cuda()`` first, so on
a machine without CUDA it is a SKIP with the reason."""

from __future__ import annotations

import warnings
from functools import partial

import gpu_validate as gv
from gpu_validate import Ctx, Fail, _backbone, _embed, _image_bench, _release

CHECKS: list[tuple[str, object]] = []
check = partial(gv.check, registry=CHECKS)

FP32_MIN_COS = 0.9999          # issue 15: CPU vs CUDA parity at fp32
HALF_MIN_COS = 0.99            # … at bf16 / fp16
FP32_MAX_REL_DIFF = 3e-4       # CUDA vs CPU fp32 features, max |Δ| / max |h|: TF32's 10-bit mantissa gives ~1e-3
MAX_WORST_GROUP_GAP = 0.02     # CPU vs CUDA method results
MAX_PEAK_OVER_ONE_COPY = 1.25  # CFR's peak GPU memory ÷ (one N × d copy of the features + one N × e output), float32
MAX_SYNCS_PER_STEP = 1.0       # host syncs per CFR stage-2 step ("syncs out of the inner loop")
PARITY_SPECS = {"tiny": "tiny:clip", "lite0": "bundled:efficientnet-lite0", "vit_b_32": "open_clip:ViT-B-32:random"}
PARITY_PRECISIONS = ("fp32", "bf16", "fp16")
OOM_SPEC = "open_clip:ViT-B-32:random"  # large enough activations per image to put a batch under pressure


def _worst_group(result, data, split: str = "test") -> float:
    from clipcal.metrics import summarize

    m = data.split == split
    return summarize(data.y[m], result.pred[m], data.group[m])["worst_group"]


def _parity(ctx: Ctx, key: str) -> dict:
    ctx.need_cuda()
    import numpy as np
    import torch

    from clipcal.data.images import load_image

    spec = PARITY_SPECS[key]
    bench = _image_bench(ctx, ctx.sizes["parity_images"])
    cpu = _backbone(ctx, spec, "cpu", "fp32")
    x = torch.stack([cpu.preprocess(load_image(bench.image_path(p))) for p in bench.table["path"]])
    _, z_ref = cpu.encode_images(x)
    value, problems = {}, []
    for prec in PARITY_PRECISIONS:
        _, z = _backbone(ctx, spec, ctx.device, prec).encode_images(x)
        cos = (z_ref * z).sum(dim=1).numpy()
        value[prec] = {"min_cos": round(float(cos.min()), 6), "mean_cos": round(float(np.mean(cos)), 6)}
        floor = FP32_MIN_COS if prec == "fp32" else HALF_MIN_COS
        if not cos.min() >= floor:
            problems.append(f"{prec}: min cosine {cos.min():.6f} < {floor}")
    _release(ctx, spec)
    if problems:
        raise Fail(f"{spec} CUDA vs CPU fp32: " + "; ".join(problems), value)
    return value


for _key in PARITY_SPECS:
    check(f"embed_parity_{_key}")(lambda ctx, _key=_key: _parity(ctx, _key))


@check("cuda_fp32_true_or_keyed_apart")
def cuda_fp32_true_or_keyed_apart(ctx: Ctx) -> dict:
    ctx.need_cuda()
    import torch

    from clipcal.data.images import load_image

    spec = PARITY_SPECS["lite0"]  # convolutions: torch's default cuDNN TF32 is what made CUDA "fp32" differ
    bench = _image_bench(ctx, ctx.sizes["parity_images"])
    cpu, gpu = _backbone(ctx, spec, "cpu", "fp32"), _backbone(ctx, spec, ctx.device, "fp32")
    x = torch.stack([cpu.preprocess(load_image(bench.image_path(p))) for p in bench.table["path"]])
    h_cpu, h_gpu = cpu.encode_images(x)[0], gpu.encode_images(x)[0]
    rel = float((h_gpu - h_cpu).abs().max() / h_cpu.abs().max())
    same_key = cpu.identity() == gpu.identity()
    value = {"spec": spec, "max_rel_diff": rel, "same_store_key": same_key, "cuda_identity": gpu.identity()}
    _release(ctx, spec)
    if same_key and not rel <= FP32_MAX_REL_DIFF:
        raise Fail(f"CUDA fp32 features differ from CPU fp32 ones by {rel:.1e} of their range (TF32-sized; true fp32 "
                   f"≤ {FP32_MAX_REL_DIFF:.0e}) while both share one store key, so either is served for the other "
                   "(issue 15.2, TF32 decided explicitly and part of the identity)", value)
    return value


@check("oom_halves_batch")
def oom_halves_batch(ctx: Ctx) -> dict:
    ctx.need_cuda()
    import numpy as np
    import torch

    from clipcal.data.images import load_image

    n = ctx.sizes["oom_images"]
    bench = _image_bench(ctx, n)
    bb = _backbone(ctx, OOM_SPEC, ctx.device, "fp32")
    ref = _embed(ctx, bench, bb, "oom-reference", batch_size=32, shard_size=n)
    x = torch.stack([bb.preprocess(load_image(bench.image_path(p))) for p in bench.table["path"][:32]])
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    bb.encode_images(x)
    per_image = (torch.cuda.max_memory_allocated() - base) / len(x)
    headroom = int(per_image * n / 3)  # a batch of n needs ~3× this; n / 4 fits
    torch.cuda.empty_cache()
    free, _total = torch.cuda.mem_get_info()
    messages: list[str] = []
    value = {"images": n, "per_image_mib": round(per_image / 2**20, 2), "headroom_mib": round(headroom / 2**20, 1)}
    ballast = torch.empty(max(0, free - headroom), dtype=torch.uint8, device=ctx.device)
    try:
        got = _embed(ctx, bench, bb, "oom", batch_size=n, shard_size=n, num_workers=None,
                     progress=lambda p: messages.append(p.message) if "memory" in p.message else None)
    except Exception as err:  # noqa: BLE001 — an unrecognised allocator failure is what this check looks for
        raise Fail(f"embedding under memory pressure failed: {type(err).__name__}: {str(err)[:400]}",
                   {**value, "messages": messages}) from None
    finally:
        del ballast
        torch.cuda.empty_cache()
    value["messages"] = messages
    cos = (np.asarray(ref.embeddings) * np.asarray(got.embeddings)).sum(axis=1)
    value["min_cos_vs_unpressed"] = round(float(cos.min()), 6)
    if not any("halved" in m for m in messages):
        raise Fail("memory pressure caused no halving (the batch fitted in the headroom): the check did not "
                   "exercise the fallback", value)
    if len(got) != n or not cos.min() >= FP32_MIN_COS:
        raise Fail("the embedding after halving differs from the unpressed one", value)
    return value


@check("methods_cpu_vs_cuda")
def methods_cpu_vs_cuda(ctx: Ctx) -> dict:
    ctx.need_cuda()
    from clipcal.methods import make_method
    from clipcal.synthetic import generate

    data = generate(seed=0, **ctx.sizes["compare"]).data
    hp = {"erm": dict(epochs=20), "cfr": dict(epochs=10, erm_epochs=20)} if not ctx.quick else \
        {"erm": ctx.sizes["erm"], "cfr": ctx.sizes["cfr"]}
    value, problems = {"dropout": 0.0}, []
    for m, kw in hp.items():
        # no dropout: CPU and CUDA generators draw different masks, and this compares the arithmetic, not the RNGs
        wg = {dev: _worst_group(make_method(m, seed=0, device=dev, dropout=0.0, **kw).fit(data).result_, data)
              for dev in ("cpu", ctx.device)}
        gap = abs(wg["cpu"] - wg[ctx.device])
        value[m] = {"test_worst_group": {k: round(v, 4) for k, v in wg.items()}, "gap": round(gap, 4)}
        if not gap <= MAX_WORST_GROUP_GAP:
            problems.append(f"{m}: worst-group gap {gap:.4f} > {MAX_WORST_GROUP_GAP}")
    if problems:
        raise Fail("; ".join(problems), value)
    return value


def _shaped(rows: int, dims: tuple[int, int]):
    """Waterbirds-shaped features (bench/calibrate_speed.py) scaled to ``rows`` rows, d → e = ``dims``."""
    from calibrate_speed import WATERBIRDS_GROUPS, shaped_features

    total = sum(sum(g.values()) for g in WATERBIRDS_GROUPS.values())
    groups = {s: {k: max(4, round(v * rows / total)) for k, v in g.items()} for s, g in WATERBIRDS_GROUPS.items()}
    return shaped_features(groups, *dims, text_head=False)


@check("cfr_scale_memory_syncs")
def cfr_scale_memory_syncs(ctx: Ctx) -> dict:
    ctx.need_cuda()
    import torch

    from clipcal.methods import make_method

    data = _shaped(ctx.sizes["scale_rows"], ctx.sizes["scale_dims"])
    copy_gib = data.features.nbytes / 2**30
    limit_gib = MAX_PEAK_OVER_ONE_COPY * (data.features.nbytes + data.n * data.embed_dim * 4) / 2**30
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    marks: list[tuple[str, float, int]] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            est = make_method("cfr", seed=0, device=ctx.device, epochs=2, erm_epochs=1).fit(
                data, progress=lambda p: marks.append((p.stage, float(p.done), len(caught))))
        finally:
            torch.cuda.set_sync_debug_mode(0)
    peak_gib = (torch.cuda.max_memory_allocated() - base) / 2**30
    is_sync = [("synchroniz" in str(w.message).lower()) for w in caught]
    rec = est.result_.record
    value = {"rows": data.n, "dims": [data.feature_dim, data.embed_dim], "features_copy_gib": round(copy_gib, 3),
             "peak_gib": round(peak_gib, 3), "peak_in_copies": round(peak_gib / copy_gib, 2),
             "peak_limit_gib": round(limit_gib, 3),
             "steps_per_epoch": rec.get("steps_per_epoch"), "syncs_in_fit": sum(is_sync),
             "calibration_set": (rec.get("calibration_set") or {}).get("size"), "fallback": rec.get("fallback")}
    cfr_marks = [m for m in marks if "cfr" in str(m[0]).lower()]
    problems = []
    if sum(is_sync) == 0:
        problems.append("no synchronisation was counted in the whole fit (≥ 1 per epoch is certain): the counter "
                        "does not work with this torch")
    if len(cfr_marks) < 2 or not rec.get("steps_per_epoch"):
        problems.append(f"stage 2 did not report two epochs (marks {marks[-4:]}, record fallback "
                        f"{rec.get('fallback')!r}): syncs per step not measured")
    else:
        (_, d0, i0), (_, d1, i1) = cfr_marks[-2], cfr_marks[-1]
        steps = rec["steps_per_epoch"] * max(1, round(d1 - d0))
        value["syncs_per_step"] = round(sum(is_sync[i0:i1]) / steps, 2)
        if value["syncs_per_step"] > MAX_SYNCS_PER_STEP:
            problems.append(f"{value['syncs_per_step']} host syncs per CFR step > {MAX_SYNCS_PER_STEP} (issue 15.7)")
    if not peak_gib <= limit_gib:
        problems.append(f"peak GPU memory {peak_gib:.2f} GiB = {value['peak_in_copies']} copies of the features, over "
                        f"{limit_gib:.2f} GiB (one copy + one N × e output, +25 %): issue 15.6, one device copy")
    if problems:
        raise Fail("; ".join(problems), value)
    return value
