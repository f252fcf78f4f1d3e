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

    Similarity is computed in the frozen feature space ``h`` (cfr-method.md: hard negatives, precomputed once)
    in blocks of ``chunk`` anchors × ``chunk`` candidates with a running top-k, so memory stays bounded
    (O(chunk² + chunk·n_neg)) whatever the number of samples.

    Args:
        features: [N, d] float features ``h`` of all rows.
        y: [N] int labels of all rows.
        anchors: [A] row indices of the anchors (calibration samples).
        candidates: [C] row indices the negatives are drawn from (the training split).
        n_neg: N, negatives per anchor.
        chunk: block size of the chunked matrix product.
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
    y_c = y_t[cand].to(dev)
    class_counts = torch.bincount(y_t[cand], minlength=int(y_t.max()) + 1)
    n_other = len(cand) - class_counts[y_t[anc]]
    if (n_other == 0).any():
        a = int(anc[int(torch.nonzero(n_other == 0)[0])])
        raise MethodError(f"anchor row {a} (class {int(y_t[a])}) has no training sample of another class to use "
                          "as a negative", hint="CFR needs at least two classes in the training split")
    k_eff = min(n_neg, len(cand))
    for s in range(0, A, chunk):
        a_idx = anc[s:s + chunk]
        ha = F.normalize(feats[a_idx.to(feats.device)].to(dev, torch.float32), dim=-1)
        ya = y_t[a_idx].to(dev)
        best_v = torch.full((len(a_idx), k_eff), -math.inf, device=dev)
        best_i = torch.zeros((len(a_idx), k_eff), dtype=torch.int64, device=dev)
        for c in range(0, len(cand), chunk):
            c_idx = cand[c:c + chunk].to(dev)
            hc = F.normalize(feats[c_idx.to(feats.device)].to(dev, torch.float32), dim=-1)
            sim = ha @ hc.T
            sim.masked_fill_(ya[:, None] == y_c[c:c + chunk][None, :], -math.inf)
            v = torch.cat([best_v, sim], dim=1)
            i = torch.cat([best_i, c_idx[None, :].expand(len(a_idx), -1)], dim=1)
            top_v, top_j = v.topk(k_eff, dim=1)
            best_v, best_i = top_v, torch.gather(i, 1, top_j)
        out[s:s + chunk, :k_eff] = best_i.cpu()
        # rows whose k_eff-th value is -inf had too few other-class candidates; fixed below
    gen = torch.Generator().manual_seed(int(seed))
    n_short = 0
    for r in torch.nonzero(n_other < n_neg).flatten().tolist():
        m = int(n_other[r])
        n_short += 1
        pool = cand[y_t[cand] != y_t[anc[r]]]
        out[r] = _pad_with_replacement(out[r, :m], pool, n_neg, gen)
    return out.numpy(), n_short


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
