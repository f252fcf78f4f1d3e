"""CFR's stage-2 sampling (cfr-method.md, "Stage 2"): hard negatives mined once in the frozen feature space
(:func:`mine_hard_negatives`, chunked top-k with bounded memory) and per-class pools drawn per anchor
(:class:`PoolSampler`: positives, and negatives for the ``random-other-class`` ablation).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from clipcal.errors import MethodError


def _pad_with_replacement(chosen: torch.Tensor, pool: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Fill ``chosen`` [m] up to ``k`` entries with uniform draws (with replacement) from ``pool``."""
    extra = pool[torch.randint(len(pool), (k - len(chosen),), generator=gen)]
    return torch.cat([chosen, extra])


@torch.no_grad()
def mine_hard_negatives(features: np.ndarray | torch.Tensor, y: np.ndarray, anchors: np.ndarray,
                        candidates: np.ndarray, n_neg: int = 16, chunk: int = 2048, seed: int = 0,
                        device: str | torch.device = "cpu") -> tuple[np.ndarray, int]:
    """For each anchor, the ``n_neg`` candidates of *other* classes nearest by cosine similarity.

    Similarity is computed in the frozen feature space ``h`` (cfr-method.md: hard negatives, precomputed once),
    class by class: the anchors of class c are compared only with the candidates of the other classes, in blocks
    of ``chunk`` anchors × ``chunk`` candidates with a running top-k. Memory stays bounded whatever the number of
    samples — O(chunk · (chunk + d)) per block, plus the [A, n_neg] result and O(C) index arrays; never A × C —
    and no similarity of an anchor with a candidate of its own class is computed (those were all masked away:
    on CelebA-shaped data, where 85 % of the training split is one class, that was most of the work). Time is
    O(Σ_c A_c · C_{≠c} · d): quadratic in the number of samples when the calibration set grows with them.

    Args:
        features: [N, d] float features ``h`` of all rows.
        y: [N] int labels of all rows.
        anchors: [A] row indices of the anchors (calibration samples).
        candidates: [C] row indices the negatives are drawn from (the training split).
        n_neg: N, negatives per anchor.
        chunk: block size (anchors and candidates) of the blocked matrix product.
        seed: seeds the with-replacement padding (only used when an anchor has fewer than ``n_neg``
            other-class candidates).
        device: where to compute.

    Returns:
        (neg [A, n_neg] int64 row indices, most similar first; number of anchors that had fewer than
        ``n_neg`` other-class candidates and were padded with replacement).

    Raises:
        MethodError: an anchor has no other-class candidate at all.
    """
    dev = torch.device(device)
    feats = torch.as_tensor(features)
    y_t = torch.as_tensor(np.asarray(y), dtype=torch.int64)
    anc = torch.as_tensor(np.asarray(anchors, dtype=np.int64))
    cand = torch.as_tensor(np.asarray(candidates, dtype=np.int64))
    A = len(anc)
    out = torch.empty((A, n_neg), dtype=torch.int64)
    if A == 0:
        return out.numpy(), 0
    y_cand, y_anc = y_t[cand], y_t[anc]
    class_counts = torch.bincount(y_cand, minlength=int(y_t.max()) + 1)
    n_other = len(cand) - class_counts[y_anc]
    if (n_other == 0).any():
        a = int(anc[int(torch.nonzero(n_other == 0)[0])])
        raise MethodError(f"anchor row {a} (class {int(y_t[a])}) has no training sample of another class to use "
                          "as a negative", hint="CFR needs at least two classes in the training split")
    others: dict[int, torch.Tensor] = {}  # class → its other-class candidates (candidate order), built once
    for c in torch.unique(y_anc).tolist():
        others[c] = other = cand[y_cand != c]
        k = min(n_neg, len(other))
        pos = torch.nonzero(y_anc == c).flatten()
        for s in range(0, len(pos), chunk):
            p = pos[s:s + chunk]
            out[p, :k] = _nearest_block(feats, anc[p], other, k, chunk, dev).cpu()
    gen = torch.Generator().manual_seed(int(seed))
    n_short = 0
    for r in torch.nonzero(n_other < n_neg).flatten().tolist():  # padding draws in anchor order (seeded)
        m = int(n_other[r])
        n_short += 1
        out[r] = _pad_with_replacement(out[r, :m], others[int(y_anc[r])], n_neg, gen)
    return out.numpy(), n_short


def _nearest_block(feats: torch.Tensor, rows: torch.Tensor, pool: torch.Tensor, k: int, chunk: int,
                   dev: torch.device) -> torch.Tensor:
    """[len(rows), k] rows of ``pool`` nearest by cosine to each of ``rows`` (≤ chunk), most similar first;
    ``pool`` is scanned in blocks of ``chunk`` with a running top-k (each block's own top-k merged in)."""
    ha = F.normalize(feats[rows.to(feats.device)].to(dev, torch.float32), dim=-1)
    best_v = torch.full((len(rows), k), -math.inf, device=dev)
    best_i = torch.zeros((len(rows), k), dtype=torch.int64, device=dev)
    for c in range(0, len(pool), chunk):
        c_idx = pool[c:c + chunk]
        hc = F.normalize(feats[c_idx.to(feats.device)].to(dev, torch.float32), dim=-1)
        v, j = (ha @ hc.T).topk(min(k, len(c_idx)), dim=1)
        v, i = torch.cat([best_v, v], dim=1), torch.cat([best_i, c_idx.to(dev)[j]], dim=1)
        best_v, top = v.topk(k, dim=1)
        best_i = torch.gather(i, 1, top)
    return best_i


class PoolSampler:
    """Draws ``k`` rows per anchor from a per-class pool, without replacement where the pool is large enough.

    Args:
        pools: ``{class: 1-D int64 tensor of row indices}`` — the rows an anchor of that class may draw.
        k: draws per anchor.
        generator: CPU ``torch.Generator`` (determinism).

    Attributes:
        short_classes: classes whose pool held fewer than ``k`` rows (drawn with replacement).
    """

    def __init__(self, pools: dict[int, torch.Tensor], k: int, generator: torch.Generator):
        self.pools = pools
        self.k = int(k)
        self.gen = generator
        self.short_classes = sorted(c for c, p in pools.items() if 0 < len(p) < self.k)

    def sample(self, anchor_y: torch.Tensor) -> torch.Tensor:
        """[A] anchor labels (CPU int64) → [A, k] int64 row indices."""
        out = torch.empty((len(anchor_y), self.k), dtype=torch.int64)
        for c in torch.unique(anchor_y).tolist():
            rows = torch.nonzero(anchor_y == c).flatten()
            pool = self.pools[c]
            m = len(pool)
            if m >= self.k:
                pick = self._without_replacement(len(rows), m)
            else:
                pick = torch.randint(m, (len(rows), self.k), generator=self.gen)
            out[rows] = pool[pick]
        return out

    def _without_replacement(self, n: int, m: int) -> torch.Tensor:
        """[n, k] positions in ``range(m)``, distinct within each row, uniform (m ≥ k).

        Small pools: top-k of uniform keys (O(n·m), far faster than ``torch.multinomial`` on the CPU). Large
        pools: uniform draws with the rows that hold a repeat drawn again (rare when m ≫ k).
        """
        k = self.k
        if m <= 64 * k:
            return torch.rand(n, m, generator=self.gen).topk(k, dim=1).indices
        pick = torch.randint(m, (n, k), generator=self.gen)
        while True:
            srt = pick.sort(dim=1).values
            bad = torch.nonzero((srt[:, 1:] == srt[:, :-1]).any(dim=1)).flatten()
            if len(bad) == 0:
                return pick
            pick[bad] = torch.randint(m, (len(bad), k), generator=self.gen)
