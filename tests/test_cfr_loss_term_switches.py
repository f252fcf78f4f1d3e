"""CFR's parts are visible: each stage-2 loss term (cross-entropy on the calibration set, the anchor contrastive
term, SupCon) has a switch — a boolean hyperparameter of the same name — and the run records which were on
(issue 12, item 4). A weight is a weight (> 0), never the switch: one way to say "off".
"""

from __future__ import annotations

import pytest
import torch

from clipcal.commands.calibrate import check_hparams, parse_sets
from clipcal.errors import MethodError
from clipcal.methods._train import LastLayer
from clipcal.methods.cfr import CFR, LOSS_TERMS, cfr_step_loss
from clipcal.synthetic import generate


def _step_inputs():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(40, 6, generator=g)
    y = torch.arange(40) % 2
    model = LastLayer(torch.randn(6, 4, generator=g).numpy(), torch.randn(2, 4, generator=g).numpy(), dropout=0.0)
    batch, anchors = torch.arange(0, 16), torch.arange(16, 24)
    pos = torch.randint(0, 40, (8, 3), generator=g)
    neg = torch.randint(0, 40, (8, 3), generator=g)
    return model, h, y, batch, anchors, pos, neg


@pytest.mark.parametrize("on", [("ce",), ("contrastive",), ("supcon",), ("ce", "supcon"), LOSS_TERMS])
def test_a_switched_off_term_is_neither_computed_nor_added(on):
    """Kind-level rule: the loss is exactly the weighted sum of the terms that are on."""
    args = _step_inputs()
    weights = {"w_ce": 1.5, "w_contrastive": 0.7, "w_supcon": 2.0}
    switches = {t: t in on for t in LOSS_TERMS}
    loss, terms = cfr_step_loss(*args, **weights, **switches)
    assert set(terms) == set(on)
    expected = sum(weights[f"w_{t}"] * float(terms[t]) for t in on)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    _, full = cfr_step_loss(*args, **weights)  # every term's value is the same with or without the others
    for t in on:
        assert float(terms[t]) == pytest.approx(float(full[t]), rel=1e-6)


def test_all_terms_off_is_refused():
    with pytest.raises(MethodError, match="every CFR loss term is switched off"):
        cfr_step_loss(*_step_inputs(), ce=False, contrastive=False, supcon=False)
    with pytest.raises(MethodError, match="every CFR loss term is switched off"):
        CFR(ce=False, contrastive=False, supcon=False).check_params()
    with pytest.raises(MethodError, match="every CFR loss term is switched off"):
        check_hparams(["cfr"], parse_sets(["cfr.ce=false", "cfr.contrastive=false", "cfr.supcon=false"]))


def test_switches_parse_from_the_cli_and_are_checked():
    sets = parse_sets(["cfr.contrastive=false", "cfr.supcon=false"])
    assert sets == {"cfr": {"contrastive": False, "supcon": False}}
    check_hparams(["cfr"], sets)  # CE alone is a valid ablation
    with pytest.raises(MethodError, match="cfr.ce must be true or false, got 0"):
        CFR(ce=0).check_params()


@pytest.fixture(scope="module")
def ce_only():
    """A CFR fit with only cross-entropy on the calibration set (a non-empty calibration set: 2 ERM epochs)."""
    data = generate(n_train=300, n_val=120, n_test=120, dim=16, seed=3).data
    model = CFR(erm_epochs=2, epochs=2, contrastive=False, supcon=False, seed=0).fit(data)
    return model.result_


def test_the_run_record_says_which_terms_were_on(ce_only):
    # stage 2 ran on a non-empty set (since issue 12.1 the validation selection may still return the stage-1
    # model: fallback "erm" with reason "selection", which says nothing about the loss terms)
    assert ce_only.record["calibration_set"]["size"] > 0
    assert ce_only.record.get("fallback_reason") != "empty calibration set"
    lt = ce_only.record["loss_terms"]
    assert {t: lt[t]["on"] for t in LOSS_TERMS} == {"ce": True, "contrastive": False, "supcon": False}
    assert lt["ce"]["weight"] == 1.5
    assert lt["formula"] == "1.5·CE(calibration set)"
    assert {k: ce_only.record["hparams"][k] for k in LOSS_TERMS} == {"ce": True, "contrastive": False,
                                                                     "supcon": False}


def test_curves_carry_only_the_terms_that_were_on(ce_only):
    c = ce_only.curves
    train = set(c[(c.stage == "cfr") & (c.split == "train")].metric)
    assert train == {"loss", "loss_ce"}
    tr = c[(c.stage == "cfr") & (c.split == "train")]
    loss, ce = tr[tr.metric == "loss"].value.to_numpy(), tr[tr.metric == "loss_ce"].value.to_numpy()
    assert len(loss) == 2
    assert loss == pytest.approx(1.5 * ce, rel=1e-5)


def test_default_record_lists_all_three_terms():
    assert CFR().loss_terms()["formula"] == ("1.5·CE(calibration set) + 1.5·contrastive(τ=1) + "
                                             "1·SupCon(train batch, t=0.07)")
