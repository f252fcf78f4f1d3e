"""Peak memory of embedding a set with one 20000 × 1 image vs without it (issue 16 item 2).

A 20000 × 1 PNG is 143 bytes and far below the decompression-bomb pixel limit, but a backbone's shortest-side
resize (160 px for the bundled EfficientNet-Lite0) turns it into a 3,200,000 × 160 image. clipcal now refuses
such images from their header (``clipcal.data.images.MAX_ASPECT``); this bench shows what that saves.

Cases, each in a fresh Python process with its own temporary store (``CLIPCAL_CACHE``):

* ``without``    — N ordinary photos-sized JPEGs (256 × 192);
* ``with``       — the same N plus one 20000 × 1 PNG (refused with a reason, listed as skipped);
* ``unguarded``  — as ``with``, but with the aspect-ratio limit switched off in that process
  (``MAX_ASPECT = inf``), i.e. the cost before the fix.

In each child the backbone is loaded first, then the kernel's peak-RSS counter is reset
(``/proc/self/clear_refs`` ← 5) and ``embed_benchmark`` runs with ``num_workers=0`` (so decoding happens in
the measured process; DataLoader workers would be separate processes). Reported: RSS after loading the model,
peak RSS (``VmHWM``) during embedding, and the peak's increase over that baseline; then the difference of each
case from ``without``. Linux only. Usage::

    .venv/bin/python bench/thin_image_memory.py                          # bundled backbone, N = 64, all cases
    .venv/bin/python bench/thin_image_memory.py --backbone tiny:clip --n 8 --cases without,with   # smoke run

The ``unguarded`` case needs about 2 GB of free memory with the bundled backbone. Measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

THIN = (20000, 1)
CASES = ("without", "with", "unguarded")


def _status_mb(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def make_sets(folder: Path, n: int) -> dict[str, Path]:
    """Two csv benchmarks: N JPEGs, and the same N plus one 20000 × 1 PNG. Returns {case: root}."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(0)
    roots = {}
    for case, thin in (("without", False), ("with", True)):
        root = folder / case
        root.mkdir(parents=True)
        rows = []
        for i in range(n):
            arr = rng.integers(0, 256, (192, 256, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / f"{i:04d}.jpg", quality=90)
            rows.append({"id": f"s{i:04d}", "filename": f"{i:04d}.jpg", "split": ("train", "val", "test")[i % 3],
                         "y": i % 2, "a": (i // 2) % 2})
        if thin:
            Image.fromarray(np.full((THIN[1], THIN[0], 3), 128, np.uint8)).save(root / "thin.png")
            rows.append({"id": "thin", "filename": "thin.png", "split": "train", "y": 0, "a": 0})
        pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
        roots[case] = root
    roots["unguarded"] = roots["with"]
    return roots


def child(root: str, backbone: str, unguarded: bool) -> dict:
    """Embed the benchmark at ``root`` in this process and report memory (JSON on stdout)."""
    import clipcal.data.images as images
    from clipcal.backbones import load_backbone
    from clipcal.data import load_benchmark
    from clipcal.embed import embed_benchmark

    if unguarded:
        images.MAX_ASPECT = float("inf")
    bench = load_benchmark("csv", root=root)
    bb = load_backbone(backbone, device="cpu", precision="fp32")
    base = _status_mb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    t0 = time.perf_counter()
    es = embed_benchmark(bench, bb, num_workers=0, batch_size=32)
    peak = _status_mb("VmHWM")
    return {"rows": len(bench.table), "embedded": len(es), "skipped": es.skipped.to_dict("records"),
            "rss_after_model_mb": round(base, 1), "peak_rss_mb": round(peak, 1),
            "peak_increase_mb": round(peak - base, 1), "peak_reset": reset,
            "embed_s": round(time.perf_counter() - t0, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="bundled:efficientnet-lite0")
    ap.add_argument("--n", type=int, default=64, help="ordinary images per set (default 64)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    ap.add_argument("--child", nargs=2, metavar=("ROOT", "UNGUARDED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.backbone, args.child[1] == "1")))
        return 0
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad:
        ap.error(f"unknown case(s) {bad}; choose from {CASES}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="thin-bench-") as tmp:
        roots = make_sets(Path(tmp) / "data", args.n)
        for case in cases:
            env = {**os.environ, "CLIPCAL_CACHE": str(Path(tmp) / f"store-{case}")}
            out = subprocess.run([sys.executable, __file__, "--backbone", args.backbone, "--child",
                                  str(roots[case]), "1" if case == "unguarded" else "0"],
                                 env=env, capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-3000:], file=sys.stderr)
                return out.returncode
            results[case] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results.get("without", {}).get("peak_increase_mb")
    print(f"backbone {args.backbone}, {args.n} images of 256×192 (+ one {THIN[0]}×{THIN[1]} PNG in 'with')")
    print(f"{'case':<10} {'rows':>5} {'embedded':>8} {'peak RSS MB':>12} {'peak − model MB':>16} {'vs without MB':>14}")
    for case, r in results.items():
        diff = "" if base is None else f"{r['peak_increase_mb'] - base:+.0f}"
        print(f"{case:<10} {r['rows']:>5} {r['embedded']:>8} {r['peak_rss_mb']:>12.0f} "
              f"{r['peak_increase_mb']:>16.0f} {diff:>14}")
        for s in r["skipped"]:
            print(f"           skipped {s['sample_id']}: {s['reason'][:150]}")
    print(json.dumps({"backbone": args.backbone, "n": args.n, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
