"""JTT — Just Train Twice (Liu et al., ICML 2021, "Just Train Twice: Improving Group Robustness without
Training Group Information"), on the last layer over cached features.

1. Identification: the ERM last-layer model (:class:`~clipcal.methods.erm.ERM`, best validation epoch) —
   its misclassified training samples form the error set (the same set CFR calls the calibration set).
2. Retrain the last layer and head from the same starting point with the error set up-weighted by
   ``lambda_up`` (loss weights; equal to JTT's up-sampling in expectation).

No group labels are used (unless ``selection="worst-group"``). The identification model is, by default
(``id_epochs=None``), the validation-selected ERM model — the same error set CFR calibrates on. JTT's paper
instead stops it after T epochs (``id_epochs=T``: last epoch kept, no selection); on features that ERM fits
perfectly (the Lite0 demo: 0 training errors at the selected epoch) only a small T leaves an error set.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from clipcal.methods._train import LAST_LAYER_CONSTRAINTS, SELECTION_RULES, init_notes, stage_progress
from clipcal.methods.base import MethodResult
from clipcal.methods.fit_memo import reuse_notes
from clipcal.methods.last_layer import LAST_LAYER_HPARAMS, LastLayerMethod, uses_groups
from clipcal.methods.params import Integral, Interval, Real


class JTT(LastLayerMethod):
    """Just Train Twice on the last layer: ERM error set up-weighted by ``lambda_up`` in a second training."""

    name = "jtt"
    label = "JTT"
    uses_group_labels = False
    description = "retrain the last layer with the ERM error set up-weighted (Liu et al. 2021)"
    HPARAMS = {"lambda_up": (20.0, "loss weight of the ERM error set in the second training (JTT's λ_up)"),
               "id_epochs": (None, "epochs of the identification model, last epoch kept (JTT's T); "
                                   "None = the validation-selected ERM model"),
               **LAST_LAYER_HPARAMS}
    PARAM_CONSTRAINTS = {"lambda_up": [Interval(Real, 1, None, closed="left")],   # < 1 would down-weight errors
                         "id_epochs": [None, Interval(Integral, 1, None, closed="left")],
                         **LAST_LAYER_CONSTRAINTS}

    def __init__(self, lambda_up=20.0, id_epochs=None, **last_layer):
        super().__init__(**last_layer)
        self.lambda_up = lambda_up
        self.id_epochs = id_epochs

    def _fit(self, data, progress, cancel) -> MethodResult:
        n_id = int(self.epochs) if self.id_epochs is None else int(self.id_epochs)
        total = n_id + int(self.epochs)
        erm = self.fit_erm_stage(data, stage_progress(progress, 0, total), cancel, stage="erm", epochs=n_id,
                            select=self.id_epochs is None)
        probs0, _ = erm.predict_all()
        train = data.indices("train")
        wrong = probs0[train].argmax(1) != data.y[train]
        errors = train[wrong]
        notes = init_notes(erm.init, data) + erm.notes + reuse_notes(erm, "identification model (ERM)")
        if len(errors) == 0:
            notes.append("empty error set: the ERM model classifies every training sample correctly, so JTT's "
                         "second training equals ERM")
        weights = np.where(wrong, float(self.lambda_up), 1.0)
        up = self.fit_erm_stage(data, stage_progress(progress, n_id, total), cancel, stage="jtt",
                           sample_weight=weights)
        probs, z = up.predict_all()
        curves = pd.concat([erm.curves, up.curves], ignore_index=True)
        return MethodResult(
            method=self.name, probs=probs, pred=probs.argmax(1), embeddings_after=z, calibration_set=errors,
            record={"uses_group_labels": uses_groups(self.selection),
                    "selection_rule": SELECTION_RULES[self.selection], "seed": int(self.seed),
                    "chosen_epoch": up.chosen_epoch, "erm_chosen_epoch": erm.chosen_epoch, "erm_reused": erm.reused,
                    "error_set_size": int(len(errors)), "val_score": up.best_score,
                    "train_loss_last": up.train_losses[-1], "converged": up.converged,
                    "device": str(up.evaluator.device), "fit_seconds": round(erm.seconds + up.seconds, 3),
                    "notes": notes + up.notes},
            curves=curves, fitted=up.fitted())
