"""CFR's hard-negative search at scale (issue 14.4): it compares each anchor only with candidates of the other
classes (on CelebA-shaped data 85 % of the training split is one class, so masking same-class similarities
after computing them wasted most of the work), and no tensor it creates grows like anchors × candidates.

The work is counted with torch's own FLOP counter (``torch.utils.flop_counter.FlopCounterMode``: every matrix
product, whatever the code calls it), the sizes with a dispatch mode that sees every tensor an op returns.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from clipcal.methods.cfr_sampling import mine_hard_negatives


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _imbalanced(n=3000, d=8, seed=0):
    """90 % of rows class 0 (like CelebA's not-blond majority), the anchors drawn from every class."""
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((n, d)).astype(np.float32)
    y = (rng.random(n) < 0.1).astype(np.int64)
    y[:3] = 2                                          # a third, tiny class: K > 2 works the same way
    anchors = np.sort(rng.choice(n, 600, replace=False))
    return h, y, anchors, np.arange(n)


def test_similarities_are_computed_only_against_other_class_candidates():
    h, y, anchors, cands = _imbalanced()
    d = h.shape[1]
    with FlopCounterMode(display=False) as fc:
        mine_hard_negatives(h, y, anchors, cands, n_neg=5, chunk=64)
    n_other = np.array([(y[cands] != y[a]).sum() for a in anchors])
    # one multiply-add (2 FLOP) per feature per anchor–candidate pair of different classes, and no more;
    # the masked search computed all anchors × candidates: 2 · d · 600 · 3000, ≈ 5× this on these data
    assert fc.get_total_flops() == 2 * d * int(n_other.sum())
    assert fc.get_total_flops() < 0.3 * 2 * d * len(anchors) * len(cands)


def test_no_tensor_grows_like_anchors_times_candidates():
    h, y, anchors, cands = _imbalanced()
    chunk, n_neg, d = 64, 5, h.shape[1]
    feats = torch.as_tensor(h)                         # the caller's [N, d] features (CFR passes a tensor)
    probe = LargestTensor()
    with probe:
        mine_hard_negatives(feats, y, anchors, cands, n_neg=n_neg, chunk=chunk)
    bound = max(chunk * (chunk + n_neg), chunk * d, len(anchors) * n_neg, len(cands))
    assert 0 < probe.largest <= bound
    assert probe.largest < len(anchors) * len(cands) / 100
