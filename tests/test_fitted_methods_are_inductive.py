"""Fitted methods are inductive estimators (issue 11.3).

Kind-level rules pinned here:

* after ``fit`` every last-layer method (ERM, JTT, AFR, DFR, CFR, zero-shot) holds its fitted model as
  trailing-underscore attributes (``W_``, ``head_``, ``scale_``, ``bias_``, ``classes_``) and
  ``predict_proba`` / ``predict`` / ``transform`` on features give the fitted rows' own result (the all-rows
  result is a view of the same model);
* before ``fit`` they raise a clear "not fitted yet" error (a MethodError); bad features are named;
* a stored run keeps the fitted model as arrays, so ``load_run(key).fitted(m).predict_proba(h)`` equals the
  stored run's probabilities for the same rows;
* the shared last-layer hyperparameters are declared once (ERM, JTT and AFR do not repeat them).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from clipcal.errors import MethodError
from clipcal.methods import NotFittedError, make_method
from clipcal.methods.last_layer import LAST_LAYER_HPARAMS, LastLayerMethod

FAST = {"erm": {"epochs": 4}, "jtt": {"epochs": 3}, "afr": {"epochs": 3, "gammas": [0.0, 4.0], "regs": [0.0]},
        "dfr": {"n_retrain": 2}, "cfr": {"erm_epochs": 4, "epochs": 3, "lr": 1e-2, "calibration_errors": "train"},
        "zeroshot": {}}


@pytest.fixture(scope="module")
def fitted(syn_text):
    return {m: make_method(m, **hp).fit(syn_text) for m, hp in FAST.items()}


@pytest.mark.parametrize("method", list(FAST))
def test_predict_proba_on_features_gives_the_fitted_rows_own_result(method, fitted, syn_text):
    est = fitted[method]
    r = est.result_
    assert est.W_.shape == (syn_text.feature_dim, syn_text.embed_dim)
    assert est.head_.shape == (syn_text.n_classes, syn_text.embed_dim)
    assert np.isfinite(est.scale_) and est.bias_.shape == (syn_text.n_classes,)
    assert est.classes_ == syn_text.class_names
    # every row, passed as NEW features (a copy, float32): the result of fit is a view of the fitted model
    h = np.array(syn_text.features, dtype=np.float32, copy=True)
    probs = est.predict_proba(h)
    assert probs.dtype == np.float32 and probs.shape == r.probs.shape
    np.testing.assert_allclose(probs, r.probs, atol=2e-5)
    np.testing.assert_array_equal(est.predict(h), r.pred)
    z = est.transform(h)
    assert z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    expected_z = r.embeddings_after if r.embeddings_after is not None else syn_text.embeddings
    np.testing.assert_allclose(z, expected_z, atol=1e-5)


@pytest.mark.parametrize("method", list(FAST))
def test_predict_before_fit_says_fit_first(method):
    est = make_method(method)
    for call in (est.predict_proba, est.predict, est.transform):
        with pytest.raises(NotFittedError, match="not fitted yet: call fit") as err:
            call(np.zeros((2, 64), np.float32))
        assert isinstance(err.value, MethodError)


def test_features_of_the_wrong_width_or_with_nan_are_refused_by_name(fitted, syn_text):
    est = fitted["erm"]
    with pytest.raises(MethodError, match=r"features must be \[n, 64\]"):
        est.predict_proba(np.zeros((3, 5), np.float32))
    bad = np.array(syn_text.features[:4], copy=True)
    bad[2, 0] = np.nan
    with pytest.raises(MethodError, match=r"rows \[2\]"):
        est.predict(bad)


def test_a_refit_replaces_the_fitted_layer(syn_small):
    est = make_method("erm", epochs=2).fit(syn_small)
    W1 = est.W_.copy()
    est.set_params(lr=0.05, epochs=3).fit(syn_small)
    assert not np.array_equal(W1, est.W_)
    np.testing.assert_allclose(est.predict_proba(syn_small.features), est.result_.probs, atol=2e-5)


def test_stored_run_rebuilds_every_fitted_model(syn_small_ds, tmp_store_root):
    """``predict_proba`` of the rebuilt model on the run's own features equals the stored predictions."""
    from clipcal.runs import load_run, run_calibration
    from clipcal.store import Store

    store = Store(tmp_store_root)
    methods = ["erm", "jtt", "afr", "dfr", "cfr"]
    run = run_calibration(syn_small_ds.benchmark(), syn_small_ds.embedding_set(), methods,
                          hparams={m: FAST[m] for m in methods}, store=store)
    loaded = load_run(run.key, store)
    data = run.data
    for m in methods:
        f = loaded.fitted(m)
        stored = loaded.results[m]
        assert f.classes == tuple(data.class_names)
        np.testing.assert_array_equal(f.W, run.results[m].fitted.W)
        np.testing.assert_allclose(f.predict_proba(data.features), stored.probs, atol=2e-5)
        np.testing.assert_array_equal(f.predict(data.features), stored.pred)
        if stored.embeddings_after is not None:
            np.testing.assert_allclose(f.transform(data.features), stored.embeddings_after, atol=1e-5)
    with pytest.raises(MethodError, match="no result"):
        loaded.fitted("zeroshot")


def test_shared_last_layer_hyperparameters_are_declared_once():
    from clipcal.methods.afr import AFR
    from clipcal.methods.erm import ERM
    from clipcal.methods.jtt import JTT

    shared = list(LAST_LAYER_HPARAMS)
    for cls in (ERM, JTT, AFR):
        assert issubclass(cls, LastLayerMethod)
        own_init = cls.__dict__.get("__init__")
        if own_init is not None:  # only its own arguments are written in its constructor
            written = own_init.__code__.co_varnames[:own_init.__code__.co_argcount]
            assert not set(written) & set(shared), cls.__name__
        params = list(inspect.signature(cls.__init__).parameters)[1:]
        assert params[-len(shared):] == shared and params == list(cls.HPARAMS), cls.__name__
    j = JTT(lambda_up=5.0, lr=0.5, seed=3)
    assert (j.lambda_up, j.lr, j.seed, j.epochs) == (5.0, 0.5, 3, LAST_LAYER_HPARAMS["epochs"][0])
