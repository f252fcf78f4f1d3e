"""bf16 vs fp32 embeddings: do they agree, and does any method's result move? (issue 13 item 1)

For each backbone (default: the bundled Lite0 at 160 px and ``tiny:clip``) the demo benchmark is embedded on the
CPU twice, in fp32 and with bf16 autocast (``clipcal.embed.embed_benchmark``, the store's own entries: each
precision has its own key), and compared:

* **cosine** between the bf16 and fp32 embedding ``z`` of each image (and of the pre-projection feature ``h``):
  mean and minimum over images;
* **every applicable method** (``clipcal.methods.applicability.applicable_methods``) fitted on each set with the
  same seeds (``clipcal.runs.run_calibration``, default hyperparameters): test worst-group and overall accuracy,
  mean over seeds, and the bf16 − fp32 difference.

The rule (issue 13): bf16 may become the CPU default of ``--precision auto`` only if every backbone's mean
cosine ≥ 0.999 and every method's mean test worst-group is within ±1 point (0.01) of fp32's; otherwise fp32
stays the default. The verdict is printed last. Accuracy figures do not depend on machine load; bf16 on a CPU
without AVX-512 BF16 / AMX is emulated (slow, same numbers).

Usage::

    CLIPCAL_CACHE=/tmp/fid python bench/precision_fidelity.py                     # demo, both backbones, 3 seeds
    python bench/precision_fidelity.py --backbones tiny:clip --seeds 0 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import clipcal  # noqa: E402,F401 — sets OMP_WAIT_POLICY before torch is loaded

COSINE_MIN_MEAN = 0.999
WORST_GROUP_TOL = 0.01
PRECISIONS = ("fp32", "bf16")


def row_cosines(a, b):
    """Cosine of each row of ``a`` [N, k] with the same row of ``b`` (float64)."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.clip(den, 1e-30, None)


def test_scores(run) -> dict:
    """``{method: (worst_group, overall)}`` on the test split of a run."""
    m = run.metrics
    ok = m[(m["split"] == "test") & (m["status"] == "ok")]
    return {r.method: (float(r.worst_group), float(r.overall)) for r in ok.itertuples()}


def measure(bench, spec: str, seeds: list[int], store, batch_size: int) -> dict:
    """Embed ``bench`` with ``spec`` in fp32 and bf16, compare embeddings and every method's test scores."""
    import numpy as np

    from clipcal.embed import embed_benchmark
    from clipcal.methods.applicability import applicable_methods
    from clipcal.runs import run_calibration

    sets, secs = {}, {}
    for p in PRECISIONS:
        t = time.perf_counter()
        sets[p] = embed_benchmark(bench, spec, store=store, device="cpu", precision=p, batch_size=batch_size)
        secs[p] = round(time.perf_counter() - t, 1)
    a, b = sets["fp32"], sets["bf16"]
    if not np.array_equal(a.sample_ids, b.sample_ids):
        raise SystemExit(f"{spec}: the two precisions embedded different rows")
    cz, ch = row_cosines(a.embeddings, b.embeddings), row_cosines(a.features, b.features)
    out = {"backbone": a.backbone_spec, "n_images": len(a), "embed_s": secs,
           "embedding_cosine": {"mean": float(cz.mean()), "min": float(cz.min())},
           "feature_cosine": {"mean": float(ch.mean()), "min": float(ch.min())}, "methods": {}}
    methods = applicable_methods(bool(a.has_text), bench.has_attributes)
    scores = {p: [] for p in PRECISIONS}
    for seed in seeds:
        for p in PRECISIONS:
            run = run_calibration(bench, sets[p], methods=methods, hparams={}, store=store, seed=seed)
            scores[p].append(test_scores(run))
            print(json.dumps({"backbone": out["backbone"], "precision": p, "seed": seed,
                              "test": {k: [round(x, 4) for x in v] for k, v in scores[p][-1].items()}}), flush=True)
    for m in methods:
        if not all(m in s for p in PRECISIONS for s in scores[p]):
            out["methods"][m] = {"status": "did not run in every seed"}
            continue
        wg = {p: np.array([s[m][0] for s in scores[p]]) for p in PRECISIONS}
        ov = {p: np.array([s[m][1] for s in scores[p]]) for p in PRECISIONS}
        out["methods"][m] = {
            "worst_group": {p: round(float(wg[p].mean()), 4) for p in PRECISIONS},
            "overall": {p: round(float(ov[p].mean()), 4) for p in PRECISIONS},
            "worst_group_diff": round(float(wg["bf16"].mean() - wg["fp32"].mean()), 4),
            "worst_group_diff_per_seed": [round(float(x), 4) for x in wg["bf16"] - wg["fp32"]],
            "overall_diff": round(float(ov["bf16"].mean() - ov["fp32"].mean()), 4),
            "worst_group_sd_fp32": round(float(wg["fp32"].std(ddof=1)), 4) if len(seeds) > 1 else None,
        }
    return out


def verdict(results: list[dict]) -> dict:
    """The default rule applied to every backbone's figures."""
    reasons = []
    for r in results:
        if r["embedding_cosine"]["mean"] < COSINE_MIN_MEAN:
            reasons.append(f"{r['backbone']}: mean cosine {r['embedding_cosine']['mean']:.5f} < {COSINE_MIN_MEAN}")
        for m, v in r["methods"].items():
            if "worst_group_diff" not in v:
                reasons.append(f"{r['backbone']} {m}: {v['status']}")
            elif abs(v["worst_group_diff"]) > WORST_GROUP_TOL:
                reasons.append(f"{r['backbone']} {m}: worst-group moved {v['worst_group_diff']:+.4f}")
    return {"bf16_may_be_cpu_default": not reasons, "reasons": reasons}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["bundled:efficientnet-lite0", "tiny:clip"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--n", type=int, default=None,
                    help="a stratified subset of the demo of about this many images (split × group kept in "
                    "proportion, seed 0): bf16 emulated on a CPU without native bf16 runs ~6× slower than fp32")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    from clipcal.data import load_benchmark
    from clipcal.store import Store

    bench = load_benchmark("demo")
    if args.n and args.n < len(bench.table):
        import dataclasses

        t = bench.table
        frac = args.n / len(t)
        sub = t.groupby(["split", "group"], group_keys=False, observed=True).sample(frac=frac, random_state=0)
        bench = dataclasses.replace(bench, table=sub.sort_index().reset_index(drop=True),
                                    params={**bench.params, "fidelity_subset": args.n})
    store = Store()
    results = [measure(bench, spec, args.seeds, store, args.batch_size) for spec in args.backbones]
    print()
    for r in results:
        c, f = r["embedding_cosine"], r["feature_cosine"]
        print(f"{r['backbone']} ({r['n_images']} images; embedding s fp32 {r['embed_s']['fp32']}, bf16 "
              f"{r['embed_s']['bf16']}): cosine z mean {c['mean']:.6f} min {c['min']:.6f}; h mean {f['mean']:.6f} "
              f"min {f['min']:.6f}")
        print(f"  {'method':8} {'wg fp32':>8} {'wg bf16':>8} {'Δ wg':>7} {'all fp32':>8} {'all bf16':>8} {'Δ all':>7}")
        for m, v in r["methods"].items():
            if "worst_group" not in v:
                print(f"  {m:8} {v['status']}")
                continue
            print(f"  {m:8} {v['worst_group']['fp32']:8.4f} {v['worst_group']['bf16']:8.4f} "
                  f"{v['worst_group_diff']:+7.4f} {v['overall']['fp32']:8.4f} {v['overall']['bf16']:8.4f} "
                  f"{v['overall_diff']:+7.4f}")
    v = verdict(results)
    print("verdict:", "bf16 may be the CPU default" if v["bf16_may_be_cpu_default"] else
          "fp32 stays the CPU default: " + "; ".join(v["reasons"]))
    print(json.dumps({"seeds": args.seeds, "n_subset": args.n, "results": results, "verdict": v}))
    if args.json:
        args.json.write_text(json.dumps({"seeds": args.seeds, "results": results, "verdict": v}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
