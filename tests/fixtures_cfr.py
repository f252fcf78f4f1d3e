"""CFR test helpers shared by tests/test_cfr.py and tests/test_cfr_projection_is_deterministic.py."""

from __future__ import annotations

import numpy as np
import torch


def cfr_step_inputs(seed: int = 0):
    """One small CFR step whose index sets repeat rows within and across sets (what the deduplicated projection
    and its gradient must handle): ``(h [40, 12], y [40], W [12, 6], head [2, 6], (batch [8], anchors [4],
    pos [4, 5], neg [4, 3]))``."""
    rng = np.random.default_rng(seed)
    d, e, n = 12, 6, 40
    h = torch.as_tensor(rng.standard_normal((n, d)), dtype=torch.float32)
    y = torch.as_tensor(rng.integers(0, 2, n))
    W = rng.standard_normal((d, e)).astype(np.float32)
    head = rng.standard_normal((2, e)).astype(np.float32)
    batch = torch.tensor([0, 3, 5, 5, 7, 9, 11, 12])
    anchors = torch.tensor([3, 4, 4, 20])
    pos = torch.as_tensor(rng.integers(0, n, (4, 5)))
    neg = torch.as_tensor(rng.integers(0, n, (4, 3)))
    return h, y, W, head, (batch, anchors, pos, neg)
