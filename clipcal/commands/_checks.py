"""Checks of command-line arguments that run before any expensive work (demo build, model load, embedding).

Each raises a :class:`clipcal.errors.ClipcalError` subclass with a hint, which the CLI prints without a
traceback and exits with status 2.
"""

from __future__ import annotations


def check_backbone(spec: str, weights: bool = False):
    """Parse a backbone spec (syntax, open_clip architecture and tag); with ``weights``, also check that its
    weights are cached or can be downloaded (seconds, no download).

    Returns:
        :class:`clipcal.backbones.BackboneSpec`.

    Raises:
        BackboneError: bad spec (the hint lists close matches). WeightsUnavailableError: weights unobtainable.
    """
    from clipcal.backbones import check_weights, parse_spec

    parsed = parse_spec(spec)
    if weights:
        check_weights(parsed)
    return parsed


def check_device(device: str) -> str:
    """``auto`` / ``cpu`` / ``cuda[:i]`` / ``mps`` resolved; raises BackboneError for unknown or absent devices."""
    from clipcal.backbones import resolve_device

    return resolve_device(device)
