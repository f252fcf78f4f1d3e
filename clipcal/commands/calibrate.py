"""``python -m clipcal calibrate`` — run calibration methods on a benchmark's cached embeddings."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shlex
import sys
import time

from clipcal.backbones.devices import PRECISIONS
from clipcal.backbones.spec import DEFAULT_SPEC
from clipcal.commands._progress import CliProgress
from clipcal.commands.data import add_benchmark_args, benchmark_cli_args
from clipcal.commands.embed import _count

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
(1e-3, 20, true, [0.5,1,2], "text"), else as a string, and must lie in the hyperparameter's
domain (NaN and infinity never do). Hyperparameters of each method, with their domains:
  python -m clipcal calibrate --show-hparams
CFR's loss terms are switched by cfr.ce, cfr.contrastive and cfr.supcon (true/false; the run
records which were on), e.g. cross-entropy on the calibration set alone:
  --methods cfr --set cfr.contrastive=false --set cfr.supcon=false
"""

DEFAULT_METHODS = "zeroshot,erm,jtt,afr,dfr,cfr"


def register(subparsers) -> None:
    """Add the ``calibrate`` command."""
    p = subparsers.add_parser("calibrate", help="run calibration methods (zero-shot, ERM, JTT, AFR, DFR, CFR)",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_benchmark_args(p)
    p.add_argument("--backbone", "-m", metavar="SPEC", default=str(DEFAULT_SPEC),
                   help=f"backbone spec (default {DEFAULT_SPEC}; see `python -m clipcal embed -h`)")
    p.add_argument("--methods", default=None, metavar="A,B,…",
                   help=f"comma-separated methods (default {DEFAULT_METHODS}; those that do not apply to the "
                   "backbone or benchmark are listed as not applicable)")
    p.add_argument("--seed", type=int, default=0, help="seed of every method (default 0)")
    p.add_argument("--selection", choices=["worst-class", "worst-group"], default=None,
                   help="model selection on validation: worst-class (default, no group labels) or worst-group")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.NAME=VALUE", dest="sets",
                   help="set a hyperparameter, e.g. --set cfr.lr=1e-3 (repeatable)")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda … (embedding and methods)")
    p.add_argument("--precision", default="auto", choices=list(PRECISIONS),  # the embedding's own list (tf32 too)
                   help="embedding precision if the images still need embedding")
    p.add_argument("--batch-size", type=_count(1), default=None, metavar="N",
                   help="embedding batch size if embedding is needed (default: 16 on the CPU, 64 on a GPU)")
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
    from clipcal.methods.params import describe

    for name in METHODS:
        try:
            cls = get_method(name)
        except MethodError as err:
            print(f"{name}: {err.message}\n")
            continue
        flag = " [uses group labels]" if cls.uses_group_labels else ""
        print(f"{name} — {cls.label}{flag}: {cls.description}")
        for k, (default, help_) in cls.HPARAMS.items():
            domain = describe(cls.PARAM_CONSTRAINTS[k]) if k in cls.PARAM_CONSTRAINTS else "?"
            print(f"  {name}.{k} = {json.dumps(default)}  — {help_} [{domain}]")
        print()
    return 0


def parse_methods(text: str) -> list[str]:
    """``"erm, CFR,erm"`` → ``["erm", "cfr"]``; checked against :data:`clipcal.methods.METHODS` (no import).

    Raises:
        MethodError: an unknown name (the hint lists the valid ones and the closest match) or an empty list.
    """
    from clipcal.errors import MethodError
    from clipcal.methods import METHODS

    methods = list(dict.fromkeys(m.strip().lower() for m in str(text).split(",") if m.strip()))
    valid = ", ".join(METHODS)
    if not methods:
        raise MethodError("--methods names no method", hint=f"give a comma-separated list of: {valid}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        close = {m: difflib.get_close_matches(m, list(METHODS), n=1, cutoff=0.5) for m in unknown}
        guess = "; ".join(f"did you mean {c[0]} for {m}?" for m, c in close.items() if c)
        raise MethodError(f"unknown method{'s' if len(unknown) > 1 else ''} in --methods: {', '.join(unknown)}",
                          hint=(guess + " " if guess else "") + f"valid methods: {valid}")
    return methods


def check_hparams(methods: list[str], hparams: dict) -> None:
    """Check ``--set`` overrides before any work: each names a method in ``methods``, a hyperparameter it has,
    and a value of the default's type (number, whole number, true/false, list, text).

    Raises:
        MethodError: naming the ``--set`` item and what is expected.
    """
    from clipcal.errors import MethodError
    from clipcal.methods import get_method
    from clipcal.runs import resolve_hparams

    extra = sorted(set(hparams) - set(methods))
    if extra:
        raise MethodError(f"--set given for method(s) not in --methods: {extra}",
                          hint=f"add them to --methods (now {','.join(methods)}) or drop the --set")
    for m, values in hparams.items():
        cls = get_method(m)
        names = cls._param_names()
        for k, v in values.items():
            if k not in names:
                close = difflib.get_close_matches(k, names, n=1, cutoff=0.5)
                raise MethodError(f"--set {m}.{k}: {m} has no hyperparameter {k!r}",
                                  hint=(f"did you mean {m}.{close[0]}? " if close else "")
                                  + f"{m}'s hyperparameters: {', '.join(names)} (see --show-hparams)")
            default = cls.HPARAMS.get(k, (None, ""))[0]
            want = _expected_type(default, v)
            if want:
                raise MethodError(f"--set {m}.{k}={json.dumps(v)}: expected {want} (default {json.dumps(default)})",
                                  hint=f"e.g. --set {m}.{k}={json.dumps(default)}")
    try:  # values: allowed choices, counts ≥ 1, ranges — the check run_calibration itself makes
        resolve_hparams(methods, hparams, seed=0, selection=None)
    except MethodError as err:
        raise MethodError(f"--set: {err.message}", hint=err.hint) from None


def _expected_type(default, value) -> str | None:
    """What ``value`` should be, judged by ``default``'s type; ``None`` when it fits (or the default is None)."""
    if default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if isinstance(default, float):
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if isinstance(default, (list, tuple)):
        return None if isinstance(value, list) else "a JSON list such as [1, 2]"
    if isinstance(default, str):
        return None if isinstance(value, str) else "text"
    return None


def check_applicable(methods: list[str], explicit: bool, has_text: bool, has_attributes: bool | None,
                     selection: str | None, hparams: dict, backbone: str = "", benchmark: str = "") -> None:
    """Refuse, before embedding, methods the user named that cannot run here.

    Zero-shot needs a text tower; DFR (and any method with ``selection = worst-group``) needs attribute labels.
    With the default method list (``explicit`` False) such methods are kept and recorded as "not applicable"
    in the run; a named one, or ``--selection worst-group``, is an error. ``has_attributes=None`` (benchmark
    not loaded yet) checks the backbone only.

    Raises:
        MethodError: the hint says which of the methods apply.
    """
    from clipcal.errors import MethodError
    from clipcal.methods import METHODS
    from clipcal.methods.applicability import not_applicable_reason

    def reason(m: str) -> str | None:
        why = not_applicable_reason(m, has_text, has_attributes, hparams.get(m, {}).get("selection", selection))
        return why.sentence(backbone or "this backbone", benchmark or "this benchmark") if why else None

    if selection == "worst-group" and has_attributes is False:
        raise MethodError(f"--selection worst-group needs spurious-attribute labels, and {benchmark or 'the benchmark'}"
                          " has none", hint="drop --selection (worst-class needs no group labels), or give the "
                          "attribute column (--a-col for a csv benchmark)")
    if not explicit:
        return
    bad = {m: r for m in methods if (r := reason(m))}
    if bad:
        ok = [m for m in METHODS if not reason(m)]
        raise MethodError("cannot run: " + "; ".join(bad.values()),
                          hint=f"methods that apply here: {','.join(ok)} — e.g. --methods {','.join(ok)}"
                          + (" (zero-shot needs an open_clip backbone)" if not has_text else "")
                          + (" (for DFR give the attribute column, --a-col)" if has_attributes is False else ""))


def run(args: argparse.Namespace) -> int:
    """Embed if needed, run the methods, print the table. Returns 0."""
    if args.show_hparams:
        return _show_hparams()
    from clipcal.backbones import check_weights, parse_spec, resolve_device
    from clipcal.commands.data import benchmark_from_args
    from clipcal.commands.embed import embed_progress
    from clipcal.commands.report import HEADLINE, markdown_table, method_rows
    from clipcal.embed import embed_benchmark, load_embeddings
    from clipcal.errors import MethodError
    from clipcal.methods import get_method
    from clipcal.runs import check_method_dependencies, run_calibration
    from clipcal.store import Store

    # Everything the user typed is checked first: a typo must not cost a demo build or an embedding pass.
    explicit = args.methods is not None
    methods = parse_methods(args.methods if explicit else DEFAULT_METHODS)
    hparams = parse_sets(args.sets)
    spec = parse_spec(args.backbone)
    check_hparams(methods, hparams)
    check_method_dependencies(methods)  # a missing package is named before a demo build or an embedding pass
    check_applicable(methods, explicit, has_text=spec.has_text, has_attributes=None, selection=args.selection,
                     hparams=hparams, backbone=str(spec))
    resolve_device(args.device)
    for m in methods:  # --device reaches every method that has a device
        try:
            if "device" in get_method(m)._param_names():
                hparams.setdefault(m, {}).setdefault("device", args.device)
        except MethodError:
            pass
    store = Store()
    bench = benchmark_from_args(args)
    check_applicable(methods, explicit, has_text=spec.has_text, has_attributes=bench.has_attributes,
                     selection=args.selection, hparams=hparams, backbone=str(spec), benchmark=bench.name)
    print(f"benchmark: {bench.name} ({len(bench.table)} images)", file=sys.stderr)
    es = load_embeddings(bench, args.backbone, store=store,
                         precision=None if args.precision == "auto" else args.precision)
    if es is None:
        check_weights(spec)
        print(f"embedding {bench.name} with {args.backbone} first (cached for next time)…", file=sys.stderr)
        bar = embed_progress()
        try:
            es = embed_benchmark(bench, args.backbone, store=store, batch_size=args.batch_size, device=args.device,
                                 precision=args.precision, progress=bar)
        finally:
            bar.close()
    print(f"embeddings: {len(es)} rows · features {tuple(es.features.shape)} · projection {es.projection} · "
          f"text tower {'yes' if es.has_text else 'no'}", file=sys.stderr)
    bar = CliProgress("calibrating", unit="method", total=len(methods),
                      bar_format="{l_bar}{bar}| {n:.2f}/{total} [{elapsed}<{remaining}] {postfix}")
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
        for line in rec.get("outcome") or []:  # CFR: which calibration-set rule ran, which model it returned
            print(f"  {line}")
    print(f"\nrun {r.key} stored in {store.root / 'runs' / r.key} ({time.monotonic() - t0:.1f} s)")
    exe = os.path.relpath(sys.executable)  # the interpreter that ran this command (e.g. .venv/bin/python)
    exe = sys.executable if exe.startswith("..") else exe
    print(f"report: {shlex.quote(exe)} -m clipcal report {benchmark_cli_args(args)} "
          f"--backbone {shlex.quote(args.backbone)} --key {r.key} --out reports/{r.key}")
    return 0
