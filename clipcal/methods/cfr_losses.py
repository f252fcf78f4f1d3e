"""CFR's stage-2 loss (cfr-method.md, "Stage 2"): the anchor contrastive term, supervised contrastive loss
(Khosla et al. 2020), the projection of each distinct row once (:func:`project_unique`) and the loss of one step
(:func:`cfr_step_loss`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clipcal.errors import MethodError
from clipcal.methods import _train as T
from clipcal.methods._fused import anchor_scores


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
    sp = anchor_scores(positives, a).squeeze(-1) / tau         # [A, P] (= torch.matmul, lighter backward)
    sn = anchor_scores(negatives, a).squeeze(-1) / tau         # [A, N]
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
    # weights instead of a boolean index: a mask's size is data-dependent, so indexing with it (and asking
    # whether any anchor has a positive) waits for the device; anchors without a positive weigh 0
    has = (n_pos > 0).to(log_prob.dtype)
    per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(1) / n_pos.clamp_min(1)
    return (per_anchor * has).sum() / has.sum().clamp_min(1.0)


@dataclass(frozen=True)
class RowPlan:
    """Which distinct rows one step projects, and how its index sets map onto them (:func:`row_plan`).

    Attributes:
        uniq: [U] int64 distinct row indices, ascending.
        inv: [R] int64 position in ``uniq`` of each of the R = Σ|index set| requested rows (in request order).
        order: [R] int64 stable argsort of ``inv`` (the rows of each distinct row, in request order).
        counts: [U] int64 multiplicity of each distinct row (Σ counts = R).
        shapes: the index sets' shapes (to split and reshape the gathered rows).
    """

    uniq: torch.Tensor
    inv: torch.Tensor
    order: torch.Tensor
    counts: torch.Tensor
    shapes: tuple

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """(uniq, inv, order, counts), e.g. to pack several steps into one host→device copy."""
        return self.uniq, self.inv, self.order, self.counts


def row_plan(*index_sets: torch.Tensor) -> RowPlan:
    """The :class:`RowPlan` of some index sets, computed where they live (on the host in training: ``torch.unique``
    on a CUDA tensor waits for the device, so the CFR loop plans each epoch's steps on the CPU)."""
    flat = torch.cat([i.reshape(-1) for i in index_sets])
    uniq, inv, counts = torch.unique(flat, return_inverse=True, return_counts=True)
    order = torch.sort(inv, stable=True).indices
    return RowPlan(uniq, inv, order, counts, tuple(tuple(i.shape) for i in index_sets))


def index_add_is_deterministic(device: torch.device) -> bool:
    """Whether ``index_add_`` with repeated indices sums in a fixed order on ``device``: the CPU's kernel does
    (``torch.use_deterministic_algorithms`` lists ``index_add_`` / ``scatter_add_`` as non-deterministic only "when
    called on CUDA tensor"; on the CPU torch 2.x sorts the indices stably and sums each row in that order); CUDA's
    adds with atomics."""
    return device.type == "cpu"


class _GatherRows(torch.autograd.Function):
    """``z_u[inv]`` split into the index sets (one output per set, ``sizes`` rows each) whose backward sums the
    gradient rows of each distinct row in request order, without atomics.

    ``index_select``'s own backward is ``index_add_`` with repeated indices, which uses atomic adds on CUDA: the
    summation order — and so the last bits of W's gradient — changes from run to run (issue 15.2). Off the CPU
    the sum is a segment sum over the stable sort of ``inv`` (``torch.segment_reduce``: one reduction per output
    element, a fixed order). On the CPU ``index_add_`` (:func:`index_add_is_deterministic`) adds the same values
    in the same order — bit-identical to the segment sum at any thread count
    (tests/test_cfr_projection_is_deterministic.py) — without the sorted copy of the gradient and the concatenation
    of the sets' gradients (issue 13). A set whose output is unused gets no gradient."""

    @staticmethod
    def forward(ctx, z_u, inv, order, counts, sizes):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(inv, order, counts)
        ctx.sizes = sizes
        return tuple(z_u.index_select(0, part) for part in torch.split(inv, sizes))

    @staticmethod
    def backward(ctx, *grads):
        inv, order, counts = ctx.saved_tensors
        e = next(g.shape[-1] for g in grads if g is not None)
        like = next(g for g in grads if g is not None)
        if index_add_is_deterministic(like.device):
            g = like.new_zeros((len(counts), e))
            for part, gp in zip(torch.split(inv, ctx.sizes), grads):
                if gp is not None:
                    g.index_add_(0, part, gp.reshape(-1, e))
        else:
            full = torch.cat([gp.reshape(-1, e) if gp is not None else like.new_zeros((n, e))
                              for gp, n in zip(grads, ctx.sizes)])
            g = torch.segment_reduce(full.index_select(0, order), "sum", lengths=counts, axis=0)
        return g, None, None, None, None


def project_unique(model: T.LastLayer, h: torch.Tensor, *index_sets: torch.Tensor,
                   plan: RowPlan | None = None) -> list[torch.Tensor]:
    """Project each *distinct* row once: ``normalize(h[u] W)`` for the union u of all index sets, then gather.

    Mathematically identical (values and gradients) to projecting each index set separately; costs one matrix
    product of ``|u|`` rows instead of ``Σ |index set|``. Deterministic on every device: the gather back to the
    index sets accumulates its gradient with :class:`_GatherRows` (segment sum), never with atomics.

    Args:
        model: the :class:`~clipcal.methods._train.LastLayer`.
        h: [N, d] features (on the model's device).
        index_sets: int64 tensors of any shape (on the same device); may be empty when ``plan`` is given.
        plan: the :class:`RowPlan` of the index sets, its tensors on ``h``'s device (training precomputes it on
            the host; default: :func:`row_plan` here, which waits for the device on CUDA).

    Returns:
        one tensor per index set, shape ``index.shape + (e,)``, unit rows, no dropout.
    """
    p = plan if plan is not None else row_plan(*index_sets)
    # h has no gradient: its gather needs no backward
    sizes = [math.prod(s) for s in p.shapes]
    parts = _GatherRows.apply(model.project(h.index_select(0, p.uniq)), p.inv, p.order, p.counts, sizes)
    return [part.view(*s, part.shape[-1]) for part, s in zip(parts, p.shapes)]


def cfr_step_loss(model: T.LastLayer, h: torch.Tensor, y: torch.Tensor, batch: torch.Tensor,
                  anchors: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, *, tau: float = 1.0,
                  supcon_temperature: float = 0.07, w_ce: float = 1.5, w_contrastive: float = 1.5,
                  w_supcon: float = 1.0, ce: bool = True, contrastive: bool = True, supcon: bool = True,
                  dedup: bool = True, plan: RowPlan | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
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
        plan: the :class:`RowPlan` of ``(batch, anchors, pos, neg)`` on the device (training passes the one it
            computed on the host, so the step never waits for the device); default computed here.

    Returns:
        (total loss, detached scalars of the terms that are on: ``{"ce", "contrastive", "supcon"}``).

    Raises:
        MethodError: every term switched off (nothing to train).
    """
    if not (ce or contrastive or supcon):
        raise MethodError("every CFR loss term is switched off; nothing to train",
                          hint="switch on at least one of ce, contrastive, supcon")
    if dedup:
        zb, za, zp, zn = project_unique(model, h, batch, anchors, pos, neg, plan=plan)
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
