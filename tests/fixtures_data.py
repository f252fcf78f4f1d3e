"""Shared fixtures of the data area (auto-loaded by tests/conftest.py).

``demo_small`` — a small Waterbirds-lite benchmark (120 train / 40 val / 80 test, seed 0, 224 px JPEG),
built once per test session into the session's temporary ``CLIPCAL_CACHE`` (about 3 s on 2 cores).
Train: groups 0 and 3 (aligned) 57 images each, groups 1 and 2 (minority) 3 each; val 10 and test 20 per
group. Classes ``landbird, waterbird``; attributes ``land, water``.

The ``make_*`` helpers write tiny fake benchmarks in each source layout (a few 16×16 JPEGs each) and are
plain functions, so tests of any area can import them: ``from tests.fixtures_data import make_waterbirds``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

DEMO_SMALL = {"n_train": 120, "n_val": 40, "n_test": 80, "seed": 0}


@pytest.fixture(scope="session")
def demo_small(_session_store):
    """A small demo :class:`~clipcal.data.base.Benchmark` (see module docstring); do not modify its table."""
    from clipcal.data import load_benchmark

    return load_benchmark("demo", **DEMO_SMALL)


def write_jpeg(path: Path, seed: int = 0, size: int = 16) -> Path:
    """Write a small random-colour RGB JPEG (creating folders)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, "JPEG")
    return path


def make_waterbirds(root: Path, counts: dict | None = None) -> Path:
    """group_DRO layout: ``root/waterbird_complete95_forest2water2/{metadata.csv, <species>/<img>.jpg}``.

    ``counts`` maps split code (0/1/2) → (n per group for groups (y,a) = 00, 01, 10, 11); default 2 each.
    Returns the dataset folder.
    """
    folder = root / "waterbird_complete95_forest2water2"
    counts = counts or {0: (3, 1, 1, 3), 1: (2, 2, 2, 2), 2: (2, 2, 2, 2)}
    rows, k = [], 0
    for split, per in counts.items():
        for g, n in enumerate(per):
            y, a = g // 2, g % 2
            for _ in range(n):
                k += 1
                species = "001.Black_footed_Albatross" if y else "002.Laysan_Albatross"
                rel = f"{species}/img_{k:04d}.jpg"
                write_jpeg(folder / rel, seed=k)
                rows.append({"img_id": k, "img_filename": rel, "y": y, "split": split, "place": a,
                             "place_filename": f"/b/bamboo_forest/{k:08d}.jpg"})
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
    return folder


CELEBA_ATTRS = ["5_o_Clock_Shadow", "Bald", "Blond_Hair", "Male", "Smiling"]


def make_celeba(root: Path, n: int = 12, layout: str = "csv", nested: bool = False) -> Path:
    """CelebA in the Kaggle CSV (``layout="csv"``) or original text layout; 5 attribute columns, -1/1."""
    root.mkdir(parents=True, exist_ok=True)
    img_dir = root / "img_align_celeba" / ("img_align_celeba" if nested else "")
    rng = np.random.default_rng(1)
    ids = [f"{i + 1:06d}.jpg" for i in range(n)]
    vals = rng.choice([-1, 1], size=(n, len(CELEBA_ATTRS)))
    vals[:4, 2] = [1, 1, -1, -1]  # make sure both classes and both attribute values occur
    vals[:4, 3] = [1, -1, 1, -1]
    parts = [i % 3 for i in range(n)]
    for i, name in enumerate(ids):
        write_jpeg(img_dir / name, seed=i)
    if layout == "csv":
        pd.DataFrame(vals, columns=CELEBA_ATTRS).assign(image_id=ids)[["image_id", *CELEBA_ATTRS]].to_csv(
            root / "list_attr_celeba.csv", index=False)
        pd.DataFrame({"image_id": ids, "partition": parts}).to_csv(root / "list_eval_partition.csv", index=False)
    else:
        lines = [str(n), " ".join(CELEBA_ATTRS)] + [f"{i} " + " ".join(f"{v:2d}" for v in row)
                                                      for i, row in zip(ids, vals)]
        (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
        (root / "list_eval_partition.txt").write_text("".join(f"{i} {p}\n" for i, p in zip(ids, parts)))
    return root


def make_metashift(root: Path, per_folder: int = 10) -> Path:
    """SubpopBench layout: ``root/MetaShift-Cat-Dog-indoor-outdoor/{train,test}/{cat,dog}/<folder>/*.jpg``."""
    from clipcal.data.metashift import FOLDERS, SUBSET

    k = 0
    for sub in FOLDERS:
        for _ in range(per_folder):
            k += 1
            write_jpeg(root / SUBSET / sub / f"{k:07d}.jpg", seed=k)
    return root


def make_csv_dataset(root: Path, rows: list[dict], csv_name: str = "metadata.csv", images: bool = True) -> Path:
    """Write ``rows`` as a CSV in ``root`` and a JPEG for every ``filename`` value (when ``images``)."""
    root.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    if images:
        col = next(c for c in ("filename", "path", "file") if c in df.columns)
        for i, f in enumerate(df[col]):
            write_jpeg(root / f, seed=i)
    df.to_csv(root / csv_name, index=False)
    return root / csv_name
