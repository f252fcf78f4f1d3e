"""``python -m clipcal data list|validate|download`` and the shared benchmark options of every command.

Other commands reuse the benchmark options::

    from clipcal.commands.data import add_benchmark_args, benchmark_from_args

    def register(subparsers):
        p = subparsers.add_parser("embed", ...)
        add_benchmark_args(p)            # --benchmark, --root, --csv, column names, demo sizes, …
        p.set_defaults(func=run)

    def run(args):
        benchmark = benchmark_from_args(args)   # a clipcal.data.Benchmark (raises DataError)
"""

from __future__ import annotations

import argparse
import difflib

from clipcal.commands._progress import CliProgress
from clipcal.errors import DataError

BENCHMARK_HELP = """\
benchmarks:
  demo        built-in Waterbirds-lite (emoji birds on real land/water photos), generated offline
              into the cache on first use; no --root needed
  waterbirds  --root: folder with metadata.csv (group_DRO / WILDS layout)
  celeba      --root: folder with img_align_celeba/ + list_attr_celeba.csv + list_eval_partition.csv
  metashift   --root: folder with MetaShift-Cat-Dog-indoor-outdoor/ (SubpopBench layout)
  csv         your own data: --root folder with metadata.csv (columns id, filename, split, y, a;
              rename them with --path-col, --y-col, …); labels may be strings
"""


def add_benchmark_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """Add the options that choose and configure a benchmark to ``parser`` (one argument group).

    Adds ``--benchmark`` (default ``demo`` unless ``required``), ``--root`` and the per-benchmark options
    (``--csv --image-dir --id-col --path-col --split-col --y-col --a-col --class-names --attr-names``,
    ``--target --attribute`` for CelebA, ``--n-train --n-val --n-test`` for the demo, ``--data-seed``,
    ``--encoding --allow-outside-root`` for benchmarks read from metadata files). Read them back with
    :func:`benchmark_from_args`, which refuses options of another benchmark (:data:`OPTION_BENCHMARKS`).
    """
    from clipcal.data import BENCHMARKS

    g = parser.add_argument_group("benchmark", "which images to use (see `python -m clipcal data list`)")
    g.add_argument("--benchmark", "-b", metavar="NAME", type=choice(list(BENCHMARKS), "benchmark"),
                   required=required, default=None if required else "demo",
                   help="one of: " + ", ".join(BENCHMARKS) + ("" if required else " (default: demo)"))
    g.add_argument("--root", metavar="PATH", help="the benchmark's folder (all benchmarks except demo)")
    g.add_argument("--csv", metavar="FILE", help="csv: metadata file, relative to --root (default metadata.csv)")
    g.add_argument("--image-dir", metavar="DIR", help="csv: folder the filenames are relative to (default --root)")
    g.add_argument("--id-col", metavar="COL", help="csv: id column (default 'id' if present, else the filename)")
    g.add_argument("--path-col", metavar="COL", help="csv: image path column (default 'filename' or 'path')")
    g.add_argument("--split-col", metavar="COL", help="csv: split column, 0/1/2 or train/val/test (default 'split')")
    g.add_argument("--y-col", metavar="COL", help="csv: class label column (default 'y')")
    g.add_argument("--a-col", metavar="COL", help="csv: spurious attribute column (default 'a' if present)")
    g.add_argument("--class-names", metavar="A,B,…", help="csv: names of integer classes 0,1,… in order")
    g.add_argument("--attr-names", metavar="A,B,…", help="csv: names of integer attribute values 0,1,… in order")
    g.add_argument("--target", metavar="ATTR", help="celeba: attribute used as the class (default Blond_Hair)")
    g.add_argument("--attribute", metavar="ATTR", help="celeba: spurious attribute (default Male)")
    g.add_argument("--n-train", type=int, metavar="N", help="demo: training images (default 1200)")
    g.add_argument("--n-val", type=int, metavar="N", help="demo: validation images (default 400)")
    g.add_argument("--n-test", type=int, metavar="N", help="demo: test images (default 800)")
    from clipcal.data.demo import DEFAULT_DIFFICULTY, DIFFICULTY_PRESETS

    g.add_argument("--difficulty", metavar="PRESET",
                   help="demo: how strongly the bird shows — " + ", ".join(DIFFICULTY_PRESETS)
                   + f" (default {DEFAULT_DIFFICULTY}); smaller or fainter birds let the background take over")
    g.add_argument("--data-seed", type=int, metavar="S",
                   help="seed of the demo images / MetaShift re-split (default 42) / carved csv val split")
    g.add_argument("--encoding", metavar="NAME",
                   help="csv, waterbirds, celeba: text encoding of the metadata files (default: detected — "
                   "byte-order mark, UTF-16, UTF-8, else cp1252 with a note), e.g. cp1250, shift_jis")
    g.add_argument("--allow-outside-root", action="store_true", default=None,
                   help="csv, waterbirds, celeba: accept image paths that leave the root (absolute elsewhere, "
                   "'../'); refused by default, listed by `data validate`")
    # remembered so that a command can print the same choice back (benchmark_cli_args)
    parser.set_defaults(_benchmark_flags=[(a.dest, a.option_strings[0]) for a in g._group_actions])


def choice(names: list[str], what: str):
    """argparse type: one of ``names`` (case-insensitive); otherwise exit 2 naming them and the closest match."""
    def parse(text: str) -> str:
        key = text.strip().lower()
        if key in names:
            return key
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
        guess = f" — did you mean {close[0]}?" if close else ""
        raise argparse.ArgumentTypeError(f"unknown {what} {text!r}{guess} (choose from {', '.join(names)})")
    return parse


def _names(s: str | None) -> list[str] | None:
    return [x.strip() for x in s.split(",")] if s else None


_FILE_BENCHMARKS = ("csv", "waterbirds", "celeba")

#: CLI option (argparse dest) → (loader argument, the benchmarks it applies to). One table: what is passed
#: on, and what is refused for another benchmark.
OPTION_BENCHMARKS: dict[str, tuple[str, tuple[str, ...]]] = {
    **{k: (k, ("csv",)) for k in ("csv", "image_dir", "id_col", "path_col", "split_col", "y_col", "a_col",
                                  "class_names", "attr_names")},
    "target": ("target", ("celeba",)),
    "attribute": ("attribute", ("celeba",)),
    **{k: (k, ("demo",)) for k in ("n_train", "n_val", "n_test", "difficulty")},
    "data_seed": ("seed", ("demo", "metashift", "csv")),
    "encoding": ("encoding", _FILE_BENCHMARKS),
    "allow_outside_root": ("allow_outside_root", _FILE_BENCHMARKS),
}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def benchmark_options(args: argparse.Namespace) -> tuple[str, str | None, dict]:
    """``(name, root, options)`` for :func:`clipcal.data.load_benchmark` from parsed arguments.

    Raises:
        DataError: an option given that does not apply to the chosen benchmark (e.g. ``--csv`` with
            ``--benchmark celeba``), naming it, the benchmarks it belongs to and the chosen benchmark's options.
    """
    name = args.benchmark or "demo"
    get = lambda k: getattr(args, k, None)  # noqa: E731 - short accessor; commands may not define every option
    opts, wrong = {}, []
    for dest, (arg, names) in OPTION_BENCHMARKS.items():
        v = get(dest)
        if v is None:
            continue
        if name not in names:
            wrong.append(f"{_flag(dest)} (an option of {', '.join(names)})")
            continue
        opts[arg] = _names(v) if dest in ("class_names", "attr_names") else v
    if wrong:
        own = ["--root"] * (name != "demo") + [_flag(d) for d, (_, names) in OPTION_BENCHMARKS.items() if name in names]
        raise DataError(f"{'; '.join(wrong)}: not an option of --benchmark {name}",
                        hint=f"drop it, or choose the benchmark it belongs to; {name}'s options: "
                        + (", ".join(own) or "none"))
    return name, get("root"), opts


def benchmark_cli_args(args: argparse.Namespace) -> str:
    """The benchmark options given on this command line, shell-quoted, to paste into another command
    (e.g. ``--benchmark csv --root /data/birds --a-col place``); ``--benchmark`` always included."""
    import shlex

    out = []
    for dest, flag in getattr(args, "_benchmark_flags", [("benchmark", "--benchmark")]):
        v = getattr(args, dest, None)
        if dest == "benchmark":
            v = v or "demo"
        if v is True:  # a switch (--allow-outside-root)
            out.append(flag)
        elif v is not None and v is not False:
            out += [flag, shlex.quote(str(v))]
    return " ".join(out)


def benchmark_from_args(args: argparse.Namespace, progress=None):
    """Load the benchmark chosen by :func:`add_benchmark_args` options.

    Returns:
        :class:`clipcal.data.Benchmark`.

    Raises:
        DataError: as :func:`clipcal.data.load_benchmark`.
    """
    from clipcal.data import load_benchmark

    name, root, opts = benchmark_options(args)
    if name == "demo":  # built on first use (minutes): show it
        opts["progress"] = progress if progress is not None else CliProgress("building demo", unit="img")
    return load_benchmark(name, root=root, **opts)


def _cmd_list(args: argparse.Namespace) -> int:
    from clipcal.data import BENCHMARKS, SOURCES, demo_assets_status

    print("Benchmarks:")
    for name, (_, desc, needs_root) in BENCHMARKS.items():
        extra = []
        if needs_root:
            extra.append("needs --root")
        if name in SOURCES:
            extra.append("download: " + ("yes" if SOURCES[name].urls else "manual only"))
        print(f"  {name:<11} {desc}" + (f"  [{'; '.join(extra)}]" if extra else ""))
    st = demo_assets_status()
    print()
    if st["ok"]:
        print("Demo assets: all present (" + ", ".join(st["present"]) + ").")
    else:
        print("Demo assets MISSING: " + ", ".join(st["missing_packages"]))
        print("  install with: " + st["install_command"])
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from clipcal.data import validate

    bench = benchmark_from_args(args)
    progress = CliProgress("checking images", unit="img")
    try:
        report = validate(bench, check_images=not args.no_check_images, progress=progress,
                          full_decode=args.full_decode)
    finally:
        progress.close()
    print(report.to_text(max_rows=args.max_rows))
    return 0 if report.ok else 1


def _cmd_download(args: argparse.Namespace) -> int:
    from clipcal.data import download

    if not args.root:
        raise DataError("data download needs --root PATH (the folder to put the dataset in)")
    progress = CliProgress(f"downloading {args.benchmark}", unit="B", unit_scale=True)
    try:
        folder = download(args.benchmark, args.root, progress=progress, urls=args.url or None,
                          keep_archive=args.keep_archive)
    finally:
        progress.close()
    print(f"{args.benchmark} is ready in {folder}")
    print(f"next: python -m clipcal data validate --benchmark {args.benchmark} --root {args.root}")
    return 0


def register(subparsers) -> None:
    """Add ``data`` with its sub-commands ``list``, ``validate``, ``download`` to the CLI."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "data", help="list, validate and download benchmarks",
        description="Benchmarks: list what is available, check a benchmark before embedding it (group "
        "counts, missing or unreadable images), or download one.\n\n" + BENCHMARK_HELP,
        formatter_class=fmt)
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])

    pl = sub.add_parser("list", help="list benchmarks and whether the demo's packages are installed",
                        description="List the benchmarks clipcal can load, and whether the Debian packages "
                        "the built-in demo is made from are installed.")
    pl.set_defaults(func=_cmd_list)

    pv = sub.add_parser(
        "validate", help="check a benchmark: group counts per split, missing/unreadable images",
        formatter_class=fmt,
        description="Load a benchmark and check it before any GPU work: images per (class, attribute) "
        "group and split, missing and unreadable image files (listed), duplicate ids, empty or tiny groups.\n"
        "Exit status 0 when OK, 1 when there are problems, 2 when the benchmark cannot be loaded.\n\n"
        "examples:\n"
        "  python -m clipcal data validate --benchmark demo\n"
        "  python -m clipcal data validate --benchmark waterbirds --root ~/data/waterbird_complete95_forest2water2\n"
        "  python -m clipcal data validate --benchmark csv --root ~/photos --csv labels.csv \\\n"
        "      --path-col file --y-col label --a-col background\n\n" + BENCHMARK_HELP)
    add_benchmark_args(pv)
    pv.add_argument("--no-check-images", action="store_true", help="only check that files exist (faster)")
    pv.add_argument("--full-decode", action="store_true", help="decode every image completely (slow, thorough)")
    pv.add_argument("--max-rows", type=int, default=20, help="list at most this many problem files (default 20)")
    pv.set_defaults(func=_cmd_validate)

    pd_ = sub.add_parser(
        "download", help="download waterbirds or metashift (resumable, verified); explains celeba",
        formatter_class=fmt,
        description="Download a benchmark into --root: resumable (rerun to continue), verified, extracted "
        "atomically. If the download fails, the message says exactly where to put the files by hand.\n\n"
        "example:\n  python -m clipcal data download --benchmark waterbirds --root ~/data")
    pd_.add_argument("--benchmark", "-b", required=True, choices=["waterbirds", "metashift", "celeba"],
                     metavar="NAME", help="waterbirds, metashift or celeba")
    pd_.add_argument("--root", metavar="PATH", required=True, help="folder to put the dataset in")
    pd_.add_argument("--url", action="append", metavar="URL", help="use this mirror instead (repeatable)")
    pd_.add_argument("--keep-archive", action="store_true", help="keep the archive after extracting it")
    pd_.set_defaults(func=_cmd_download)
