"""The story a run ends on (clipcal.story, issue 12.5), on a planted synthetic run whose every number is known:
ERM's worst group by name and accuracy, each method's worst-group change vs ERM with group-label use marked,
which test images crossed the boundary (by group) and which way the representation moved — and, where the
method changed little or its selection kept ERM, a plain sentence saying so instead of an implied gain."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pandas as pd
import pytest

from clipcal import story
from clipcal.methods.base import FeatureData, MethodResult
from clipcal.metrics import method_table
from clipcal.runs import _group_tables, _labels

CLASSES, ATTRS = ["landbird", "waterbird"], ["land", "water"]
GROUPS = ["landbird / land", "landbird / water", "waterbird / land", "waterbird / water"]


def _data() -> FeatureData:
    """10 images per group in each split; test rows 80 … 119 (group g at 80 + 10 g …)."""
    g = np.tile(np.repeat(np.arange(4), 10), 3)
    split = np.repeat(["train", "val", "test"], 40)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(len(g), 6)).astype(np.float32)
    return FeatureData(features=z, embeddings=z / np.linalg.norm(z, axis=1, keepdims=True), y=g // 2, a=g % 2,
                       group=g, split=split, sample_ids=np.array([f"s{i}" for i in range(len(g))]),
                       class_names=CLASSES, attr_names=ATTRS)


def _pred(fd: FeatureData, wrong: dict[int, int]) -> np.ndarray:
    """Right everywhere except the first ``wrong[g]`` test images of group g."""
    p = fd.y.copy()
    for g, n in wrong.items():
        rows = np.flatnonzero((fd.split == "test") & (fd.group == g))[:n]
        p[rows] = 1 - p[rows]
    return p


def _run(fd, preds: dict, records: dict | None = None, after: dict | None = None):
    labels = {"erm": "ERM", "dfr": "DFR", "cfr": "CFR"}
    res = {m: MethodResult(method=m, probs=np.eye(2)[p], pred=p, embeddings_after=(after or {}).get(m),
                           record=dict((records or {}).get(m, {}))) for m, p in preds.items()}
    return NS(results=res, metrics=method_table(res, fd, labels=labels), group_tables=_group_tables(res, fd),
              labels=_labels(fd))


def test_story_names_erms_worst_group_what_each_method_recovered_and_what_crossed():
    fd = _data()
    erm = _pred(fd, {1: 7, 2: 4})       # ERM: landbird / water 3/10 → worst 0.3
    cfr = _pred(fd, {1: 3, 2: 4, 0: 1})  # CFR: 4 fixed in landbird / water, 1 broken in landbird / land
    dfr = _pred(fd, {1: 1, 2: 2})        # DFR: worst 0.8, reads group labels
    run = _run(fd, {"erm": erm, "cfr": cfr, "dfr": dfr},
               records={"dfr": {"uses_group_labels": True}, "cfr": {"fallback": None}})
    pts = story.story_points(run, CLASSES, GROUPS, "cfr")
    s = story.run_story(run, points=pts, method="cfr")

    assert (s.baseline, s.worst, s.worst_value, s.metric) == ("erm", "landbird / water", 0.3, "worst-group")
    ch = {c.method: c for c in s.changes}
    assert [c.method for c in s.changes][0] == "erm" and ch["erm"].change is None
    assert ch["cfr"].value == pytest.approx(0.6) and ch["cfr"].change == pytest.approx(0.3)
    assert ch["cfr"].worst == "waterbird / land" and not ch["cfr"].uses_group_labels
    assert ch["dfr"].change == pytest.approx(0.5) and ch["dfr"].uses_group_labels
    text = "\n".join(s.sentences)
    assert "ERM (no group labels) is worst on **landbird / water**: 0.300 test accuracy" in text
    assert "DFR — **uses group labels**: worst-group 0.800, +50.0 points vs ERM" in text
    assert "CFR (no group labels): worst-group 0.600, +30.0 points vs ERM" in text
    # crossings by group: 4 fixed (all landbird / water), 1 broken (landbird / land)
    c = s.crossings.set_index("group")
    assert c.loc["landbird / water", "fixed"] == 4 and c.loc["landbird / land", "broken"] == 1
    assert int(c["fixed"].sum()) == 4 and int(c["broken"].sum()) == 1
    assert "5 of 40 test images crossed the decision boundary from ERM to CFR: 4 fixed (landbird / water 4), " \
           "1 broken (landbird / land 1)." in text
    assert s.examples == ("s93", "s94", "s95", "s96")  # the fixed ones, ERM's worst group first
    assert not s.changed_little and not s.kept_erm
    assert s.headline.startswith("ERM is worst on landbird / water (0.300); CFR brings its worst-group to 0.600")


def test_direction_moved_comes_from_neighbourhood_purity_of_the_worst_group():
    fd = _data()
    erm = _pred(fd, {1: 7})
    # after: images placed by class (two tight clusters) — before they were random
    after = np.where(fd.y[:, None] == 0, 1.0, -1.0) * np.ones((len(fd.y), 6), np.float32)
    after = after + np.random.default_rng(1).normal(scale=0.01, size=after.shape).astype(np.float32)
    run = _run(fd, {"erm": erm, "cfr": _pred(fd, {1: 2})}, after={"cfr": after})
    purity = story.run_purity(run, fd, "cfr", GROUPS)
    assert list(purity["name"]) == GROUPS and (purity["purity_after"] == 1.0).all()
    s = story.run_story(run, points=story.story_points(run, CLASSES, GROUPS, "cfr"), purity=purity)
    assert s.method == "cfr"  # the method whose representation changed
    row = purity.set_index("name").loc["landbird / water"]
    want = (f"In CFR's representation the 10 nearest neighbours of **landbird / water** test images are 100% "
            f"their own class, against {row['purity_before']:.0%} before (+{row['change'] * 100:.1f} points): "
            "they moved toward their own class.")
    assert want in s.sentences


def test_a_method_that_changed_nothing_is_said_to_have_changed_little():
    fd = _data()
    erm = _pred(fd, {1: 7})
    run = _run(fd, {"erm": erm, "cfr": erm.copy()}, after={"cfr": fd.embeddings.copy()})
    purity = story.run_purity(run, fd, "cfr", GROUPS)
    assert (purity["change"] == 0.0).all()  # identical representation: exactly no change
    s = story.run_story(run, points=story.story_points(run, CLASSES, GROUPS, "cfr"), purity=purity)
    assert s.changed_little and s.crossings.empty and s.examples == ()
    assert any(t.startswith("No test image crossed the decision boundary between ERM and CFR") for t in s.sentences)
    assert any(t.startswith("CFR changed little here: its worst-group moved +0.0 points") for t in s.sentences)
    assert "CFR changed little (+0.0 points)" in s.headline


def test_selection_that_kept_erm_is_said_plainly():
    fd = _data()
    erm = _pred(fd, {1: 7})
    run = _run(fd, {"erm": erm, "cfr": erm.copy()},
               records={"cfr": {"fallback": "erm", "fallback_reason": "selection"}})
    s = story.run_story(run, method="cfr")
    assert s.kept_erm and s.headline.endswith("CFR kept the stage-1 ERM model (+0.0 points).")
    assert ("CFR returned the stage-1 ERM model (its model selection scored no later model above it on "
            "validation), so its numbers are ERM's: on this data it did not improve on ERM.") in s.sentences


def test_a_kept_erm_model_s_representation_change_is_not_credited_to_cfr():
    """The 'after' of a CFR run that kept ERM is ERM's own last layer: a neighbourhood change is ERM's."""
    fd = _data()
    erm = _pred(fd, {1: 7})
    after = np.where(fd.y[:, None] == 0, 1.0, -1.0) * np.ones((len(fd.y), 6), np.float32)
    run = _run(fd, {"erm": erm, "cfr": erm.copy()}, after={"cfr": after},
               records={"cfr": {"fallback": "erm", "fallback_reason": "selection"}})
    s = story.run_story(run, purity=story.run_purity(run, fd, "cfr", GROUPS))
    moved = [t for t in s.sentences if "nearest neighbours" in t]
    assert moved and all(t.startswith("In the representation CFR returned (the stage-1 ERM model's last layer)")
                         for t in moved)


def test_a_gain_without_a_change_of_neighbourhoods_says_the_map_will_not_show_it():
    fd = _data()
    erm = _pred(fd, {1: 7})
    run = _run(fd, {"erm": erm, "cfr": _pred(fd, {1: 2})}, after={"cfr": fd.embeddings * 2.0})  # same directions
    s = story.run_story(run, purity=story.run_purity(run, fd, "cfr", GROUPS))
    assert not s.changed_little and (s.purity["change"] == 0).all()
    assert any(t.startswith("CFR's neighbourhoods barely changed") for t in s.sentences)
    assert any(t.endswith("(+0.0 points): they barely moved.") for t in s.sentences)


def test_without_attribute_labels_the_story_is_told_per_class():
    fd = _data()
    fd.a[:] = -1
    fd.group[:] = -1
    fd.attr_names = []
    erm = _pred(fd, {})
    erm[np.flatnonzero((fd.split == "test") & (fd.y == 1))[:5]] = 0  # waterbird 15/20 right
    run = _run(fd, {"erm": erm})
    s = story.run_story(run)
    assert s.metric == "worst-class" and s.method is None and s.worst_value == pytest.approx(0.75)
    assert s.worst == "waterbird"
    assert s.sentences[0].startswith("ERM (no group labels) is worst on **waterbird**: 0.750")
