"""clipcal.concepts: concept scores, attribute decodability, clusters, calibration set vs groups, gallery."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clipcal.data.base import finalize_table
from clipcal.errors import DataError, MethodError
from clipcal.concepts import (attribute_decodability, calibration_set_vs_groups, concept_prompts, concept_scores,
                              discover_clusters, load_concept_vocabulary, minority_groups, worst_group_gallery)


# ---- (a) concepts

def test_vocabulary_is_shipped_clean_and_sized():
    v = load_concept_vocabulary()
    assert 100 <= len(v) <= 200
    assert len(set(v)) == len(v)
    assert all(c and not c.startswith("#") and c == c.strip() for c in v)
    assert {"water", "a forest", "blond hair", "indoors"} <= set(v)
    assert concept_prompts(["water"]) == ["a photo with water."]


def test_concept_scores_known_answer():
    # 3-d space; text concepts: "water" = e0, "grass" = e1, "sky" = e2.
    text = np.eye(3)
    # class 0: misclassified images point at e0 ("water"), correct ones at e1; class 1 has no errors.
    img = np.array([[1, 0, 0], [1, 0.2, 0], [0, 1, 0], [0.2, 1, 0], [0, 0, 1], [0, 0.1, 1]], dtype=float)
    y = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([1, 1, 0, 0, 1, 1])
    s = concept_scores(img, y, pred, text, ["water", "grass", "sky"], ["landbird", "waterbird"])
    c0 = s[s["class"] == "landbird"]
    assert list(c0["concept"]) == ["water", "sky", "grass"]  # ranked by score
    u = img / np.linalg.norm(img, axis=1, keepdims=True)
    want_water = u[:2, 0].mean() - u[2:4, 0].mean()
    assert c0.iloc[0]["score"] == pytest.approx(want_water)
    assert c0.iloc[0]["mean_sim_wrong"] == pytest.approx(u[:2, 0].mean())
    assert c0.iloc[0]["n_wrong"] == 2 and c0.iloc[0]["n_correct"] == 2
    sd = np.sqrt((u[:2, 0].var(ddof=1) + u[2:4, 0].var(ddof=1)) / 2)
    assert c0.iloc[0]["effect_size"] == pytest.approx(want_water / sd)
    assert list(c0["rank"]) == [1, 2, 3]
    assert c0.iloc[0]["score"] > 0.8 and c0.iloc[2]["score"] < -0.8
    c1 = s[s["class"] == "waterbird"]
    assert len(c1) == 3 and c1["score"].isna().all() and (c1["n_wrong"] == 0).all()


def test_concept_scores_rejects_mismatched_dims():
    with pytest.raises(MethodError, match="do not match"):
        concept_scores(np.ones((2, 3)), [0, 1], [0, 1], np.ones((1, 4)), ["x"], ["a", "b"])


# ---- (b) decodability

def _planted(n=600, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2, n)
    x = rng.normal(size=(n, dim))
    direction = np.zeros(dim)
    direction[3] = 1.0
    x += np.outer(2 * a - 1, direction) * 1.5  # attribute readable along e3
    after = x.copy()
    after[:, 3] = rng.normal(size=n)  # calibration removed that direction
    split = np.array(["train"] * (n // 2) + ["val"] * (n // 6) + ["test"] * (n - n // 2 - n // 6))
    return x, after, a, split


def test_decodability_on_planted_signal():
    x, after, a, split = _planted()
    a_unknown = a.copy()
    a_unknown[::10] = -1  # unknown rows are left out
    r = attribute_decodability(x, after, a_unknown, split, seed=0)
    assert r.available and r.reason == ""
    t = r.table.set_index("representation")
    assert t.loc["before", "balanced_accuracy"] > 0.9 and t.loc["before", "auroc"] > 0.95
    assert abs(t.loc["after", "balanced_accuracy"] - 0.5) < 0.1 and abs(t.loc["after", "auroc"] - 0.5) < 0.12
    assert t.loc["before", "chance"] == 0.5
    assert t.loc["before", "n_test"] == int(((a_unknown >= 0) & (split == "test")).sum())
    assert t.loc["before", "n_train"] == int(((a_unknown >= 0) & (split != "test")).sum())


def test_decodability_three_values_and_before_only():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 3, 450)
    x = rng.normal(size=(450, 8)) + np.eye(8)[a] * 3
    split = np.array(["train"] * 300 + ["test"] * 150)
    r = attribute_decodability(x, None, a, split)
    assert list(r.table["representation"]) == ["before"]
    assert r.table["balanced_accuracy"].iloc[0] > 0.9 and r.table["chance"].iloc[0] == pytest.approx(1 / 3)


def test_decodability_not_available_without_labels():
    x, after, a, split = _planted(n=100)
    r = attribute_decodability(x, after, np.full(100, -1), split)
    assert not r.available and r.reason == "not available: no attribute labels" and r.table.empty
    r2 = attribute_decodability(x, after, np.zeros(100, int), split)
    assert not r2.available and "fewer than two" in r2.reason
    r3 = attribute_decodability(x, after, a, np.array(["train"] * 100))
    assert not r3.available and "no test rows" in r3.reason


# ---- (c) clusters

def test_clusters_recover_a_planted_hidden_group():
    rng = np.random.default_rng(0)
    # class 0 has a hidden subgroup (rows 0-39, attribute 1) the model gets wrong; class 1 is homogeneous.
    centres = {0: np.eye(8)[0] * 5, 1: np.eye(8)[1] * 5, 2: np.eye(8)[2] * 5}
    x = np.concatenate([centres[0] + rng.normal(size=(40, 8)) * 0.5, centres[1] + rng.normal(size=(160, 8)) * 0.5,
                        centres[2] + rng.normal(size=(100, 8)) * 0.5])
    y = np.array([0] * 200 + [1] * 100)
    a = np.array([1] * 40 + [0] * 160 + [0] * 100)
    correct = np.ones(300, bool)
    correct[:36] = False  # 90 % of the hidden group wrong
    ids = [f"s{i}" for i in range(300)]
    res = discover_clusters(x, y, correct, k=2, seed=0, a=a, sample_ids=ids, class_names=["landbird", "waterbird"],
                            attr_names=["land", "water"])
    t = res.table
    worst = t[(t["class"] == "landbird") & (t["cluster"] == 0)].iloc[0]
    assert worst["n"] == 40 and worst["accuracy"] == pytest.approx(0.1) and worst["n_wrong"] == 36
    assert worst["majority_attribute"] == "water" and worst["purity"] == pytest.approx(1.0)
    assert sorted(worst["ids"]) == sorted(ids[:40])
    other = t[(t["class"] == "landbird") & (t["cluster"] == 1)].iloc[0]
    assert other["n"] == 160 and other["accuracy"] == 1.0 and other["majority_attribute"] == "land"
    assert (res.labels[:40] == 0).all() and (res.labels[40:200] == 1).all()
    assert len(t[t["class"] == "waterbird"]) == 2 and t["n"].sum() == 300


def test_clusters_without_attributes_and_tiny_class():
    x = np.random.default_rng(0).normal(size=(5, 4))
    res = discover_clusters(x, [0, 0, 0, 1, 1], [True, False, True, True, True], k=4)
    assert res.table["majority_attribute"].eq("unknown").all() and res.table["purity"].isna().all()
    assert res.table.groupby("class_index")["n"].sum().tolist() == [3, 2]
    assert res.labels.min() == 0
    with pytest.raises(MethodError):
        discover_clusters(x, [0] * 5, [True] * 5, k=0)


# ---- (d) calibration set vs groups

def _groups_table():
    # train: group 0 (landbird/land) 6, group 1 (landbird/water) 2, group 2 (waterbird/land) 1, group 3 4
    ya = [(0, 0)] * 6 + [(0, 1)] * 2 + [(1, 0)] * 1 + [(1, 1)] * 4 + [(0, 0), (1, 1)]
    t = pd.DataFrame({"sample_id": [f"s{i}" for i in range(len(ya))], "path": "p",
                      "split": ["train"] * 13 + ["test"] * 2, "y": [v[0] for v in ya], "a": [v[1] for v in ya]})
    return finalize_table(t, 2, 2)


def test_calibration_set_vs_groups_hand_made():
    t = _groups_table()
    assert minority_groups(t) == [1, 2]
    # calibration set: both landbird/water (rows 6, 7), the waterbird/land (8), one landbird/land (0)
    names = ["landbird / land", "landbird / water", "waterbird / land", "waterbird / water"]
    r = calibration_set_vs_groups([0, 6, 7, 8], t, group_names=names)
    assert r.available and r.pool == ["train"] and r.n_set == 4
    assert r.precision == pytest.approx(3 / 4)
    assert r.recall == pytest.approx(3 / 3)
    g = r.table.set_index("group")
    assert list(g["n_in_set"]) == [1, 2, 1, 0]
    assert list(g["n_in_pool"]) == [6, 2, 1, 4]
    assert g.loc[1, "share_in_set"] == pytest.approx(0.5)
    assert g.loc[1, "enrichment"] == pytest.approx(0.5 / (2 / 13))
    assert list(g["minority"]) == [False, True, True, False]
    assert g.loc[1, "name"] == "landbird / water"
    # the same set given as sample ids
    r2 = calibration_set_vs_groups(["s0", "s6", "s7", "s8"], t)
    assert r2.precision == r.precision and r2.recall == r.recall


def test_calibration_set_errors_and_no_attributes():
    t = _groups_table()
    with pytest.raises(DataError, match="out of range"):
        calibration_set_vs_groups([0, 99], t)
    with pytest.raises(DataError, match="not in the table"):
        calibration_set_vs_groups(["s0", "zzz"], t)
    t2 = t.assign(a=-1, group=-1)
    r = calibration_set_vs_groups([0, 8, 9], t2)
    assert not r.available and "no attribute labels" in r.reason and np.isnan(r.precision)
    assert list(r.table["n_in_set"]) == [1, 2] and list(r.table["n_in_pool"]) == [8, 5]


# ---- (e) gallery

def test_worst_group_gallery():
    t = _groups_table()
    t.loc[:, "split"] = "test"
    y = t["y"].to_numpy()
    pred = y.copy()
    pred[[6, 7]] = 1          # group 1 (landbird/water): 0 of 2 right → worst
    pred[0] = 1               # group 0: one error
    probs = np.zeros((len(t), 2))
    probs[np.arange(len(t)), pred] = 0.6
    probs[7, 1] = 0.95
    probs[:, :] = np.where(probs == 0, 1 - probs.max(1, keepdims=True), probs)
    g = worst_group_gallery(t, pred, probs, n=5)
    assert g.by == "group" and g.group == 1 and g.accuracy == 0.0 and g.n == 2
    assert list(g.items["sample_id"]) == ["s7", "s6"]  # most confident error first
    assert g.items["confidence"].iloc[0] == pytest.approx(0.95)
    assert g.items["prob_true"].iloc[0] == pytest.approx(0.05)
    g0 = worst_group_gallery(t, pred, probs, group=0)
    assert list(g0.items["sample_id"]) == ["s0"] and g0.accuracy == pytest.approx(6 / 7)
    # without attribute labels the worst class is shown
    gc = worst_group_gallery(t.assign(a=-1, group=-1), pred, probs)
    assert gc.by == "class" and gc.group == 0
    with pytest.raises(MethodError):
        worst_group_gallery(t, pred[:-1], probs)
