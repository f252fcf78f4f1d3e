"""Wall time, CPU time and peak RSS of every calibration method at CelebA size (issue 14.4).

Data: random features the shape of CelebA (Blond_Hair × Male) — train / val / test 162,770 / 19,867 / 19,962
with CelebA's own group counts (train 71,629 / 66,874 / 22,880 / 1,387), pre-projection d = 768 → e = 512
through an exact projection (ViT-B/16's widths; ``--dim`` / ``--embed-dim`` change them), 2 classes and a
planted spurious structure (``bench/calibrate_speed.py``'s ``shaped_features``: class and attribute
directions, shared nuisance variation, a zero-shot head that leans on the attribute), seeded. ``--n-scale``
scales every group count (0.1 = a tenth of CelebA), so a method's growth can be read from two runs.

Each method runs in its own child process (one JSON line each) with its **default recipe**
(``clipcal.methods.make_method(name)``); ``--epochs N`` caps every epoch count of the recipe (ERM/JTT/AFR
``epochs``, JTT ``id_epochs``, CFR ``epochs`` and ``erm_epochs``) for quick checks only — the JSON says so, and
the per-epoch seconds of each stage (from the methods' own progress reports) give the extrapolation to the
default. Peak RSS is the child's ``VmHWM`` with the peak reset (``/proc/self/clear_refs``) after the data are
built, so it is what the fit itself holds on top of the data (``rss_data_mb``), not the generator's peak.

Usage::

    python bench/celeba_methods.py --n-scale 0.1                       # every method, default recipe
    python bench/celeba_methods.py --methods cfr --epochs 1            # CFR per-epoch cost, full size
    ../shared/tools/quiet .venv/bin/python bench/celeba_methods.py --methods erm,dfr,afr

Output per method: ``method, n_scale, n_train, n_val, n_test, dim, embed_dim, epochs_cap, wall_s, cpu_s,
rss_data_mb, peak_rss_mb, peak_fit_extra_mb, worst_group, overall, worst_class, chosen_epoch, stage_epochs``
(per stage: epochs run and mean seconds per epoch), ``load_before`` / ``load_after`` (1-minute load) and the
method's notes; ``status`` is ``ok`` or the error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import clipcal  # noqa: E402,F401 — sets OMP_WAIT_POLICY before torch is loaded

#: CelebA (target Blond_Hair y, attribute Male a): (y, a) → count per official split (Sagawa et al. 2020)
CELEBA_GROUPS = {
    "train": {(0, 0): 71629, (0, 1): 66874, (1, 0): 22880, (1, 1): 1387},
    "val": {(0, 0): 8535, (0, 1): 8276, (1, 0): 2874, (1, 1): 182},
    "test": {(0, 0): 9767, (0, 1): 7535, (1, 0): 2480, (1, 1): 180},
}
METHOD_ORDER = ("zeroshot", "erm", "jtt", "afr", "dfr", "cfr")
#: the epoch hyperparameters ``--epochs`` caps, per method
EPOCH_PARAMS = {"erm": ("epochs",), "jtt": ("epochs", "id_epochs"), "afr": ("epochs",),
                "cfr": ("epochs", "erm_epochs")}


def scaled_groups(scale: float) -> dict:
    """CelebA's group counts × ``scale`` (each ≥ 1)."""
    return {s: {g: max(1, int(round(n * scale))) for g, n in gs.items()} for s, gs in CELEBA_GROUPS.items()}


def load1() -> float:
    """The 1-minute load average."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux ≥ 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def build_data(scale: float, dim: int, embed_dim: int, seed: int):
    from calibrate_speed import shaped_features

    data = shaped_features(scaled_groups(scale), dim, embed_dim, seed=seed)
    data.class_names, data.attr_names = ["not blond", "blond"], ["female", "male"]
    data.benchmark_name, data.backbone_spec = "celeba-shaped", "random (CelebA-shaped)"
    return data


def run_child(args) -> dict:
    """Build the data, fit one method with its default recipe (epochs capped by ``--epochs``), measure."""
    import gc
    import resource

    from clipcal.errors import ClipcalError
    from clipcal.methods import make_method
    from clipcal.metrics import summarize, train_group_weights

    name = args.child
    data = build_data(args.n_scale, args.dim, args.embed_dim, args.seed)
    gc.collect()
    try:  # hand freed generator memory back so the data's RSS is what stays
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    hp = {}
    if args.epochs is not None:
        hp = {p: int(args.epochs) for p in EPOCH_PARAMS.get(name, ())}
    est = make_method(name, **hp)
    import clipcal.methods._train  # noqa: F401 — torch's own RSS counts as the baseline, not as the fit's
    out = {"method": name, "n_scale": args.n_scale, "n_train": int(data.mask("train").sum()),
           "n_val": int(data.mask("val").sum()), "n_test": int(data.mask("test").sum()), "dim": args.dim,
           "embed_dim": args.embed_dim, "epochs_cap": args.epochs, "rss_data_mb": round(_status_mb("VmRSS"), 1)}
    out["hparams_changed"] = hp
    ticks: list[tuple[float, str, float]] = []

    def progress(p):
        ticks.append((time.perf_counter(), p.stage, p.done))

    out["peak_reset"] = reset_peak()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    out["load_before"] = load1()
    try:
        res = est.fit(data, progress=progress).result_
        out["status"] = "ok"
    except ClipcalError as err:
        out["status"] = f"{type(err).__name__}: {err.message}"
        res = None
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = round(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime, 2)
    out["load_after"] = load1()
    peak = _status_mb("VmHWM") if out["peak_reset"] else r1.ru_maxrss / 1024
    out["peak_rss_mb"] = round(peak, 1)
    out["peak_fit_extra_mb"] = round(peak - out["rss_data_mb"], 1)
    out["stage_epochs"] = stage_epochs(t0, ticks)
    if res is not None:
        te = data.mask("test")
        s = summarize(data.y[te], res.pred[te], data.group[te], train_group_weights(data), data.n_classes)
        out.update({k: round(float(s[k]), 4) for k in ("worst_group", "overall", "worst_class")})
        rec = res.record
        out["chosen_epoch"] = rec.get("chosen_epoch")
        for k in ("error_set_size", "hard_negative_seconds", "steps_per_epoch", "mean_unique_rows_per_step",
                  "chosen_C", "chosen_gamma", "chosen_reg"):
            if k in rec:
                out[k] = rec[k]
        if isinstance(rec.get("calibration_set"), dict):
            cs = rec["calibration_set"]
            out["calibration_set_size"] = cs.get("size")
            # anchor–candidate pairs the hard-negative search compares (other class only) vs all pairs
            n_c = data.class_counts("train")
            by = [int((cs.get("by_class") or {}).get(c, 0)) for c in data.class_names]
            pairs = sum(a * (n_c.sum() - n) for a, n in zip(by, n_c))
            out["hard_negative_pairs_vs_all"] = round(pairs / max(sum(by) * int(n_c.sum()), 1), 3)
        out["notes"] = [str(n)[:160] for n in rec.get("notes", [])][:4]
    return out


def stage_epochs(t0: float, ticks: list) -> dict:
    """Per stage (``erm``, ``jtt``, ``cfr`` …): units reported and mean seconds per unit (epoch / grid point),
    from the progress callbacks' timestamps (stage 1 of CFR counts from the fit's start)."""
    out, last_t = {}, t0
    for t, stage, _ in ticks:
        s = out.setdefault(stage or "?", {"units": 0, "seconds": 0.0})
        s["units"] += 1
        s["seconds"] += t - last_t
        last_t = t
    return {k: {"units": v["units"], "s_per_unit": round(v["seconds"] / max(v["units"], 1), 3)}
            for k, v in out.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="wall, CPU and peak RSS of every method on CelebA-shaped features")
    ap.add_argument("--methods", default=",".join(METHOD_ORDER),
                    help=f"comma-separated, from {', '.join(METHOD_ORDER)}")
    ap.add_argument("--n-scale", type=float, default=1.0, help="fraction of CelebA's size (every group scaled)")
    ap.add_argument("--dim", type=int, default=768, help="pre-projection feature width d")
    ap.add_argument("--embed-dim", type=int, default=512, help="embedding width e (the projection's output)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="cap every epoch count of the recipe (quick checks only; default: the recipe's own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not 0 < args.n_scale <= 10:
        ap.error("--n-scale must be in (0, 10]")
    if args.child:
        print(json.dumps(run_child(args)), flush=True)
        return 0
    methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHOD_ORDER]
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {', '.join(METHOD_ORDER)}")
    rc = 0
    for m in methods:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", m, "--n-scale", str(args.n_scale),
               "--dim", str(args.dim), "--embed-dim", str(args.embed_dim), "--seed", str(args.seed)]
        if args.epochs is not None:
            cmd += ["--epochs", str(args.epochs)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        if proc.returncode != 0 or not line.startswith("{"):
            rc = 1
            line = json.dumps({"method": m, "n_scale": args.n_scale, "status": f"child failed (rc "
                               f"{proc.returncode}): {proc.stderr.strip()[-400:]}"})
        print(line, flush=True)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
