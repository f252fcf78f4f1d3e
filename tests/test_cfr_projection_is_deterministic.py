"""CFR's deduplicated projection is deterministic on every device (issue 15.2): the gather of the distinct rows
back to the step's index sets accumulates its gradient with a segment sum off the CPU, never with ``index_add`` /
``scatter_add`` / accumulating ``index_put`` (atomic adds on CUDA, whose order changes from run to run); on the
CPU with ``index_add_``, whose CPU kernel sums in index order — bit-identical to the segment sum (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from clipcal.methods import _train as T
from clipcal.methods.cfr import CFR, cfr_step_loss
from clipcal.methods import cfr_losses
from clipcal.methods.cfr_losses import project_unique, row_plan
from clipcal.synthetic import generate
from tests.fixtures_cfr import cfr_step_inputs

#: aten ops whose CUDA kernels add with atomics when indices repeat
ATOMIC_OPS = ("index_add", "scatter_add", "scatter_reduce", "index_put", "_index_put_impl", "embedding_dense_backward")


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.__name__)
        return func(*args, **(kwargs or {}))


def _grads(loss_fn, W, head):
    model = T.LastLayer(W, head, dropout=0.1)
    model.train()
    model.generator = torch.Generator().manual_seed(7)
    loss = loss_fn(model)
    loss.backward()
    return loss.detach(), model.weight.grad.clone()


def test_segment_sum_gather_equals_the_index_select_gather_it_replaced():
    h, y, W, head, sets = cfr_step_inputs()

    def old(model):  # the implementation before issue 15.2: index_select's backward is index_add_
        flat = torch.cat([s.reshape(-1) for s in sets])
        uniq, inv = torch.unique(flat, return_inverse=True)
        z = model.project(h.index_select(0, uniq))
        z = z.index_select(0, inv) * torch.randn(len(inv), z.shape[1], generator=torch.Generator().manual_seed(3))
        parts = torch.split(z, [s.numel() for s in sets])
        return sum(p.square().sum() * (i + 1) for i, p in enumerate(parts))

    def new_weighted(model):  # same weighting as `old`, so the gradients differ per occurrence
        flat = torch.cat([s.reshape(-1) for s in sets])
        (zall,) = project_unique(model, h, flat)
        zall = zall * torch.randn(len(flat), zall.shape[1], generator=torch.Generator().manual_seed(3))
        parts = torch.split(zall, [s.numel() for s in sets])
        return sum(q.square().sum() * (i + 1) for i, q in enumerate(parts))

    l1, gw1 = _grads(old, W, head)
    l2, gw2 = _grads(new_weighted, W, head)
    torch.testing.assert_close(l2, l1)
    torch.testing.assert_close(gw2, gw1, rtol=1e-6, atol=1e-7)


def _logged_step(sets=None, **switches):
    h, y, W, head, default = cfr_step_inputs()
    model = T.LastLayer(W, head, dropout=0.1)
    model.train()
    model.generator = torch.Generator().manual_seed(7)
    sets = default if sets is None else sets
    with _OpLog() as log:
        loss, _ = cfr_step_loss(model, h, y, *sets, plan=row_plan(*sets), **switches)
        loss.backward()
    return log.ops, model.weight.grad.clone(), model.head.grad.clone()


def test_a_training_step_off_the_cpu_uses_no_atomic_accumulation(monkeypatch):
    # the branch a CUDA device takes (index_add_ is not deterministic there), run on the CPU
    monkeypatch.setattr(cfr_losses, "index_add_is_deterministic", lambda device: False)
    ops, _, _ = _logged_step()
    used = sorted({op for op in ops if any(op.startswith(a) for a in ATOMIC_OPS)})
    assert used == [], f"ops that accumulate with atomics on CUDA: {used}"
    assert any(op.startswith("segment_reduce") for op in ops)  # the deterministic segment sum ran


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("supcon", [True, False])            # off: the batch's rows get no gradient at all
def test_the_cpu_index_add_gradient_is_bit_identical_to_the_segment_sum(monkeypatch, threads, supcon):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rng = np.random.default_rng(1)                         # a larger step: many repeats per distinct row
        sets = (torch.as_tensor(rng.integers(0, 40, 64)), torch.as_tensor(rng.integers(0, 40, 32)),
                torch.as_tensor(rng.integers(0, 40, (32, 9))), torch.as_tensor(rng.integers(0, 40, (32, 7))))
        ops_cpu, gw_cpu, gh_cpu = _logged_step(sets, supcon=supcon)
        monkeypatch.setattr(cfr_losses, "index_add_is_deterministic", lambda device: False)
        ops_seg, gw_seg, gh_seg = _logged_step(sets, supcon=supcon)
    finally:
        torch.set_num_threads(old)
    assert any(op.startswith("index_add") for op in ops_cpu) and not any(op.startswith("index_add") for op in ops_seg)
    assert torch.equal(gw_cpu, gw_seg) and torch.equal(gh_cpu, gh_seg)


def test_two_same_seed_cfr_runs_with_repeated_rows_are_bit_equal():
    data = generate(n_train=200, n_val=80, n_test=80, dim=16, seed=4).data
    kw = dict(erm_epochs=2, epochs=2, batch_size=64, calibration_errors="train", seed=3)
    r1, r2 = CFR(**kw).fit(data).result_, CFR(**kw).fit(data).result_
    assert r1.record["mean_unique_rows_per_step"] < r1.record["rows_per_step"]  # rows did repeat
    np.testing.assert_array_equal(r1.probs, r2.probs)
    np.testing.assert_array_equal(r1.embeddings_after, r2.embeddings_after)
    np.testing.assert_array_equal(r1.curves["value"].to_numpy(), r2.curves["value"].to_numpy())
