"""ERM vs CFR across learning rates, epochs, starts and seeds — the lr/epochs investigation of issue 3.

Model selection inside every run uses the validation split only (the method's own rule); test figures are
printed for the report, never used to pick anything. ERM is CFR's own stage 1 (same seed, same recipe as
the ``erm`` method), read from ``CFR.stage1_``.

Usage::

    python bench/cfr_sweep.py --data synthetic --seeds 0 1 2 --lrs 1e-4 1e-3 1e-2 --epochs 100
    python bench/cfr_sweep.py --data demo --lrs 1e-4 1e-3 --epochs 100    # Lite0 features of the demo

Prints one JSON line per run (and a summary table at the end): val selection score, chosen epochs, test
worst-group / overall of ERM and CFR, calibration-set size, seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import clipcal  # noqa: E402,F401 — sets OMP_WAIT_POLICY before torch is loaded


def split_metrics(data, pred, split):
    m = data.mask(split)
    correct = pred[m] == data.y[m]
    g = data.group[m]
    accs = [correct[g == j].mean() for j in range(data.n_groups) if (g == j).any()]
    cls = [correct[data.y[m] == k].mean() for k in range(data.n_classes) if (data.y[m] == k).any()]
    return {"worst_group": float(min(accs)) if accs else float("nan"), "overall": float(correct.mean()),
            "worst_class": float(min(cls))}


def load(kind: str, seed: int, text_head=None):
    if kind == "synthetic":
        from clipcal.synthetic import generate
        return generate(correlation=0.95, seed=seed, text_head=text_head).data
    if kind == "demo":
        from clipcal.data import load_benchmark
        from clipcal.embed import embed_benchmark
        from clipcal.methods.base import FeatureData
        bench = load_benchmark("demo")
        es = embed_benchmark(bench, "bundled:efficientnet-lite0")
        return FeatureData.from_store(bench, es)
    raise SystemExit(f"unknown data {kind!r}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="synthetic", choices=["synthetic", "demo"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4])
    ap.add_argument("--epochs", type=int, nargs="+", default=[100])
    ap.add_argument("--inits", nargs="+", default=["pretrained"])
    ap.add_argument("--negatives", nargs="+", default=["hard"])
    ap.add_argument("--selection", default="worst-class")
    ap.add_argument("--train-head", type=int, nargs="+", default=[1])
    ap.add_argument("--text-head", default=None, help="synthetic only: None, 'leaning' (CLIP-like), 'core' or 'spurious'")
    ap.add_argument("--erm-epochs", type=int, default=None)
    ap.add_argument("--erm-lrs", type=float, nargs="+", default=[None])
    ap.add_argument("--calibration-errors", nargs="+", default=["train"], choices=["train", "cross-fit"])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    import torch
    from clipcal.methods.cfr import CFR
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    cache = {}
    for seed in args.seeds:
        key = (args.data, seed if args.data == "synthetic" else 0)
        if key not in cache:
            cache[key] = load(args.data, seed, args.text_head)
        data = cache[key]
        for init in args.inits:
            for neg in args.negatives:
                for lr in args.lrs:
                    for ep, th, elr, ce in [(e, t, r, c) for e in args.epochs for t in args.train_head
                                            for r in args.erm_lrs for c in args.calibration_errors]:
                        kw = dict(lr=lr, epochs=ep, init=init, negatives=neg, seed=seed, selection=args.selection,
                                  train_head=bool(th), calibration_errors=ce)
                        if elr is not None:
                            kw["erm_lr"] = elr
                        if args.erm_epochs:
                            kw["erm_epochs"] = args.erm_epochs
                        t = time.perf_counter()
                        m = CFR(**kw).fit(data)
                        r, e = m.result_, m.stage1_
                        val_curve = r.curves[(r.curves.stage == "cfr") & (r.curves.split == "val")]
                        row = {
                            "data": args.data, "seed": seed, "init": init, "negatives": neg, "lr": lr, "epochs": ep,
                            "train_head": bool(th), "erm_lr": kw.get("erm_lr"), "calibration_errors": ce,
                            "erm_epoch": r.record["erm"]["chosen_epoch"],
                            "cfr_epoch": r.record["chosen_epoch"], "val_score": r.record.get("best_score"),
                            "cal_size": r.record["calibration_set"]["size"],
                            "erm_test": split_metrics(data, e.pred, "test"),
                            "cfr_test": split_metrics(data, r.pred, "test"),
                            "erm_val": split_metrics(data, e.pred, "val"),
                            "cfr_val": split_metrics(data, r.pred, "val"),
                            "val_worst_class_by_10": val_curve[val_curve.metric == "worst_class"]
                            .value.round(3).tolist()[::10],
                            "train_loss_first_last_epoch": [round(v, 4) for v in r.curves[
                                (r.curves.stage == "cfr") & (r.curves.split == "train")
                                & (r.curves.metric == "loss")].value.iloc[[0, -1]]],
                            "seconds": round(time.perf_counter() - t, 1),
                        }
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    if len(args.seeds) > 1:
        import pandas as pd
        df = pd.DataFrame([{"init": r["init"], "negatives": r["negatives"], "lr": r["lr"], "epochs": r["epochs"],
                            "train_head": r["train_head"],
                            "erm_wg": r["erm_test"]["worst_group"], "cfr_wg": r["cfr_test"]["worst_group"],
                            "erm_acc": r["erm_test"]["overall"], "cfr_acc": r["cfr_test"]["overall"]}
                           for r in rows])
        print(df.groupby(["init", "negatives", "lr", "epochs", "train_head", "calibration_errors"]).agg(["mean", "std"]).round(3).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
