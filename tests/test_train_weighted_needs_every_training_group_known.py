"""Train-weighted average accuracy is not served when the training split's group proportions are unknown.

Reported by a new user: training waterbirds had an empty attribute cell, so their groups had training count 0;
the train-weighted average then weighted the landbird groups only (0.917 while every group was 0.833–1.0 and
a whole class was left out). Any training row with an unknown attribute makes the proportions unknown.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from clipcal.methods.base import MethodResult
from clipcal.metrics import method_table, train_group_weights


def _half_right(d):
    """Predictions right on every other row of each class (accuracy ≈ 0.5 in every group)."""
    pred = d.y.copy()
    pred[::2] = 1 - pred[::2]
    return MethodResult(method="m", probs=np.eye(2, dtype=np.float32)[pred], pred=pred, record={})


def test_known_training_groups_give_the_weighted_average(syn_small):
    d = syn_small
    w = train_group_weights(d)
    assert w is not None and np.array_equal(w, d.group_counts("train"))
    t = method_table({"m": _half_right(d)}, d)
    assert t["train_weighted"].notna().all()


def test_a_training_row_without_attribute_makes_train_weighted_unknown(syn_small):
    d = syn_small
    group = d.group.copy()
    a = d.a.copy()
    train_rows = np.flatnonzero(d.mask("train"))
    # every training image of class 1 loses its attribute label (the reported case: one class unlabelled)
    lost = train_rows[d.y[train_rows] == 1]
    group[lost], a[lost] = -1, -1
    d2 = dataclasses.replace(d, group=group, a=a)
    assert train_group_weights(d2) is None
    t = method_table({"m": _half_right(d2)}, d2)
    assert t["train_weighted"].isna().all()
    # the other figures are still computed from the evaluated split's own labels
    assert t["worst_group"].notna().all() and t["overall"].notna().all()


def test_one_unknown_training_row_is_enough(syn_small):
    d = syn_small
    group = d.group.copy()
    group[np.flatnonzero(d.mask("train"))[0]] = -1
    assert train_group_weights(dataclasses.replace(d, group=group)) is None


def _bench_with_unlabelled_training_class(syn_small_ds):
    bench = syn_small_ds.benchmark()
    t = bench.table.copy()
    lost = (t["split"] == "train") & (t["y"] == 1)
    t.loc[lost, ["a", "group"]] = -1
    return dataclasses.replace(bench, table=t)


def test_runs_store_and_serve_no_train_weighted_without_training_groups(syn_small_ds, tmp_store_root, monkeypatch):
    from clipcal import metrics
    from clipcal.runs import load_run, run_calibration
    from clipcal.store import Store

    store = Store(tmp_store_root)
    bench, es = _bench_with_unlabelled_training_class(syn_small_ds), syn_small_ds.embedding_set()
    run = run_calibration(bench, es, "erm", hparams={"erm": {"epochs": 2}}, store=store)
    assert run.metrics["train_weighted"].isna().all()
    # a run stored by the old rule (weights from the labelled training rows only) is not served with its number
    monkeypatch.setattr(metrics, "train_group_weights", lambda d: d.group_counts("train"))
    old = run_calibration(bench, es, "erm", hparams={"erm": {"epochs": 2}}, store=store, seed=1)
    assert old.metrics["train_weighted"].notna().all()
    monkeypatch.undo()
    assert load_run(old.key, store=store).metrics["train_weighted"].isna().all()
    assert not math.isnan(load_run(old.key, store=store).metrics["worst_group"].iloc[0])

