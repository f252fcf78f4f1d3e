"""ERM last layer: stage 1 of CFR (cfr-method.md, "Stage 1, ERM").

Trains CLIP's image last layer ``W`` and the class head ``T`` with plain cross-entropy on the train split and
keeps the epoch with the best validation score (default: worst-class accuracy, annotation-free).
Implementation: :func:`clipcal.methods._train.train_last_layer`; hyperparameters (declared once for ERM,
JTT and AFR): :class:`~clipcal.methods.last_layer.LastLayerMethod`.
"""

from __future__ import annotations

from clipcal.methods._train import SELECTION_RULES, init_notes
from clipcal.methods.base import MethodResult
from clipcal.methods.fit_memo import reuse_notes
from clipcal.methods.last_layer import LAST_LAYER_HPARAMS, LastLayerMethod, uses_groups

__all__ = ["ERM", "LAST_LAYER_HPARAMS", "uses_groups"]


class ERM(LastLayerMethod):
    """Last-layer ERM: cross-entropy on train, best validation epoch kept.

    Result: probabilities for every split, ``embeddings_after = normalize(h W)``, ``calibration_set`` = the
    training rows this model misclassifies (what CFR calibrates on and JTT up-weights), record with the chosen
    epoch, the training loss and whether it levelled off.
    """

    name = "erm"
    label = "ERM (last layer)"
    uses_group_labels = False
    description = "cross-entropy on the train split, last layer + head, no group labels"
    HPARAMS = dict(LAST_LAYER_HPARAMS)  # constructor arguments and domains: LastLayerMethod's, declared once

    def _fit(self, data, progress, cancel) -> MethodResult:
        tr = self.fit_erm_stage(data, progress, cancel)
        probs, z = tr.predict_all()
        pred = probs.argmax(1)
        train = data.indices("train")
        errors = train[pred[train] != data.y[train]]
        return MethodResult(
            method=self.name, probs=probs, pred=pred, embeddings_after=z, calibration_set=errors,
            record={"uses_group_labels": uses_groups(self.selection),
                    "selection_rule": SELECTION_RULES[self.selection], "seed": int(self.seed),
                    "chosen_epoch": tr.chosen_epoch, "val_score": tr.best_score,
                    "train_loss_first": tr.train_losses[0], "train_loss_last": tr.train_losses[-1],
                    "converged": tr.converged, "init": tr.init, "device": str(tr.evaluator.device),
                    "precision": "bf16" if tr.model.bf16 else "fp32",
                    "fit_seconds": round(tr.seconds, 3), "error_set_size": int(len(errors)),
                    "reused": tr.reused, "trained_seconds": round(tr.trained_seconds or tr.seconds, 3),
                    "notes": init_notes(tr.init, data) + tr.notes + reuse_notes(tr, "ERM")},
            curves=tr.curves, fitted=tr.fitted())
