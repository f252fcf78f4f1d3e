"""The hand-written backward passes of clipcal/methods/_fused.py give autograd's numbers bit for bit (issue 13: a
lighter CFR step with unchanged results): ``unit_rows`` = ``F.normalize(x, dim=-1)``, ``anchor_scores`` =
``torch.matmul(rows, a)`` — values and gradients, several shapes and thread counts, zero rows included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipcal.methods._fused import anchor_scores, unit_rows


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


def _value_and_grads(f, *inputs, grad_out):
    xs = [x.clone().requires_grad_() for x in inputs]
    out = f(*xs)
    out.backward(grad_out)
    return out.detach(), [x.grad for x in xs]


@pytest.mark.parametrize("shape", [(2966, 768), (300, 16), (128, 768), (7, 3), (4, 5, 6)])
def test_unit_rows_is_f_normalize_bit_for_bit(threads, shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g) * 3
    x.view(-1, shape[-1])[1] = 0.0                              # a zero row: clamped norm, masked gradient
    gy = torch.randn(*shape, generator=g)
    ref, (gref,) = _value_and_grads(lambda t: F.normalize(t, dim=-1), x, grad_out=gy)
    got, (ggot,) = _value_and_grads(unit_rows, x, grad_out=gy)
    assert torch.equal(got, ref)
    assert torch.equal(ggot, gref)


@pytest.mark.parametrize("A,P,e", [(128, 16, 768), (4, 5, 6), (3, 1, 9)])
def test_anchor_scores_is_matmul_bit_for_bit(threads, A, P, e):
    g = torch.Generator().manual_seed(A + P + e)
    rows, a = torch.randn(A, P, e, generator=g), torch.randn(A, e, 1, generator=g)
    go = torch.randn(A, P, 1, generator=g)
    ref, gref = _value_and_grads(torch.matmul, rows, a, grad_out=go)
    got, ggot = _value_and_grads(anchor_scores, rows, a, grad_out=go)
    assert torch.equal(got, ref)
    assert all(torch.equal(u, v) for u, v in zip(ggot, gref))
