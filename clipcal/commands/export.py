"""``python -m clipcal export`` — write a stored run's calibrated model to a folder usable without clipcal."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Export the calibrated model of one method of a stored calibration run (see `python -m clipcal report
--list` for run keys). For open_clip ViT backbones the folder holds open_clip_model.safetensors, the
backbone with its last layer visual.proj replaced by the calibrated one, loadable with plain
open_clip.create_model_and_transforms(ARCH, pretrained=FILE); for other backbones last_layer.safetensors
(W, applied to the backbone's pre-projection feature). Always: classifier.safetensors (class head,
bias, logit scale), classifier.json (class names, the formula, how to load) and README.md.
"""

EPILOG = """\
examples:
  python -m clipcal export --key 3f2a… --method cfr --out exports/cfr
  python -m clipcal export --key 3f2a… --method erm          # into <store>/exports/<key>-erm
"""


def register(subparsers) -> None:
    """Add the ``export`` command."""
    p = subparsers.add_parser("export", help="export a run's calibrated model (open_clip checkpoint or last layer)",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--key", required=True, metavar="RUN", help="store key of the calibration run")
    p.add_argument("--method", default="cfr", metavar="METHOD", help="method whose model is exported (default cfr)")
    p.add_argument("--out", metavar="DIR", help="folder to write (default <store>/exports/<key>-<method>)")
    p.add_argument("--zip", action="store_true", help="also write DIR.zip")
    p.set_defaults(func=run)


def run(args) -> int:
    """Export; print what was written. Errors (unknown key, method without a fitted model) exit with 2."""
    from clipcal.commands.report import load_run_cli
    from clipcal.export import export_run, zip_export
    from clipcal.store import Store

    store = Store()
    ex = export_run(load_run_cli(args.key, store), str(args.method).strip().lower(), args.out, store=store)
    print(f"exported {ex.summary()}:")
    for f in ex.files:
        print(f"  {f}")
    if args.zip:
        print(f"zip: {zip_export(ex)}")
    return 0
