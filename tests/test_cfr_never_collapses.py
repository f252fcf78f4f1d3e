"""CFR never returns a model that scores below where it started on validation, and never collapses silently
(issue 12.1, issue 10.10 "epoch 0 is never a selection candidate").

Kind-level rules pinned here:

* the selection candidates are the stage-1 ERM model, the stage-2 start (epoch 0) and every CFR epoch, under
  one validation rule — so the result's validation score is never below the stage-1 model's or the start's,
  whatever stage 2 does (a one-class calibration set, a learning rate that wrecks the model);
* the calibration-set rule is explicit: ``calibration_errors="auto"`` takes the paper's set when it is usable
  (every class ≥ ``calibration_min_per_class``), the cross-fit set otherwise, and the record says which ran
  and why;
* every outcome is recorded in words for the pages (``record["outcome"]``).

All data are built from scratch with the synthetic generator; only validation figures are asserted on.
"""

from __future__ import annotations

import numpy as np
import pytest

from clipcal.methods import _train as T
from clipcal.methods.cfr import CFR, calibration_usable, outcome_lines, usable_definition
from clipcal.synthetic import generate


def _val_score(data, pred, rule="worst-class"):
    v = data.mask("val")
    return T.selection_score(rule, data.y[v], pred[v], data.group[v], data.n_classes, data.n_groups)


def _one_class_calibration_data():
    """95 % correlated synthetic features where only 8 minority training images of class 0 remain and none of
    class 1: ERM's training errors (the paper's calibration set) are 4 images, all of class 0."""
    ds = generate(n_train=1200, n_val=400, n_test=400, dim=48, correlation=0.95, core=0.4, spurious=2.0,
                  noise=3.0, seed=0)
    d = ds.data
    tr = d.mask("train")
    keep = np.ones(d.n, bool)
    keep[np.flatnonzero(tr & (d.group == 1))[8:]] = False   # class 0 on attribute 1: keep 8
    keep[np.flatnonzero(tr & (d.group == 2))] = False       # class 1 on attribute 0: none
    return d.subset(keep)


@pytest.fixture(scope="module")
def one_class():
    return _one_class_calibration_data()


def test_one_class_calibration_set_never_ends_below_the_stage1_model_on_validation(one_class):
    """A stage 2 driven by a one-class calibration set (lr 0.05: it degrades the model within an epoch) must
    not be returned: before the fix CFR returned its epoch 1 at validation worst-class 0.50 < ERM's 0.535."""
    d = one_class
    m = CFR(erm_epochs=30, epochs=5, lr=0.05, seed=0, calibration_errors="train").fit(d)
    r = m.result_
    cs = r.record["calibration_set"]
    assert 0 < cs["size"] < 10 and cs["by_class"]["class1"] == 0      # tiny and one class, as in the demo
    erm_val = _val_score(d, m.stage1_.pred)
    assert _val_score(d, r.pred) >= erm_val
    # the record's candidates carry the same scores the selection compared, and the best one was returned
    cands = {c["model"]: c for c in r.record["selection"]["candidates"]}
    assert set(cands) == {"erm", "start", "cfr"}
    assert cands["erm"]["val_score"] == pytest.approx(erm_val)
    assert r.record["best_score"] == max(c["val_score"] for c in cands.values())
    assert r.record["calibration_rule"]["used"] == "train" and r.record["calibration_rule"]["usable"] is False
    assert any("not usable" in n for n in r.notes)


def test_wrecking_stage2_returns_the_stage1_model_and_says_so():
    """lr 0.05 from a zero-shot start wrecks stage 2 (before the fix: validation worst-class 0.36 vs ERM 0.74);
    the result is the stage-1 model, bit for bit, recorded as a fallback by selection."""
    d = generate(n_train=600, n_val=200, n_test=200, dim=32, seed=0, text_head="core").data
    m = CFR(erm_epochs=10, epochs=3, lr=0.05, seed=0, calibration_errors="train").fit(d)
    r = m.result_
    assert r.record["selection"]["chosen"] == "erm"
    assert r.record["chosen_stage"] == "erm" and r.record["chosen_epoch"] == m.stage1_.record["chosen_epoch"]
    assert r.record["fallback"] == "erm" and r.record["fallback_reason"] == "selection"
    np.testing.assert_array_equal(r.probs, m.stage1_.probs)
    np.testing.assert_array_equal(r.embeddings_after, m.stage1_.embeddings_after)
    assert (r.curves.stage == "cfr").any()                       # stage 2 did run
    lines = r.record["outcome"]
    assert len(lines) == 2 and lines[1].startswith("Returned model: stage-1 ERM")
    assert "therefore ERM's" in lines[1]


def test_the_stage2_start_is_a_selection_candidate():
    """Epoch 0 of stage 2 (here: the ideal zero-shot head, validation worst-class 0.88 vs ERM 0.755) is chosen
    when every trained epoch is worse; its predictions are exactly the start's (before the fix: epoch 1, 0.465)."""
    d = generate(n_train=1000, n_val=400, n_test=200, seed=0, text_head="core").data
    m = CFR(erm_epochs=10, epochs=3, lr=0.05, seed=0, calibration_errors="train").fit(d)
    r = m.result_
    start_pred = (T.normalize_rows(d.features) @ d.text_head.T).argmax(1)  # W₀ = identity, head = text head
    assert r.record["selection"]["chosen"] == "start"
    assert r.record["chosen_stage"] == "cfr" and r.record["chosen_epoch"] == 0
    np.testing.assert_array_equal(r.pred, start_pred)
    assert r.record["best_score"] == pytest.approx(_val_score(d, start_pred))
    assert r.record["fallback"] is None
    assert r.record["outcome"][1].startswith("Returned model: CFR start (epoch 0")


def test_auto_takes_the_paper_rule_when_its_set_is_usable():
    d = generate(n_train=300, n_val=120, n_test=120, dim=16, seed=1).data
    r = CFR(erm_epochs=3, epochs=1, seed=0).fit(d).result_       # calibration_errors="auto" is the default
    rule = r.record["calibration_rule"]
    assert CFR().calibration_errors == "auto"
    assert rule["requested"] == "auto" and rule["used"] == "train" and rule["usable"] is True
    assert rule["cross_fit"] is None                             # not computed: not needed
    assert rule["why"] == f"auto: the paper's rule gave a usable set ({rule['paper_rule']['made_of']})"
    assert r.record["calibration_set"]["source"].startswith("the paper's rule")


def test_auto_switches_to_cross_fit_when_the_paper_set_is_not_usable_and_records_why():
    # 60 training samples in 64 dimensions: ERM fits every one (paper's set empty); ERM models that did not
    # train on a sample miss 2 of each class (usable with calibration_min_per_class = 2)
    d = generate(n_train=60, n_val=120, n_test=80, dim=64, seed=0).data
    r = CFR(erm_epochs=30, epochs=2, calibration_min_per_class=2).fit(d).result_
    rule = r.record["calibration_rule"]
    assert rule["paper_rule"] == {"size": 0, "usable": False, "made_of": "empty (0 samples)"}
    assert rule["used"] == "cross-fit" and rule["usable"] is True
    assert rule["cross_fit"]["size"] == len(r.calibration_set) == 4
    assert rule["why"].startswith("auto: the paper's rule gave a set that is not usable (empty (0 samples)); "
                                  "the cross-fit rule gave a usable one (4 samples: class0 2, class1 2)")
    assert rule["usable_definition"] == usable_definition(2)
    assert r.record["fallback_reason"] in (None, "selection") and (r.curves.stage == "cfr").any()
    assert r.record["outcome"][0].startswith("Calibration set: the cross-fit rule")
    # default threshold (5): neither set is usable; stage 2 runs on the non-empty one, guarded, and says so
    r5 = CFR(erm_epochs=30, epochs=2).fit(d).result_
    assert r5.record["calibration_rule"]["usable"] is False
    assert "neither rule gave a usable set" in r5.record["calibration_rule"]["why"]


def test_empty_under_both_rules_falls_back_to_erm_and_says_why():
    d = generate(n_train=200, n_val=80, n_test=80, dim=8, core=5.0, spurious=0.5, noise=0.1, seed=0).data
    m = CFR(erm_epochs=2, epochs=3).fit(d)
    r = m.result_
    assert r.record["fallback"] == "erm" and r.record["fallback_reason"] == "empty calibration set"
    assert r.record["calibration_rule"]["used"] is None
    assert r.record["calibration_rule"]["cross_fit"]["size"] == 0
    np.testing.assert_array_equal(r.probs, m.stage1_.probs)
    assert r.record["outcome"][0].startswith("Calibration set: none usable — auto: both rules gave an empty set")
    assert "stage 2 did not run (empty calibration set)" in r.record["outcome"][1]


def test_calibration_usable_needs_every_class():
    y = np.array([0] * 10 + [1] * 10 + [2] * 10)
    names = ["a", "b", "c"]
    assert calibration_usable(y, np.arange(30), names, 5) == (True, "30 samples: a 10, b 10, c 10")
    assert calibration_usable(y, np.arange(24), names, 5) == (False, "24 samples: a 10, b 10, c 4 (c < 5)")
    assert calibration_usable(y, np.arange(8), names, 1) == (False, "8 samples: a 8, b 0, c 0 (b, c < 1)")
    assert calibration_usable(y, np.array([], dtype=int), names, 1) == (False, "empty (0 samples)")


def test_outcome_lines_of_an_old_record_are_empty():
    assert outcome_lines({"chosen_epoch": 3, "fallback": None}) == []


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_calibration_min_per_class_domain(bad):
    from clipcal.errors import MethodError
    with pytest.raises(MethodError, match="calibration_min_per_class"):
        CFR(calibration_min_per_class=bad).check_params()
