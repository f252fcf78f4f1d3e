"""Fidelity of bf16 calibration (issue 13.2): CFR's (and its stage-1 ERM's) test worst-group / overall accuracy
with the training projections in bf16 (``precision="bf16"``: autocast, fp32 master weights and losses) vs fp32, same data
and method seeds.

The rule it decides (``clipcal.methods._train.resolve_calibration_precision``): bf16 becomes the default
(``precision="auto"``) where it is native only if the test worst-group agrees within ±1 point (mean of the seeds);
otherwise bf16 stays opt-in with the measured trade-off in the help. ERM, JTT and AFR have no ``precision``: they
train in fp32 (their cost is small beside CFR's stage 2).

Usage::

    python bench/calibrate_precision.py --data synthetic --text-head leaning --seeds 0 1 2
    python bench/calibrate_precision.py --data demo --seeds 0 1 2          # Lite0 features of the demo
    # smoke: tiny synthetic data, short training
    python bench/calibrate_precision.py --seeds 0 --n-train 200 --n-val 80 --n-test 80 --dim 16 --epochs 2

Prints one JSON line per fit, then a table (fp32 mean, bf16 mean, difference in points per method) and one JSON
line ``{"summary": [...], "within_1_point": bool}`` last. Note: where bf16 is emulated (a CPU without AVX-512 BF16
/ AMX) bf16 fits are many times slower; accuracy figures are still valid.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import parse_with_threads, seeded_data  # noqa: E402
from cfr_sweep import add_data_args, split_metrics  # noqa: E402

METHODS = ("cfr",)  # the methods with a ``precision`` (ERM / JTT / AFR train in fp32 whatever it is)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(ap)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--epochs", type=int, default=None, help="training epochs of every method (default: theirs)")
    args = parse_with_threads(ap, argv)
    from clipcal.methods import make_method

    rows = []
    for seed, data in seeded_data(args):
        for method in args.methods:
            for precision in ("fp32", "bf16"):
                kw = {"seed": seed, "precision": precision}
                if args.epochs:
                    kw.update({"epochs": args.epochs} if method != "cfr" else
                              {"epochs": args.epochs, "erm_epochs": args.epochs})
                t = time.perf_counter()
                m = make_method(method, **kw).fit(data)
                row = {"seed": seed, "method": method, "precision": precision,
                       "seconds": round(time.perf_counter() - t, 2), **split_metrics(data, m.result_.pred, "test")}
                rows.append(row)
                print(json.dumps(row), flush=True)
                if method == "cfr":  # its stage 1 (ERM, the same precision) is a result of its own
                    rows.append({**row, "method": "cfr-stage1-erm",
                                 **split_metrics(data, m.stage1_.pred, "test")})
    summary = []
    for method in [x for m in args.methods for x in ((m, "cfr-stage1-erm") if m == "cfr" else (m,))]:
        wg = {p: [r["worst_group"] for r in rows if r["method"] == method and r["precision"] == p]
              for p in ("fp32", "bf16")}
        ov = {p: [r["overall"] for r in rows if r["method"] == method and r["precision"] == p]
              for p in ("fp32", "bf16")}
        summary.append({"method": method, "fp32_worst_group": float(np.mean(wg["fp32"])),
                        "bf16_worst_group": float(np.mean(wg["bf16"])),
                        "diff_points": 100 * float(np.mean(wg["bf16"]) - np.mean(wg["fp32"])),
                        "fp32_overall": float(np.mean(ov["fp32"])), "bf16_overall": float(np.mean(ov["bf16"])),
                        "seeds": len(wg["fp32"])})
    print(f"{'method':8s} {'fp32 wg':>8s} {'bf16 wg':>8s} {'Δ pts':>7s} {'fp32 all':>9s} {'bf16 all':>9s}")
    for s in summary:
        print(f"{s['method']:8s} {s['fp32_worst_group']:8.3f} {s['bf16_worst_group']:8.3f} {s['diff_points']:+7.2f} "
              f"{s['fp32_overall']:9.3f} {s['bf16_overall']:9.3f}")
    ok = all(abs(s["diff_points"]) <= 1.0 for s in summary)
    print(json.dumps({"summary": summary, "within_1_point": ok}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
