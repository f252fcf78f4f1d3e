"""Seeds reach the dropout generator on every device (issue 15.1). A generator made for ``cuda`` reports the
device ``cuda`` while tensors report ``cuda:0``; a plain ``!=`` called them different, so the seeded generator
was replaced by one seeded 0 at the first dropout call and every seed (and ERM and CFR stages alike) drew the
same masks on a GPU. The CPU never showed it: CPU tensors and generators both say ``cpu``. These tests reach that
branch on the CPU with a device that differs the same way (``cpu:0`` vs ``cpu``)."""

from __future__ import annotations

import numpy as np
import torch

from clipcal.methods._train import LastLayer, same_device


class _IndexedGenerator(torch.Generator):
    """A CPU generator that reports its device with an index, as a CUDA generator made for ``cuda:0`` is compared
    with tensors on ``cuda``."""

    @property
    def device(self):  # noqa: D401 - mirrors torch.Generator.device
        return torch.device("cpu", 0)


def test_same_device_treats_a_missing_index_as_the_current_device():
    assert same_device("cuda", "cuda:0") and same_device("cuda:0", "cuda")  # no CUDA here: current device 0
    assert same_device("mps", "mps:0") and same_device("cpu", "cpu")
    assert not same_device("cuda:1", "cuda:0") and not same_device("cpu", "cuda:0")
    assert not same_device("cuda", "mps")


def test_a_seeded_generator_on_an_indexed_device_is_kept_at_the_first_dropout_call():
    layer = LastLayer(np.eye(4, dtype=np.float32), np.eye(2, 4, dtype=np.float32), dropout=0.5).train()
    gen = _IndexedGenerator().manual_seed(1234)
    layer.generator = gen
    z = torch.ones(64, 4)
    out = layer.feature_dropout(z)
    assert layer.generator is gen  # the seeded generator stays (it was replaced by a seed-0 one)
    want = torch.rand(z.shape, generator=_IndexedGenerator().manual_seed(1234)) >= 0.5
    torch.testing.assert_close(out, z * want / 0.5)
