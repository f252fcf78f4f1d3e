"""Zero-shot, ERM, JTT, AFR and DFR on the synthetic generator (clipcal/methods/)."""

from __future__ import annotations

import numpy as np
import pytest

from clipcal.errors import MethodError, NoTextTowerError
from clipcal.methods import AFR, DFR, ERM, JTT, ZeroShot
from clipcal.methods.afr import afr_weights, stratified_split
from clipcal.methods.dfr import balanced_subsample
from clipcal.metrics import summarize

FAST = {"epochs": 15}


def _test_wg(d, res):
    m = d.mask("test")
    return summarize(d.y[m], res.pred[m], d.group[m], d.group_counts("train"), d.n_classes)["worst_group"]


def _check_result(d, res, name):
    assert res.method == name
    assert res.probs.shape == (d.n, d.n_classes) and res.probs.dtype == np.float32
    assert np.allclose(res.probs.sum(1), 1.0, atol=1e-5) and (res.probs >= 0).all()
    assert np.array_equal(res.pred, res.probs.argmax(1))
    for k in ("uses_group_labels", "selection_rule", "hparams", "seed", "chosen_epoch", "notes"):
        assert k in res.record
    assert list(res.curves.columns) == ["epoch", "stage", "split", "metric", "value"]


@pytest.mark.parametrize("cls,kw", [(ERM, FAST), (JTT, FAST), (AFR, FAST), (DFR, {})])
def test_shapes_and_determinism(syn_small, cls, kw):
    a = cls(seed=0, **kw).fit(syn_small).result_
    b = cls(seed=0, **kw).fit(syn_small).result_
    _check_result(syn_small, a, cls.name)
    assert np.array_equal(a.probs, b.probs)
    assert a.record["hparams"]["seed"] == 0
    if cls is not DFR:
        assert a.embeddings_after.shape == (syn_small.n, syn_small.embed_dim)
        assert np.allclose(np.linalg.norm(a.embeddings_after, axis=1), 1, atol=1e-5)
        assert a.record["uses_group_labels"] is False
        assert a.record["selection_rule"].startswith("validation worst-class")
    else:
        assert a.embeddings_after is None and a.record["uses_group_labels"] is True


def test_erm_error_set_and_jtt_reuses_it(syn_small):
    erm = ERM(**FAST).fit(syn_small).result_
    tr = syn_small.indices("train")
    wrong = tr[erm.pred[tr] != syn_small.y[tr]]
    assert np.array_equal(erm.calibration_set, wrong) and len(wrong) > 0
    assert erm.record["error_set_size"] == len(wrong)
    jtt = JTT(**FAST).fit(syn_small).result_
    assert np.array_equal(jtt.calibration_set, wrong)
    assert set(jtt.curves["stage"]) == {"erm", "jtt"}


def test_dfr_at_least_as_good_as_erm(syn_small):
    erm = ERM().fit(syn_small).result_
    dfr = DFR().fit(syn_small).result_
    assert _test_wg(syn_small, dfr) >= _test_wg(syn_small, erm)
    assert _test_wg(syn_small, dfr) > 0.6


def test_dfr_without_attributes_is_a_clear_error(syn_small):
    d = syn_small.subset(np.arange(syn_small.n))
    d.a[:] = -1
    d.group[:] = -1
    with pytest.raises(MethodError, match="needs spurious-attribute"):
        DFR().fit(d)
    with pytest.raises(MethodError, match="worst-group"):
        ERM(epochs=1, selection="worst-group").fit(d)


def test_zeroshot_without_text_tower(syn_small):
    with pytest.raises(NoTextTowerError, match="not applicable: this backbone has no text tower"):
        ZeroShot().fit(syn_small)


def test_zeroshot_with_text_head_gives_expected_argmax(syn_text):
    res = ZeroShot().fit(syn_text).result_
    _check_result(syn_text, res, "zeroshot")
    expected = (syn_text.embeddings @ syn_text.text_head.T).argmax(1)
    assert np.array_equal(res.pred, expected)
    logits = 100.0 * syn_text.embeddings @ syn_text.text_head.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    assert np.allclose(res.probs, p / p.sum(1, keepdims=True), atol=1e-5)
    assert res.record["uses_group_labels"] is False and res.embeddings_after is None
    with pytest.raises(MethodError, match="need a '{}'"):
        ZeroShot(templates=["a photo"], backbone=_FakeBackbone()).fit(syn_text)


class _FakeBackbone:
    has_text = True
    spec = "fake"


def test_custom_class_names_need_one_per_class(syn_text):
    with pytest.raises(MethodError, match="1 class names given for 2 classes"):
        ZeroShot(class_names=["only"], backbone=_FakeBackbone()).fit(syn_text)


def test_jtt_upweighting(syn_small):
    erm = ERM(**FAST).fit(syn_small).result_
    # λ_up = 1: the second training is exactly ERM's (same start, seed, weights)
    same = JTT(lambda_up=1.0, **FAST).fit(syn_small).result_
    assert np.array_equal(same.probs, erm.probs)
    # λ_up = 20: the error set is fitted better than by ERM (which got all of it wrong)
    jtt = JTT(lambda_up=20.0, **FAST).fit(syn_small).result_
    err = erm.calibration_set
    assert (jtt.pred[err] == syn_small.y[err]).mean() > 0.3
    assert (erm.pred[err] == syn_small.y[err]).mean() == 0.0
    with pytest.raises(MethodError, match="lambda_up"):
        JTT(lambda_up=0.5, epochs=1).fit(syn_small)
    # id_epochs = T: the identification model is the last of T epochs (no selection)
    t1 = JTT(id_epochs=6, **FAST).fit(syn_small).result_
    assert t1.record["erm_chosen_epoch"] == 6 and t1.record["error_set_size"] == len(t1.calibration_set)


def test_afr_pieces():
    y = np.array([0] * 10 + [1] * 5)
    keep, held = stratified_split(y, np.arange(15), 0.2, seed=0)
    assert len(held) == 3 and sorted(y[held]) == [0, 0, 1] and len(np.intersect1d(keep, held)) == 0
    w = afr_weights(np.array([0.9, 0.1, 0.5, 0.5]), np.array([0, 0, 1, 1]), gamma=2.0, n_classes=2)
    assert w.sum() == pytest.approx(1.0)
    assert w[0] + w[1] == pytest.approx(0.5) and w[2] == pytest.approx(0.25)
    assert w[1] / w[0] == pytest.approx(np.exp(2.0 * 0.8))  # exp(−γ p): harder samples weigh more


def test_afr_record(syn_small):
    res = AFR(epochs=5, gammas=[0.0, 4.0], regs=[0.0]).fit(syn_small).result_
    assert res.record["chosen_gamma"] in (0.0, 4.0) and res.record["n_heldout"] == 80
    assert res.record["n_erm_part"] == 320


def test_dfr_balanced_subsample():
    g = np.array([0] * 10 + [1] * 3 + [2] * 5)
    sub = balanced_subsample(g, np.arange(18), np.random.default_rng(0))
    assert np.bincount(g[sub]).tolist() == [3, 3, 3]


def test_multiclass_methods():
    from clipcal.synthetic import generate

    d = generate(n_classes=3, n_train=300, n_val=180, n_test=180, seed=0).data
    for est in (ERM(epochs=5), JTT(epochs=5), AFR(epochs=5, gammas=[1.0], regs=[0.0]), DFR(Cs=[1.0], n_retrain=2)):
        res = est.fit(d).result_
        assert res.probs.shape == (d.n, 3) and np.allclose(res.probs.sum(1), 1, atol=1e-5)
