"""A CelebA-shaped store for the dashboard benches (issue 14 item 3): 202,599 images with CelebA's split sizes
162,770 / 19,867 / 19,962 and its (Blond_Hair × Male) group counts, shaped random features stored through the
real store APIs, and one calibration run stored through :func:`clipcal.runs.run_calibration` whose methods are
STAND-INS: every method "fits" a random last layer W [d, e] and a random unit head (seeded), so its
probabilities, predictions, calibrated embeddings and calibration set have the real shapes and dtypes, and
the run is written by the real run-storing code. Nothing measured on this store says anything about accuracy or
about the methods' own cost (bench/calibrate_speed.py measures those).

Used by ``bench/app_memory.py --size celeba`` and ``bench/page_rerun.py --size celeba``; on its own::

    .venv/bin/python bench/celeba_shaped.py /tmp/h-dash-cache      # seeds DIR/store and DIR/data once
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

#: CelebA (Liu et al. 2015) with target Blond_Hair and attribute Male, as the group_DRO / DFR papers split it:
#: (y, a) → images per split (y = blond, a = male).
CELEBA_GROUPS = {
    "train": {(0, 0): 71_629, (0, 1): 66_874, (1, 0): 22_880, (1, 1): 1_387},
    "val": {(0, 0): 8_535, (0, 1): 8_276, (1, 0): 2_874, (1, 1): 182},
    "test": {(0, 0): 9_767, (0, 1): 7_535, (1, 0): 2_480, (1, 1): 180},
}
CLASS_NAMES, ATTR_NAMES = ["not_blond", "blond"], ["female", "male"]
#: Image side of the generated JPEGs: small, so that 202,599 of them are written in a couple of minutes.
IMAGE_PX = 24
DIMS = (1024, 768)  # d = 1,024 → e = 768 and a text tower, as CelebA under ViT-L/14


class StandInMethod:
    """A method whose fit draws a random last layer (seeded by the method's name): real shapes, no training."""

    def __init__(self, name: str):
        from clipcal.methods import get_method

        self.name, self.cls = name, get_method(name)

    def fit(self, data, progress=None, cancel=None):
        import pandas as pd

        from clipcal.methods.base import MethodResult
        from clipcal.methods.fitted import FittedLastLayer

        rng = np.random.default_rng(sum(map(ord, self.name)))
        d, e = data.features.shape[1], data.embed_dim
        W = (rng.standard_normal((d, e), dtype=np.float32) / np.sqrt(d)).astype(np.float32)
        head = rng.standard_normal((2, e)).astype(np.float32)
        head /= np.linalg.norm(head, axis=1, keepdims=True)
        z = np.empty((data.n, e), np.float32)
        for s in range(0, data.n, 20_000):  # chunked: a [N, d] float64 temporary would double the seeder's RSS
            zz = data.features[s:s + 20_000] @ W
            z[s:s + 20_000] = zz / np.maximum(np.linalg.norm(zz, axis=1, keepdims=True), 1e-12)
        logits = 10.0 * z @ head.T
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        changes = self.name not in ("dfr", "zeroshot")
        train = np.flatnonzero(np.asarray(data.split) == "train")
        calib = np.sort(rng.choice(train, 5_000, replace=False)) if self.name in ("erm", "jtt", "cfr") else None
        curves = pd.DataFrame({"epoch": np.repeat(np.arange(1, 6), 2), "stage": self.name,
                               "split": ["train", "val"] * 5, "metric": "loss", "value": rng.random(10)})
        self.result_ = MethodResult(
            method=self.name, probs=probs, pred=probs.argmax(1), embeddings_after=z if changes else None,
            calibration_set=calib, curves=curves,
            record={"uses_group_labels": self.name == "dfr", "selection_rule": "stand-in", "hparams": {},
                    "seed": 0, "notes": ["bench/celeba_shaped.py stand-in: random last layer, no training"]},
            fitted=FittedLastLayer(W=W, head=head, scale=10.0, bias=None, classes=tuple(CLASS_NAMES)))
        return self


def seed(work: Path) -> dict:
    """Benchmark files (``work/data``) + embeddings + one stand-in calibration run (``work/store``); returns
    what was seeded. Reuses a finished seeding (``work/seeded.json``), and images already in ``work/data``.

    The backbone is ``open_clip:ViT-L-14:<file>`` with random weights saved to a file in ``work``
    (:func:`app_memory.checkpoint_spec`): the text tower is then read alone from the file, as for downloaded
    weights; a ``:random`` spec builds the whole model to draw its text weights (+1.2 GB the server never needs
    for a real checkpoint)."""
    import clipcal.runs as runs_mod
    from app_memory import checkpoint_spec, store_embeddings, write_images
    from calibrate_speed import shaped_features
    from clipcal.data import load_benchmark
    from clipcal.methods import METHODS, get_method
    from clipcal.store import Store

    marker = work / "seeded.json"
    if marker.exists():
        return json.loads(marker.read_text())
    t0 = time.monotonic()
    fd = shaped_features(CELEBA_GROUPS, *DIMS, text_head=True)
    write_images(work / "data", fd, px=IMAGE_PX, class_names=CLASS_NAMES, attr_names=ATTR_NAMES)
    t_images = time.monotonic() - t0
    shutil.rmtree(work / "store", ignore_errors=True)
    spec = checkpoint_spec(work)
    bench = load_benchmark("csv", root=work / "data")
    store = Store(work / "store")
    es = store_embeddings(bench, fd, spec, store)
    methods = [m for m in METHODS if not get_method(m).needs_text or fd.has_text]
    real = runs_mod.make_method
    runs_mod.make_method = lambda name, **_: StandInMethod(name)
    try:
        t1 = time.monotonic()
        run = runs_mod.run_calibration(bench, es, methods, store=store, text_head=fd.text_head)
    finally:
        runs_mod.make_method = real
    out = {"n": len(bench.table), "splits": bench.table.groupby("split").size().to_dict(),
           "feature_dim": DIMS[0], "embed_dim": DIMS[1], "backbone": spec, "methods": list(run.results),
           "stand_in_methods": True, "images_s": round(t_images, 1),
           "run_store_s": round(time.monotonic() - t1, 1), "seed_s": round(time.monotonic() - t0, 1)}
    marker.write_text(json.dumps(out))
    return out


if __name__ == "__main__":
    print(json.dumps(seed(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/h-dash-cache")), indent=2))
