"""Embedding with the local engine vs ``--engine ray`` on the same images, plus the equality check (issue 14).

What is measured (one run each, wall clock, each into a fresh temporary store):

* **local** — ``embed_benchmark(..., engine="local")``: DataLoader workers decode, this process encodes.
* **ray start-up** — ``ray.init`` of a local cluster with this machine's CPUs (what ``--engine ray`` without
  ``--address`` pays before any work), timed separately.
* **ray** — ``embed_benchmark(..., engine="ray")`` on that running cluster: actors start (import torch, load the
  model once each), embed whole shards and write them; this process verifies and assembles. Actor start-up is
  included in its images/s.
* **equal** — same store key, and ``features``, ``embeddings``, ``sample_ids``, ``proj_weight`` and the skipped
  list byte-for-byte equal. Equality holds where both engines compute the same floating-point operations: same
  device and the same batches (the same ``--batch-size``; shards are planned identically). The local engine
  runs with torch's default threads, each Ray CPU actor with one (Ray sets ``OMP_NUM_THREADS=1``); where a
  model's kernels split their sums by thread count the last bits may differ, which this check would show.

Usage::

    python bench/ray_embed.py                              # demo (2,400 images, built if needed), Lite0, CPU
    python bench/ray_embed.py --backbone tiny:clip --n 400
    python bench/ray_embed.py --device cuda --synthetic --backbone open_clip:ViT-B-32:random --batch-size 256

The GPU variant needs no demo assets (``--synthetic``: random 224 px JPEGs); the Ray run then uses one actor
with ``num_gpus=1`` per GPU; equality is checked too (same kernels, same batches) but is not guaranteed on GPUs.
Run timings through ``/work/shared/tools/quiet`` and quote the load it prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import clipcal  # noqa: E402,F401 — sets OMP_WAIT_POLICY before torch is loaded

from bench.embed_throughput import _synthetic  # noqa: E402 — the same random-JPEG benchmark


def _demo(n: int):
    from clipcal.data import load_benchmark
    from clipcal.data.base import Benchmark

    full = load_benchmark("demo")
    table = full.table.iloc[:n].reset_index(drop=True)
    return Benchmark(name=full.name, root=full.root, table=table, class_names=full.class_names,
                     attr_names=full.attr_names, params={**full.params, "bench_n": n})


def _timed_embed(bench, bb, **kw) -> tuple:
    from clipcal.embed import embed_benchmark
    from clipcal.store import Store

    tmp = tempfile.mkdtemp(prefix="clipcal-raybench-")
    t = time.perf_counter()
    es = embed_benchmark(bench, bb, store=Store(tmp), **kw)
    return es, time.perf_counter() - t


def equal(a, b) -> dict:
    """Which parts of two embedding sets are byte-for-byte equal (and the largest difference where not)."""
    import numpy as np

    out = {"key": a.key == b.key, "skipped": a.skipped.equals(b.skipped)}
    for name in ("features", "embeddings", "sample_ids", "proj_weight"):
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        same = x.shape == y.shape and x.dtype == y.dtype and x.tobytes() == y.tobytes()
        out[name] = same
        if not same and x.shape == y.shape and x.dtype.kind == "f":
            out[f"{name}_max_abs_diff"] = float(np.abs(x.astype(np.float64) - y).max())
    out["all"] = all(v for k, v in out.items() if isinstance(v, bool))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="bundled:efficientnet-lite0")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--n", type=int, default=2400, help="images (default 2,400: the whole default demo)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="local DataLoader workers (default: clipcal's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of this process (default torch's)")
    ap.add_argument("--synthetic", action="store_true", help="random 224 px JPEGs instead of the demo")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    import ray
    import torch

    from clipcal.backbones import load_backbone

    if args.threads:
        torch.set_num_threads(args.threads)
    bench = _synthetic(args.n, Path(tempfile.mkdtemp(prefix="clipcal-raybench-img-"))) if args.synthetic \
        else _demo(args.n)
    n = len(bench.table)
    bench.fingerprint()  # hashed once here, not inside the first timing
    l1, l5, _ = os.getloadavg()
    rep = {"cpu_count": os.cpu_count(), "loadavg_1m_at_start": round(l1, 2), "loadavg_5m_at_start": round(l5, 2),
           "n_images": n, "batch_size": args.batch_size, "torch_threads_driver": torch.get_num_threads()}
    bb = load_backbone(args.backbone, device=args.device, precision=args.precision)
    rep.update(spec=bb.spec, device=bb.device, precision=bb.precision)

    local, t_local = _timed_embed(bench, bb, batch_size=args.batch_size, num_workers=args.workers)
    rep["local"] = {"s": round(t_local, 2), "img_s": round(n / t_local, 1)}

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    t = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    rep["ray_startup_s"] = round(time.perf_counter() - t, 2)
    try:
        rep["ray_resources"] = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
        dist, t_ray = _timed_embed(bench, bb, batch_size=args.batch_size, engine="ray", device=args.device)
    finally:
        ray.shutdown()
    rep["ray"] = {"s": round(t_ray, 2), "img_s": round(n / t_ray, 1),
                  "img_s_with_startup": round(n / (t_ray + rep["ray_startup_s"]), 1)}
    rep["equal"] = equal(local, dist)
    l1, _, _ = os.getloadavg()
    rep["loadavg_1m_at_end"] = round(l1, 2)

    print(f"{bb.spec} on {bb.device} ({bb.precision}), {n} images, batch {args.batch_size}, "
          f"{rep['torch_threads_driver']} torch thread(s) in the driver; Ray resources {rep['ray_resources']}")
    print(f"  local engine:     {rep['local']['img_s']:8.1f} img/s  ({rep['local']['s']:.1f} s)")
    print(f"  ray start-up:     {rep['ray_startup_s']:8.1f} s (local cluster)")
    print(f"  ray engine:       {rep['ray']['img_s']:8.1f} img/s  ({rep['ray']['s']:.1f} s, actors' start included); "
          f"{rep['ray']['img_s_with_startup']:.1f} img/s with the cluster start-up")
    print(f"  equal entries:    {rep['equal']}")
    print(f"load average (1 min) at start {rep['loadavg_1m_at_start']:.2f}, at end {l1:.2f}, on {os.cpu_count()} cores")
    bb.close()
    if args.json:
        args.json.write_text(json.dumps(rep, indent=1))
    return 0 if rep["equal"]["all"] or args.device != "cpu" else 1


if __name__ == "__main__":
    raise SystemExit(main())
