"""Maps do not invent movement (issue 16.3).

Kind of fault: the 2-D map (UMAP) shows structure or movement that the embeddings do not have. Identical
embeddings must sit at one point of the map (UMAP spreads more duplicates than ``n_neighbors`` over the map),
a sample whose embedding did not change must not move in the map, and "what moved most" is ranked by the
change of the embedding itself (1 − cosine between before and after), the 2-D distance being only a cue.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clipcal import projection as P


def _thirty_identical_among_fifty(dim: int = 16, seed: int = 0) -> np.ndarray:
    """50 embeddings: rows 0-29 one and the same image, rows 30-49 twenty distinct images."""
    rng = np.random.default_rng(seed)
    dup = rng.normal(size=dim)
    others = rng.normal(size=(20, dim))
    return np.vstack([np.tile(dup, (30, 1)), others]).astype(np.float32)


def _extent(xy: np.ndarray) -> float:
    return float(np.ptp(xy, axis=0).max())


@pytest.mark.slow  # UMAP fits (numba JIT on first use)
def test_identical_embeddings_sit_at_one_point_of_the_map():
    """30 identical images among 50 → the 30 share one location (UMAP spread them over a third of the map)."""
    x = _thirty_identical_among_fifty()
    xy, none = P.joint_umap(x, None, seed=0)
    assert none is None
    dup_spread = _extent(xy[:30])
    assert dup_spread == 0.0, f"identical images spread over {dup_spread:.3f} of a {_extent(xy):.3f}-wide map"
    # the distinct images keep distinct places (duplicates merged, nothing else)
    assert len(np.unique(xy[30:], axis=0)) == 20
    assert np.isfinite(xy).all()


@pytest.mark.slow
def test_before_equal_to_after_moves_nothing_and_the_ranking_says_so():
    """before == after (with 30 duplicates) → every 2-D move is exactly 0, every group centroid stays, and the
    "moved most" ranking is empty with a note, not a table led by the duplicates."""
    x = _thirty_identical_among_fifty(seed=1)
    xb, xa = P.joint_umap(x, x.copy(), seed=0)
    np.testing.assert_array_equal(xb, xa)
    d = P.displacement(xb, xa, x, x.copy(), sample_ids=[f"s{i}" for i in range(50)])
    assert (d["move_2d"] == 0.0).all()
    assert (d["cos_change"] == 0.0).all()
    groups = np.r_[np.zeros(30, int), np.arange(20) % 2 + 1]
    shifts = P.group_centroid_shifts(xb, xa, x, x.copy(), groups)
    assert (shifts["shift_2d"] == 0.0).all() and (shifts["cos_shift"] == 0.0).all()

    points = d.assign(**{"class": np.where(groups == 0, "dup", "other")}, group=groups.astype(str))
    r = P.moved_most(points, top=20)
    assert r.table.empty
    assert r.n_changed == 0 and r.n_unchanged == 50
    assert "none of the 50" in r.note.lower()


@pytest.mark.slow
def test_a_sample_whose_embedding_did_not_change_keeps_its_place_when_others_move():
    """Only samples 40-49 change; the unchanged 40 (30 of them duplicates) have a 2-D move of exactly 0."""
    before = _thirty_identical_among_fifty(seed=2)
    after = before.copy()
    after[40:] += np.random.default_rng(3).normal(scale=2.0, size=(10, before.shape[1])).astype(np.float32)
    xb, xa = P.joint_umap(before, after, seed=0)
    d = P.displacement(xb, xa, before, after)
    assert (d["move_2d"].iloc[:40] == 0.0).all()
    assert (d["cos_change"].iloc[:40] == 0.0).all() and (d["cos_change"].iloc[40:] > 1e-3).all()
    r = P.moved_most(d.assign(sample_id=[f"s{i}" for i in range(50)]), top=20)
    assert r.n_changed == 10 and len(r.table) == 10
    assert set(r.table["sample_id"]) == {f"s{i}" for i in range(40, 50)}


@pytest.mark.slow
def test_embeddings_equal_within_float_noise_are_one_point():
    """Near-duplicates within float32 rounding noise (the same image embedded twice, or a calibrated copy
    equal up to rounding) are merged like exact duplicates; images that differ for real are not."""
    rng = np.random.default_rng(4)
    x = _thirty_identical_among_fifty(seed=4)
    noisy = x.copy()
    noisy[:30] *= 1.0 + rng.normal(scale=1e-6, size=(30, x.shape[1])).astype(np.float32)
    assert len(np.unique(noisy[:30], axis=0)) == 30  # not exact duplicates any more
    xy, _ = P.joint_umap(noisy, None, seed=0)
    assert _extent(xy[:30]) == 0.0
    assert len(np.unique(xy[30:], axis=0)) == 20
    # a real difference (1 − cos ≈ 1e-3, far above the tolerance) keeps two places
    close = x[30] + 0.045 * np.linalg.norm(x[30]) * rng.normal(size=x.shape[1]).astype(np.float32) / np.sqrt(16)
    y = np.vstack([noisy, close[None].astype(np.float32)])
    c = P.displacement(np.zeros((1, 2)), np.zeros((1, 2)), y[30:31], y[50:51])["cos_change"].item()
    assert 1e-4 < c < 1e-2
    xy2, _ = P.joint_umap(y, None, seed=0)
    assert not np.array_equal(xy2[30], xy2[50])


def test_moved_ranking_follows_the_embedding_change_not_the_2d_move():
    """The "moved most" rows are ordered by 1 − cos of the embeddings; the 2-D move (largest for the samples
    whose embedding changed least here) is only shown beside it, and only breaks exact ties."""
    pts = pd.DataFrame({
        "sample_id": ["a", "b", "c", "d", "e", "f"],
        "class": ["bird"] * 6,
        "group": ["g0", "g1", "g0", "g1", "g0", "g1"],
        "split": ["test"] * 6,
        "cos_change": [0.01, 0.30, 0.0, 0.10, 0.10, 2e-7],
        "move_2d": [9.0, 0.1, 8.0, 0.5, 2.0, 7.0],
        "crossed": ["fixed", "broken", "still correct", "still wrong", "still correct", "still correct"],
        "x_before": np.zeros(6),
    })
    r = P.moved_most(pts, top=10)
    assert list(r.table["sample_id"]) == ["b", "e", "d", "a"]  # e before d: same change, larger 2-D move
    assert list(r.table.columns) == ["rank", "sample_id", "class", "group", "split", "cos_change", "move_2d",
                                     "crossed"]
    assert list(r.table["rank"]) == [1, 2, 3, 4]
    assert r.n_changed == 4 and r.n_unchanged == 2  # c (0) and f (below the float-noise tolerance)
    assert "2 of the 6" in r.note
    assert list(P.moved_most(pts, top=2).table["sample_id"]) == ["b", "e"]


def test_moved_ranking_refuses_a_table_without_the_embedding_change():
    from clipcal.errors import MethodError

    with pytest.raises(MethodError, match="cos_change"):
        P.moved_most(pd.DataFrame({"sample_id": ["a"], "move_2d": [1.0]}))


def test_displacement_embedding_change_is_exactly_zero_for_identical_rows_and_ranks_by_it():
    rng = np.random.default_rng(5)
    e = rng.normal(size=(6, 8)).astype(np.float32)
    a = e.copy()
    a[3] = -a[3]
    a[5] += 0.5
    xy = rng.normal(size=(6, 2))
    d = P.displacement(xy, xy[::-1], e, a)
    np.testing.assert_array_equal(d["cos_change"].to_numpy()[[0, 1, 2, 4]], 0.0)
    assert d["cos_change"].iloc[3] == pytest.approx(2.0)
    assert d.loc[3, "rank_change"] == 1 and d.loc[5, "rank_change"] == 2


def test_projection_key_records_how_duplicates_are_handled():
    """Maps stored by the algorithm that spread duplicates are not served as new ones."""
    x = _thirty_identical_among_fifty()
    k = P.projection_key(x, None, {}, P._params(0, 15, 0.1, "cosine"))
    assert k["projection_version"] >= 3
    assert f"{P.DUPLICATE_TOL:g}" in k["duplicates"]


@pytest.mark.parametrize("distinct", [1, 2, 3, 4])
def test_few_distinct_embeddings_still_get_a_map_without_invented_spread(distinct):
    """After merging, 1-3 distinct points are too few for UMAP: they are placed by their exact distances,
    duplicates still share one point, and the map stays finite."""
    rng = np.random.default_rng(6)
    base = rng.normal(size=(distinct, 8)).astype(np.float32)
    x = base[np.arange(12) % distinct]
    xb, xa = P.joint_umap(x, x.copy(), seed=0)
    assert np.isfinite(xb).all() and (xb == xa).all()
    assert len(np.unique(xb, axis=0)) == distinct
    for i in range(distinct):
        assert len(np.unique(xb[np.arange(12) % distinct == i], axis=0)) == 1
    if distinct == 2:  # two points: as far apart as their chord length sqrt(2(1 − cos))
        c = P.displacement(np.zeros((1, 2)), np.zeros((1, 2)), base[:1], base[1:2])["cos_change"].item()
        assert np.linalg.norm(xb[0] - xb[1]) == pytest.approx(np.sqrt(2 * c), rel=1e-5)


def test_merge_duplicates_keeps_input_order_and_maps_every_row_back():
    x = np.array([[1, 0], [0, 1], [1, 0], [2, 0], [0, 1]], dtype=np.float32)
    keep, inv = P.merge_duplicates(x, metric="cosine", n_neighbors=2)
    # rows 0, 2 identical; row 3 = 2 × row 0 is the same direction (1 − cos = 0) for the cosine metric
    assert keep.tolist() == [0, 1] and inv.tolist() == [0, 1, 0, 0, 1]
    keep, inv = P.merge_duplicates(x, metric="euclidean", n_neighbors=2)
    assert keep.tolist() == [0, 1, 3] and inv.tolist() == [0, 1, 0, 2, 1]


def test_overlay_segments_follow_the_embedding_change_and_skip_unchanged_points():
    """Sibling: the overlay map's before→after segments (plotly and hover-card charts) are drawn for the
    largest embedding changes, and a point whose embedding did not change gets no segment (the legend used
    to say "before → after (150 points)" for points that had not moved)."""
    from clipcal import figures as F
    from clipcal import hover_chart as H

    n = 30
    rng = np.random.default_rng(7)
    change = np.zeros(n)
    change[[3, 11, 20]] = [0.2, 0.05, 0.1]
    p = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "class": ["a", "b"] * 15,
                      "x_before": rng.normal(size=n), "y_before": rng.normal(size=n),
                      "cos_change": change, "move_2d": np.arange(n, dtype=float)[::-1]})
    p["x_after"], p["y_after"] = p["x_before"] + change, p["y_before"]
    fig = F.umap_figure(p, "class", mode="overlay", lines=10, line_order="cos_change")
    seg = [t for t in fig.data if t.mode == "lines"][0]
    assert seg.name == "before → after (3 points)"
    np.testing.assert_allclose(np.asarray(seg.x, float)[0::3], p.loc[[3, 20, 11], "x_before"])
    chart = H.umap_hover_chart(p.assign(image=""), "class", mode="overlay", lines=10, line_order="cos_change")
    spec = chart.to_dict()
    data = pd.DataFrame(spec["datasets"][spec["data"]["name"]])
    assert sorted(data.index[data["line"]]) == [3, 11, 20]
