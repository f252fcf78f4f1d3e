"""What the data-seeded bench scripts (cfr_ablation.py, calibrate_precision.py) share after their own arguments:
parsing with cfr_sweep's data arguments, torch's thread count, and one FeatureData per data seed."""

from __future__ import annotations

import argparse
from typing import Iterator

from cfr_sweep import data_sizes, load


def parse_with_threads(ap: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse ``argv`` (``ap`` already holds ``cfr_sweep.add_data_args``) and apply ``--threads`` to torch."""
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return args


def seeded_data(args: argparse.Namespace) -> Iterator[tuple[int, object]]:
    """``(seed, FeatureData)`` for each ``--seeds`` value: ``cfr_sweep.load`` of ``--data`` with that data seed,
    ``--text-head`` and the sizes given."""
    for seed in args.seeds:
        yield seed, load(args.data, seed, args.text_head, data_sizes(args))
