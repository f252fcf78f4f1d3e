"""Loading a random-weight backbone leaves the process's random generators as they were (issue 15, "random-weight
model loading reseeds the process-wide CUDA RNG"): ``torch.manual_seed`` inside ``fork_rng(devices=[])`` reseeded
every CUDA generator and nothing restored them. The CUDA side is observed on the CPU by recording the calls."""

from __future__ import annotations

import numpy as np
import torch

from clipcal.backbones import load_backbone


def test_random_backbone_is_seeded_without_touching_global_generators(monkeypatch):
    torch.manual_seed(1234)
    cuda_seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: cuda_seeded.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: cuda_seeded.append(seed))
    before = torch.get_rng_state()
    a = load_backbone("tiny:clip", device="cpu", precision="fp32")
    assert torch.equal(torch.get_rng_state(), before), "the CPU generator was left reseeded"
    assert cuda_seeded == [], f"the CUDA generators were reseeded with {cuda_seeded}"
    b = load_backbone("tiny:clip", device="cpu", precision="fp32")  # still the same weights for the fixed seed
    np.testing.assert_array_equal(a.proj_weight(), b.proj_weight())
