"""ERM vs CFR across learning rates, epochs, starts and seeds — with zero-shot and DFR on the same data.

Model selection inside every run uses the validation split only (each method's own rule); test figures are
printed for the report, never used to pick anything. ERM is CFR's own stage 1 (same seed, same recipe as
the ``erm`` method), read from ``CFR.stage1_``. Zero-shot (where the data has a text head) and DFR (uses
validation group labels — the labelled reference point) are fitted once per data seed and shown in every
comparison, so no table compares CFR with the weaker baselines only.

Usage::

    python bench/cfr_sweep.py --data synthetic --text-head leaning --seeds 0 1 2 --lrs 1e-4
    python bench/cfr_sweep.py --data synthetic --seeds 0 1 2 --lrs 1e-4 1e-3 1e-2 --epochs 100
    python bench/cfr_sweep.py --data demo --lrs 1e-4 1e-3 --epochs 100    # Lite0 features of the demo
    # smoke (seconds): tiny synthetic data, short training
    python bench/cfr_sweep.py --seeds 0 1 --n-train 200 --n-val 80 --n-test 80 --dim 16 --epochs 2 --erm-epochs 2

Prints one JSON line per run, then a summary table per configuration (test worst-group, mean ± sd over seeds,
of zero-shot, ERM, DFR and CFR; CFR − ERM; chosen epochs; calibration-set sizes), then one JSON line
``{"summary": [...]}`` last.
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

#: the columns of every comparison table, in order (DFR uses validation group labels; the others do not)
BASELINES = ("zeroshot", "erm", "dfr")


def split_metrics(data, pred, split: str) -> dict:
    """Worst-group, overall, mean-of-groups and worst-class accuracy of ``pred`` on one split
    (:func:`clipcal.metrics.summarize`)."""
    from clipcal.metrics import summarize

    m = data.mask(split)
    s = summarize(data.y[m], pred[m], data.group[m], n_classes=data.n_classes, n_attrs=data.n_attrs or None)
    return {k: s[k] for k in ("worst_group", "overall", "mean_group", "worst_class")}


def load(kind: str, seed: int, text_head=None, sizes: dict | None = None):
    """FeatureData of the synthetic generator (95 % correlation; ``sizes``: n_train, n_val, n_test, dim) or of
    the default built-in demo of data seed ``seed`` embedded with the bundled Lite0 backbone (as
    ``bench/demo_story.py`` builds it; the methods use the same seed)."""
    if kind == "synthetic":
        from clipcal.synthetic import generate
        return generate(correlation=0.95, seed=seed, text_head=text_head, **(sizes or {})).data
    if kind == "demo":
        from clipcal.data import load_benchmark
        from clipcal.embed import embed_benchmark
        from clipcal.methods.base import FeatureData
        bench = load_benchmark("demo", seed=seed)
        es = embed_benchmark(bench, "bundled:efficientnet-lite0")
        return FeatureData.from_store(bench, es)
    raise SystemExit(f"unknown data {kind!r}")


def baselines(data, seed: int) -> dict:
    """Test metrics of zero-shot (``None`` without a text head) and DFR (``None`` without group labels)."""
    from clipcal.errors import MethodError, NoTextTowerError
    from clipcal.methods import DFR, ZeroShot

    out = {}
    for name, make in (("zeroshot", lambda: ZeroShot()), ("dfr", lambda: DFR(seed=seed))):
        try:
            out[name] = split_metrics(data, make().fit(data).result_.pred, "test")
        except (MethodError, NoTextTowerError):  # no text tower / no group labels: not applicable, shown as "—"
            out[name] = None
    return out


def add_data_args(ap: argparse.ArgumentParser) -> None:
    """The data options shared by the CFR bench scripts."""
    ap.add_argument("--data", default="synthetic", choices=["synthetic", "demo"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--text-head", default=None,
                    help="synthetic only: None, 'leaning' (CLIP-like), 'core' or 'spurious'")
    ap.add_argument("--n-train", type=int, default=None, help="synthetic only (default 2000)")
    ap.add_argument("--n-val", type=int, default=None, help="synthetic only (default 600)")
    ap.add_argument("--n-test", type=int, default=None, help="synthetic only (default 2000)")
    ap.add_argument("--dim", type=int, default=None, help="synthetic only (default 64)")
    ap.add_argument("--threads", type=int, default=None)


def data_sizes(args) -> dict:
    return {k: v for k, v in (("n_train", args.n_train), ("n_val", args.n_val), ("n_test", args.n_test),
                              ("dim", args.dim)) if v is not None}


def mean_sd(values) -> str:
    """``"0.784 ± 0.030"`` over the finite values (sample sd; one value → no ±), ``"—"`` when none."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return "—"
    return f"{v.mean():.3f}" if len(v) == 1 else f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


def summarize_rows(rows: list[dict], config_keys: list[str], metric: str = "worst_group") -> list[dict]:
    """One summary per configuration: mean ± sd over seeds of every method's test ``metric``.

    Each row needs ``config_keys``, ``seed``, ``<method>_test`` dicts (``None`` where not applicable) for
    ``BASELINES`` and ``cfr``, and ``cfr_epoch`` / ``cal_size``.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in config_keys), []).append(r)
    out = []
    for key, rs in groups.items():
        s = dict(zip(config_keys, key))
        s["seeds"] = [r["seed"] for r in rs]
        for m in (*BASELINES, "cfr"):
            vals = [(r.get(f"{m}_test") or {}).get(metric) for r in rs]
            s[m] = mean_sd(vals)
            s[f"{m}_values"] = [None if v is None else round(v, 4) for v in vals]
        diffs = [r["cfr_test"][metric] - r["erm_test"][metric] for r in rs]
        s["cfr_minus_erm"] = mean_sd(diffs)
        s["cfr_epochs"] = [r["cfr_epoch"] for r in rs]
        s["cal_sizes"] = [r["cal_size"] for r in rs]
        out.append(s)
    return out


def print_summary(summary: list[dict], config_keys: list[str], metric: str = "worst_group") -> None:
    """A plain-text table of :func:`summarize_rows` (test ``metric``, mean ± sd over seeds)."""
    import pandas as pd

    cols = [*config_keys, "zeroshot", "erm", "dfr", "cfr", "cfr_minus_erm", "cfr_epochs", "cal_sizes"]
    df = pd.DataFrame([{c: s[c] for c in cols} for s in summary], columns=cols)
    df = df.rename(columns={"zeroshot": "zero-shot", "erm": "ERM", "dfr": "DFR (group labels)", "cfr": "CFR",
                            "cfr_minus_erm": "CFR − ERM", "cfr_epochs": "CFR epochs", "cal_sizes": "cal. set"})
    print(f"\ntest {metric.replace('_', '-')} accuracy, mean ± sd over seeds (selection on validation only):")
    print(df.to_string(index=False))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(ap)
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4])
    ap.add_argument("--epochs", type=int, nargs="+", default=[100])
    ap.add_argument("--inits", nargs="+", default=["pretrained"])
    ap.add_argument("--negatives", nargs="+", default=["hard"])
    ap.add_argument("--selection", default="worst-class")
    ap.add_argument("--train-head", type=int, nargs="+", default=[1])
    ap.add_argument("--erm-epochs", type=int, default=None)
    ap.add_argument("--erm-lrs", type=float, nargs="+", default=[None])
    ap.add_argument("--calibration-errors", nargs="+", default=["train"])
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
            data = load(args.data, seed, args.text_head, data_sizes(args))
            cache[key] = (data, baselines(data, seed))
        data, base = cache[key]
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
                        cfr_curves = r.curves[r.curves.stage == "cfr"]
                        val_curve = cfr_curves[cfr_curves.split == "val"]
                        train_loss = cfr_curves[(cfr_curves.split == "train") & (cfr_curves.metric == "loss")]
                        row = {
                            "data": args.data, "seed": seed, "init": init, "negatives": neg, "lr": lr, "epochs": ep,
                            "train_head": bool(th), "erm_lr": kw.get("erm_lr"), "calibration_errors": ce,
                            "erm_epoch": r.record["erm"]["chosen_epoch"],
                            "cfr_epoch": r.record["chosen_epoch"], "val_score": r.record.get("best_score"),
                            "cal_size": r.record["calibration_set"]["size"],
                            "fallback": r.record.get("fallback"),
                            "zeroshot_test": base["zeroshot"], "dfr_test": base["dfr"],
                            "erm_test": split_metrics(data, e.pred, "test"),
                            "cfr_test": split_metrics(data, r.pred, "test"),
                            "erm_val": split_metrics(data, e.pred, "val"),
                            "cfr_val": split_metrics(data, r.pred, "val"),
                            "val_worst_class_by_10": val_curve[val_curve.metric == "worst_class"]
                            .value.round(3).tolist()[::10],
                            # empty when CFR fell back to ERM (empty calibration set): no stage-2 epochs
                            "train_loss_first_last_epoch": [round(v, 4) for v in train_loss.value.iloc[[0, -1]]]
                            if len(train_loss) else [],
                            "seconds": round(time.perf_counter() - t, 1),
                        }
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    keys = ["init", "negatives", "lr", "epochs", "train_head", "erm_lr", "calibration_errors"]
    summary = summarize_rows(rows, keys)
    print_summary(summary, keys)
    print(json.dumps({"summary": summary}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
