"""Hyperparameter domains are declared once and checked for every method before any work; a non-finite loss
(or model output, or validation score) stops the method, and nothing of it is stored (issue 10, item 6).

Faults this pins (each accepted before, and either trained on NaN or crashed with a raw numpy error):
``erm.lr=NaN``, ``erm.lr=Infinity``, ``erm.lr=1e9`` (trained, every epoch "loss nan", run stored as normal),
``erm.dropout=2``, ``cfr.w_ce=-1e9``, ``dfr.n_retrain=0`` (numpy ``ValueError``), features of 3.4e38.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import clipcal.commands.data as data_cmd
from clipcal.cli import main
from clipcal.commands.calibrate import check_hparams, parse_sets
from clipcal.errors import MethodError
from clipcal.methods import METHODS, get_method, make_method
from clipcal.methods.base import FeatureData, NonFiniteError
from clipcal.methods.params import Interval, ListOf, validate_params
from clipcal.runs import list_runs, resolve_hparams, run_calibration
from clipcal.store import Store


@pytest.fixture
def no_benchmark(monkeypatch):
    """Fail the test if a command gets as far as loading the benchmark (the check must come first)."""
    monkeypatch.setattr(data_cmd, "benchmark_from_args",
                        lambda *a, **k: pytest.fail("benchmark loaded before the hyperparameters were checked"))


def _all_methods():
    return [get_method(m) for m in METHODS]


# --- the declarations --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(METHODS))
def test_every_hyperparameter_of_every_method_has_one_domain_holding_its_default(name):
    """Kind-level rule: each method declares the domain of every constructor argument, and its default is in it."""
    cls = get_method(name)
    assert set(cls.PARAM_CONSTRAINTS) == set(cls._param_names()), name
    validate_params(cls.PARAM_CONSTRAINTS, cls().get_params(), name, cls.defaults())  # no error
    cls().check_params()


def test_shared_last_layer_domains_are_one_declaration():
    """ERM, JTT, AFR and CFR take the last-layer domains from one dict (not copies that can drift)."""
    from clipcal.methods._train import LAST_LAYER_CONSTRAINTS

    for name in ("erm", "jtt", "afr", "cfr"):
        cls = get_method(name)
        for k, cs in LAST_LAYER_CONSTRAINTS.items():
            assert cls.PARAM_CONSTRAINTS[k] is cs, (name, k)
    cfr = get_method("cfr")
    assert cfr.PARAM_CONSTRAINTS["erm_lr"] is LAST_LAYER_CONSTRAINTS["lr"]
    assert cfr.PARAM_CONSTRAINTS["erm_epochs"] is LAST_LAYER_CONSTRAINTS["epochs"]


def test_choices_come_from_the_domains():
    """The dashboard's select boxes (CHOICES) are derived from the declared domains, not declared a second time."""
    cfr, dfr, erm = get_method("cfr"), get_method("dfr"), get_method("erm")
    assert cfr.CHOICES["negatives"] == ("hard", "random-other-class")
    assert set(cfr.CHOICES) >= {"negatives", "loss_schedule", "init", "calibration_errors", "selection"}
    assert dfr.CHOICES == {"refit": ("full-val", "half")}
    assert erm.CHOICES == {"selection": ("worst-class", "worst-group")}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_no_numeric_hyperparameter_of_any_method_accepts_nan_or_infinity(bad):
    """Kind-level rule: NaN and ±inf lie outside every numeric domain (single values and grids alike)."""
    checked = 0
    for cls in _all_methods():
        for k, cs in cls.PARAM_CONSTRAINTS.items():
            if any(isinstance(c, Interval) for c in cs):
                value = bad
            elif any(isinstance(c, ListOf) and isinstance(c.item, Interval) for c in cs):
                value = [1.0, bad]
            else:
                continue
            with pytest.raises(MethodError, match=f"{cls.name}.{k} must be"):
                resolve_hparams([cls.name], {cls.name: {k: value}}, seed=0, selection=None)
            checked += 1
    assert checked >= 40  # every method's numbers, not a sample


# --- the reported values, through the one entry point (resolve_hparams / check_params) ------------------


@pytest.mark.parametrize("method, name, value, words", [
    ("erm", "lr", math.nan, "erm.lr must be a finite number > 0, got nan"),
    ("erm", "lr", math.inf, "erm.lr must be a finite number > 0, got inf"),
    ("erm", "dropout", 2, "erm.dropout must be a number in [0, 1), got 2"),
    ("cfr", "w_ce", -1e9, "cfr.w_ce must be a finite number > 0, got -1e+09"),
    ("dfr", "n_retrain", 0, "dfr.n_retrain must be a whole number ≥ 1, got 0"),
    ("jtt", "momentum", 1.0, "jtt.momentum must be a number in [0, 1), got 1"),
    ("afr", "heldout_frac", 1.0, "afr.heldout_frac must be a number in (0, 1), got 1"),
    ("cfr", "lr", math.nan, "cfr.lr must be a finite number > 0, got nan"),   # same words as erm.lr now
])
def test_out_of_domain_values_are_refused_before_any_work(syn_small, method, name, value, words):
    with pytest.raises(MethodError) as err:
        resolve_hparams([method], {method: {name: value}}, seed=0, selection=None)
    assert err.value.message == words
    assert "(the default)" in err.value.hint
    with pytest.raises(MethodError, match="must be"):  # fit checks the same way, before any training
        make_method(method, **{name: value}).fit(syn_small)


def test_dfr_n_retrain_zero_is_a_clear_error_not_a_numpy_error(syn_small):
    """It used to end in ``ValueError: matmul: Input operand 1 does not have enough dimensions``."""
    with pytest.raises(MethodError, match=r"dfr.n_retrain must be a whole number ≥ 1, got 0"):
        make_method("dfr", n_retrain=0).fit(syn_small)


@pytest.mark.parametrize("item, words", [
    ("erm.lr=NaN", "erm.lr must be a finite number > 0, got nan"),
    ("erm.lr=Infinity", "erm.lr must be a finite number > 0, got inf"),
    ("erm.dropout=2", "erm.dropout must be a number in [0, 1), got 2"),
    ("cfr.w_ce=-1e9", "cfr.w_ce must be a finite number > 0, got -1e+09"),
    ("dfr.n_retrain=0", "dfr.n_retrain must be a whole number ≥ 1, got 0"),
])
def test_cli_refuses_out_of_domain_set_values_before_loading_anything(no_benchmark, capsys, item, words):
    method = item.split(".")[0]
    assert main(["calibrate", "--backbone", "tiny:clip", "--methods", method, "--set", item]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_cfr_weight_zero_points_to_the_switch():
    with pytest.raises(MethodError) as err:
        check_hparams(["cfr"], parse_sets(["cfr.w_supcon=0"]))
    assert "cfr.w_supcon must be > 0" in err.value.message and "cfr.supcon=false" in err.value.hint


# --- non-finite training stops the method ----------------------------------------------------------------


def test_a_diverging_lr_stops_erm_with_the_epoch_and_the_likely_cause(syn_small):
    """lr = 1e9 is a finite, in-domain value; the loss becomes NaN at epoch 5 on this data. Before: 100 epochs of
    'loss nan', the model of epoch 1 returned as if nothing happened."""
    with pytest.raises(NonFiniteError) as err:
        make_method("erm", lr=1e9, epochs=10).fit(syn_small)
    msg, hint = err.value.message, err.value.hint
    assert msg.startswith("erm: the training loss became nan at erm epoch ")
    assert 1 <= int(msg.split("erm epoch ")[1].split(";")[0]) <= 10
    assert "nothing was kept" in msg
    assert "learning rate is probably too large (lr = 1e+09)" in hint
    assert isinstance(err.value, MethodError)


def test_a_diverging_lr_stops_cfr_stage_one_naming_cfr(syn_small):
    with pytest.raises(NonFiniteError, match=r"^cfr: the training loss became nan at erm epoch \d+"):
        make_method("cfr", erm_lr=1e9, erm_epochs=10, epochs=1).fit(syn_small)


def test_a_diverged_method_is_not_stored_and_the_others_are(syn_small_ds, tmp_store_root):
    store = Store(tmp_store_root)
    bench, es = syn_small_ds.benchmark(), syn_small_ds.embedding_set()
    run = run_calibration(bench, es, "erm,dfr", hparams={"erm": {"lr": 1e9, "epochs": 10}}, store=store)
    assert list(run.results) == ["dfr"]
    why = run.not_applicable["erm"]
    assert why.startswith("failed: erm: the training loss became nan") and "learning rate" in why
    assert not [k for k in run.manifest["meta"]["records"] if k == "erm"]
    # alone, the diverging method leaves nothing in the store
    with pytest.raises(MethodError, match="no method could run, so nothing was stored"):
        run_calibration(bench, es, "erm", hparams={"erm": {"lr": 1e9, "epochs": 10}}, store=store)
    assert len(list_runs(store)) == 1


def test_nan_model_outputs_are_an_error_not_a_score(syn_small):
    """Sibling: argmax of NaN probabilities is class 0, which gave a finite (wrong) validation score."""
    import torch

    from clipcal.methods._train import Evaluator, LastLayer, initial_head, initial_weight

    W, _ = initial_weight(syn_small)
    T, _ = initial_head(syn_small, W)
    model = LastLayer(W, T)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    ev = Evaluator(syn_small, torch.device("cpu"))
    with pytest.raises(NonFiniteError, match="outputs became NaN or inf at erm epoch 3"):
        ev.evaluate(model, 3, "erm")


def test_nan_in_an_epoch_loss_term_stops_the_loop(syn_small):
    """Sibling: any figure an epoch reports (CFR's loss_ce, loss_contrastive …) must be finite, not only 'loss'."""
    import torch

    from clipcal.methods._train import Evaluator, LastLayer, initial_head, initial_weight, run_epochs

    W, _ = initial_weight(syn_small)
    T, _ = initial_head(syn_small, W)
    model = LastLayer(W, T)
    ev = Evaluator(syn_small, torch.device("cpu"))
    with pytest.raises(NonFiniteError, match=r"became inf at cfr epoch 2.*") as err:
        run_epochs(model, epochs=5, evaluator=ev, stage="cfr", lr=0.5,
                   train_epoch=lambda ep: {"loss": 1.0, "loss_ce": 1.0 if ep < 2 else math.inf})
    assert "lr = 0.5" in err.value.hint


# --- input features -----------------------------------------------------------------------------------------


def _data(**over):
    n = 6
    kw = dict(features=np.ones((n, 3), np.float32), embeddings=np.ones((n, 3), np.float32),
              y=[0, 1, 0, 1, 0, 1], a=[-1] * n, group=[-1] * n, split=["train"] * 2 + ["val"] * 2 + ["test"] * 2,
              sample_ids=[f"s{i}" for i in range(n)], class_names=["a", "b"])
    kw.update(over)
    return kw


@pytest.mark.parametrize("value", [np.nan, np.inf, 3.4e38])
def test_broken_feature_values_are_refused_naming_rows_and_ids(value):
    """NaN, inf and overflow-sized values (corrupt store bytes read as |h| ≈ 3.4e38) never reach training."""
    f = np.ones((6, 3), np.float32)
    f[4, 2] = value
    with pytest.raises(MethodError) as err:
        FeatureData(**_data(features=f))
    assert "features contain NaN, inf or values beyond" in err.value.message
    assert "rows [4]" in err.value.message and "s4" in err.value.message


def test_broken_text_head_and_projection_are_refused():
    head = np.ones((2, 3), np.float32)
    head[1, 0] = np.nan
    with pytest.raises(MethodError, match="text head contains NaN"):
        FeatureData(**_data(text_head=head))
    proj = np.eye(3, dtype=np.float32)
    proj[0, 0] = np.inf
    with pytest.raises(MethodError, match="projection .*contains NaN"):
        FeatureData(**_data(proj_weight=proj))


def test_afr_weights_stay_finite_for_any_finite_gamma(syn_small):
    """Sibling in AFR: exp(γ) overflowed from γ ≈ 710, the weights became NaN, L-BFGS returned a NaN layer and
    argmax(NaN) = class 0 was scored as a real model. In-domain values must give a finite result or an error."""
    from clipcal.methods.afr import afr_weights

    w = afr_weights(np.array([0.0, 1.0, 0.5, 0.2]), np.array([0, 0, 1, 1]), gamma=1000.0, n_classes=2)
    assert np.isfinite(w).all() and w.sum() == pytest.approx(1.0)
    assert w[0] == pytest.approx(0.5) and w[1] == pytest.approx(0.0)  # the hard sample takes its class's half
    r = make_method("afr", gammas=[1000.0], regs=[0.0], epochs=3).fit(syn_small).result_
    assert np.isfinite(r.probs).all() and r.record["chosen_gamma"] == 1000.0
