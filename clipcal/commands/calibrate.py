"""``python -m clipcal calibrate`` — run calibration methods on a benchmark's cached embeddings."""

from __future__ import annotations

import argparse
import json
import sys
import time

DESCRIPTION = """\
Fit calibration methods on a benchmark's cached embeddings (embedding the images first if they are
not in the store yet), print the method table and store the run (predictions, calibrated embeddings,
calibration sets, curves, metric tables as JSON and CSV, and a reproducibility manifest).

Methods: zeroshot (text tower needed), erm (last layer), jtt, afr, dfr (uses validation group
labels), cfr (Contrastive Feature Recalibration, CVPR 2024). All but DFR select models on validation
worst-class accuracy unless --selection worst-group (which uses group labels).
"""

EPILOG = """\
examples:
  python -m clipcal calibrate --benchmark demo --backbone bundled:efficientnet-lite0
  python -m clipcal calibrate --benchmark waterbirds --root data/waterbirds \\
      --backbone open_clip:ViT-L-14:openai --methods erm,cfr --set cfr.lr=1e-3 --set erm.epochs=50
  python -m clipcal report --benchmark demo --backbone bundled:efficientnet-lite0 --out reports/demo

--set METHOD.NAME=VALUE sets one hyperparameter; VALUE is read as JSON when it parses
(1e-3, 20, true, [0.5,1,2], "text"), else as a string. Hyperparameters of each method:
  python -m clipcal calibrate --show-hparams
"""

DEFAULT_METHODS = "zeroshot,erm,jtt,afr,dfr,cfr"


def register(subparsers) -> None:
    """Add the ``calibrate`` command."""
    from clipcal.commands.data import add_benchmark_args

    p = subparsers.add_parser("calibrate", help="run calibration methods (zero-shot, ERM, JTT, AFR, DFR, CFR)",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_benchmark_args(p)
    p.add_argument("--backbone", "-m", metavar="SPEC", default="bundled:efficientnet-lite0",
                   help="backbone spec (default bundled:efficientnet-lite0; see `python -m clipcal embed -h`)")
    p.add_argument("--methods", default=DEFAULT_METHODS, metavar="A,B,…",
                   help=f"comma-separated methods (default {DEFAULT_METHODS})")
    p.add_argument("--seed", type=int, default=0, help="seed of every method (default 0)")
    p.add_argument("--selection", choices=["worst-class", "worst-group"], default=None,
                   help="model selection on validation: worst-class (default, no group labels) or worst-group")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.NAME=VALUE", dest="sets",
                   help="set a hyperparameter, e.g. --set cfr.lr=1e-3 (repeatable)")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda … (embedding and methods)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="embedding precision if the images still need embedding")
    p.add_argument("--batch-size", type=int, default=64, help="embedding batch size if embedding is needed")
    p.add_argument("--split", default="test", choices=["val", "test", "all"], help="split shown (default test)")
    p.add_argument("--show-hparams", action="store_true", help="list every method's hyperparameters and exit")
    p.set_defaults(func=run)


def parse_sets(items: list[str]) -> dict:
    """``["cfr.lr=1e-3", "afr.gammas=[1,2]"]`` → ``{"cfr": {"lr": 0.001}, "afr": {"gammas": [1, 2]}}``.

    Raises:
        MethodError: an item without ``METHOD.NAME=VALUE`` form.
    """
    from clipcal.errors import MethodError

    out: dict = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise MethodError(f"--set {item!r}: expected METHOD.NAME=VALUE", hint="e.g. --set cfr.lr=1e-3")
        lhs, value = item.split("=", 1)
        method, name = lhs.split(".", 1)
        try:
            v = json.loads(value)
        except ValueError:
            v = value
        out.setdefault(method.strip().lower(), {})[name.strip()] = v
    return out


def _show_hparams() -> int:
    from clipcal.errors import MethodError
    from clipcal.methods import METHODS, get_method

    for name in METHODS:
        try:
            cls = get_method(name)
        except MethodError as err:
            print(f"{name}: {err.message}\n")
            continue
        flag = " [uses group labels]" if cls.uses_group_labels else ""
        print(f"{name} — {cls.label}{flag}: {cls.description}")
        for k, (default, help_) in cls.HPARAMS.items():
            print(f"  {name}.{k} = {json.dumps(default)}  — {help_}")
        print()
    return 0


class _Bar:
    """tqdm bar over methods, fed by clipcal.methods.base.Progress (stderr)."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc="calibrating", unit="method", file=sys.stderr, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n:.2f}/{total} [{elapsed}<{remaining}] {postfix}")
        self.last = 0.0

    def __call__(self, p) -> None:
        self.bar.n = float(p.done)
        self.bar.set_postfix_str(p.message[:70], refresh=False)
        now = time.monotonic()
        if now - self.last > 0.2:
            self.bar.refresh()
            self.last = now

    def close(self) -> None:
        self.bar.close()


def run(args: argparse.Namespace) -> int:
    """Embed if needed, run the methods, print the table. Returns 0."""
    if args.show_hparams:
        return _show_hparams()
    from clipcal.commands.data import benchmark_from_args
    from clipcal.commands.report import markdown_table, method_rows, HEADLINE
    from clipcal.embed import embed_benchmark, load_embeddings
    from clipcal.errors import MethodError
    from clipcal.methods import get_method
    from clipcal.runs import run_calibration
    from clipcal.store import Store

    methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    hparams = parse_sets(args.sets)
    extra = sorted(set(hparams) - set(methods))
    if extra:
        raise MethodError(f"--set given for method(s) not in --methods: {extra}",
                          hint=f"add them to --methods (now {','.join(methods)}) or drop the --set")
    for m in methods:  # --device reaches every method that has a device
        try:
            if "device" in get_method(m)._param_names():
                hparams.setdefault(m, {}).setdefault("device", args.device)
        except MethodError:
            pass
    store = Store()
    bench = benchmark_from_args(args)
    print(f"benchmark: {bench.name} ({len(bench.table)} images)", file=sys.stderr)
    es = load_embeddings(bench, args.backbone, store=store,
                         precision=None if args.precision == "auto" else args.precision)
    if es is None:
        print(f"embedding {bench.name} with {args.backbone} first (cached for next time)…", file=sys.stderr)
        from clipcal.commands.embed import _Bar as EmbedBar

        bar = EmbedBar()
        try:
            es = embed_benchmark(bench, args.backbone, store=store, batch_size=args.batch_size, device=args.device,
                                 precision=args.precision, progress=bar)
        finally:
            bar.close()
    print(f"embeddings: {len(es)} rows · features {tuple(es.features.shape)} · projection {es.projection} · "
          f"text tower {'yes' if es.has_text else 'no'}", file=sys.stderr)
    bar = _Bar(len(methods))
    t0 = time.monotonic()
    try:
        r = run_calibration(bench, es, methods, hparams=hparams, store=store, progress=bar, seed=args.seed,
                            selection=args.selection)
    finally:
        bar.close()
    print()
    print(markdown_table(method_rows(r.metrics, args.split), HEADLINE))
    print()
    for m, res in r.results.items():
        rec = res.record
        bits = [f"{k} {rec[k]}" for k in ("chosen_epoch", "error_set_size", "calibration_set_size", "chosen_gamma",
                                          "chosen_C", "fit_seconds") if rec.get(k) is not None]
        print(f"{m}: " + ", ".join(bits))
        for n in rec.get("notes", []):
            print(f"  note: {n}")
    print(f"\nrun {r.key} stored in {store.root / 'runs' / r.key} ({time.monotonic() - t0:.1f} s)")
    print(f"report: python -m clipcal report --benchmark {bench.name} --backbone {args.backbone} --out <folder>")
    return 0
