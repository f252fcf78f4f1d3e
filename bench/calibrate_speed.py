"""Wall time and peak memory of the default CFR recipe (issue 3, "bench").

Data sets (``--data``):

* ``waterbirds-shaped``: random features the shape of Waterbirds under ViT-L/14 — train / val / test
  4,795 / 1,199 / 5,794, pre-projection d = 1,024 → e = 768 through an exact projection, 2 classes, and a
  planted spurious structure with Waterbirds' own group counts (train 3,498 / 184 / 56 / 1,057; val and test
  with Waterbirds' proportions), so ERM's calibration set is realistic (mostly minority groups). A text head
  (the projected class directions plus noise) stands in for the zero-shot head.
* ``demo``: Lite0 features of the built-in demo (``clipcal.embed.embed_benchmark(load_benchmark("demo"),
  "bundled:efficientnet-lite0")``); embedding time is not counted.
* ``lite-shaped``: random Waterbirds-lite-shaped features (1,200 / 400 / 800, 1,280 → 512), for when the demo
  embeddings are not available.

Goals on the 2-core build machine: demo ≤ 30 s, Waterbirds-shaped ≤ 90 s (issue 13: needs bf16 matrix products
on a CPU with native bf16 — ``--precision bf16``; the AVX2-only build CPU seen on 2026-11-30 only emulates bf16,
36× slower than fp32), peak RSS ≤ 1.5 GB; GPU ≤ 15 s.
The recipe is never changed for speed (epochs, P, N, batch are CFR's defaults unless ``--epochs`` is given,
which is for quick checks only and printed in the output).

Usage::

    python bench/calibrate_speed.py --data waterbirds-shaped            # full default recipe
    python bench/calibrate_speed.py --data demo --profile cprofile       # + where the time goes
    python bench/calibrate_speed.py --data waterbirds-shaped --epochs 2 --erm-epochs 2 --profile torch

Prints machine load (``uptime``) before and after, torch threads, the device, wall seconds per stage, steps,
distinct rows projected per step, and peak RSS (``resource.getrusage``), as one JSON object at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import clipcal  # noqa: E402,F401 — sets OMP_WAIT_POLICY before torch is loaded

WATERBIRDS_GROUPS = {  # (y, a) → counts per split; a = background (0 land, 1 water)
    "train": {(0, 0): 3498, (0, 1): 184, (1, 0): 56, (1, 1): 1057},
    "val": {(0, 0): 467, (0, 1): 466, (1, 0): 133, (1, 1): 133},
    "test": {(0, 0): 2255, (0, 1): 2255, (1, 0): 642, (1, 1): 642},
}


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:  # noqa: BLE001 — informational only
        return "uptime unavailable"


def shaped_features(groups: dict, d: int, e: int, seed: int = 0, core: float = 0.8, spurious: float = 1.0,
                    axis_noise: float = 1.0, noise: float = 4.0, text_head: bool = True):
    """FeatureData with given per-split group counts: h = core·u_y + spurious·v_a + shared low-rank "content"
    variation + N(0, axis_noise²) along u and along v + N(0, noise²/d) isotropic; exact projection W [d, e]
    (random orthonormal columns)."""
    from clipcal.methods.base import FeatureData

    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, 4 + 16)))
    u = np.stack([q[:, 0], -q[:, 0]])
    v = np.stack([q[:, 1], -q[:, 1]])
    content = q[:, 4:20].T                                  # 16 shared directions of nuisance variation
    ys, as_, splits = [], [], []
    for split, g in groups.items():
        for (y, a), n in g.items():
            ys += [y] * n
            as_ += [a] * n
            splits += [split] * n
    y, a, split = np.array(ys), np.array(as_), np.array(splits)
    n = len(y)
    # built in float32, in place, so the generator does not inflate the peak RSS measured for CFR;
    # noise along the core and spurious directions makes the classes overlap (ERM errs on a few % of train)
    q32 = q.astype(np.float32)
    h = rng.standard_normal((n, d), dtype=np.float32)
    h *= noise / np.sqrt(d)
    h += (core * u[y] + spurious * v[a]).astype(np.float32)
    h += rng.standard_normal((n, 16), dtype=np.float32) @ (content.astype(np.float32) * 1.5)
    h += (axis_noise * rng.standard_normal((n, 2))).astype(np.float32) @ q32[:, :2].T
    p, _ = np.linalg.qr(rng.standard_normal((d, e)))
    W = p.astype(np.float32)
    z = h @ W
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    del p
    head = None
    if text_head:
        t = u @ W + 0.5 * rng.standard_normal((2, e)) / np.sqrt(e) + 0.8 * (v @ W)  # zero-shot leans spurious
        head = (t / np.linalg.norm(t, axis=1, keepdims=True)).astype(np.float32)
    order = rng.permutation(n)
    return FeatureData(features=h[order], embeddings=z[order], y=y[order], a=a[order], group=(y * 2 + a)[order],
                       split=split[order], sample_ids=[f"r{i}" for i in range(n)],
                       class_names=["landbird", "waterbird"], attr_names=["land", "water"], proj_weight=W,
                       projection="exact", text_head=head, has_text=head is not None,
                       backbone_spec="random (Waterbirds-shaped)", benchmark_name="waterbirds-shaped")


def load_data(kind: str):
    if kind == "waterbirds-shaped":
        return shaped_features(WATERBIRDS_GROUPS, 1024, 768), "Waterbirds-shaped random features 1024→768"
    if kind == "lite-shaped":
        groups = {"train": {(0, 0): 570, (0, 1): 30, (1, 0): 30, (1, 1): 570},
                  "val": {k: 100 for k in [(0, 0), (0, 1), (1, 0), (1, 1)]},
                  "test": {k: 200 for k in [(0, 0), (0, 1), (1, 0), (1, 1)]}}
        return (shaped_features(groups, 1280, 512, text_head=False),
                "Waterbirds-lite-shaped random features 1280→512 (no text head)")
    if kind == "demo":
        from clipcal.data import load_benchmark
        from clipcal.embed import embed_benchmark
        from clipcal.methods.base import FeatureData
        bench = load_benchmark("demo")
        es = embed_benchmark(bench, "bundled:efficientnet-lite0")
        return FeatureData.from_store(bench, es), "demo (Waterbirds-lite) Lite0 features"
    raise SystemExit(f"unknown --data {kind!r}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="wall time and peak RSS of the default CFR recipe")
    ap.add_argument("--data", default="waterbirds-shaped", choices=["waterbirds-shaped", "demo", "lite-shaped"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--epochs", type=int, default=None, help="CFR epochs (quick checks only; default recipe 100)")
    ap.add_argument("--erm-epochs", type=int, default=None, help="ERM epochs (quick checks only)")
    ap.add_argument("--profile", choices=["none", "cprofile", "torch"], default="none")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="CFR's calibration precision (bf16: bf16 matrix products, fp32 weights and losses)")
    args = ap.parse_args(argv)

    out = {"load_before": _uptime(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    t_import = time.perf_counter()
    import torch
    from clipcal.methods._device import bf16_native
    from clipcal.methods.cfr import CFR
    # torch.optim imports torch._dynamo on the first step (seconds, once per process): pay it here, timed
    p = torch.nn.Parameter(torch.zeros(1))
    p.grad = torch.zeros(1)
    torch.optim.SGD([p], lr=0.1).step()
    out["import_seconds"] = round(time.perf_counter() - t_import, 2)
    out["rss_after_import_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    out["torch_threads"] = torch.get_num_threads()

    t = time.perf_counter()
    data, desc = load_data(args.data)
    out["data"] = desc
    out["load_seconds"] = round(time.perf_counter() - t, 2)
    out["rss_after_load_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["sizes"] = {s: int(data.mask(s).sum()) for s in ("train", "val", "test")}
    out["dims"] = [data.feature_dim, data.embed_dim]

    kw = {"seed": args.seed, "device": args.device, "precision": args.precision}
    if args.epochs:
        kw["epochs"] = args.epochs
    if args.erm_epochs:
        kw["erm_epochs"] = args.erm_epochs
    model = CFR(**kw)
    out["recipe"] = {k: v for k, v in model.get_params().items()
                     if k in ("epochs", "erm_epochs", "batch_size", "n_pos", "n_neg", "lr", "negatives")}
    out["recipe_is_default"] = not (args.epochs or args.erm_epochs)

    t = time.perf_counter()
    last = {"stage": None}

    def progress(p):
        # one line per epoch with elapsed seconds, so a run cut short still leaves measured epoch times
        if p.stage != last["stage"] or p.done == int(p.done):
            last["stage"] = p.stage
            print(f"[{time.perf_counter() - t:8.1f} s] {p.message}", flush=True)

    if args.profile == "cprofile":
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.enable()
        model.fit(data, progress=progress)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    elif args.profile == "torch":
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        with profile(activities=acts) as prof:
            model.fit(data, progress=progress)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    else:
        model.fit(data, progress=progress)
    out["fit_seconds"] = round(time.perf_counter() - t, 2)
    rec = model.result_.record
    out.update({
        "device": rec["device"],
        "precision": rec.get("precision"),
        "bf16_native": bf16_native(rec["device"]),
        "erm_seconds": rec["erm"]["seconds"],
        "cfr_seconds": rec.get("cfr_seconds"),
        "hard_negative_seconds": rec.get("hard_negative_seconds"),
        "steps_per_epoch": rec.get("steps_per_epoch"),
        "rows_per_step_naive": rec.get("rows_per_step"),
        "mean_unique_rows_per_step": rec.get("mean_unique_rows_per_step"),
        "calibration_set": {"size": rec["calibration_set"]["size"],
                            "by_group": {k: v["n"] for k, v in (rec["calibration_set"]["by_group"] or {}).items()}},
        "chosen_epochs": {"erm": rec["erm"]["chosen_epoch"], "cfr": rec["chosen_epoch"]},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_after": _uptime(),
    })
    # accuracy figures for the record (selection used validation only; test is reported, never used)
    for name, res in (("erm", model.stage1_), ("cfr", model.result_)):
        for split in ("val", "test"):
            m = data.mask(split)
            correct = res.pred[m] == data.y[m]
            g = data.group[m]
            accs = [float(correct[g == j].mean()) for j in range(data.n_groups) if (g == j).any()]
            out[f"{name}_{split}"] = {"worst_group": round(min(accs), 4) if accs else None,
                                     "overall": round(float(correct.mean()), 4),
                                     "groups": [round(x, 3) for x in accs]}
    if torch.cuda.is_available() and rec["device"].startswith("cuda"):
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
