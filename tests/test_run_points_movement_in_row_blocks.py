"""views.run_points at CelebA size (issue 14 item 3): the per-point movement (move_2d, cos_change) is computed in
row blocks — displacement works in float64, and three [N, e] float64 temporaries on all rows were 3.7 GB for
202,599 samples — with the same numbers as one call on every row."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pandas as pd

from clipcal import projection, views


def test_run_points_movement_is_blockwise_and_equals_the_whole_array(monkeypatch):
    rng = np.random.default_rng(0)
    n, e = 1000, 16
    before = rng.normal(size=(n, e)).astype(np.float32)
    after = before + rng.normal(scale=0.1, size=(n, e)).astype(np.float32)
    after[::7] = before[::7]  # unchanged samples: exactly 0
    xy = (rng.normal(size=(n, 2)).astype(np.float32), rng.normal(size=(n, 2)).astype(np.float32))
    y = rng.integers(0, 2, n)
    fd = NS(y=y, embeddings=before, class_names=["a", "b"], attr_names=["p", "q"])
    res = NS(pred=y, calibration_set=None, embeddings_after=after)
    run = NS(results={"cfr": res}, metrics=pd.DataFrame({"method": ["cfr"]}))
    table = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "path": [f"{i}.png" for i in range(n)],
                          "split": "test", "y": y, "a": rng.integers(0, 2, n)})
    table["group"] = table["y"] * 2 + table["a"]
    monkeypatch.setattr(views, "MOVEMENT_BLOCK_BYTES", 8 * e * 128, raising=False)  # 128 rows a block
    seen = []
    real = projection.displacement

    def counting(xb, xa, eb, ea, *a, **k):
        seen.append(len(eb))
        return real(xb, xa, eb, ea, *a, **k)

    monkeypatch.setattr(projection, "displacement", counting)
    pts = views.run_points(run, fd, table, True, "cfr", xy)
    assert max(seen) == 128 and sum(seen) == n
    whole = real(xy[0], xy[1], before, after)
    np.testing.assert_array_equal(pts["cos_change"].to_numpy(), whole["cos_change"].to_numpy())
    np.testing.assert_array_equal(pts["move_2d"].to_numpy(), whole["move_2d"].to_numpy())
    assert (pts["cos_change"].to_numpy()[::7] == 0).all()
