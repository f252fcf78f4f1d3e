"""CFR's stage-2 loss (cfr-method.md, "Stage 2"): the anchor contrastive term, supervised contrastive loss
(Khosla et al. 2020), the projection of each distinct row once (:func:`project_unique`) and the loss of one step
(:func:`cfr_step_loss`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clipcal.errors import MethodError
from clipcal.methods import _train as T


def contrastive_loss(anchor: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                     tau: float = 1.0) -> torch.Tensor:
    """CFR's anchor-level contrastive term (cfr-method.md, "Stage 2").

    For anchor a with positives p_1..p_P and negatives n_1..n_N (all unit vectors):
    ``mean_{a,k} −log( e^{a·p_k/τ} / (e^{a·p_k/τ} + Σ_m e^{a·n_m/τ}) )``.

    Args:
        anchor: [A, e] float (unit rows).
        positives: [A, P, e] float (unit rows).
        negatives: [A, N, e] float (unit rows).
        tau: temperature τ (the reference uses 1).

    Returns:
        scalar tensor (differentiable w.r.t. all three inputs).
    """
    a = anchor.unsqueeze(-1)                                   # [A, e, 1]; batched mat-vec, no transposed copies
    sp = torch.matmul(positives, a).squeeze(-1) / tau          # [A, P]
    sn = torch.matmul(negatives, a).squeeze(-1) / tau          # [A, N]
    neg_lse = torch.logsumexp(sn, dim=1, keepdim=True)  # [A, 1]
    # −log(e^{sp} / (e^{sp} + Σ e^{sn})) = log(e^{sp} + e^{lse_n}) − sp
    return (torch.logaddexp(sp, neg_lse.expand_as(sp)) - sp).mean()


def supcon_loss(z: torch.Tensor, y: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss over one batch (Khosla et al., NeurIPS 2020, Eq. 2, "L_out").

    ``L = mean_{i ∈ I'} −1/|P(i)| Σ_{p ∈ P(i)} log( e^{z_i·z_p/t} / Σ_{a ≠ i} e^{z_i·z_a/t} )`` where P(i) are
    the other batch samples of i's class and I' the anchors with |P(i)| ≥ 1. Without the
    ``temperature / base_temperature`` factor of the authors' code (it equals 1 at t = 0.07).

    Args:
        z: [B, e] float (unit rows).
        y: [B] int64 labels.
        temperature: t.

    Returns:
        scalar tensor; 0 (still attached to ``z``) when no sample has a same-class partner in the batch.
    """
    B = z.shape[0]
    sim = (z @ z.T) / temperature
    self_mask = torch.eye(B, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, -math.inf)
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (y[:, None] == y[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not bool(has.any()):
        return z.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(1)[has] / n_pos[has]
    return per_anchor.mean()


def project_unique(model: T.LastLayer, h: torch.Tensor, *index_sets: torch.Tensor) -> list[torch.Tensor]:
    """Project each *distinct* row once: ``normalize(h[u] W)`` for the union u of all index sets, then gather.

    Mathematically identical (values and gradients) to projecting each index set separately; costs one matrix
    product of ``|u|`` rows instead of ``Σ |index set|``.

    Args:
        model: the :class:`~clipcal.methods._train.LastLayer`.
        h: [N, d] features (on the model's device).
        index_sets: int64 tensors of any shape (on the same device).

    Returns:
        one tensor per index set, shape ``index.shape + (e,)``, unit rows, no dropout.
    """
    flat = torch.cat([i.reshape(-1) for i in index_sets])
    uniq, inv = torch.unique(flat, return_inverse=True)
    # index_select's backward is one index_add (advanced indexing's index_put is slower on the CPU), and
    # torch.split's backward is one cat (slicing would zero-fill a full-size gradient per part)
    z = model.project(h.index_select(0, uniq)).index_select(0, inv)
    parts = torch.split(z, [i.numel() for i in index_sets])
    return [p.view(*i.shape, z.shape[-1]) for p, i in zip(parts, index_sets)]


def cfr_step_loss(model: T.LastLayer, h: torch.Tensor, y: torch.Tensor, batch: torch.Tensor,
                  anchors: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, *, tau: float = 1.0,
                  supcon_temperature: float = 0.07, w_ce: float = 1.5, w_contrastive: float = 1.5,
                  w_supcon: float = 1.0, ce: bool = True, contrastive: bool = True, supcon: bool = True,
                  dedup: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The CFR loss of one step (cfr-method.md, "Stage 2").

    ``w_ce·CE(anchors) + w_contrastive·contrastive(anchors, pos, neg; τ) + w_supcon·SupCon(batch; t)``, each
    term only where its switch (``ce``, ``contrastive``, ``supcon``) is on — switched-off terms are not computed.
    Feature dropout (model's, training mode) acts on the anchors' and batch's z; those are re-normalised
    for the contrastive terms. Positives / negatives get no dropout.

    Args:
        model: LastLayer (train mode for dropout).
        h: [N, d] features; y: [N] labels (same device).
        batch: [B] training rows; anchors: [A] calibration rows; pos: [A, P] rows; neg: [A, N] rows.
        dedup: project each distinct row once (default); False projects every set separately (reference
            behaviour, used by the tests to show both give the same loss and gradients).

    Returns:
        (total loss, detached scalars of the terms that are on: ``{"ce", "contrastive", "supcon"}``).

    Raises:
        MethodError: every term switched off (nothing to train).
    """
    if not (ce or contrastive or supcon):
        raise MethodError("every CFR loss term is switched off; nothing to train",
                          hint="switch on at least one of ce, contrastive, supcon")
    if dedup:
        zb, za, zp, zn = project_unique(model, h, batch, anchors, pos, neg)
    else:
        zb, za = model.project(h[batch]), model.project(h[anchors])
        zp = model.project(h[pos.reshape(-1)]).reshape(*pos.shape, -1)
        zn = model.project(h[neg.reshape(-1)]).reshape(*neg.shape, -1)
    parts, terms = [], {}
    if ce or contrastive:
        za_d = model.feature_dropout(za)
        if ce:
            ce_v = F.cross_entropy(model.logits_from_z(za_d), y[anchors])
            parts.append(w_ce * ce_v)
            terms["ce"] = ce_v.detach()
        if contrastive:
            con = contrastive_loss(F.normalize(za_d, dim=-1), zp, zn, tau=tau)
            parts.append(w_contrastive * con)
            terms["contrastive"] = con.detach()
    if supcon:
        zb_d = model.feature_dropout(zb)
        sc = supcon_loss(F.normalize(zb_d, dim=-1), y[batch], temperature=supcon_temperature)
        parts.append(w_supcon * sc)
        terms["supcon"] = sc.detach()
    return sum(parts[1:], parts[0]), terms
