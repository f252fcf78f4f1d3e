"""ERM last layer: stage 1 of CFR (cfr-method.md, "Stage 1, ERM").

Trains CLIP's image last layer ``W`` and the class head ``T`` with plain cross-entropy on the train split and
keeps the epoch with the best validation score (default: worst-class accuracy, annotation-free).
Implementation: :func:`clipcal.methods._train.train_last_layer`.
"""

from __future__ import annotations


from clipcal.methods._train import (DEFAULT_SCALE, ERM_DEFAULTS, LAST_LAYER_CONSTRAINTS, SELECTION_RULES, init_notes,
                                    train_last_layer)
from clipcal.methods.base import FeatureData, Method, MethodResult

#: hyperparameters shared by every last-layer method (ERM, JTT, AFR stage 1); name → (default, help)
LAST_LAYER_HPARAMS = {
    "epochs": (ERM_DEFAULTS["epochs"], "training epochs over the train split (the best one on val is kept)"),
    "lr": (ERM_DEFAULTS["lr"], "SGD learning rate (1e-2: converges from a class-mean or zero-shot head)"),
    "weight_decay": (ERM_DEFAULTS["weight_decay"], "SGD weight decay on W and the head"),
    "momentum": (ERM_DEFAULTS["momentum"], "SGD momentum"),
    "batch_size": (ERM_DEFAULTS["batch_size"], "samples per SGD step"),
    "dropout": (ERM_DEFAULTS["dropout"], "feature dropout on the embedding z during training"),
    "learn_scale": (ERM_DEFAULTS["learn_scale"], "learn the logit scale (starts at 1/0.07) instead of fixing it"),
    "selection": (ERM_DEFAULTS["selection"], "model selection on val: worst-class (no group labels) or "
                                             "worst-group (uses group labels)"),
    "seed": (0, "random seed (batch order, dropout)"),
    "device": ("auto", "auto (GPU when present), cpu or cuda"),
}


def fit_erm_stage(method: Method, data: FeatureData, progress=None, cancel=None, stage: str = "erm",
                  epochs: int | None = None, **overrides):
    """Train the ERM stage with ``method``'s last-layer hyperparameters (shared by ERM, JTT, AFR)."""
    return train_last_layer(
        data, stage=stage, epochs=int(epochs if epochs is not None else method.epochs), lr=float(method.lr),
        weight_decay=float(method.weight_decay), momentum=float(method.momentum),
        batch_size=int(method.batch_size), scale=DEFAULT_SCALE, learn_scale=bool(method.learn_scale),
        dropout=float(method.dropout), selection=str(method.selection), seed=int(method.seed),
        device=method.device, progress=progress, cancel=cancel, **overrides)


def uses_groups(selection: str) -> bool:
    """True when the selection rule reads group labels."""
    return selection == "worst-group"


class ERM(Method):
    """Last-layer ERM: cross-entropy on train, best validation epoch kept.

    Result: probabilities for every split, ``embeddings_after = normalize(h W)``, ``calibration_set`` = the
    training rows this model misclassifies (what CFR calibrates on and JTT up-weights), record with the chosen
    epoch, the training loss and whether it levelled off.
    """

    name = "erm"
    label = "ERM (last layer)"
    uses_group_labels = False
    description = "cross-entropy on the train split, last layer + head, no group labels"
    HPARAMS = dict(LAST_LAYER_HPARAMS)
    PARAM_CONSTRAINTS = dict(LAST_LAYER_CONSTRAINTS)

    def __init__(self, epochs=ERM_DEFAULTS["epochs"], lr=ERM_DEFAULTS["lr"],
                 weight_decay=ERM_DEFAULTS["weight_decay"], momentum=ERM_DEFAULTS["momentum"],
                 batch_size=ERM_DEFAULTS["batch_size"], dropout=ERM_DEFAULTS["dropout"],
                 learn_scale=ERM_DEFAULTS["learn_scale"], selection=ERM_DEFAULTS["selection"], seed=0,
                 device="auto"):
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.batch_size = batch_size
        self.dropout = dropout
        self.learn_scale = learn_scale
        self.selection = selection
        self.seed = seed
        self.device = device

    def _fit(self, data, progress, cancel) -> MethodResult:
        tr = fit_erm_stage(self, data, progress, cancel)
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
                    "fit_seconds": round(tr.seconds, 3), "error_set_size": int(len(errors)),
                    "notes": init_notes(tr.init, data) + tr.notes},
            curves=tr.curves)
