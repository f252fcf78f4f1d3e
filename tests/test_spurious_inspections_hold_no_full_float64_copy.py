"""The Spurious attributes page's computations (clipcal.concepts, clipcal.cav) read [N, e] embeddings a row block at a
time: none of them holds a float64 copy of all N rows (at CelebA size, 202,599 × 768, one is 1.2 GB; the page
peaked at +4 GB per section), and each gives the numbers of the straightforward formula.

Peaks are measured with tracemalloc (numpy reports its buffers to it) on float32 inputs allocated before tracing;
``BLOCK_BYTES`` is shrunk so that the blocks are small against the arrays, as they are at CelebA size."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from clipcal import cav, concepts, rowblocks

N, E = 12_000, 48
FULL = N * E * 8  # bytes of one float64 copy of all rows


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(rowblocks, "BLOCK_BYTES", 64 * 1024)


def traced_peak(fn):
    """``(fn(), peak bytes allocated while it ran)``. ``fn`` runs once untraced first: one-time work (lazy imports,
    caches filled on first use) depends on which tests ran before, not on N (test_concepts.py collected after this
    file made concept_scores' first call allocate 1.15 × FULL more)."""
    fn()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        out = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return out, peak


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, N)
    a = np.where(rng.random(N) < 0.8, y, 1 - y)
    x = (rng.standard_normal((N, E)) + 0.5 * a[:, None] * np.eye(E)[0]).astype(np.float32)
    split = np.array(["train", "val", "test"])[rng.choice(3, N, p=[0.7, 0.1, 0.2])]
    pred = np.where(rng.random(N) < 0.85, y, 1 - y)
    return x, y, a, split, pred


def test_float_rows_equal_indexing_and_unit_rows(data):
    x = data[0]
    rows = np.flatnonzero(data[1] == 1)[::-1]
    np.testing.assert_array_equal(concepts.float_rows(x, rows), np.asarray(x, np.float64)[rows])
    np.testing.assert_array_equal(concepts.float_rows(x, data[1] == 1, unit=True), unit(x)[data[1] == 1])
    np.testing.assert_array_equal(concepts.float_rows(x), np.asarray(x, np.float64))


def test_concept_scores_in_blocks_equal_the_formula(data):
    x, y, _, _, pred = data
    t = np.random.default_rng(1).standard_normal((5, E)).astype(np.float32)
    names = [f"c{i}" for i in range(5)]
    got, peak = traced_peak(lambda: concepts.concept_scores(x, y, pred, t, names, ["no", "yes"]))
    assert peak < 0.5 * FULL, f"concept_scores allocated {peak / FULL:.2f}× a float64 copy of the embeddings"
    sim = unit(x) @ unit(t).T
    for k in (0, 1):
        wrong, right = (y == k) & (pred != k), (y == k) & (pred == k)
        want = sim[wrong].mean(0) - sim[right].mean(0)
        row = got[got["class_index"] == k].set_index("concept").loc[names]
        np.testing.assert_allclose(row["score"].to_numpy(), want, rtol=1e-12, atol=1e-15)


def test_decodability_copies_only_the_fit_rows(data):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, _, a, split, _ = data
    after = x[:, ::-1].copy()
    got, peak = traced_peak(lambda: concepts.attribute_decodability(x, after, a, split))
    # was: all rows in float64, the fit rows, the scaled fit rows, the variance's temporary (≈ 3.5×)
    assert peak < 1.3 * FULL, f"attribute_decodability allocated {peak / FULL:.2f}× a float64 copy of the embeddings"
    fit, test = np.isin(split, ["train", "val"]), split == "test"
    for i, xr in enumerate((x, after)):
        clf = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000,
                                                                 random_state=0))
        xd = np.asarray(xr, np.float64)
        proba = clf.fit(xd[fit], a[fit]).predict_proba(xd[test])
        assert got.table.loc[i, "auroc"] == pytest.approx(roc_auc_score(a[test] == 1, proba[:, 1]), abs=1e-9)
        assert got.table.loc[i, "balanced_accuracy"] == pytest.approx(
            np.mean([(proba[a[test] == v].argmax(1) == v).mean() for v in (0, 1)]), abs=1e-9)


def test_clusters_hold_one_class_of_unit_rows(data):
    from sklearn.cluster import KMeans

    x, y, a, _, pred = data
    correct = pred == y
    got, peak = traced_peak(lambda: concepts.discover_clusters(x, y, correct, k=3, a=a, n_init=1))
    # was: unit rows of all N (+ their norms), the class's rows, KMeans' copy of them and its variance's temporary
    # now: the larger class's unit rows (half of all) and KMeans' variance temporary of them (≈ 1.4×)
    assert peak < 1.7 * FULL, f"discover_clusters allocated {peak / FULL:.2f}× a float64 copy of the embeddings"
    idx = np.flatnonzero(y == 0)
    lab = KMeans(n_clusters=3, n_init=1, random_state=0).fit_predict(unit(x)[idx])
    sizes = sorted(np.bincount(lab).tolist())
    assert sorted(got.table.loc[got.table["class_index"] == 0, "n"].tolist()) == sizes


def test_linear_head_recovery_reads_only_its_rows(data):
    x = data[0]
    rng = np.random.default_rng(2)
    g, b = rng.standard_normal((2, E)), np.array([0.3, -0.1])
    logits = np.asarray(x, np.float64) @ g.T + b
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    got, peak = traced_peak(lambda: cav.recover_linear_head(x, probs))
    # was: float64 rows, [rows, 1], its fit rows, lstsq's copy (≈ 3.8×); now the fit rows and lstsq's copy
    assert peak < 2.4 * FULL, f"recover_linear_head allocated {peak / FULL:.2f}× a float64 copy of the embeddings"
    assert got.ok
    np.testing.assert_allclose(got.grad[1], g[1] - g[0], rtol=1e-8, atol=1e-8)


def test_cav_report_reads_only_the_drawn_pool_rows(data):
    from clipcal.methods.base import FeatureData, MethodResult

    x, y, a, split, pred = data
    fd = FeatureData(features=x, embeddings=x, y=y, a=a, group=2 * y + a, split=split,
                     sample_ids=[f"s{i}" for i in range(N)], class_names=["no", "yes"], attr_names=["p", "q"],
                     projection="identity", has_text=False, backbone_spec="test")
    probs = np.stack([1 - (pred == 1) * 0.8 - 0.1, (pred == 1) * 0.8 + 0.1], 1)
    result = MethodResult(method="erm", probs=probs, pred=pred, embeddings_after=None)
    rows = np.sort(np.argsort(-x[:, 0])[:40])  # the concept: images far along one direction (separable)
    concept = cav.selection_concept(fd, [fd.sample_ids[i] for i in rows])
    rep, peak = traced_peak(lambda: cav.cav_report(fd, result, concept, n_random=4))
    # was: a float64 copy of all rows as the random pool (plus the asarray temporary), group scores from another
    # float64 copy of all rows per group; what is left is the TCAV head fit (fit rows + lstsq's copy)
    assert peak < 2.4 * FULL, f"cav_report allocated {peak / FULL:.2f}× a float64 copy of the embeddings"
    # the probes equal those learned against the full pool with the same draws
    pool_rows = np.setdiff1d(np.arange(N), rows)
    draws = cav._draws(len(rows), len(pool_rows), len(rows), 4, np.random.default_rng(0), False)
    con, _ = cav._space_cavs(np.asarray(concept.embeddings, np.float64), np.asarray(x[pool_rows], np.float64), draws,
                             0, False)
    assert rep.probe.loc[0, "accuracy"] == pytest.approx(np.mean([c.accuracy for c in con]), abs=1e-12)
    m = split == "test"
    for _, r in rep.groups.iterrows():
        xg = unit(x[m & (fd.group == r["group"])])
        assert r["score_before"] == pytest.approx(np.mean([(xg @ c.vector).mean() for c in con]), abs=1e-12)


def test_mapped_store_arrays_are_released_after_reading(tmp_path, monkeypatch, data):
    from clipcal import store as store_mod

    x = data[0]
    path = tmp_path / "emb.npy"
    np.save(path, x)
    mapped = np.asarray(np.load(path, mmap_mode="r"))  # as MethodResult holds a run's embeddings_after
    seen = []
    real = store_mod.release_pages
    monkeypatch.setattr(store_mod, "release_pages", lambda *arrs: seen.append(arrs) or real(*arrs))
    np.testing.assert_array_equal(concepts.float_rows(mapped, np.arange(0, N, 3)), np.asarray(x, np.float64)[::3])
    # release_pages finds the map behind the view it is given (store.release_pages follows .base)
    assert seen and all(rowblocks.mapped_base(arrs[0])._mmap is mapped.base._mmap for arrs in seen)
    pd.testing.assert_frame_equal(
        concepts.attribute_decodability(x, mapped, data[2], data[3]).table.iloc[[0]],
        concepts.attribute_decodability(x, None, data[2], data[3]).table)


def test_large_classes_are_clustered_from_a_seeded_sample(data):
    """Above ``fit_max`` rows a class's k-means is fitted on a seeded sample and every row is assigned to its
    nearest centre: the peak follows the sample, not the class (CelebA's not-blond class held 2.1 GB)."""
    from sklearn.cluster import KMeans

    x, y, a, _, pred = data
    correct = pred == y
    fit_max = N // 12  # ≈ 1/6 of each class
    got, peak = traced_peak(lambda: concepts.discover_clusters(x, y, correct, k=3, a=a, n_init=1, fit_max=fit_max))
    # the sample's unit rows and KMeans' variance temporary (≈ 2 × 1/12 of FULL), the labels, the blocks
    assert peak < 0.5 * FULL, f"sampled discover_clusters allocated {peak / FULL:.2f}× a float64 copy"
    assert len(got.notes) == 2 and all(f"sample of {fit_max:,}" in n for n in got.notes)
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        fit_rows = np.sort(np.random.default_rng(0).choice(idx, fit_max, replace=False))
        km = KMeans(n_clusters=3, n_init=1, random_state=0).fit(unit(x)[fit_rows])
        expected = km.predict(unit(x)[idx])
        mine = got.labels[idx]
        # same partition (clusters are renumbered by accuracy)
        pairs = set(zip(expected.tolist(), mine.tolist()))
        assert len(pairs) == 3 and len({p[0] for p in pairs}) == 3
        assert sorted(got.table.loc[got.table["class_index"] == cls, "n"].tolist()) == sorted(
            np.bincount(expected).tolist())
    assert (got.labels >= 0).all()  # every row assigned, not only the sampled ones


def test_classes_up_to_fit_max_are_clustered_whole(data):
    x, y, a, _, pred = data
    whole = concepts.discover_clusters(x, y, pred == y, k=3, a=a, n_init=1, fit_max=None)
    default = concepts.discover_clusters(x, y, pred == y, k=3, a=a, n_init=1)
    np.testing.assert_array_equal(whole.labels, default.labels)
    assert default.notes == []
    with pytest.raises(concepts.MethodError, match="fit_max"):
        concepts.discover_clusters(x, y, pred == y, k=3, fit_max=2)


def test_decodability_probe_is_fitted_on_a_paired_sample_above_fit_max(data):
    """Above ``fit_max`` labelled train + val rows the probe is fitted on a seeded sample (the same rows before and
    after) and every test row is scored: the float64 fit rows follow the sample (CelebA: 1.1 GB → 0.3 GB)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler

    x, _, a, split, _ = data
    after = np.ascontiguousarray(x[:, ::-1])
    fit_max = N // 10
    whole, peak_whole = traced_peak(lambda: concepts.attribute_decodability(x, after, a, split, fit_max=None))
    got, peak = traced_peak(lambda: concepts.attribute_decodability(x, after, a, split, fit_max=fit_max))
    assert peak < 0.5 * peak_whole, f"sampled probe allocated {peak / peak_whole:.2f}× the whole-rows probe"
    assert got.table["n_train"].tolist() == [fit_max, fit_max] and whole.notes == []
    assert len(got.notes) == 1 and f"sample of {fit_max:,}" in got.notes[0]
    fit_idx = np.flatnonzero(np.isin(split, ["train", "val"]))
    keep = np.sort(np.random.default_rng(0).choice(fit_idx, fit_max, replace=False))
    test = split == "test"
    for emb, row in ((x, 0), (after, 1)):
        xs = StandardScaler().fit(np.asarray(emb, np.float64)[keep])
        clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000, random_state=0).fit(
            xs.transform(np.asarray(emb, np.float64)[keep]), a[keep])
        want = balanced_accuracy_score(a[test], clf.predict(xs.transform(np.asarray(emb, np.float64)[test])))
        assert got.table["balanced_accuracy"].iloc[row] == pytest.approx(want, abs=1e-9)


def test_decodability_of_one_side_only(data):
    x, _, a, split, _ = data
    after = np.ascontiguousarray(x[:, ::-1])
    both = concepts.attribute_decodability(x, after, a, split).table
    only_after = concepts.attribute_decodability(None, after, a, split).table
    assert only_after["representation"].tolist() == ["after"]
    pd.testing.assert_frame_equal(only_after.reset_index(drop=True), both.iloc[[1]].reset_index(drop=True))
    with pytest.raises(concepts.MethodError, match="both are None"):
        concepts.attribute_decodability(None, None, a, split)
