"""Does OpenMP's wait policy matter here? The demo-sized ERM stage under ACTIVE vs PASSIVE waiting.

Torch's OpenMP threads spin-wait by default (``OMP_WAIT_POLICY`` unset ≈ active with a spin count). On a CPU
shared with other work — the dashboard trains, projects with UMAP and serves pages at once — spinning threads
steal the cores their peers need. ``import clipcal`` sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it.
This script times the same last-layer training (ERM, 20 epochs, Waterbirds-lite-shaped features 1,200 / 400 /
800, 1,280 → 512) in fresh subprocesses with each policy, alternating, and prints wall seconds per run, the
ratio of medians, torch's thread count and the load (``uptime``) — one run compares both on the same load.

Usage::

    python bench/omp_wait_policy.py --repeats 3 [--epochs 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import os, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
if {threads}:
    torch.set_num_threads({threads})
from calibrate_speed import load_data
from clipcal.methods import _train as T
data = load_data("lite-shaped")[0]
t = time.perf_counter()
T.train_last_layer(data, stage="erm", epochs={epochs}, seed=0, device="cpu")
print(time.perf_counter() - t, torch.get_num_threads())
"""


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:  # noqa: BLE001 — informational only
        return "uptime unavailable"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch's default)")
    args = ap.parse_args(argv)
    code = CHILD.format(root=str(ROOT), bench=str(ROOT / "bench"), epochs=args.epochs, threads=args.threads)
    out = {"load_before": _uptime(), "epochs": args.epochs, "runs": {"ACTIVE": [], "PASSIVE": []}}
    for _ in range(args.repeats):
        for policy in ("ACTIVE", "PASSIVE"):
            env = dict(os.environ, OMP_WAIT_POLICY=policy)
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
            secs, threads = res.stdout.split()
            out["runs"][policy].append(round(float(secs), 2))
            out["torch_threads"] = int(threads)
            print(policy, secs, flush=True)
    med = {k: statistics.median(v) for k, v in out["runs"].items()}
    out["median_s"] = med
    out["active_over_passive"] = round(med["ACTIVE"] / med["PASSIVE"], 2)
    out["load_after"] = _uptime()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
