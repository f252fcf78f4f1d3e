"""The run story's headline says when a method's worst-group change lies inside the 95 % intervals (new-user
report: "CFR brings its worst-group to 0.675 (+3.5 points)" with 200 test images per group, where the Groups
chart's Wilson intervals overlap)."""

from __future__ import annotations

import numpy as np
import pytest

from clipcal import story
from tests.test_story_of_a_run import _data, _pred, _run


def test_a_change_inside_the_intervals_is_called_not_clear():
    fd = _data()  # 10 test images per group: 0.3 → 0.6 is inside the intervals (0.11–0.60 vs 0.31–0.83)
    run = _run(fd, {"erm": _pred(fd, {1: 7, 2: 4}), "cfr": _pred(fd, {1: 3, 2: 4, 0: 1})},
               records={"cfr": {"fallback": None}})
    s = story.run_story(run, method="cfr")
    assert s.headline.startswith("ERM is worst on landbird / water (0.300); CFR brings its worst-group to 0.600 "
                                 "(+30.0 points)")
    assert "the 95 % intervals of the two worst groups overlap (n = 10 and 10 test images), so this is not a " \
           "clear change." in s.headline
    lo, hi, n = story.worst_interval(run.group_tables, "erm")
    assert n == 10 and lo == pytest.approx(0.1078, abs=1e-3) and hi == pytest.approx(0.6032, abs=1e-3)


def test_a_change_outside_the_intervals_is_told_plainly():
    fd = _data()
    run = _run(fd, {"erm": _pred(fd, {1: 10, 2: 4}), "cfr": _pred(fd, {1: 0, 2: 1})},  # 0.0 → 0.9
               records={"cfr": {"fallback": None}})
    s = story.run_story(run, method="cfr")
    assert s.headline.endswith("CFR brings its worst-group to 0.900 (+90.0 points).")
    assert "overlap" not in s.headline


def test_no_interval_without_rows():
    fd = _data()
    run = _run(fd, {"erm": _pred(fd, {})})
    assert story.worst_interval(run.group_tables, "cfr") is None
    assert np.isfinite(story.worst_interval(run.group_tables, "erm")[0])
