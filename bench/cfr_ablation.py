"""Which part of CFR's loss carries its gain: full CFR vs each loss term switched off, beside zero-shot, ERM and DFR.

CFR's stage-2 loss is ``w_ce·CE(calibration set) + w_contrastive·contrastive + w_supcon·SupCon(train batch)``
(cfr-method.md). Each term has a switch (``CFR(ce=…, contrastive=…, supcon=…)``, ``--set cfr.ce=false`` on the
CLI); this script fits, per data seed, the same CFR recipe with:

    full             all three terms (the default recipe)
    no-ce            contrastive + SupCon (cross-entropy on the calibration set off)
    no-contrastive   CE + SupCon
    no-supcon        CE + contrastive
    ce-only          cross-entropy on the calibration set alone

and reports test worst-group accuracy (mean ± sd over seeds), the epoch each run selected on validation and the
calibration-set size. Zero-shot (where a text head exists), ERM (CFR's own stage 1) and DFR (validation group
labels — the labelled reference point) are fitted on the same data and shown in the same table. Model selection
uses the validation split only (each method's own rule); test figures are never used to pick anything.

Usage::

    python bench/cfr_ablation.py --data synthetic --text-head leaning --seeds 0 1 2   # the README's setting
    python bench/cfr_ablation.py --data demo                                           # Lite0 features of the demo
    # smoke (seconds): tiny synthetic data, short training
    python bench/cfr_ablation.py --seeds 0 1 --n-train 200 --n-val 80 --n-test 80 --dim 16 --epochs 2 --erm-epochs 2

Prints one JSON line per run, a summary table, and one JSON line ``{"summary": [...]}`` last.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import parse_with_threads, seeded_data  # noqa: E402
from cfr_sweep import add_data_args, baselines, print_summary, split_metrics, summarize_rows  # noqa: E402

#: ablation name → CFR loss-term switches
VARIANTS = {
    "full": {"ce": True, "contrastive": True, "supcon": True},
    "no-ce": {"ce": False, "contrastive": True, "supcon": True},
    "no-contrastive": {"ce": True, "contrastive": False, "supcon": True},
    "no-supcon": {"ce": True, "contrastive": True, "supcon": False},
    "ce-only": {"ce": True, "contrastive": False, "supcon": False},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(ap)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--epochs", type=int, default=100, help="CFR stage-2 epochs (default 100, the recipe's)")
    ap.add_argument("--erm-epochs", type=int, default=None, help="stage-1 ERM epochs (default: the recipe's)")
    ap.add_argument("--lr", type=float, default=1e-4, help="CFR stage-2 lr (default 1e-4, the recipe's)")
    ap.add_argument("--calibration-errors", default="auto",
                    help="CFR's calibration-set rule (default auto, CFR's default: the paper's set when usable)")
    ap.add_argument("--selection", default="worst-class")
    args = parse_with_threads(ap, argv)
    from clipcal.methods.cfr import CFR

    rows = []
    for seed, data in seeded_data(args):
        base = baselines(data, seed)
        for name in args.variants:
            kw = dict(lr=args.lr, epochs=args.epochs, seed=seed, selection=args.selection,
                      calibration_errors=args.calibration_errors, **VARIANTS[name])
            if args.erm_epochs:
                kw["erm_epochs"] = args.erm_epochs
            t = time.perf_counter()
            m = CFR(**kw).fit(data)
            r = m.result_
            row = {"data": args.data, "seed": seed, "variant": name,
                   "loss": r.record["loss_terms"]["formula"],
                   "erm_epoch": r.record["erm"]["chosen_epoch"], "cfr_epoch": r.record["chosen_epoch"],
                   "cal_size": r.record["calibration_set"]["size"], "fallback": r.record.get("fallback"),
                   "zeroshot_test": base["zeroshot"], "dfr_test": base["dfr"],
                   "erm_test": split_metrics(data, m.stage1_.pred, "test"),
                   "cfr_test": split_metrics(data, r.pred, "test"),
                   "cfr_val": split_metrics(data, r.pred, "val"),
                   "seconds": round(time.perf_counter() - t, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = summarize_rows(rows, ["variant"])
    print_summary(summary, ["variant"])
    print(json.dumps({"summary": summary, "data": args.data, "text_head": args.text_head, "lr": args.lr,
                      "epochs": args.epochs}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
