"""Fit once, reuse (issue 13): inside ``with fit_memo():`` an identical ``train_last_layer`` call returns the stored
fit — ERM, JTT's identification model and CFR's stage 1 then train once — bit-equal to training again; off by
default; a different call, or a changed FeatureData, trains; a caller cannot change what the next call gets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipcal.methods import _train as T
from clipcal.methods.cfr import CFR
from clipcal.methods.erm import ERM
from clipcal.methods.jtt import JTT
from clipcal.synthetic import generate


@pytest.fixture(scope="module")
def data():
    return generate(n_train=240, n_val=90, n_test=90, dim=16, seed=3).data


@pytest.fixture
def loops(monkeypatch):
    """Counts the training loops that really ran (run_epochs calls, by stage)."""
    calls = []
    real = T.run_epochs

    def counting(model, **kw):
        calls.append(kw["stage"])
        return real(model, **kw)

    monkeypatch.setattr(T, "run_epochs", counting)
    return calls


def _same_result(a, b):
    assert np.array_equal(a.probs, b.probs) and np.array_equal(a.embeddings_after, b.embeddings_after)
    assert np.array_equal(a.fitted.W, b.fitted.W) and np.array_equal(a.fitted.head, b.fitted.head)
    assert np.array_equal(a.calibration_set, b.calibration_set)


def test_cfr_stage1_reuses_erm_inside_the_memo_and_the_results_are_bit_equal(data, loops):
    kw = dict(seed=1, device="cpu")
    erm_alone = ERM(epochs=6, **kw).fit(data).result_
    cfr_alone = CFR(erm_epochs=6, epochs=2, **kw).fit(data).result_
    assert loops.count("erm") == 2
    loops.clear()
    with T.fit_memo() as memo:
        erm = ERM(epochs=6, **kw).fit(data).result_
        cfr = CFR(erm_epochs=6, epochs=2, **kw).fit(data).result_
    assert loops.count("erm") == 1 and memo.hits == 1           # stage 1 was not trained again
    _same_result(erm, erm_alone)
    _same_result(cfr, cfr_alone)
    assert cfr.curves.equals(cfr_alone.curves)
    assert cfr.record["erm"]["reused"] is True and cfr_alone.record["erm"]["reused"] is False
    assert cfr.record["erm"]["trained_seconds"] == erm.record["trained_seconds"]
    assert any("stage 1 (ERM): the identical fit" in n for n in cfr.record["notes"])


def test_memo_is_off_by_default(data, loops):
    ERM(epochs=3, seed=0, device="cpu").fit(data)
    ERM(epochs=3, seed=0, device="cpu").fit(data)
    assert loops == ["erm", "erm"] and T.active_memo() is None


def test_jtt_identification_model_is_the_erm_fit(data, loops):
    with T.fit_memo() as memo:
        ERM(epochs=4, seed=0, device="cpu").fit(data)
        jtt = JTT(epochs=4, seed=0, device="cpu").fit(data).result_
    assert loops == ["erm", "jtt"] and memo.hits == 1   # the up-weighted second training is a different call
    assert jtt.record["erm_reused"] is True


@pytest.mark.parametrize("change", [{"seed": 1}, {"lr": 0.02}, {"batch_size": 64}, {"dropout": 0.2},
                                   {"selection": "worst-group"}, {"train_idx": "half"}, {"precision": "bf16"}])
def test_a_different_call_trains(data, loops, change):
    change = dict(change)
    if change.get("train_idx") == "half":
        change["train_idx"] = data.indices("train")[::2]
    with T.fit_memo() as memo:
        T.train_last_layer(data, epochs=2, device="cpu")
        T.train_last_layer(data, epochs=2, device="cpu", **change)
    assert memo.hits == 0 and len(loops) == 2


def test_auto_and_the_resolved_device_and_precision_are_the_same_call(data, loops):
    with T.fit_memo() as memo:
        T.train_last_layer(data, epochs=2, device="auto" if not torch.cuda.is_available() else "cuda",
                           precision="fp32")
        T.train_last_layer(data, epochs=2, device=T.resolved_device_name("auto"), precision="auto")
    assert memo.hits == 1 and len(loops) == 1


def test_content_identity_not_object_identity(data, loops):
    copy_ = data.subset(np.arange(data.n))                    # another object, the same content
    changed = data.subset(np.arange(data.n))
    changed.features[0, 0] += 1.0                               # one value differs
    with T.fit_memo() as memo:
        T.train_last_layer(data, epochs=2, device="cpu")
        again = T.train_last_layer(copy_, epochs=2, device="cpu")
        T.train_last_layer(changed, epochs=2, device="cpu")
    assert memo.hits == 1 and len(loops) == 2
    assert again.evaluator.data is copy_                        # predicts on the caller's own FeatureData


def test_a_caller_changing_its_result_does_not_change_the_next(data):
    with T.fit_memo():
        first = T.train_last_layer(data, epochs=2, device="cpu")
        W = first.weight().copy()
        with torch.no_grad():
            first.model.weight.mul_(0)                         # the caller mangles the model it got …
        first.train_losses.append(99.0)
        second = T.train_last_layer(data, epochs=2, device="cpu")
        with torch.no_grad():
            second.model.head.mul_(0)
        third = T.train_last_layer(data, epochs=2, device="cpu")
    assert np.array_equal(second.weight(), W) and np.array_equal(third.weight(), W)   # … the memo keeps its own
    assert 99.0 not in second.train_losses and np.abs(third.head()).sum() > 0
    assert (first.reused, second.reused, third.reused) == (False, True, True)
    assert second.trained_seconds == first.seconds


def test_nested_memos_share_one_and_the_memo_closes(data, loops):
    with T.fit_memo() as outer:
        T.train_last_layer(data, epochs=2, device="cpu")
        with T.fit_memo() as inner:
            T.train_last_layer(data, epochs=2, device="cpu")
        assert inner is outer and outer.hits == 1
    assert T.active_memo() is None
    T.train_last_layer(data, epochs=2, device="cpu")
    assert len(loops) == 2


def test_a_calibration_run_trains_the_shared_erm_fit_once(syn_small_ds, tmp_store_root, loops):
    from clipcal.runs import run_calibration
    from clipcal.store import Store

    run = run_calibration(syn_small_ds.benchmark(), syn_small_ds.embedding_set(), "erm,jtt,cfr",
                          hparams={"erm": {"epochs": 3}, "jtt": {"epochs": 3}, "cfr": {"erm_epochs": 3, "epochs": 1}},
                          store=Store(tmp_store_root), seed=2)
    assert loops.count("erm") == 1                              # ERM; JTT's identification and CFR's stage 1 reused
    rec = run.manifest["meta"]["records"]
    assert rec["erm"]["reused"] is False and rec["jtt"]["erm_reused"] is True and rec["cfr"]["erm"]["reused"] is True
    assert T.active_memo() is None                              # the run's memo is closed with the run


def test_each_feature_data_is_hashed_once_per_memo(data, loops, monkeypatch):
    """The memo key hashes the whole FeatureData; a run's several fits on the same object hash it once."""
    from clipcal.methods import fit_memo as fm

    hashed = []
    real = fm.data_digest
    monkeypatch.setattr(fm, "data_digest", lambda d: hashed.append(id(d)) or real(d))
    other = data.subset(np.arange(data.n))
    with T.fit_memo() as memo:
        for _ in range(3):
            T.train_last_layer(data, epochs=2, device="cpu")
        T.train_last_layer(data, epochs=3, device="cpu")       # another call on the same object: no new hash
        T.train_last_layer(other, epochs=2, device="cpu")      # another object: hashed, and a hit by content
    assert hashed == [id(data), id(other)]
    assert memo.hits == 3 and loops.count("erm") == 2
