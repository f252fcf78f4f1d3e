"""Shared fixtures of the methods area (auto-loaded by tests/conftest.py).

``syn_small`` — a small synthetic spurious-feature dataset (``clipcal.synthetic.generate``: 400 train at 95 %
correlation, 200 val, 400 test, d = 64, seed 0), no text head. ``syn_text`` — the same with the ideal
zero-shot head (class directions). Both are session-scoped: do not modify them (use ``.subset`` / copies).
"""

from __future__ import annotations

import pytest

SYN_SMALL = {"n_train": 400, "n_val": 200, "n_test": 400, "seed": 0}


@pytest.fixture(scope="session")
def syn_small_ds():
    """The :class:`~clipcal.synthetic.SyntheticDataset` behind ``syn_small``."""
    from clipcal.synthetic import generate

    return generate(**SYN_SMALL)


@pytest.fixture(scope="session")
def syn_small(syn_small_ds):
    """FeatureData of ``syn_small_ds`` (no text tower)."""
    return syn_small_ds.data


@pytest.fixture(scope="session")
def syn_text():
    """Small synthetic FeatureData with the ideal zero-shot text head (``text_head="core"``)."""
    from clipcal.synthetic import generate

    return generate(text_head="core", **SYN_SMALL).data
