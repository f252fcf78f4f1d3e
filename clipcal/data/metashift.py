"""MetaShift cats vs dogs, indoor vs outdoor (Liang & Zou, ICLR 2022), in SubpopBench's folder layout.

SubpopBench (Yang et al., ICML 2023; ``subpopbench/scripts/download.py``, ``download_metashift`` and
``generate_metadata_metashift``) downloads ``metashift.tar.gz`` into ``<data>/metashift/`` and reads four
folders of the "MetaShift-Cat-Dog-indoor-outdoor" subset::

    <root>/MetaShift-Cat-Dog-indoor-outdoor/
        train/cat/cat(indoor)/*.jpg     y = 1 cat, a = 1 indoor
        train/dog/dog(outdoor)/*.jpg    y = 0 dog, a = 0 outdoor
        test/cat/cat(outdoor)/*.jpg     y = 1 cat, a = 0 outdoor
        test/dog/dog(indoor)/*.jpg      y = 0 dog, a = 1 indoor

``root`` may be the ``metashift/`` folder or ``MetaShift-Cat-Dog-indoor-outdoor/`` itself. The codes
follow SubpopBench (class_names ``dog, cat``; attr_names ``outdoor, indoor``). The original train/test
folders are a pure distribution-shift split (train has only the two aligned groups), so, as SubpopBench
does, all images are pooled and re-split at random: ``test_pct`` = 25 % test, then ``val_pct`` = 10 % of
all images as val from the rest, with ``numpy.random.RandomState(seed)`` (SubpopBench's seed 42 is the
default). Unlike SubpopBench, files are sorted before the draw, so the split does not depend on the
file system's listing order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from clipcal.data.base import Benchmark
from clipcal.data.csvdata import require_root
from clipcal.errors import DataError

SUBSET = "MetaShift-Cat-Dog-indoor-outdoor"
#: folder (relative to the subset folder) → (y, a), as in SubpopBench.
FOLDERS = {
    "train/cat/cat(indoor)": (1, 1),
    "train/dog/dog(outdoor)": (0, 0),
    "test/cat/cat(outdoor)": (1, 0),
    "test/dog/dog(indoor)": (0, 1),
}
LAYOUT = "  <root>/" + SUBSET + "/\n" + "\n".join(f"      {k}/*.jpg" for k in FOLDERS) + \
    "\n  (root may also be the " + SUBSET + " folder itself)"
_EXTS = {".jpg", ".jpeg", ".png"}


def find_metashift_dir(root: Path) -> Path:
    """The ``MetaShift-Cat-Dog-indoor-outdoor`` folder: ``root/<subset>`` or ``root`` itself."""
    for cand in (root / SUBSET, root / "metashift" / SUBSET, root):
        if all((cand / f).is_dir() for f in FOLDERS):
            return cand
    cand = root / SUBSET if (root / SUBSET).is_dir() else root
    missing = [f for f in FOLDERS if not (cand / f).is_dir()]
    raise DataError(f"metashift: folder(s) missing under {cand}: {missing}", hint=f"expected layout:\n{LAYOUT}")


def load_metashift(root: str | Path, seed: int = 42, test_pct: float = 0.25, val_pct: float = 0.1) -> Benchmark:
    """Load MetaShift cat/dog × indoor/outdoor with SubpopBench's seeded re-split.

    Args:
        root: ``metashift/`` folder (see module docstring).
        seed: ``RandomState`` seed of the re-split (SubpopBench: 42).
        test_pct: fraction of all images drawn as test (``int(n · test_pct)``).
        val_pct: fraction of all images drawn as val from the non-test rest (``int(n · val_pct)``).

    Returns:
        ``Benchmark`` ``metashift``: classes ``dog, cat`` ("animal"), attributes ``outdoor, indoor``
        ("context"); ``sample_id`` = path relative to the subset folder.

    Raises:
        DataError: root or one of the four folders missing, or a folder without images.
    """
    folder = find_metashift_dir(require_root(root, "metashift", LAYOUT))
    rows = []
    for sub, (y, a) in FOLDERS.items():
        files = sorted(p for p in (folder / sub).iterdir() if p.suffix.lower() in _EXTS and p.is_file())
        if not files:
            raise DataError(f"metashift: no images in {folder / sub}", hint=f"expected layout:\n{LAYOUT}")
        rows += [(f"{sub}/{p.name}", y, a) for p in files]
    df = pd.DataFrame(rows, columns=["path", "y", "a"])
    n = len(df)
    rng = np.random.RandomState(seed)
    test_idx = rng.choice(np.arange(n), size=int(n * test_pct), replace=False)
    val_idx = rng.choice(np.setdiff1d(np.arange(n), test_idx), size=int(n * val_pct), replace=False)
    split = np.array(["train"] * n, dtype=object)
    split[val_idx] = "val"
    split[test_idx] = "test"
    table = pd.DataFrame({"sample_id": df["path"], "path": df["path"], "split": split, "y": df["y"],
                          "a": df["a"]})
    return Benchmark(name="metashift", root=folder, table=table, class_names=["dog", "cat"],
                     attr_names=["outdoor", "indoor"],
                     params={"root": str(folder), "seed": seed, "test_pct": test_pct, "val_pct": val_pct},
                     target_name="animal", attr_name="context")
