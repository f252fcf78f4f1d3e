"""Embedding throughput: the full pipeline vs the backbone's raw batched forward vs a naive per-image loop.

What is measured (images per second, one run each, wall clock):

* **raw forward** — ``backbone.encode_images`` on batches of images that were decoded and preprocessed
  beforehand (not timed): the ceiling for this model on this device.
* **pipeline** — ``clipcal.embed.embed_benchmark`` into a fresh temporary store: decoding in DataLoader workers,
  preprocessing, forward, shards, assembly, checksums, manifest. Everything a user waits for.
* **naive loop** — per image: ``load_image`` + ``preprocess`` + ``encode_images(x[None])`` (what the popular
  one-image-at-a-time scripts do; field-notes.md pitfall 7), on the first ``--naive-n`` images.

Each **variant** (``--variants``) is one precision and memory layout: ``fp32`` / ``bf16`` in the contiguous
layout (clipcal before issue 13) and ``fp32-cl`` / ``bf16-cl`` in channels-last (what clipcal uses for
convolutional towers; ViTs ignore the suffix). The summary gives each variant's pipeline rate over the contiguous
fp32 pipeline (issue 13's "today") and over its own raw forward.

Goals (issue 2): pipeline ≥ 0.8 × raw forward and ≥ 5 × naive, with Lite0 at 160 px on the 2-core CPU.
Goal (issue 13): with channels-last + bf16 on a CPU with native bf16, pipeline ≥ 3 × the contiguous fp32
pipeline, still ≥ 0.8 × the raw forward of the same precision. On a CPU without native bf16 (torch's
``avx512_bf16`` / ``amx_bf16`` capabilities false) bf16 is emulated: expect it slower than fp32.
With ``--device cuda`` it also measures random-weight ViT-B-32 and ViT-L-14 at bf16.

Usage::

    python bench/embed_throughput.py                       # demo (built if needed), 800 images, Lite0, CPU
    python bench/embed_throughput.py --n 400 --workers 0,1,2
    python bench/embed_throughput.py --variants fp32,fp32-cl,bf16,bf16-cl --naive-n 0   # issue 13's table
    python bench/embed_throughput.py --device cuda --batch-size 256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import clipcal  # noqa: E402,F401 — sets OMP_WAIT_POLICY before torch is loaded


def _peak_rss_mb() -> dict:
    to_mb = 1 / 1024  # ru_maxrss is KiB on Linux
    return {"self_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * to_mb, 1),
            "children_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * to_mb, 1)}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(bench, spec: str, device: str, precision: str, batch_size: int, workers: list[int | None],
            naive_n: int, channels_last: bool = True) -> dict:
    """Measure one backbone; returns a dict of figures (see module docstring). ``channels_last=False`` puts a
    convolutional tower back in the contiguous layout (clipcal before issue 13)."""
    import torch

    from clipcal.backbones import load_backbone
    from clipcal.data.images import load_image
    from clipcal.embed import default_num_workers, embed_benchmark
    from clipcal.store import Store

    bb = load_backbone(spec, device=device, precision=precision)
    if not channels_last and bb.memory_format == "channels_last":
        bb.model.to(memory_format=torch.contiguous_format)
        bb.memory_format = "contiguous"
    paths = [bench.image_path(p) for p in bench.table["path"]]
    n = len(paths)
    out = {"spec": bb.spec, "device": bb.device, "precision": bb.precision, "memory_format": bb.memory_format,
           "n_images": n, "batch_size": batch_size, "torch_threads": torch.get_num_threads()}

    # raw forward on pre-decoded, preprocessed images
    t = time.perf_counter()
    x = torch.stack([bb.preprocess(load_image(p)) for p in paths])
    out["decode_preprocess_s"] = round(time.perf_counter() - t, 2)
    bb.encode_images(x[:batch_size])  # warm-up (allocator, kernels)
    _sync(bb.device)
    t = time.perf_counter()
    for i in range(0, n, batch_size):
        bb.encode_images(x[i:i + batch_size])
    _sync(bb.device)
    raw = n / (time.perf_counter() - t)
    out["raw_forward_img_s"] = round(raw, 1)
    del x

    # the pipeline, into a fresh store each time
    out["pipeline"] = []
    for w in workers:
        with tempfile.TemporaryDirectory(prefix="clipcal-bench-") as tmp:
            t = time.perf_counter()
            es = embed_benchmark(bench, bb, store=Store(tmp), batch_size=batch_size, num_workers=w)
            _sync(bb.device)
            el = time.perf_counter() - t
        assert es.n_computed == n, (es.n_computed, n)
        rate = n / el
        out["pipeline"].append({"workers": default_num_workers(bb.device) if w is None else w,
                                "default": w is None, "img_s": round(rate, 1),
                                "ratio_to_raw": round(rate / raw, 3)})

    # naive per-image loop
    if naive_n:
        m = min(naive_n, n)
        t = time.perf_counter()
        for p in paths[:m]:
            bb.encode_images(bb.preprocess(load_image(p))[None])
        _sync(bb.device)
        naive = m / (time.perf_counter() - t)
        out["naive_img_s"] = round(naive, 1)
        best = max(r["img_s"] for r in out["pipeline"])
        out["pipeline_over_naive"] = round(best / naive, 2)
    out["peak_rss"] = _peak_rss_mb()
    bb.close()
    return out


def _variant_summary(results: list[dict]) -> None:
    """Each variant's best pipeline rate over the contiguous fp32 pipeline of the same backbone (issue 13's
    "today"), and over its own raw forward."""
    base = {r["spec"]: max(p["img_s"] for p in r["pipeline"]) for r in results
            if r["precision"] == "fp32" and r["memory_format"] == "contiguous"}
    if not base or len(results) < 2:
        return
    print(f"  {'backbone':32} {'variant':22} {'raw img/s':>9} {'pipeline':>9} {'÷ raw':>6} {'÷ fp32 contiguous':>18}")
    for r in results:
        if r["spec"] not in base:
            continue
        best = max(p["img_s"] for p in r["pipeline"])
        print(f"  {r['spec']:32} {r['precision'] + ', ' + r['memory_format']:22} {r['raw_forward_img_s']:9.1f} "
              f"{best:9.1f} {best / r['raw_forward_img_s']:6.2f} {best / base[r['spec']]:18.2f}")


def _synthetic(n: int, folder: Path):
    """n random 224 × 224 JPEGs (quality 90) in ``folder`` as a 2-class benchmark."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from clipcal.data.base import Benchmark

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
        rows.append((f"{i:05d}", f"{i:05d}.jpg", "train", i % 2, 0))
    table = pd.DataFrame(rows, columns=["sample_id", "path", "split", "y", "a"])
    return Benchmark(name="csv", root=folder, table=table, class_names=["a", "b"], attr_names=["x"],
                     params={"synthetic": n})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="bundled:efficientnet-lite0")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", help="precision when --variants is not given")
    ap.add_argument("--variants", default=None,
                    help="comma list of fp32, fp32-cl, bf16, bf16-cl (precision, -cl = channels-last); default: "
                    "--precision in clipcal's own layout")
    ap.add_argument("--n", type=int, default=800, help="images from the demo benchmark (default 800)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", default="default",
                    help="comma list of DataLoader worker counts to try; 'default' = clipcal's default")
    ap.add_argument("--naive-n", type=int, default=100, help="images for the naive loop (rate extrapolates)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before measuring")
    ap.add_argument("--synthetic", action="store_true",
                    help="use --n random-noise 224 px JPEGs in a temp folder instead of the demo (no demo assets "
                    "needed, e.g. on a GPU server)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    import torch

    from clipcal.data import load_benchmark
    from clipcal.data.base import Benchmark

    if args.threads:
        torch.set_num_threads(args.threads)
    workers = [None if w == "default" else int(w) for w in args.workers.split(",")]
    if args.synthetic:
        bench = _synthetic(args.n, Path(tempfile.mkdtemp(prefix="clipcal-bench-img-")))
    else:
        full = load_benchmark("demo")
        table = full.table.iloc[: args.n].reset_index(drop=True)
        bench = Benchmark(name=full.name, root=full.root, table=table, class_names=full.class_names,
                          attr_names=full.attr_names, params={**full.params, "bench_n": args.n})
    load1, load5, _ = os.getloadavg()
    report = {"cpu_count": os.cpu_count(), "loadavg_1m_at_start": round(load1, 2),
              "loadavg_5m_at_start": round(load5, 2), "results": []}
    import clipcal.backbones.devices as devices

    report["cpu_bf16_native"] = devices.cpu_bf16_native()
    if args.variants:
        specs = [(args.backbone, v.split("-")[0], v.endswith("-cl")) for v in args.variants.split(",")]
    else:
        specs = [(args.backbone, args.precision, True)]
    if args.device.startswith("cuda"):
        specs += [("open_clip:ViT-B-32:random", "bf16", True), ("open_clip:ViT-L-14:random", "bf16", True)]
    for spec, prec, cl in specs:
        r = measure(bench, spec, args.device, prec, args.batch_size, workers, args.naive_n, channels_last=cl)
        report["results"].append(r)
        best = max(r["pipeline"], key=lambda p: p["img_s"])
        print(f"{r['spec']} on {r['device']} ({r['precision']}, {r['memory_format']}), {r['n_images']} images, "
              f"batch {r['batch_size']}, {r['torch_threads']} torch threads")
        print(f"  raw forward (pre-decoded): {r['raw_forward_img_s']:8.1f} img/s")
        for p in r["pipeline"]:
            print(f"  pipeline, {p['workers']} worker(s){' (default)' if p['default'] else ''}: "
                  f"{p['img_s']:8.1f} img/s  = {p['ratio_to_raw']:.2f} × raw")
        if "naive_img_s" in r:
            print(f"  naive per-image loop:      {r['naive_img_s']:8.1f} img/s  → best pipeline = "
                  f"{r['pipeline_over_naive']:.1f} × naive")
        print(f"  peak RSS: this process {r['peak_rss']['self_mb']} MB, largest worker "
              f"{r['peak_rss']['children_mb']} MB")
        naive_goal = ("not measured (--naive-n 0)" if "pipeline_over_naive" not in r
                      else "met" if r["pipeline_over_naive"] >= 5 else "MISSED")
        print(f"  goals: pipeline ≥ 0.8 × raw: {'met' if best['ratio_to_raw'] >= 0.8 else 'MISSED'}; "
              f"≥ 5 × naive: {naive_goal}")
    _variant_summary(report["results"])
    l1, l5, _ = os.getloadavg()
    report["loadavg_1m_at_end"] = round(l1, 2)
    print(f"load average (1 min) at start {load1:.2f}, at end {l1:.2f}, on {os.cpu_count()} cores")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
