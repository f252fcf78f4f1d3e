"""Shared last-layer training code for ERM, JTT, AFR and CFR (cfr-method.md, "The recipe").

The trained model is CLIP's image last layer plus a cosine classifier over cached features::

    z      = normalize(h W)                    h: frozen pre-projection feature [B, d], W: [d, e]
    logits = s · dropout(z) · normalize(T)ᵀ    T: class head [K, e], s = 1/0.07 (fixed, or learnable log s)

* ``W`` starts from the backbone's own projection (``FeatureData.proj_weight``, exact for ViT); without one,
  from the identity when d == e, else from the least-squares map h → z (a documented approximation).
* ``T`` starts from the zero-shot text head when there is one, else from the normalised class means of the
  training embeddings ``normalize(h W₀)`` (cfr-method.md: "Without a text tower: initialised from the ERM
  stage" — the class-mean start is what the ERM stage itself starts from).
* Feature dropout (p = 0.1) on ``z`` in training only (the reference also drops at test time, a bug).
* SGD (:class:`SGD`, torch.optim.SGD's update), momentum 0.9, weight decay 1e-5 (not on log s), batch
  128, no schedule; the best epoch by the
  validation score is kept. Selection rules: ``"worst-class"`` (validation worst-class accuracy, needs no group
  labels — default) or ``"worst-group"`` (validation worst-group accuracy, uses group labels).
* Deterministic for a seed: a CPU ``torch.Generator`` orders batches and a device generator draws dropout
  masks; no global RNG state is touched. CUDA is used when present, else the CPU.

Building blocks for CFR (which has its own step function): :func:`resolve_device`, :func:`initial_weight`,
:func:`initial_head`, :class:`LastLayer`, :func:`make_optimizer`, :class:`Evaluator` (all-split prediction,
per-epoch validation metrics and the selection score), :func:`run_epochs` (epoch loop with selection,
curves, progress, cancel, best state restored), :func:`stage_progress`, :func:`check_converged`.

Defaults for the ERM stage (:data:`ERM_DEFAULTS`): lr 1e-2 and 100 epochs. The reference lr 1e-4 assumes
CLIP's zero-shot head as the start; from a class-mean head on synthetic features it barely moves in 30
epochs (cfr-method.md, measured notes), so ERM here uses a larger lr and checks that the training loss has
levelled off (a note is added to the result otherwise).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from clipcal.errors import MethodError
from clipcal.methods.base import (OOM_HINT, DeviceOutOfMemoryError, FeatureData, NonFiniteError, Progress,
                                  ProgressFn, check_cancel, empty_curves, is_out_of_memory, report)
# device and precision helpers live next door (one concern); re-exported for the methods that import them from here
from clipcal.methods._device import (CALIBRATION_PRECISIONS, PRECISION_HELP, bf16_native,  # noqa: F401
                                     device_manifest, resolve_calibration_precision, resolved_device_name,
                                     to_device)
from clipcal.methods._fused import unit_rows
from clipcal.methods.fit_memo import active_memo, fit_memo  # noqa: F401 (fit_memo: re-exported)
from clipcal.methods.fitted import FittedLastLayer
from clipcal.methods.params import Boolean, InstanceOf, Integral, Interval, Real, StrOptions

SELECTION_RULES = {
    "worst-class": "validation worst-class accuracy (annotation-free)",
    "worst-group": "validation worst-group accuracy (uses group labels)",
}
DEFAULT_SCALE = 1.0 / 0.07

#: ERM stage defaults shared by ERM / JTT / AFR (and CFR's stage 1). See module docstring for why lr = 1e-2.
ERM_DEFAULTS = {
    "epochs": 100,
    "lr": 1e-2,
    "weight_decay": 1e-5,
    "momentum": 0.9,
    "batch_size": 128,
    "dropout": 0.1,
    "learn_scale": False,
    "selection": "worst-class",
}


#: Domains of the last-layer hyperparameters, declared once: ERM, JTT and AFR take them as they are, CFR for
#: its stage-2 SGD and (``erm_lr`` / ``erm_epochs``) its stage 1 (clipcal.methods.params).
LAST_LAYER_CONSTRAINTS = {
    "epochs": [Interval(Integral, 1, None, closed="left")],
    "lr": [Interval(Real, 0, None, closed="neither")],
    "weight_decay": [Interval(Real, 0, None, closed="left")],
    "momentum": [Interval(Real, 0, 1, closed="left")],        # μ = 1 never forgets a gradient: diverges
    "batch_size": [Interval(Integral, 1, None, closed="left")],
    "dropout": [Interval(Real, 0, 1, closed="left")],         # p = 1 drops every feature
    "learn_scale": [Boolean()],
    "selection": [StrOptions(SELECTION_RULES)],
    "seed": [Interval(Integral, 0, 2**32 - 1, closed="both")],  # numpy's and torch's seed range
    "device": [InstanceOf(str, "a device name (auto, cpu, cuda, cuda:1 …)")],
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The methods' ``torch.device``, checked by the one device rule (:func:`clipcal.backbones.resolve_device`:
    ``"auto"`` → CUDA when available, else CPU; ``CUDA``, ``cudax``, ``cuda:7`` on one GPU, ``mps`` without Metal
    are handled there, not left to fail inside a method).

    Raises:
        BackboneError: a device string this machine cannot use.
    """
    from clipcal.backbones.devices import resolve_device as check_device

    return torch.device(check_device(str(device) if device is not None else "auto"))


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise rows of a float array (zero rows stay zero); float32."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


#: How the starting last layer W was obtained (:func:`initial_weight`) → what the run record says about it.
WEIGHT_SOURCES = {
    "exact": "exact last layer (visual.proj)",
    "identity": "identity (approximation): h is the final embedding, W starts as the identity — this backbone's "
                "projection is not a single matrix (e.g. RN50's attention pool) or is absent",
    "stored-approximation": "approximation: W starts from a stored matrix that is not the backbone's own "
                            "projection",
    "least-squares": "approximation: W starts from the least-squares map h → z (no projection matrix stored)",
    "given": "W given by the caller (e.g. a previous stage's trained layer)",
}


def initial_weight(data: FeatureData) -> tuple[np.ndarray, str]:
    """Initial last layer ``W`` [d, e] float32 and how it was obtained.

    Returns:
        (W, source), source a key of :data:`WEIGHT_SOURCES`: ``"exact"`` (the backbone's own projection),
        ``"identity"`` (``projection == "identity"`` — h is the final embedding — whether the stored
        ``proj_weight`` is the identity matrix or none is stored and d == e), ``"stored-approximation"`` (a stored
        ``proj_weight`` other than the identity on a backbone marked ``"identity"``) or ``"least-squares"``
        (d ≠ e and no projection: ``argmin_W ‖h W − z‖²`` on the training rows).
    """
    if data.proj_weight is not None:
        W = data.proj_weight.astype(np.float32).copy()
        if data.projection == "exact":
            return W, "exact"
        eye = W.shape[0] == W.shape[1] and np.array_equal(W, np.eye(W.shape[0], dtype=np.float32))
        return W, ("identity" if eye else "stored-approximation")
    if data.feature_dim == data.embed_dim:
        return np.eye(data.feature_dim, dtype=np.float32), "identity"
    tr = data.mask("train")
    w, *_ = np.linalg.lstsq(data.features[tr].astype(np.float64), data.embeddings[tr].astype(np.float64),
                            rcond=None)
    return w.astype(np.float32), "least-squares"


def initial_head(data: FeatureData, W: np.ndarray | None = None, rows: np.ndarray | None = None
                 ) -> tuple[np.ndarray, str]:
    """Initial class head ``T`` [K, e] float32 (unit rows) and its source.

    ``"text"``: ``data.text_head`` (the zero-shot classifier). ``"class-means"``: the normalised mean of the
    normalised training representations of each class, ``normalize(h W)`` when ``W`` is given, else the
    stored embeddings. ``rows`` restricts the training rows used (default: the train split).
    """
    if data.text_head is not None:
        return normalize_rows(data.text_head), "text"
    rows = data.indices("train") if rows is None else np.asarray(rows)
    z = normalize_rows(data.features[rows] @ W) if W is not None else normalize_rows(data.embeddings[rows])
    y = data.y[rows]
    means = np.zeros((data.n_classes, z.shape[1]), dtype=np.float32)
    for k in range(data.n_classes):
        if not (y == k).any():
            raise MethodError(f"class {data.class_names[k]!r} has no training rows to initialise the head")
        means[k] = z[y == k].mean(axis=0)
    return normalize_rows(means), "class-means"


def same_device(a: torch.device | str, b: torch.device | str) -> bool:
    """Whether two devices are the same one: ``cuda`` means the current CUDA device, so ``cuda`` and ``cuda:0``
    (the index a tensor reports) are equal when device 0 is current (likewise ``mps`` / ``mps:0``).

    A plain ``!=`` on ``torch.device`` calls them different, so the seeded dropout generator made on ``cuda`` was
    replaced by one seeded 0 at the first dropout call — every seed drew the same masks on a GPU (issue 15.1)."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        current = torch.cuda.current_device() if a.type == "cuda" and torch.cuda.is_available() else 0
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return a.index == b.index


class LastLayer(nn.Module):
    """The trainable last layer and cosine head: ``logits = s · normalize(h W) · normalize(T)ᵀ``.

    Args:
        W: [d, e] initial projection (copied).
        head: [K, e] initial class head (copied; rows normalised in the forward pass).
        scale: logit scale s (default 1/0.07, CLIP's initial temperature).
        learn_scale: learn ``log s`` (the reference does); default fixed.
        dropout: feature-dropout probability on z, training mode only.
        train_weight / train_head: whether W / T receive gradients.

    Attributes:
        generator: ``torch.Generator`` on the module's device for dropout masks (set by the trainer;
            ``None`` → a fixed-seed generator is created on first use, never the global RNG).
    """

    def __init__(self, W: np.ndarray, head: np.ndarray, scale: float = DEFAULT_SCALE, learn_scale: bool = False,
                 dropout: float = 0.1, train_weight: bool = True, train_head: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.as_tensor(np.array(W, dtype=np.float32)), requires_grad=train_weight)
        self.head = nn.Parameter(torch.as_tensor(np.array(head, dtype=np.float32)), requires_grad=train_head)
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale), dtype=torch.float32),
                                      requires_grad=learn_scale)
        self.dropout = float(dropout)
        self.generator: torch.Generator | None = None
        self.bf16 = False  # training-mode projections in bf16 (autocast); set by the trainer

    @property
    def scale(self) -> float:
        """Current logit scale s."""
        return float(self.log_scale.detach().exp())

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """[B, d] features → [B, e] unit embeddings ``normalize(h W)`` (no dropout), float32.

        With :attr:`bf16` set and in training mode the product ``h W`` runs in bf16 (``torch.autocast``; W stays
        the fp32 master copy and its gradient is accumulated in fp32); normalisation, losses and every evaluation
        (selection, stored results) stay fp32."""
        if self.bf16 and self.training:
            with torch.autocast(device_type=h.device.type, dtype=torch.bfloat16):
                z = h @ self.weight
            return unit_rows(z.float())
        return unit_rows(h @ self.weight)  # = F.normalize, bit for bit, with a lighter backward (issue 13)

    def feature_dropout(self, z: torch.Tensor) -> torch.Tensor:
        """Inverted dropout on z with this module's generator; identity in eval mode or p = 0."""
        if not self.training or self.dropout <= 0:
            return z
        if self.generator is None or not same_device(self.generator.device, z.device):
            self.generator = torch.Generator(device=z.device).manual_seed(0)
        keep = torch.rand(z.shape, generator=self.generator, device=z.device) >= self.dropout
        return z * keep / (1.0 - self.dropout)

    def logits_from_z(self, z: torch.Tensor) -> torch.Tensor:
        """[B, e] embeddings → [B, K] logits ``s · z · normalize(T)ᵀ`` (no dropout here)."""
        return self.log_scale.exp() * (z @ F.normalize(self.head, dim=-1).T)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """[B, d] features → [B, K] logits, feature dropout on z in training mode."""
        return self.logits_from_z(self.feature_dropout(self.project(h)))


class SGD:
    """SGD with momentum and weight decay — the update of ``torch.optim.SGD`` (dampening 0, no Nesterov).

    ``d = g + wd · p;  b = μ · b + d`` (``b = d`` on the first step)``;  p −= lr · b``, per parameter group.

    Why not ``torch.optim.SGD``: its first ``step()`` imports ``torch._dynamo`` (≈ 900 modules incl. sympy),
    which took 5–20 s on the shared 2-core CPU — longer than a whole synthetic ERM fit. Same interface
    subset: ``param_groups``, ``zero_grad(set_to_none=True)``, ``step()``, ``state_dict()``.
    """

    def __init__(self, groups: list[dict], lr: float, momentum: float = 0.9):
        self.param_groups = [{"lr": lr, "momentum": momentum, "weight_decay": 0.0, **g} for g in groups]
        self._buf: dict[int, torch.Tensor] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            lr, mu, wd = g["lr"], g["momentum"], g["weight_decay"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                if mu:
                    buf = self._buf.get(id(p))
                    if buf is None:
                        buf = self._buf[id(p)] = d.detach().clone()
                    else:
                        buf.mul_(mu).add_(d)
                    d = buf
                p.add_(d, alpha=-lr)

    def state_dict(self) -> dict:
        """Hyperparameters and momentum buffers (for inspection; not used for resuming)."""
        return {"param_groups": [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups],
                "buffers": len(self._buf)}


def make_optimizer(model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 1e-5) -> SGD:
    """:class:`SGD` over the trainable parameters; weight decay on W and T only (never on log s)."""
    decay = [p for n, p in model.named_parameters() if p.requires_grad and n != "log_scale"]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if getattr(model, "log_scale", None) is not None and model.log_scale.requires_grad:
        groups.append({"params": [model.log_scale], "weight_decay": 0.0})
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise MethodError("nothing to train: every parameter is frozen")
    return SGD(groups, lr=lr, momentum=momentum)


# ---------------------------------------------------------------------------------------------------------
# evaluation and model selection
# ---------------------------------------------------------------------------------------------------------


def accuracy_by(values: np.ndarray, correct: np.ndarray, n_bins: int) -> np.ndarray:
    """[n_bins] float64 accuracy per bin (class or group index); NaN for empty bins; ignores values < 0."""
    keep = values >= 0
    n = np.bincount(values[keep], minlength=n_bins)[:n_bins].astype(np.float64)
    c = np.bincount(values[keep], weights=correct[keep].astype(np.float64), minlength=n_bins)[:n_bins]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, c / np.maximum(n, 1), np.nan)


def selection_score(rule: str, y: np.ndarray, pred: np.ndarray, group: np.ndarray, n_classes: int,
                    n_groups: int) -> float:
    """The model-selection score of predictions on one split (higher is better).

    ``"worst-class"``: min over classes present of the class accuracy. ``"worst-group"``: min over groups
    present (n > 0) of the group accuracy. Raises MethodError for an unknown rule or worst-group without
    group labels.
    """
    correct = np.asarray(pred) == np.asarray(y)
    if rule == "worst-class":
        acc = accuracy_by(np.asarray(y), correct, n_classes)
    elif rule == "worst-group":
        if n_groups == 0 or not (np.asarray(group) >= 0).any():
            raise MethodError("selection rule 'worst-group' needs group labels on the validation split",
                              hint="use --selection worst-class (annotation-free)")
        acc = accuracy_by(np.asarray(group), correct, n_groups)
    else:
        raise MethodError(f"unknown selection rule {rule!r}", hint=f"use one of {list(SELECTION_RULES)}")
    return float(np.nanmin(acc)) if np.isfinite(acc).any() else float("nan")


def check_selection(rule: str, data: FeatureData) -> None:
    """Raise MethodError early when ``rule`` is unknown or cannot be evaluated on ``data``'s val split."""
    if rule not in SELECTION_RULES:
        raise MethodError(f"unknown selection rule {rule!r}", hint=f"use one of {list(SELECTION_RULES)}")
    if rule == "worst-group":
        val = data.mask("val")
        if data.n_groups == 0 or not (data.group[val] >= 0).any():
            raise MethodError("selection rule 'worst-group' needs group labels on the validation split",
                              hint="use selection = worst-class (annotation-free)")


class Evaluator:
    """Predicts every sample with a :class:`LastLayer` and scores the selection split.

    Args:
        data: the FeatureData (its features on ``device``: :meth:`FeatureData.device_features`, shared).
        device: torch device.
        rule: selection rule (``"worst-class"`` / ``"worst-group"``).
        splits: splits whose metrics go to the curves each epoch (default only ``val``: selection never
            looks at test, and evaluating test every epoch would invite it).
        batch_size: rows per forward pass in evaluation.
    """

    def __init__(self, data: FeatureData, device: torch.device, rule: str = "worst-class",
                 splits: tuple[str, ...] = ("val",), batch_size: int = 8192):
        check_selection(rule, data)
        self.data = data
        self.device = device
        self.rule = rule
        self.splits = tuple(splits)
        self.batch_size = batch_size
        self.h = data.device_features(device)  # one copy per dataset and device, shared
        self._idx = {s: data.indices(s) for s in set(self.splits) | {"val"}}

    @torch.no_grad()
    def predict(self, model: LastLayer, idx: np.ndarray | None = None, with_z: bool = True
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Eval-mode prediction. Returns (probs [n, K] float32, z [n, e] float32 or ``None`` if not ``with_z``)
        for rows ``idx`` (all). The outputs are allocated once and filled block by block: a list of blocks plus
        their concatenation held two [n, e] copies at the peak (0.8 GB at CelebA size)."""
        was = model.training
        model.eval()
        rows = np.arange(self.data.n) if idx is None else np.asarray(idx)
        probs = np.empty((len(rows), self.data.n_classes), np.float32)
        zs = np.empty((len(rows), self.data.embed_dim), np.float32) if with_z else None
        for s in range(0, len(rows), self.batch_size):
            b = torch.as_tensor(rows[s:s + self.batch_size], device=self.device)
            z = model.project(self.h[b])
            probs[s:s + len(b)] = torch.softmax(model.logits_from_z(z), dim=-1).float().cpu().numpy()
            if zs is not None:
                zs[s:s + len(b)] = z.float().cpu().numpy()
        model.train(was)
        return probs, zs

    def split_metrics(self, probs: np.ndarray, idx: np.ndarray) -> dict[str, float]:
        """accuracy, worst_class, worst_group (NaN without groups) and mean CE loss of predictions on rows."""
        d = self.data
        y = d.y[idx]
        pred = probs.argmax(1)
        correct = pred == y
        out = {
            "accuracy": float(correct.mean()) if len(idx) else float("nan"),
            "worst_class": selection_score("worst-class", y, pred, d.group[idx], d.n_classes, d.n_groups),
            "loss": float(-np.log(np.clip(probs[np.arange(len(idx)), y], 1e-12, None)).mean())
            if len(idx) else float("nan"),
        }
        if d.n_groups and (d.group[idx] >= 0).any():
            out["worst_group"] = selection_score("worst-group", y, pred, d.group[idx], d.n_classes, d.n_groups)
        return out

    def evaluate(self, model: LastLayer, epoch: int, stage: str) -> tuple[float, list[dict]]:
        """Score the validation split and return (selection score, curve rows for ``self.splits``)."""
        rows, score = [], float("nan")
        for split in dict.fromkeys(("val",) + self.splits):
            idx = self._idx[split]
            probs, _ = self.predict(model, idx, with_z=False)
            if not np.isfinite(probs).all():  # argmax of NaN is 0: the score would look like a real one
                raise NonFiniteError(
                    f"the model's {split} outputs became NaN or inf at {stage} epoch {epoch}",
                    hint="the weights diverged: lower the learning rate (e.g. 10× smaller)")
            m = self.split_metrics(probs, idx)
            if split == "val":
                score = m["worst_class"] if self.rule == "worst-class" else m.get("worst_group", float("nan"))
            if split in self.splits:
                rows += [{"epoch": epoch, "stage": stage, "split": split, "metric": k, "value": v}
                         for k, v in m.items()]
        return score, rows


# ---------------------------------------------------------------------------------------------------------
# epoch loop
# ---------------------------------------------------------------------------------------------------------


@dataclass
class LoopResult:
    """Outcome of :func:`run_epochs`.

    Attributes:
        best_epoch: the chosen epoch (≥ 1), by the validation score; ties keep the earliest.
        best_score: its validation score.
        curves: long DataFrame (epoch, stage, split, metric, value): ``train`` rows carry whatever the epoch
            function returned (e.g. ``loss``), ``val`` rows the evaluator's metrics; epoch 0 = the start.
        train_losses: the per-epoch ``loss`` values returned by the epoch function (if any).
        seconds: wall time of the loop.
    """

    best_epoch: int
    best_score: float
    curves: pd.DataFrame
    train_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def check_finite_loss(loss: float, *, stage: str, epoch: int, lr: float | None = None) -> None:
    """Raise :class:`~clipcal.methods.base.NonFiniteError` when a training loss is NaN or ±inf.

    A non-finite loss means the weights are (or are about to be) NaN: every later epoch, the selection and the
    stored predictions would be meaningless, so the method stops here. The hint names the likely cause: a
    learning rate too large for the loss (SGD overshoots, the logits overflow).
    """
    if math.isfinite(loss):
        return
    lr_text = f" (lr = {lr:g})" if lr is not None else ""
    raise NonFiniteError(
        f"the training loss became {loss} at {stage} epoch {epoch}; training stopped and nothing was kept",
        hint=f"the learning rate is probably too large{lr_text}: try one 10× smaller; if that does not help, "
             f"check the features for huge values")


def run_epochs(model: LastLayer, *, epochs: int, train_epoch: Callable[[int], dict], evaluator: Evaluator,
               stage: str, progress: ProgressFn | None = None, cancel=None, select: bool = True,
               lr: float | None = None) -> LoopResult:
    """Run ``epochs`` epochs, evaluate after each, keep and restore the best state.

    Args:
        model: the module being trained (its state dict is snapshotted at the best epoch and restored).
        epochs: number of epochs (≥ 1).
        train_epoch: ``f(epoch) -> {"loss": float, ...}`` trains one epoch (1-based) and returns train
            figures for the curves.
        evaluator: an :class:`Evaluator` (selection rule, validation metrics).
        stage: label for curves / progress (``"erm"``, ``"cfr"`` …).
        progress / cancel: as in :meth:`Method.fit`; progress counts epochs.
        select: True (default) keeps the best validation epoch; False keeps the last epoch (e.g. JTT's
            identification model trained for a fixed number of epochs).
        lr: the learning rate, named in the hint when the loss diverges.

    Raises:
        MethodError: ``epochs < 1``. DeviceOutOfMemoryError: the device ran out of memory in an epoch (stage and
        epoch named). NonFiniteError: an epoch's training loss (or any other figure the epoch
        function returned), the model's validation outputs or the validation score is NaN / inf.
        Cancelled: ``cancel`` set (checked before each epoch).
    """
    if epochs < 1:
        raise MethodError(f"epochs must be ≥ 1, got {epochs}")
    t0 = time.perf_counter()
    _, rows = evaluator.evaluate(model, 0, stage)
    best_epoch, best_score, best_state = 0, -math.inf, None
    losses = []
    for ep in range(1, epochs + 1):
        check_cancel(cancel)
        model.train()
        oom = None
        try:
            train_m = train_epoch(ep) or {}
        except RuntimeError as err:   # torch.cuda.OutOfMemoryError is one
            if not is_out_of_memory(err):
                raise
            oom = str(err).splitlines()[0][:200]
        if oom is not None:  # raised outside the except, which would keep the failed step's tensors alive
            raise DeviceOutOfMemoryError(f"out of memory on {evaluator.device} in stage {stage!r}, epoch {ep} "
                                         f"({oom})", hint=OOM_HINT)
        model.eval()
        for k, v in train_m.items():  # "loss" and its terms (CFR: loss_ce, loss_contrastive, loss_supcon)
            check_finite_loss(float(v), stage=stage, epoch=ep, lr=lr)
        if "loss" in train_m:
            losses.append(float(train_m["loss"]))
        rows += [{"epoch": ep, "stage": stage, "split": "train", "metric": k, "value": float(v)}
                 for k, v in train_m.items()]
        score, r = evaluator.evaluate(model, ep, stage)
        rows += r
        if not np.isfinite(score):  # val is never empty here (check_trainable): NaN means broken outputs
            raise NonFiniteError(f"the validation score ({evaluator.rule}) is {score} at {stage} epoch {ep}",
                                 hint="check that the validation split has samples of every class")
        s = score
        if not select:
            best_epoch, best_score = ep, s
        elif best_state is None or s > best_score:
            best_epoch, best_score, best_state = ep, s, copy.deepcopy(model.state_dict())
        report(progress, ep, epochs,
               f"{stage} epoch {ep}/{epochs} · loss {train_m.get('loss', float('nan')):.4f} · "
               f"val {evaluator.rule} {score:.3f}", stage,
               train_loss=float(train_m.get("loss", float("nan"))), val_score=float(score))
    if select:
        model.load_state_dict(best_state)
    model.eval()
    curves = pd.DataFrame(rows, columns=list(empty_curves().columns)) if rows else empty_curves()
    return LoopResult(best_epoch=best_epoch, best_score=float(best_score), curves=curves, train_losses=losses,
                      seconds=time.perf_counter() - t0)


class torch_threads:
    """Context manager: run small problems on one intra-op thread (restored after).

    On a shared 2-core CPU, small matrices (d·e ≤ 2¹⁶, e.g. synthetic 64 × 64) ran 3× faster on one thread
    than on two (measured: 20 ERM epochs 5.5 s vs 18.4 s under load); larger ones keep torch's default.
    """

    def __init__(self, d: int, e: int, device: torch.device | None = None):
        self.small = d * e <= 1 << 16 and (device is None or device.type == "cpu")
        self.old = None

    def __enter__(self):
        if self.small:
            self.old = torch.get_num_threads()
            torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            torch.set_num_threads(self.old)
        return False


def check_converged(losses: list[float], window: int = 5, rtol: float = 0.03) -> bool:
    """True when the mean training loss of the last ``window`` epochs is within ``rtol`` (relative) of the
    ``window`` before, or when the loss is already tiny (< 1e-3). Fewer than 2 windows → True if monotone."""
    if not losses:
        return True
    if losses[-1] < 1e-3:
        return True
    if len(losses) < 2 * window:
        return False
    last, prev = np.mean(losses[-window:]), np.mean(losses[-2 * window:-window])
    return bool(abs(prev - last) <= rtol * max(abs(prev), 1e-12))


def unconverged_note(stage: str, losses: list[float], chosen_epoch: int, advice: str, window: int = 5) -> list[str]:
    """``[note]`` when the training loss had not levelled off (:func:`check_converged`) *and* the chosen epoch is
    among the last ``window`` — validation was still improving at the end, so more epochs could change the model;
    else ``[]``: an earlier chosen epoch is validation's pick whatever the loss does after it (a note there sent
    users to train longer for nothing)."""
    if check_converged(losses, window) or chosen_epoch <= len(losses) - window:
        return []
    return [f"{stage}: training loss had not levelled off after {len(losses)} epochs (last {losses[-1]:.4f}) "
            f"and the chosen epoch {chosen_epoch} is among the last {window}; {advice}"]


def stage_progress(progress: ProgressFn | None, offset: float, grand_total: float) -> ProgressFn | None:
    """Wrap ``progress`` so a stage's ``done`` counts from ``offset`` out of ``grand_total`` units."""
    if progress is None:
        return None

    def inner(p: Progress) -> None:
        progress(Progress(done=offset + p.done, total=grand_total, message=p.message, stage=p.stage,
                          metrics=p.metrics))

    return inner


# ---------------------------------------------------------------------------------------------------------
# weighted cross-entropy training (ERM / JTT / AFR)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class TrainedLastLayer:
    """A trained :class:`LastLayer` with its selection outcome.

    Attributes:
        model: the module at the chosen epoch, eval mode, on ``device``.
        evaluator: the Evaluator used (call :meth:`predict_all` for every split).
        chosen_epoch / best_score: from :func:`run_epochs`.
        curves: the curves DataFrame.
        train_losses: per-epoch training loss.
        converged: :func:`check_converged` of the training loss.
        init: ``{"weight": source, "head": source}`` from :func:`initial_weight` / :func:`initial_head`.
        notes: human-readable notes (non-convergence, approximations).
        seconds: wall time this call spent: the training loop, or for a ``reused`` result the memo's look-up.
        reused: True when an open :func:`fit_memo` answered the call with an identical earlier fit (a copy).
        trained_seconds: wall time of the training loop that produced the model (= ``seconds`` unless reused).
    """

    model: LastLayer
    evaluator: Evaluator
    chosen_epoch: int
    best_score: float
    curves: pd.DataFrame
    train_losses: list[float]
    converged: bool
    init: dict
    notes: list[str]
    seconds: float
    reused: bool = False
    trained_seconds: float | None = None

    def predict_all(self) -> tuple[np.ndarray, np.ndarray]:
        """(probs [N, K] float32, z [N, e] float32) for every row of the FeatureData."""
        return self.evaluator.predict(self.model)

    def weight(self) -> np.ndarray:
        """The trained W [d, e] float32."""
        return self.model.weight.detach().float().cpu().numpy()

    def head(self) -> np.ndarray:
        """The trained head, rows normalised, [K, e] float32."""
        return normalize_rows(self.model.head.detach().float().cpu().numpy())

    def fitted(self) -> FittedLastLayer:
        """W, the normalised head and the logit scale of the chosen epoch as a
        :class:`~clipcal.methods.fitted.FittedLastLayer` (no bias)."""
        return last_layer_of(self.model, self.evaluator.data)


def last_layer_of(model: LastLayer, data: FeatureData) -> FittedLastLayer:
    """The :class:`~clipcal.methods.fitted.FittedLastLayer` of a :class:`LastLayer` in its current state:
    ``W``, ``normalize(T)`` and ``s`` (``logits = s · normalize(h W) · normalize(T)ᵀ``, no bias)."""
    return FittedLastLayer(W=model.weight.detach().float().cpu().numpy(),
                           head=normalize_rows(model.head.detach().float().cpu().numpy()), scale=model.scale,
                           bias=None, classes=tuple(data.class_names))


def init_notes(init: dict, data: FeatureData) -> list[str]:
    """Human-readable notes about approximations in the starting point (empty when exact + text head)."""
    notes = []
    if init["weight"] in ("identity", "stored-approximation", "least-squares"):
        notes.append("last layer W: " + WEIGHT_SOURCES.get(init["weight"], str(init["weight"])))
    if init["head"] == "class-means":
        notes.append("class head initialised from normalised class means of training embeddings (no text head)")
    return notes


def train_last_layer(data: FeatureData, *, train_idx: np.ndarray | None = None,
                     sample_weight: np.ndarray | None = None, init: tuple[np.ndarray, np.ndarray] | None = None,
                     stage: str = "erm", epochs: int = ERM_DEFAULTS["epochs"], lr: float = ERM_DEFAULTS["lr"],
                     weight_decay: float = ERM_DEFAULTS["weight_decay"],
                     momentum: float = ERM_DEFAULTS["momentum"], batch_size: int = ERM_DEFAULTS["batch_size"],
                     scale: float = DEFAULT_SCALE, learn_scale: bool = False,
                     dropout: float = ERM_DEFAULTS["dropout"], selection: str = "worst-class", seed: int = 0,
                     device: str = "auto", precision: str = "fp32", train_weight: bool = True,
                     train_head: bool = True,
                     curve_splits: tuple[str, ...] = ("val",), progress: ProgressFn | None = None,
                     cancel=None, select: bool = True) -> TrainedLastLayer:
    """Train W and T with (weighted) cross-entropy, selecting the epoch by the validation score.

    Loss per batch: ``Σ wᵢ CE(logitsᵢ, yᵢ) / Σ wᵢ`` (``w`` = 1 without ``sample_weight``; JTT's up-weighting
    equals up-sampling in expectation).

    Args:
        data: FeatureData (train rows fit, val rows select).
        train_idx: rows to train on (default the train split) — AFR passes its first part.
        sample_weight: [len(train_idx)] non-negative weights aligned with ``train_idx`` (or [N] over all rows).
        init: ``(W [d,e], T [K,e])`` start; default :func:`initial_weight` / :func:`initial_head`.
        stage: label in curves / progress.
        epochs, lr, weight_decay, momentum, batch_size: SGD settings (batch shuffled each epoch, last partial
            batch kept).
        scale, learn_scale, dropout: see :class:`LastLayer`.
        selection: ``"worst-class"`` or ``"worst-group"``.
        seed: seeds the batch order (CPU generator) and dropout (device generator).
        device: ``"auto"`` / ``"cpu"`` / ``"cuda"``.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (:func:`resolve_calibration_precision`): the training
            projections' matrix products.
        train_weight / train_head: which of W, T learn.
        curve_splits: splits evaluated for the curves each epoch.
        select: keep the best validation epoch (default) or, if False, the last epoch.

    Returns:
        :class:`TrainedLastLayer` (the model at the chosen epoch). Inside ``with fit_memo():`` an identical
        earlier call's result (a copy, ``reused=True``; :mod:`clipcal.methods.fit_memo`) — progress then jumps to
        the end of the stage.

    Raises:
        MethodError: bad weights (negative, all zero, wrong length, NaN), unknown selection rule,
            worst-group without group labels, empty training set. Cancelled.
    """
    call = {k: v for k, v in locals().items() if k not in ("data", "progress", "cancel")}
    dev = resolve_device(device)
    memo, key, t_look = active_memo(), None, time.perf_counter()
    if memo is not None:
        check_cancel(cancel)
        call.update(device=resolved_device_name(dev), precision=resolve_calibration_precision(precision, dev),
                    threads=torch.get_num_threads() if dev.type == "cpu" else None)
        key = memo.key(data, call)
        hit = memo.get(key, lambda: Evaluator(data, dev, rule=selection, splits=curve_splits))
        if hit is not None:
            report(progress, epochs, epochs, f"{stage}: identical fit reused", stage)
            return dataclasses.replace(hit, seconds=time.perf_counter() - t_look)
    tr = data.indices("train") if train_idx is None else np.asarray(train_idx, dtype=np.int64)
    if len(tr) == 0:
        raise MethodError("no training rows to fit on")
    if sample_weight is None:
        w = np.ones(len(tr), dtype=np.float32)
    else:
        w = np.asarray(sample_weight, dtype=np.float64)
        if len(w) == data.n and len(tr) != data.n:
            w = w[tr]
        if len(w) != len(tr):
            raise MethodError(f"sample_weight has {len(w)} values for {len(tr)} training rows")
        if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise MethodError("sample weights must be finite, non-negative and not all zero")
        w = (w / w.mean()).astype(np.float32)
    if init is None:
        W0, wsrc = initial_weight(data)
        T0, hsrc = initial_head(data, W0)
    else:
        W0, T0 = init
        wsrc, hsrc = "given", "given"
    init_info = {"weight": wsrc, "head": hsrc}
    model = LastLayer(W0, T0, scale=scale, learn_scale=learn_scale, dropout=dropout, train_weight=train_weight,
                      train_head=train_head).to(dev)
    model.bf16 = resolve_calibration_precision(precision, dev) == "bf16"
    model.generator = torch.Generator(device=dev).manual_seed(int(seed) * 1000 + 1)
    order_gen = torch.Generator().manual_seed(int(seed))
    opt = make_optimizer(model, lr=lr, momentum=momentum, weight_decay=weight_decay)
    evaluator = Evaluator(data, dev, rule=selection, splits=curve_splits)
    h = evaluator.h                                  # all rows, shared; each step gathers its batch's rows
    rows = torch.as_tensor(tr, device=dev)
    yt = torch.as_tensor(data.y[tr], device=dev)
    wt = torch.as_tensor(w, device=dev)

    def one_epoch(ep: int) -> dict:
        perm = to_device(torch.randperm(len(tr), generator=order_gen), dev)
        acc = torch.zeros(2, device=dev)                # Σ w·CE, Σ w — read once per epoch, not per step
        for s in range(0, len(tr), batch_size):
            b = perm[s:s + batch_size]
            ce = F.cross_entropy(model(h.index_select(0, rows[b])), yt[b], reduction="none")
            wb = wt[b]
            wce, wtot = (wb * ce).sum(), wb.sum()
            loss = wce / wtot.clamp_min(1e-12)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            acc += torch.stack([wce.detach(), wtot])
        tot, wsum = acc.tolist()
        return {"loss": tot / max(wsum, 1e-12)}

    with torch_threads(data.feature_dim, data.embed_dim, dev):
        loop = run_epochs(model, epochs=epochs, train_epoch=one_epoch, evaluator=evaluator, stage=stage,
                          progress=progress, cancel=cancel, select=select, lr=lr)
    conv = check_converged(loop.train_losses)
    notes = unconverged_note(stage, loop.train_losses, loop.best_epoch, "consider more epochs or a larger lr")
    out = TrainedLastLayer(model=model, evaluator=evaluator, chosen_epoch=loop.best_epoch,
                           best_score=loop.best_score, curves=loop.curves, train_losses=loop.train_losses,
                           converged=conv, init=init_info, notes=notes, seconds=loop.seconds,
                           trained_seconds=loop.seconds)
    if key is not None:
        memo.put(key, out)
    return out
