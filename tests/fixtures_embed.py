"""Shared fixtures of the embedding area (auto-loaded by tests/conftest.py).

* ``emb_tiny`` — the tiny random open_clip backbone (``tiny:clip``, CPU, fp32), loaded once per session.
* ``emb_lite0`` — the bundled EfficientNet-Lite0 at 160 px (CPU, fp32), loaded once per session.
* ``emb_make_benchmark(folder, n=…, bad=…)`` — a factory writing ``n`` small random-colour JPEG/PNG images
  (plus ``bad`` unreadable files: a truncated JPEG and a text file named ``.png``) into ``folder`` and
  returning a :class:`~clipcal.data.base.Benchmark` over them (2 classes × 2 attributes, splits cycling
  train/val/test). Deterministic for a given ``seed``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest


def make_image_benchmark(folder: str | Path, n: int = 24, bad: int = 0, seed: int = 0, size: int = 48):
    """Write images and return a Benchmark over them (see the module docstring)."""
    from PIL import Image

    from clipcal.data.base import Benchmark

    folder = Path(folder)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        y, a = i % 2, (i // 2) % 2
        base = np.array([200, 60, 60]) if y else np.array([60, 60, 200])
        arr = np.clip(base + rng.normal(0, 40, (size, size + 8 * (i % 3), 3)), 0, 255).astype(np.uint8)
        name = f"img/{i:04d}.{'png' if i % 5 == 0 else 'jpg'}"
        Image.fromarray(arr).save(folder / name)
        rows.append((f"s{i:04d}", name, ("train", "val", "test")[i % 3], y, a))
    for j in range(bad):
        if j % 2 == 0:  # truncated JPEG: a valid file cut in half
            full = folder / f"img/full{j}.jpg"
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
            data = full.read_bytes()
            full.unlink()
            name = f"img/bad{j:02d}.jpg"
            (folder / name).write_bytes(data[: len(data) // 2])
        else:
            name = f"img/bad{j:02d}.png"
            (folder / name).write_text("this is not an image\n")
        rows.append((f"bad{j:02d}", name, "train", j % 2, 0))
    table = pd.DataFrame(rows, columns=["sample_id", "path", "split", "y", "a"])
    return Benchmark(name="csv", root=folder, table=table, class_names=["blue", "red"], attr_names=["p", "q"],
                     params={"folder": str(folder), "seed": seed})


@pytest.fixture(scope="session")
def emb_tiny():
    """``tiny:clip`` on the CPU (do not close it)."""
    from clipcal.backbones import load_backbone

    return load_backbone("tiny:clip", device="cpu", precision="fp32")


@pytest.fixture(scope="session")
def emb_lite0():
    """``bundled:efficientnet-lite0`` at 160 px on the CPU (do not close it)."""
    from clipcal.backbones import load_backbone

    return load_backbone("bundled:efficientnet-lite0", device="cpu", precision="fp32")


@pytest.fixture
def emb_make_benchmark():
    """Factory ``(folder, n=24, bad=0, seed=0, size=48) -> Benchmark`` (see :func:`make_image_benchmark`)."""
    return make_image_benchmark
