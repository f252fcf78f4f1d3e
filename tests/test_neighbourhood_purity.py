"""The class purity of each group's k-nearest-neighbour neighbourhoods (clipcal.separation): a group whose
neighbours become purer after calibration shows a rise, identical representations show exactly no change —
so the Representations page can lead with where the "after" map changed, and never invent a change."""

from __future__ import annotations

import numpy as np
import pytest

from clipcal.errors import MethodError
from clipcal.separation import PURITY_COLUMNS, knn_class_purity, neighbourhood_purity


def _planted(seed: int = 0):
    """4 groups × 20 (class = g // 2, attribute = g % 2). Before: images cluster by ATTRIBUTE (background), so
    groups 1 and 2 (class and background disagree) sit among the other class. After: they cluster by CLASS."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(4), 20)
    y, a = g // 2, g % 2
    centres = np.eye(8)[:2] * 10.0  # two far-apart cluster centres
    noise = lambda: rng.normal(scale=0.3, size=(len(g), 8))  # noqa: E731
    before = centres[a] + noise() + 5.0  # offset so cosine distance sees the clusters too
    after = centres[y] + noise() + 5.0
    return before, after, y, g


def test_a_group_whose_neighbours_become_its_own_class_gains_purity():
    before, after, y, g = _planted()
    t = neighbourhood_purity(before, after, y, g, ["l/land", "l/water", "w/land", "w/water"], k=10)
    assert list(t.columns) == PURITY_COLUMNS and list(t["n"]) == [20] * 4
    row = t.set_index("name")
    # before, a landbird on water sits among 19 landbirds and 20 waterbirds on water (expected purity ≈ 0.5);
    # after, its 10 neighbours come from the 39 other landbirds: purity 1
    assert row.loc["l/water", "purity_before"] < 0.7
    assert row.loc["l/water", "purity_after"] == pytest.approx(1.0)
    assert row.loc["l/water", "change"] > 0.3
    assert (t["change"] >= 0).all() and t.attrs["k"] == 10


def test_identical_before_and_after_change_exactly_zero():
    before, _, y, g = _planted(1)
    t = neighbourhood_purity(before, before.copy(), y, g, k=10)
    assert (t["change"] == 0.0).all()
    assert (t["purity_before"] == t["purity_after"]).all()


def test_neighbours_are_searched_among_the_rows_only_and_exclude_the_image_itself():
    # 3 images of class 0 and 1 of class 1, all distinct; with k = 3 every image's neighbours are the others
    x = np.array([[1, 0], [1, 0.1], [1, 0.2], [0, 1]], float)
    y = np.array([0, 0, 0, 1])
    np.testing.assert_allclose(knn_class_purity(x, y, k=3), [2 / 3, 2 / 3, 2 / 3, 0.0])
    # rows = the first three only (one class): every neighbourhood is pure, k capped at 2
    t = neighbourhood_purity(x, x, y, np.zeros(4, int), rows=[0, 1, 2], k=10)
    assert t["purity_before"].tolist() == [1.0] and t.attrs["k"] == 2


def test_mismatched_rows_are_a_clear_error():
    with pytest.raises(MethodError, match="before 4, after 3"):
        neighbourhood_purity(np.ones((4, 2)), np.ones((3, 2)), np.zeros(4), np.zeros(4))
    with pytest.raises(MethodError, match="at least 2 images"):
        knn_class_purity(np.ones((1, 2)), np.zeros(1))
