"""Group metrics against hand-computed values (clipcal/metrics.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from clipcal.methods.base import MethodResult
from clipcal.metrics import METRIC_DEFINITIONS, group_table, method_table, summarize, wilson_interval


def _make(group_sizes, group_correct, n_attrs=2):
    """y/pred/group arrays with the given per-group sizes and numbers correct (binary classes)."""
    y, pred, group = [], [], []
    for g, (n, c) in enumerate(zip(group_sizes, group_correct)):
        cls = g // n_attrs
        y += [cls] * n
        pred += [cls] * c + [1 - cls] * (n - c)
        group += [g] * n
    return np.array(y), np.array(pred), np.array(group)


def test_wilson_interval_known_values():
    lo, hi = wilson_interval([8, 0, 56, 0], [10, 5, 56, 0])
    # 8/10: the textbook Wilson 95 % interval (0.4902, 0.9433); 0/5 → (0, 0.4345); n = 0 → NaN
    assert lo[0] == pytest.approx(0.4901625, abs=1e-6) and hi[0] == pytest.approx(0.9433178, abs=1e-6)
    assert lo[1] == 0.0 and hi[1] == pytest.approx(0.4344825, abs=1e-6)
    assert lo[2] == pytest.approx(0.9358061, abs=1e-6) and hi[2] == 1.0
    assert math.isnan(lo[3]) and math.isnan(hi[3])


def test_waterbirds_train_weighted_average():
    # Waterbirds training counts (landbird/land, landbird/water, waterbird/land, waterbird/water)
    train_counts = np.array([3498, 184, 56, 1057])
    y, pred, group = _make([100, 100, 100, 100], [99, 80, 70, 95])
    s = summarize(y, pred, group, train_counts, n_classes=2)
    expected = (3498 * 0.99 + 184 * 0.80 + 56 * 0.70 + 1057 * 0.95) / 4795
    assert s["train_weighted"] == pytest.approx(expected, abs=1e-12)
    assert s["train_weighted"] == pytest.approx(4653.57 / 4795, abs=1e-9)  # 3463.02 + 147.2 + 39.2 + 1004.15
    assert s["worst_group"] == pytest.approx(0.70)
    assert s["overall"] == pytest.approx(344 / 400)
    assert s["mean_group"] == pytest.approx((0.99 + 0.80 + 0.70 + 0.95) / 4)
    assert s["worst_class"] == pytest.approx(165 / 200)  # class 1: 70 + 95 of 200
    assert s["n"] == 400


def test_three_averages_differ_when_groups_are_unequal():
    y, pred, group = _make([10, 30, 50, 10], [5, 30, 25, 10])
    s = summarize(y, pred, group, np.array([1, 1, 1, 1]), n_classes=2)
    assert s["overall"] == pytest.approx(70 / 100)
    assert s["mean_group"] == pytest.approx((0.5 + 1.0 + 0.5 + 1.0) / 4)
    assert s["train_weighted"] == pytest.approx(0.75)  # equal training proportions
    assert s["worst_group"] == pytest.approx(0.5)


def test_empty_groups_are_shown_and_ignored():
    y, pred, group = _make([4, 0, 5, 2], [3, 0, 5, 1])
    t = group_table(y, pred, group, ["land", "water"], ["l", "w"])
    assert list(t["group"]) == [0, 1, 2, 3]
    assert list(t["n"]) == [4, 0, 5, 2]
    assert list(t["correct"]) == [3, 0, 5, 1]
    assert math.isnan(t.loc[1, "accuracy"]) and math.isnan(t.loc[1, "ci_low"])
    assert t.loc[0, "accuracy"] == pytest.approx(0.75)
    assert list(t["class"]) == ["land", "land", "water", "water"]
    assert list(t["attribute"]) == ["l", "w", "l", "w"]
    s = summarize(y, pred, group, np.array([10, 10, 10, 10]), n_classes=2)
    assert s["worst_group"] == pytest.approx(0.5)
    assert s["mean_group"] == pytest.approx((0.75 + 1.0 + 0.5) / 3)
    # training weights renormalised over the groups present in this split
    assert s["train_weighted"] == pytest.approx((0.75 + 1.0 + 0.5) / 3)


def test_no_group_labels_gives_class_rows_and_nan_group_metrics():
    y = np.array([0, 0, 1, 1, 1])
    pred = np.array([0, 1, 1, 1, 0])
    group = -np.ones(5, dtype=int)
    t = group_table(y, pred, group, ["a", "b"], [])
    assert list(t["group"]) == [-1, -1] and list(t["attribute"]) == ["unknown", "unknown"]
    assert list(t["n"]) == [2, 3] and t["accuracy"].tolist() == pytest.approx([0.5, 2 / 3])
    s = summarize(y, pred, group, None, n_classes=2)
    assert math.isnan(s["worst_group"]) and math.isnan(s["train_weighted"])
    assert s["worst_class"] == pytest.approx(0.5) and s["overall"] == pytest.approx(0.6)


def test_empty_split_does_not_crash():
    s = summarize(np.array([], int), np.array([], int), np.array([], int), np.array([1, 1, 1, 1]), n_classes=2)
    assert s["n"] == 0 and math.isnan(s["overall"]) and math.isnan(s["worst_group"])
    t = group_table(np.array([], int), np.array([], int), np.array([], int), ["a", "b"], ["x", "y"])
    assert list(t["n"]) == [0, 0, 0, 0] and t["accuracy"].isna().all()


def test_method_table_rows_and_not_applicable(syn_small):
    d = syn_small
    perfect = MethodResult(method="oracle", probs=np.eye(2, dtype=np.float32)[d.y], pred=d.y.copy(),
                           record={"uses_group_labels": True, "selection_rule": "none"})
    t = method_table({"oracle": perfect}, d, not_applicable={"zeroshot": "this backbone has no text tower"},
                     labels={"oracle": "Oracle"})
    assert list(t["split"]) == ["val", "test", ""]
    ok = t[t["status"] == "ok"]
    assert (ok[["worst_group", "overall", "mean_group", "train_weighted", "worst_class"]] == 1.0).all().all()
    assert list(ok["n"]) == [int(d.mask("val").sum()), int(d.mask("test").sum())]
    assert ok["uses_group_labels"].all() and (ok["label"] == "Oracle").all()
    assert t.iloc[2]["status"] == "not applicable: this backbone has no text tower"
    assert set(METRIC_DEFINITIONS) >= {"worst_group", "overall", "mean_group", "train_weighted", "worst_class"}
