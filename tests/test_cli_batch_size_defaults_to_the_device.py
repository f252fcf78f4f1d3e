"""The CLI's --batch-size defaults to the library's device rule (clipcal.embed.default_batch_size: 16 on the CPU,
64 on a GPU) instead of fixing 64 on top of it, in ``embed`` and in ``calibrate`` (which embeds first when needed);
``calibrate --precision`` offers the embedding's own precisions."""

from __future__ import annotations

from clipcal.backbones.devices import PRECISIONS
from clipcal.cli import build_parser


def test_batch_size_is_left_to_the_device_rule_unless_given():
    parser = build_parser()
    for cmd in ("embed", "calibrate"):
        assert parser.parse_args([cmd]).batch_size is None
        assert parser.parse_args([cmd, "--batch-size", "32"]).batch_size == 32


def test_calibrate_offers_every_embedding_precision():
    parser = build_parser()
    for p in PRECISIONS:
        assert parser.parse_args(["calibrate", "--precision", p]).precision == p
