"""Concepts from example images (clipcal.cav, issue 12 item 3): on synthetic features where the answer is known,
a planted concept direction is recovered, TCAV is ≈ 1 for the class whose score rises along the concept and ≈ 0
for the other (significant against random directions), random concepts are not significant, and every number the
tool cannot vouch for (too few images, a probe at chance, a head or layer it cannot recover) is withheld."""

from __future__ import annotations

import numpy as np
import pytest

from clipcal import cav
from clipcal.errors import DataError
from clipcal.methods.base import FeatureData, MethodResult, softmax

D = 24
U = np.eye(D)[0]  # the planted concept direction ("water")
CLS = np.eye(D)[1]  # the class direction


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _data(n=400, seed=0, strength=2.5, p_water=0.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a = (rng.random(n) < p_water).astype(int)
    h = rng.normal(size=(n, D)) + strength * a[:, None] * U + 2.5 * (2 * y[:, None] - 1) * CLS
    split = np.array(["train", "val", "test"])[rng.integers(0, 3, n)]
    return FeatureData(features=h, embeddings=_unit(h), y=y, a=a, group=2 * y + a, split=split,
                       sample_ids=[f"s{i}" for i in range(n)], class_names=["landbird", "waterbird"],
                       attr_names=["land", "water"])


def _concept(n=40, seed=1, strength=2.5, name="water"):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, D)) + strength * U + 2.5 * rng.choice([-1, 1], size=(n, 1)) * CLS
    return cav.ConceptImages(name, _unit(h), h)


def _land():
    return _concept(seed=2, strength=0.0, name="land")


def _method_on_z(fd, direction):
    """A 'before-space' method (like zero-shot / DFR): class-1 logit = 5 z·direction, class 0 = 0."""
    logits = np.c_[np.zeros(fd.n), 5 * fd.embeddings @ direction + 0.3]
    return MethodResult("dfr", softmax(logits), softmax(logits).argmax(1))


def test_planted_concept_direction_is_recovered():
    rng = np.random.default_rng(0)
    counter = rng.normal(size=(200, D))
    concept = rng.normal(size=(200, D)) + 3.0 * U
    c = cav.learn_cav(concept, counter, seed=0)
    assert float(c.vector @ U) >= 0.9
    assert c.accuracy >= 0.9
    assert np.isclose(np.linalg.norm(c.vector), 1.0)


def test_tcav_is_one_for_the_class_whose_score_rises_along_the_concept_and_zero_for_the_other():
    fd = _data()
    res = _method_on_z(fd, CLS + 0.8 * U)  # waterbird's score rises with water
    rep = cav.cav_report(fd, res, _concept(), n_random=10, seed=0, counter=_land())  # relative CAV
    assert rep.concept == "water vs land"
    t = rep.tcav.set_index("class")
    assert t.loc["waterbird", "tcav"] == pytest.approx(1.0)
    assert t.loc["landbird", "tcav"] == pytest.approx(0.0)
    assert t["significant"].all() and (t["p_value"] < 0.05).all() and t["shown"].all()
    assert (t["n_random"] == 10).all() and set(t["space"]) == {"before"}
    # per-group scores: water groups point along the CAV, land groups do not
    g = rep.groups.set_index("name")
    assert g.loc["waterbird / water", "score_before"] > g.loc["waterbird / land", "score_before"] + 0.2
    assert g.loc["landbird / water", "share_before"] > g.loc["landbird / land", "share_before"] + 0.3
    assert rep.probe.set_index("space").loc["before", "separable"]


def test_random_concept_is_not_linearly_separable_and_gets_no_tcav_number():
    fd = _data()
    rng = np.random.default_rng(5)
    h = rng.normal(size=(40, D)) + 2.5 * rng.integers(0, 2, (40, 1)) * U + 2.5 * rng.choice([-1, 1], (40, 1)) * CLS
    rep = cav.cav_report(fd, _method_on_z(fd, CLS + 0.8 * U), cav.ConceptImages("random", _unit(h), h), seed=0)
    assert not rep.probe["separable"].any()
    assert not rep.tcav["shown"].any() and rep.tcav["tcav"].isna().all()
    assert rep.groups["score_before"].isna().all()
    assert any("not linearly separable" in n for n in rep.notes)


def test_random_directions_are_significant_at_about_the_nominal_rate():
    """TCAV scores of random-vs-random CAVs tested against other random CAVs: false positives near α, not more."""
    fd = _data(n=300)
    res = _method_on_z(fd, CLS + 0.8 * U)
    head = cav.recover_linear_head(fd.embeddings, res.probs)
    assert head.ok
    rows = fd.y == 1
    x = fd.embeddings
    hits = 0
    trials = 30
    for t in range(trials):
        rng = np.random.default_rng(100 + t)
        cavs = [cav.learn_cav(x[rng.choice(fd.n, 20, replace=False)], x[rng.choice(fd.n, 20, replace=False)],
                              seed=i) for i in range(20)]
        s = cav.tcav_scores(None, res.probs[rows], head.grad, 1, cavs)
        hits += cav.tcav_test(s[:10], s[10:]) < cav.ALPHA
    assert hits / trials <= 0.2


def test_linear_head_is_recovered_from_stored_probabilities():
    rng = np.random.default_rng(0)
    z = _unit(rng.normal(size=(300, 16)))
    G = rng.normal(size=(3, 16))
    p = softmax(8 * z @ G.T + rng.normal(size=3))
    fit = cav.recover_linear_head(z, p.astype(np.float32))
    assert fit.ok
    want = 8 * (G - G[0])
    assert np.allclose(fit.grad, want, atol=1e-2 * np.abs(want).max())
    # scores that are not softmax-linear in the representation are refused, with a reason
    bad = softmax(np.c_[np.zeros(300), 8 * np.sin(6 * z[:, 0]) * np.cos(5 * z[:, 1])])
    nf = cav.recover_linear_head(z, bad)
    assert not nf.ok and "not reproduced" in nf.reason


def test_last_layer_is_recovered_from_the_runs_calibrated_embeddings():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(300, 20))
    W = rng.normal(size=(20, 12))
    fit = cav.recover_last_layer(h, _unit(h @ W))
    assert fit.ok and fit.heldout_cos > 0.999
    new = rng.normal(size=(30, 20))
    got, why = fit.apply(new)
    assert why == "" and np.einsum("ij,ij->i", got, _unit(new @ W)).min() > 0.999
    # a non-linear map is refused
    bad = cav.recover_last_layer(h, _unit(np.tanh(3 * h @ W) ** 3))
    assert not bad.ok and "does not store W" in bad.reason
    assert bad.apply(new)[0] is None


def test_after_space_where_calibration_removed_the_concept_direction():
    """Calibrated z' = normalize(h W) with W projecting out the concept: concept images outside the benchmark are
    mapped with the recovered W, and the concept is no longer separable after (its scores are withheld)."""
    fd = _data()
    P = np.eye(D) - np.outer(U, U)
    z_after = _unit(fd.features @ P)
    logits = np.c_[np.zeros(fd.n), 5 * z_after @ CLS]
    res = MethodResult("cfr", softmax(logits), softmax(logits).argmax(1), embeddings_after=z_after)
    rep = cav.cav_report(fd, res, _concept(), n_random=10, counter=_land())
    probe = rep.probe.set_index("space")
    assert probe.loc["before", "separable"] and not probe.loc["after", "separable"]
    assert rep.groups["score_before"].notna().all() and rep.groups["score_after"].isna().all()
    assert set(rep.tcav["space"]) == {"after"} and not rep.tcav["shown"].any()
    assert any("recovered from the run" in n for n in rep.notes)


def test_selection_concept_uses_the_runs_own_rows_in_both_spaces():
    """Counterexamples = random images of the benchmark (the paper's default); water is rare there."""
    fd = _data(p_water=0.2)
    z_after = _unit(fd.features * np.r_[1.0, np.ones(D - 1)])
    logits = np.c_[np.zeros(fd.n), 5 * z_after @ (CLS + 0.8 * U)]
    res = MethodResult("cfr", softmax(logits), softmax(logits).argmax(1), embeddings_after=z_after)
    ids = fd.sample_ids[fd.a == 1][:30]
    con = cav.selection_concept(fd, ids)
    assert len(con) == 30 and np.array_equal(con.embeddings, fd.embeddings[con.rows])
    rep = cav.cav_report(fd, res, con, n_random=10)
    t = rep.tcav.set_index("class")
    assert t.loc["waterbird", "tcav"] == pytest.approx(1.0) and t.loc["landbird", "tcav"] == pytest.approx(0.0)
    assert rep.groups["score_after"].notna().all()
    with pytest.raises(DataError, match="not in this run"):
        cav.selection_concept(fd, ["nope"])


def test_too_few_concept_images_is_a_clear_error(tmp_path):
    fd = _data()
    with pytest.raises(DataError, match=f"at least {cav.MIN_CONCEPT_IMAGES}"):
        cav.cav_report(fd, _method_on_z(fd, CLS), _concept(n=cav.MIN_CONCEPT_IMAGES - 1))
    with pytest.raises(DataError, match="does not exist"):
        cav.folder_benchmark(tmp_path / "missing")
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="holds 1 image file"):
        cav.folder_benchmark(tmp_path)


def test_last_layer_with_more_dimensions_than_rows_is_recovered_around_its_starting_layer():
    """d > N (e.g. Lite0's 1280-d features, a small demo): SGD moves W only within the span of the training features,
    so W = start + Δ (Δ of least norm) is exact; without the start, new features outside the span are refused."""
    rng = np.random.default_rng(0)
    n, d, e = 60, 90, 16
    h = rng.normal(size=(n, d))
    P = rng.normal(size=(d, e)) / np.sqrt(d)
    fit_rows = np.ones(n, bool)
    fit_rows[::10] = False  # the rows recover_last_layer holds out
    # SGD's updates are outer products with training features, small next to the start at the reference lr (on the
    # demo with Lite0, 1,080 rows × 1,280 dims, the recovered ERM layer reproduced held-out rows to cosine 0.999999)
    W = P + 0.05 * h[fit_rows].T @ rng.normal(size=(fit_rows.sum(), e)) / n
    z = _unit(h @ W)
    new = rng.normal(size=(20, d))
    with_start = cav.recover_last_layer(h, z, prior=P)
    got, why = with_start.apply(new)
    assert with_start.ok and why == "" and np.einsum("ij,ij->i", got, _unit(new @ W)).min() > 0.999
    without = cav.recover_last_layer(h, z)
    if without.ok:
        assert without.apply(new)[0] is None and "span" in without.apply(new)[1]


def test_images_outside_the_benchmark_go_through_the_runs_stored_last_layer():
    """A run that keeps its fitted W (issue 11.3) maps concept images outside the benchmark through that W
    exactly — no least-squares recovery, no refusal; runs stored without one still fall back to recovery."""
    from clipcal.methods import ERM
    from clipcal.synthetic import generate

    fd = generate(n_train=300, n_val=100, n_test=100, dim=16, seed=0).data
    result = ERM(epochs=3, seed=0).fit(fd).result_
    h_new = np.random.default_rng(5).normal(size=(12, fd.feature_dim)).astype(np.float32)
    images = cav.ConceptImages("outside", embeddings=np.zeros((12, fd.embed_dim)), features=h_new)
    notes: list[str] = []
    after, fit = cav._after_embeddings(fd, result, images, None, notes)
    assert fit.source == "stored" and not notes
    np.testing.assert_allclose(after, result.fitted.transform(h_new), atol=1e-5)

    result.fitted = None  # as a run stored before fitted layers were kept
    _, fit = cav._after_embeddings(fd, result, images, None, [])
    assert fit.source == "recovered"
