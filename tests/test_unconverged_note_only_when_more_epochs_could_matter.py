"""The "training loss had not levelled off … consider more epochs" note appears only when validation chose one of
the last epochs (new-user report: it was shown for ERM with chosen epoch 13 of 100 and loss 0.0017, where more
epochs cannot change the model the selection keeps)."""

from __future__ import annotations

import numpy as np

from clipcal.methods._train import check_converged, unconverged_note, train_last_layer

FALLING = list(np.geomspace(1.0, 0.002, 100))  # still falling by ≫ 3 % per 5-epoch window: not levelled off


def test_no_note_when_the_chosen_epoch_is_early():
    assert not check_converged(FALLING)
    assert unconverged_note("erm", FALLING, chosen_epoch=13, advice="more epochs") == []


def test_note_when_validation_still_improves_at_the_end():
    for chosen in (96, 100):
        (note,) = unconverged_note("erm", FALLING, chosen_epoch=chosen, advice="consider more epochs")
        assert note.startswith("erm: training loss had not levelled off after 100 epochs (last 0.0020)")
        assert f"chosen epoch {chosen}" in note and note.endswith("consider more epochs")


def test_no_note_when_the_loss_levelled_off():
    flat = [1.0] * 20
    assert unconverged_note("erm", flat, chosen_epoch=20, advice="x") == []


def test_training_records_follow_the_rule(syn_small):
    # selection off: the last epoch is the model, so an unfinished loss is worth the note
    tr = train_last_layer(syn_small, epochs=3, lr=1e-4, seed=0, select=False)
    assert not tr.converged and any("had not levelled off" in n for n in tr.notes)
