"""FeatureData checks, the Method interface and the shared last-layer trainer (methods/base.py, _train.py)."""

from __future__ import annotations

import inspect
import math
import threading

import numpy as np
import pandas as pd
import pytest
import torch

from clipcal.errors import Cancelled, MethodError
from clipcal.methods import METHODS, get_method, make_method
from clipcal.methods._train import (LastLayer, check_converged, initial_head, initial_weight, selection_score,
                                    train_last_layer)
from clipcal.methods.base import FeatureData, Progress


def _tiny(**over):
    kw = dict(features=np.eye(4, dtype=np.float32), embeddings=np.eye(4, dtype=np.float32), y=[0, 1, 0, 1],
              a=[0, 0, 1, 1], group=[0, 2, 1, 3], split=["train", "train", "val", "test"],
              sample_ids=["s0", "s1", "s2", "s3"], class_names=["c0", "c1"], attr_names=["x", "y"])
    kw.update(over)
    return FeatureData(**kw)


def test_lengths_differ_is_named():
    with pytest.raises(MethodError, match="different lengths") as e:
        _tiny(y=[0, 1, 0])
    assert "'y': 3" in str(e.value) and "'features': 4" in str(e.value)


def test_nan_and_inf_rows_are_named():
    f = np.eye(4, dtype=np.float32)
    f[2, 1] = np.nan
    f[3, 0] = np.inf
    with pytest.raises(MethodError, match=r"2 row\(s\): rows \[2, 3\]") as e:
        _tiny(features=f)
    assert "s2" in str(e.value) and e.value.hint


def test_class_absent_from_train(syn_small):
    d = _tiny(y=[0, 0, 1, 1])
    with pytest.raises(MethodError, match=r"\['c1'\] have no training samples"):
        make_method("erm", epochs=1).fit(d)


def test_subset_masks_and_counts(syn_small):
    d = syn_small
    v = d.subset("val")
    assert v.n == int(d.mask("val").sum()) and set(v.split) == {"val"}
    assert np.array_equal(v.features, d.features[d.indices("val")])
    assert d.group_counts("train").sum() == 400 and len(d.group_counts("train")) == 4
    assert list(d.class_counts("train")) == [200, 200]


class _FakeEmb:
    def __init__(self, ids, feats):
        self.sample_ids = np.array(ids)
        self.features = feats
        self.embeddings = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        self.proj_weight = None
        self.projection = "identity"
        self.has_text = False
        self.backbone_spec = "fake"
        self.skipped = pd.DataFrame({"sample_id": ["b"], "reason": ["truncated JPEG"]})
        self.key = "k"


def test_from_store_joins_by_id_and_drops_skipped(syn_small_ds):
    bench = syn_small_ds.benchmark()
    ids = bench.table["sample_id"].to_numpy()
    rng = np.random.default_rng(0)
    keep = np.ones(len(ids), bool)
    keep[[3, 10]] = False
    order = rng.permutation(np.flatnonzero(keep))  # embedding rows in another order than the table
    feats = syn_small_ds.data.features[order]
    d = FeatureData.from_store(bench, _FakeEmb(ids[order], feats))
    assert d.n == len(ids) - 2
    assert np.array_equal(d.sample_ids, ids[keep])  # table order
    row = np.flatnonzero(ids[keep] == ids[order[0]])[0]
    assert np.array_equal(d.features[row], feats[0])
    assert d.notes and "2 sample(s) without embeddings" in d.notes[0] and "truncated JPEG" in d.notes[0]
    assert d.features.flags.writeable


def test_from_store_rejects_unknown_ids(syn_small_ds):
    bench = syn_small_ds.benchmark()
    emb = _FakeEmb(["nope"], np.ones((1, 64), np.float32))
    with pytest.raises(MethodError, match="not in the benchmark table"):
        FeatureData.from_store(bench, emb)


def test_hparams_match_constructor_defaults():
    for name in METHODS:
        try:
            cls = get_method(name)
        except MethodError:
            continue  # a method module not written yet
        sig = inspect.signature(cls.__init__)
        params = [p for p in sig.parameters.values() if p.name != "self"]
        assert [p.name for p in params] == list(cls.HPARAMS), name
        for p in params:
            default = cls.HPARAMS[p.name][0]
            got = list(p.default) if isinstance(p.default, tuple) else p.default
            assert got == default, (name, p.name)
            assert isinstance(cls.HPARAMS[p.name][1], str) and cls.HPARAMS[p.name][1]
        got = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cls().get_params().items()}
        assert got == cls.defaults(), name
        assert cls.label and cls.name == name


def test_make_method_rejects_unknown():
    with pytest.raises(MethodError, match="unknown method"):
        get_method("nope")
    with pytest.raises(MethodError, match="no hyperparameter"):
        make_method("erm", bogus=1)
    e = make_method("erm", lr=0.5)
    assert e.get_params()["lr"] == 0.5 and e.lr == 0.5


def test_last_layer_logits_formula():
    rng = np.random.default_rng(0)
    W, T, h = rng.standard_normal((5, 3)), rng.standard_normal((2, 3)), rng.standard_normal((4, 5))
    m = LastLayer(W, T, scale=10.0, dropout=0.5).eval()
    z = h @ W
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    t = T / np.linalg.norm(T, axis=1, keepdims=True)
    out = m(torch.tensor(h, dtype=torch.float32)).detach().numpy()
    assert np.allclose(out, 10.0 * z @ t.T, atol=1e-5)
    m.train()
    m.generator = torch.Generator().manual_seed(0)
    dropped = m(torch.tensor(h, dtype=torch.float32)).detach().numpy()
    assert not np.allclose(dropped, out)  # dropout active in training only


def test_initialisation_sources(syn_small, syn_text):
    W, src = initial_weight(syn_small)
    assert src == "identity" and np.array_equal(W, np.eye(64, dtype=np.float32))
    T, hs = initial_head(syn_small, W)
    assert hs == "class-means" and T.shape == (2, 64) and np.allclose(np.linalg.norm(T, axis=1), 1)
    tr = syn_small.indices("train")
    m0 = syn_small.features[tr][syn_small.y[tr] == 0]
    m0 = m0 / np.linalg.norm(m0, axis=1, keepdims=True)
    assert np.allclose(T[0], m0.mean(0) / np.linalg.norm(m0.mean(0)), atol=1e-5)
    T2, hs2 = initial_head(syn_text, W)
    assert hs2 == "text" and np.allclose(T2, syn_text.text_head, atol=1e-6)


def test_selection_score_rules():
    y = np.array([0, 0, 1, 1, 1, 1])
    pred = np.array([0, 1, 1, 1, 1, 0])
    group = np.array([0, 1, 2, 2, 3, 3])
    assert selection_score("worst-class", y, pred, group, 2, 4) == pytest.approx(0.5)
    assert selection_score("worst-group", y, pred, group, 2, 4) == 0.0
    with pytest.raises(MethodError):
        selection_score("worst-group", y, pred, -np.ones(6, int), 2, 0)
    with pytest.raises(MethodError, match="unknown selection rule"):
        selection_score("best", y, pred, group, 2, 4)


def test_check_converged():
    assert check_converged([1.0] * 10)
    assert not check_converged(list(np.linspace(1, 0.1, 20)))
    assert not check_converged([1.0, 0.9])


def test_trainer_deterministic_with_progress_and_curves(syn_small):
    seen = []
    a = train_last_layer(syn_small, epochs=4, seed=7, progress=seen.append)
    b = train_last_layer(syn_small, epochs=4, seed=7)
    c = train_last_layer(syn_small, epochs=4, seed=8)
    pa, za = a.predict_all()
    pb, zb = b.predict_all()
    pc, _ = c.predict_all()
    assert np.array_equal(pa, pb) and np.array_equal(za, zb) and not np.array_equal(pa, pc)
    assert [p.done for p in seen] == [1, 2, 3, 4] and all(isinstance(p, Progress) for p in seen)
    assert seen[-1].total == 4 and seen[-1].stage == "erm" and "val_score" in seen[-1].metrics
    cur = a.curves
    assert list(cur.columns) == ["epoch", "stage", "split", "metric", "value"]
    assert set(cur["split"]) == {"train", "val"}  # test is never looked at during training
    val_wc = cur[(cur.split == "val") & (cur.metric == "worst_class") & (cur.epoch >= 1)]
    assert a.chosen_epoch == int(val_wc.loc[val_wc["value"].idxmax(), "epoch"])
    assert len(a.train_losses) == 4 and pa.shape == (syn_small.n, 2)
    assert np.allclose(pa.sum(1), 1, atol=1e-5)


def test_trainer_cancel_and_bad_weights(syn_small):
    ev = threading.Event()
    ev.set()
    with pytest.raises(Cancelled):
        train_last_layer(syn_small, epochs=2, cancel=ev)
    with pytest.raises(MethodError, match="sample_weight"):
        train_last_layer(syn_small, epochs=1, sample_weight=np.ones(3))
    with pytest.raises(MethodError, match="non-negative"):
        train_last_layer(syn_small, epochs=1, sample_weight=-np.ones(400))
    with pytest.raises(MethodError, match="epochs"):
        train_last_layer(syn_small, epochs=0)


def test_sample_weights_change_the_fit(syn_small):
    tr = syn_small.indices("train")
    minority = (syn_small.a[tr] != syn_small.y[tr]).astype(float)
    w = 1 + 50 * minority
    plain = train_last_layer(syn_small, epochs=5, seed=0)
    up = train_last_layer(syn_small, epochs=5, seed=0, sample_weight=w)
    assert not np.allclose(plain.predict_all()[0], up.predict_all()[0])


def test_sgd_matches_torch_sgd():
    from clipcal.methods._train import SGD

    rng = np.random.default_rng(0)
    p0 = torch.tensor(rng.standard_normal((4, 3)), dtype=torch.float64)
    a, b = p0.clone().requires_grad_(True), p0.clone().requires_grad_(True)
    ours = SGD([{"params": [a], "weight_decay": 1e-2}], lr=0.1, momentum=0.9)
    ref = torch.optim.SGD([b], lr=0.1, momentum=0.9, weight_decay=1e-2)
    for step in range(5):
        g = torch.tensor(rng.standard_normal((4, 3)), dtype=torch.float64)
        for opt, p in ((ours, a), (ref, b)):
            opt.zero_grad(set_to_none=True)
            (p * g).sum().backward()
            opt.step()
    assert torch.allclose(a, b, atol=1e-12)


def test_afr_linear_head_gradient():
    from clipcal.methods.afr import fit_linear_head

    rng = np.random.default_rng(1)
    z = rng.standard_normal((30, 5))
    y = rng.integers(0, 3, 30)
    w = np.full(30, 1 / 30)
    V0 = rng.standard_normal((3, 5))
    V, b = fit_linear_head(z, y, w, V0, reg=0.1)
    # at the optimum the gradient vanishes: w-weighted residuals balance the pull towards V0
    p = np.exp(z @ V.T + b)
    p /= p.sum(1, keepdims=True)
    r = w[:, None] * (p - np.eye(3)[y])
    assert np.abs(r.T @ z + 0.2 * (V - V0)).max() < 1e-5 and np.abs(r.sum(0)).max() < 1e-5
