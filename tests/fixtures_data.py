"""Shared fixtures of the data area (auto-loaded by tests/conftest.py).

``demo_small`` — a small Waterbirds-lite benchmark (120 train / 40 val / 80 test, seed 0, 224 px JPEG),
built once per test session into the session's temporary ``CLIPCAL_CACHE`` (about 3 s on 2 cores).
Train: groups 0 and 3 (aligned) 57 images each, groups 1 and 2 (minority) 3 each; val 10 and test 20 per
group. Classes ``landbird, waterbird``; attributes ``land, water``.
"""

from __future__ import annotations

import pytest

DEMO_SMALL = {"n_train": 120, "n_val": 40, "n_test": 80, "seed": 0}


@pytest.fixture(scope="session")
def demo_small(_session_store):
    """A small demo :class:`~clipcal.data.base.Benchmark` (see module docstring); do not modify its table."""
    from clipcal.data import load_benchmark

    return load_benchmark("demo", **DEMO_SMALL)
