"""The shared base of the last-layer methods trained by cross-entropy (ERM, JTT, AFR).

Their ten shared hyperparameters (SGD settings, dropout, scale, selection rule, seed, device) are declared once
here — defaults and help (:data:`LAST_LAYER_HPARAMS`, values from :data:`clipcal.methods._train.ERM_DEFAULTS`),
domains (:data:`clipcal.methods._train.LAST_LAYER_CONSTRAINTS`) and constructor arguments
(:meth:`LastLayerMethod.__init__`). A subclass declares only its own arguments::

    class JTT(LastLayerMethod):
        HPARAMS = {"lambda_up": (20.0, "…"), **LAST_LAYER_HPARAMS}
        def __init__(self, lambda_up=20.0, **last_layer):
            super().__init__(**last_layer)
            self.lambda_up = lambda_up

and its signature (``inspect.signature(JTT.__init__)``, read by ``get_params`` and the dashboard) lists its own
arguments followed by the shared ones, keyword-only — as if written out in full.

CFR is not a subclass: its stage-2 SGD has other defaults (lr 1e-4, the reference's) and its stage 1 has its
own ``erm_epochs`` / ``erm_lr``; it reuses the same domains (``LAST_LAYER_CONSTRAINTS``).
"""

from __future__ import annotations

import inspect

from clipcal.methods._train import DEFAULT_SCALE, ERM_DEFAULTS, LAST_LAYER_CONSTRAINTS, train_last_layer
from clipcal.methods.base import FeatureData, Method

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


def uses_groups(selection: str) -> bool:
    """True when the selection rule reads group labels."""
    return selection == "worst-group"


class LastLayerMethod(Method):
    """Base of ERM, JTT and AFR: the shared last-layer hyperparameters and the ERM stage they all train.

    Args (keyword): see :data:`LAST_LAYER_HPARAMS` — ``epochs``, ``lr``, ``weight_decay``, ``momentum``,
    ``batch_size``, ``dropout``, ``learn_scale``, ``selection``, ``seed``, ``device``; stored unchanged.
    """

    HPARAMS = dict(LAST_LAYER_HPARAMS)
    PARAM_CONSTRAINTS = dict(LAST_LAYER_CONSTRAINTS)

    def __init__(self, *, epochs=ERM_DEFAULTS["epochs"], lr=ERM_DEFAULTS["lr"],
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

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        sig = inspect.signature(init)
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return
        # `def __init__(self, own…, **last_layer)`: show the shared arguments as if written out
        own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        shared = [p.replace(kind=p.KEYWORD_ONLY) for p in
                  inspect.signature(LastLayerMethod.__init__).parameters.values() if p.name != "self"]
        init.__signature__ = sig.replace(parameters=own + shared)

    def fit_erm_stage(self, data: FeatureData, progress=None, cancel=None, stage: str = "erm",
                      epochs: int | None = None, **overrides):
        """Train the ERM stage with this method's last-layer hyperparameters
        (:func:`clipcal.methods._train.train_last_layer`; ``overrides`` go to it, e.g. ``train_idx``,
        ``sample_weight``, ``select``). Returns its :class:`~clipcal.methods._train.TrainedLastLayer`."""
        return train_last_layer(
            data, stage=stage, epochs=int(epochs if epochs is not None else self.epochs), lr=float(self.lr),
            weight_decay=float(self.weight_decay), momentum=float(self.momentum),
            batch_size=int(self.batch_size), scale=DEFAULT_SCALE, learn_scale=bool(self.learn_scale),
            dropout=float(self.dropout), selection=str(self.selection), seed=int(self.seed),
            device=self.device, progress=progress, cancel=cancel, **overrides)
