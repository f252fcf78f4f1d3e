"""Two hand-written backward passes of the last-layer training, each *bit-identical* to what autograd computes for
the composed torch operations it replaces, with fewer passes over the [rows, e] tensors (issue 13, "one CFR epoch":
everything that is not the two big matrix products).

* :func:`unit_rows` — ``torch.nn.functional.normalize(x, dim=-1)`` (the projection's normalisation, every row of
  every step). Autograd runs ``DivBackward0 → ExpandBackward0 → ClampMinBackward0 → LinalgVectorNormBackward0``
  and allocates a temporary per step of each; this is the same arithmetic (torch 2.x ``FunctionsManual.cpp``:
  ``div_tensor_other_backward``, ``sum_to``, clamp's mask, ``norm_backward`` for p = 2), reusing the forward's
  output ``x / c`` instead of recomputing it and accumulating in place.
* :func:`anchor_scores` — ``torch.matmul(rows, a)`` for rows [A, P, e] and anchors a [A, e, 1] (CFR's contrastive
  scores). Autograd's gradient for ``rows`` is a batched matrix product with an inner size of 1 — an outer product,
  one multiplication per element — done here as a broadcast multiply (the same single product, without the
  batched-GEMM call); the gradient for ``a`` is the same ``bmm`` as autograd's.

``tests/test_fused_backward_is_bit_identical.py`` pins the bit-equality against autograd (several shapes, thread
counts, zero rows); if a torch release changes autograd's formulas, it fails there.
"""

from __future__ import annotations

import torch


class _UnitRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        n = torch.linalg.vector_norm(x, 2, -1, True)
        c = n.clamp_min(eps)
        y = x / c
        ctx.eps = eps
        ctx.save_for_backward(x, y, n, c)
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, y, n, c = ctx.saved_tensors
        s = -(gy * (y / c)).sum(-1, keepdim=True)            # div's gradient w.r.t. the (expanded) denominator
        s = torch.where(n >= ctx.eps, s, torch.zeros_like(s))  # clamp_min
        g = s * (x / n).masked_fill_(n == 0, 0)                 # the 2-norm's gradient
        return (gy / c).add_(g), None                           # + div's gradient w.r.t. x


def unit_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows scaled to unit L2 norm: ``x / max(‖x‖₂, eps)`` along the last dimension — values and gradients
    bit-identical to ``torch.nn.functional.normalize(x, dim=-1, eps=eps)`` (its autograd), fewer temporaries.

    Args:
        x: [..., e] float tensor.
        eps: lower bound of the norm (zero rows stay zero).

    Returns:
        [..., e] tensor, same dtype and device.
    """
    return _UnitRows.apply(x, float(eps))


class _AnchorScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows, a)
        return torch.matmul(rows, a)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        rows, a = ctx.saved_tensors
        # autograd: g.bmm(a.transpose(1, 2)) — inner size 1, one product per element: the broadcast product
        grad_rows = g * a.transpose(1, 2) if ctx.needs_input_grad[0] else None
        grad_a = torch.matmul(rows.transpose(1, 2), g) if ctx.needs_input_grad[1] else None
        return grad_rows, grad_a


def anchor_scores(rows: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``torch.matmul(rows, a)``: the dot product of each anchor with each of its rows, for CFR's contrastive term.

    Args:
        rows: [A, P, e] float (positives or negatives of each anchor).
        a: [A, e, 1] float (the anchors as columns).

    Returns:
        [A, P, 1] scores; gradients bit-identical to autograd's ``bmm`` backward (see the module docstring).
    """
    return _AnchorScores.apply(rows, a)
