"""``python -m clipcal report`` — print / write the tables of a stored calibration run (markdown + CSV)."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

from clipcal.backbones.spec import DEFAULT_SPEC

DESCRIPTION = """\
Show the latest calibration run of a benchmark and backbone (or a run given by --key): the method
table (worst-group accuracy, the three averages, worst-class accuracy, whether group labels were used
and how the model was selected) and, with --groups, every method's per-group accuracy with 95 % Wilson
intervals. --out DIR writes report.md, metrics.csv, group_tables.csv, curves_<method>.csv and
manifest.json there.
"""

HEADLINE = [("label", "method"), ("split", "split"), ("worst_group", "worst-group"), ("overall", "overall"),
            ("mean_group", "mean group"), ("train_weighted", "train-weighted"), ("worst_class", "worst-class"),
            ("uses_group_labels", "group labels"), ("selection_rule", "selection")]


def register(subparsers) -> None:
    """Add the ``report`` command."""
    from clipcal.commands.data import add_benchmark_args

    p = subparsers.add_parser("report", help="print / write the tables of the latest calibration run",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_benchmark_args(p)
    p.add_argument("--backbone", "-m", metavar="SPEC", default=str(DEFAULT_SPEC),
                   help=f"backbone spec of the run (default {DEFAULT_SPEC})")
    p.add_argument("--key", metavar="KEY", help="a specific run (see --list) instead of the latest")
    p.add_argument("--list", action="store_true", help="list the stored runs of this benchmark and backbone")
    p.add_argument("--split", default="test", choices=["val", "test", "all"], help="split shown (default test)")
    p.add_argument("--groups", action="store_true", help="also print the per-group tables")
    p.add_argument("--out", metavar="DIR", help="write report.md and CSV files into this folder")
    p.set_defaults(func=run)


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def markdown_table(df, columns: list[tuple[str, str]]) -> str:
    """A GitHub-markdown table of ``df`` with ``(column, header)`` pairs; floats with 3 decimals, NaN → —."""
    cols = [(c, h) for c, h in columns if c in df.columns]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c]).replace("|", "/") for c, _ in cols) + " |")
    return "\n".join(lines)


def method_rows(metrics, split: str = "test"):
    """Metrics rows of one split (or all), with 'not applicable' rows kept; status folded into the label."""
    m = metrics.copy()
    m["split"] = m["split"].fillna("").astype(str)
    if split != "all":
        m = m[(m["split"] == split) | (m["status"] != "ok")]
    m = m.copy()
    na = m["status"] != "ok"
    m.loc[na, "label"] = m.loc[na, "label"].astype(str) + " — " + m.loc[na, "status"].astype(str)
    return m


DEFAULT_SELECTION = "each method's default (validation worst-class; DFR: worst-group on half of validation)"


def run_markdown(run, split: str = "test", groups: bool = False) -> str:
    """The whole report of a :class:`clipcal.runs.Run` as markdown."""
    from clipcal.metrics import METRIC_DEFINITIONS

    meta = run.manifest.get("meta", {})
    cfg = run.config
    out = [f"# Calibration run {run.key}", "",
           f"- benchmark: {cfg.get('benchmark_name', '?')} (fingerprint {cfg.get('benchmark')})",
           f"- backbone: {cfg.get('backbone')} · embeddings {cfg.get('embeddings')} · projection "
           f"{meta.get('embeddings', {}).get('projection', '?')}",
           f"- methods: {', '.join(cfg.get('methods', []))} · seed {cfg.get('seed')} · selection "
           f"{cfg.get('selection') or DEFAULT_SELECTION}",
           f"- created {run.created} · versions " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()
                                                          if v), "",
           f"## Methods ({split})", "", markdown_table(method_rows(run.metrics, split), HEADLINE), ""]
    out += ["Definitions:", ""] + [f"- **{k}** — {v}" for k, v in METRIC_DEFINITIONS.items()
                                   if k in dict(HEADLINE)] + [""]
    outcome = [f"- {m}: {line}" for m, r in run.results.items() for line in r.record.get("outcome") or []]
    if outcome:  # CFR: which calibration-set rule ran and which model the selection returned, and why
        out += ["## What CFR did", ""] + outcome + [""]
    notes = []
    for m, r in run.results.items():
        for n in r.record.get("notes", []):
            notes.append(f"- {n}" if n.startswith(f"{m}:") else f"- {m}: {n}")  # a note may name its stage
    if notes:
        out += ["## Notes", ""] + list(dict.fromkeys(notes)) + [""]
    if groups and len(run.group_tables):
        g = run.group_tables
        for m in run.results:
            for s in (["val", "test"] if split == "all" else [split]):
                t = g[(g["method"] == m) & (g["split"] == s)]
                out += [f"### {m} · {s}", "", markdown_table(t, [("class", "class"), ("attribute", "attribute"),
                                                                 ("n", "n"), ("accuracy", "accuracy"),
                                                                 ("ci_low", "95 % low"),
                                                                 ("ci_high", "95 % high")]), ""]
    return "\n".join(out)


def write_report(run, out_dir, split: str = "test") -> list[Path]:
    """Write report.md, metrics.csv, group_tables.csv, curves_<method>.csv, manifest.json into ``out_dir``."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.md", out / "metrics.csv", out / "group_tables.csv", out / "manifest.json"]
    files[0].write_text(run_markdown(run, split=split, groups=True) + "\n", encoding="utf-8")
    run.metrics.to_csv(files[1], index=False)
    run.group_tables.to_csv(files[2], index=False)
    files[3].write_text(json.dumps(run.manifest, indent=2, default=str), encoding="utf-8")
    for m, r in run.results.items():
        p = out / f"curves_{m}.csv"
        r.curves.to_csv(p, index=False)
        files.append(p)
    return files


#: What a CLI user runs to see the stored runs' keys (the library's hint names the Python function).
LIST_RUNS_HINT = ("list the stored runs and their keys with `python -m clipcal report --benchmark NAME [--root PATH "
                  "and the other benchmark options used] --backbone SPEC --list`, or make one with "
                  "`python -m clipcal calibrate`")


def load_run_cli(key: str, store):
    """:func:`clipcal.runs.load_run` for a command: an unknown ``key`` raises ``StoreError`` whose hint names
    the CLI's ``report --list`` instead of the Python ``list_runs()``.

    Raises:
        StoreError: as ``load_run``.
    """
    from clipcal.errors import StoreError
    from clipcal.runs import load_run

    try:
        return load_run(key, store)
    except StoreError as err:
        if err.message.startswith("no calibration run with key"):
            raise StoreError(err.message, hint=LIST_RUNS_HINT) from None
        raise


def run(args: argparse.Namespace) -> int:
    """Print (and optionally write) the report. Returns 0, or 1 when no run is stored."""
    from clipcal.backbones import parse_spec
    from clipcal.commands.data import benchmark_cli_args, benchmark_from_args
    from clipcal.runs import list_runs, load_run
    from clipcal.store import Store

    spec = str(parse_spec(args.backbone))  # a typo is an error, not "no runs stored"
    store = Store()
    if args.key and not args.list:  # the run names its benchmark: none to load (or build)
        r = load_run_cli(args.key, store)
    else:
        bench = benchmark_from_args(args)
        runs = list_runs(store, benchmark=bench, backbone=spec)
        if args.list:
            if not len(runs):
                print(f"no calibration runs stored for {bench.name} with {spec}")
                return 1
            print(runs.drop(columns=["test_worst_group"]).to_string(index=False))
            return 0
        if not len(runs):
            # every benchmark option given here (--root, --csv, column mapping…), so the command reproduces it
            print(f"no calibration runs stored for {bench.name} with {spec}; run:\n  python -m clipcal calibrate "
                  f"{benchmark_cli_args(args)} --backbone {shlex.quote(spec)}", file=sys.stderr)
            return 1
        r = load_run(runs["key"].iloc[0], store)
    print(run_markdown(r, split=args.split, groups=args.groups))
    if args.out:
        files = write_report(r, args.out, split=args.split)
        print(f"\nwrote {len(files)} files to {Path(args.out).resolve()}", file=sys.stderr)
    return 0
