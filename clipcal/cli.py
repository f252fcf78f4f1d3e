"""Command-line interface: ``python -m clipcal <command> …``.

Each command lives in ``clipcal/commands/<name>.py`` and provides ``register(subparsers)``, which adds its
parser and sets ``func(args) -> int``. Errors derived from :class:`clipcal.errors.ClipcalError` are printed
without a traceback and exit with status 2; Ctrl-C exits with 130 (shards written so far are kept).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from clipcal import __version__
from clipcal.errors import ClipcalError

COMMANDS = ("data", "embed", "calibrate", "report", "export")

DESCRIPTION = """\
clipcal: audit and reduce spurious reliance in CLIP representations.

Typical headless job (e.g. on a GPU server; open the results later in the dashboard):
  python -m clipcal data validate --benchmark demo
  python -m clipcal embed --benchmark demo --backbone bundled:efficientnet-lite0
  python -m clipcal calibrate --benchmark demo --backbone bundled:efficientnet-lite0 --methods erm,jtt,afr,dfr,cfr
  python -m clipcal report --benchmark demo --backbone bundled:efficientnet-lite0
  python -m clipcal export --key RUN --method cfr --out exports/cfr   (RUN: report --list)

Benchmarks: demo (built-in Waterbirds-lite), waterbirds, celeba, metashift, csv (your own images + CSV).
Backbones:  open_clip:ViT-B-32:openai, open_clip:hf-hub:<org>/<repo>, open_clip:<arch>:<checkpoint.pt>,
            open_clip:local-dir:<folder>, bundled:efficientnet-lite0 (offline, image-only).
The store lives in ./cache (set CLIPCAL_CACHE to move it).
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available command registered."""
    parser = argparse.ArgumentParser(
        prog="python -m clipcal", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"clipcal {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"clipcal.commands.{name}")
        except ModuleNotFoundError as err:  # a command still being written must not break the others
            if err.name != f"clipcal.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the process exit status."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except ClipcalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished embedding shards and stored runs are kept (the next run resumes from them); "
              "a calibration that had not finished is not stored", file=sys.stderr)
        return 130
