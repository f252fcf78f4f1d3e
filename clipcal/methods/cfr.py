"""CFR — Contrastive Feature Recalibration (You et al., "Calibrating Multi-modal Representations: A Pursuit of
Group Robustness without Annotations", CVPR 2024, pp. 26140–26150, arXiv 2403.07241).

Specification: ``docs/cfr-method.md`` (shared docs). On cached features only::

    stage 1  ERM: train W (last layer) and T (class head) with cross-entropy; keep the best validation epoch
    calib.   calibration set = every training sample the ERM model misclassifies (no group labels)
    stage 2  from the pretrained start (W₀, text head) — or from ERM (option) — each step takes
             128 training samples + 128 calibration anchors (cycled) and minimises
             1.5·CE(anchors) + 1.5·contrastive(anchors; P = 16 positives, N = 16 hard negatives, τ = 1)
             + 1.0·SupCon(training batch, temperature 0.07); 100 epochs, best validation epoch kept.

Where this departs from the authors' code (commit e9e61bd), on purpose:

* SupCon: plain supervised contrastive loss over the training batch (Khosla et al., NeurIPS 2020, Eq. 2,
  "L_out"), not the reference's "targeted SupCon" with fixed class targets and a 1,280-entry queue.
* Negatives: the hard negatives are kept (the reference overwrites them with random *same-class* samples — a
  bug). ``negatives="random-other-class"`` is offered as the ablation.
* Loss weights: fixed 1.5 / 1.5 / 1.0 (cfr-method.md). The reference multiplies the CE and contrastive terms by
  ``1 + 0.5·cos(2π·epoch/epochs)`` (= 1.5 only at epoch 0); ``loss_schedule="cosine"`` reproduces that.
  Each term has a switch (``ce``, ``contrastive``, ``supcon``; not in the reference) so its share can be measured
  (``bench/cfr_ablation.py``); the record's ``loss_terms`` says which were on. A weight is never the switch.
* Feature dropout (0.1) in training only. As in the reference it hits the anchors' and training batch's
  z (which are re-normalised before the contrastive terms), never the positives / negatives.

Speed (issue 3): the frozen trunk means everything runs on cached features. Each step projects every
*distinct* row (batch ∪ anchors ∪ positives ∪ negatives) through W once (a row plan drawn on the host, one
matrix product, a gather whose gradient is a segment sum), hard negatives are mined once with a chunked,
bounded-memory top-k, and validation is the only per-epoch evaluation (≈ 0.6 % of an epoch's FLOPs on
Waterbirds-shaped data). The recipe (epochs, P, N, batch) is never changed for speed. What remains is two matrix
products per step over the distinct rows (≈ 2,600 of 4,352 on Waterbirds-shaped data, ≈ 8 GFLOP at 1,024 →
768; 65–70 % of an epoch's CPU time in torch.profiler): ~31 TFLOP for 100 epochs, minutes on a CPU, faster with
``precision="bf16"`` where bf16 is native. The GPU time is not measured yet (bench/gpu_check.py measures it).

Determinism policy (issue 15.2; the same on the CPU and on CUDA): for one seed, device and precision a fit is
reproducible bit for bit. Batch order and sampling draw from a CPU ``torch.Generator``, dropout from a generator
on the training device; no training op accumulates with atomics — the gradient of the deduplicated projection's
gather is a segment sum over a stable sort (``torch.segment_reduce``) off the CPU and, on the CPU, ``index_add_``
(serial there, bit-identical to the segment sum), and SupCon weights its anchors instead of indexing with a
boolean mask. cuBLAS matrix products are deterministic for a fixed shape,
GPU and library version on one stream (what the methods use); fp32 matrix products do not use TF32 (torch's
default ``allow_tf32 = False``, recorded in the run's manifest with the GPU name). What stays different: the CPU
and a GPU (or two GPU models, or two CUDA / cuBLAS versions) sum in different orders, so their results agree to
float rounding, not bit for bit — the run key holds the resolved device for that reason.
``torch.use_deterministic_algorithms(True)`` is not switched on: it is process-wide (the dashboard's embedding
jobs share the process) and would raise for operations outside the methods.

Measured behaviour worth knowing (bench/cfr_sweep.py, validation-only selection):

* The cross-entropy on the calibration set is the strongest term (logit scale 1/0.07, the same few anchors
  in every step); after the first epochs it moves the head toward the error set and validation worst-class
  accuracy falls, so the selected epoch is early. On the synthetic generator (95 % correlation, no text
  tower) lr 1e-4 gave no reliable gain over ERM and lr 1e-3 did (selected epoch 1).
* Where ERM fits every training sample (high-dimensional features, few images) the paper's calibration set is
  empty; where it almost does, the set is tiny and often one class. ``calibration_errors="cross-fit"`` is the
  annotation-free answer offered here (not in the paper): the training samples misclassified by ERM models
  that did not train on them (k class-stratified folds, each model selected on validation like stage 1).

Calibration-set rule and model selection (clipcal's choices where the paper is silent; issue 12.1):

* **Why a one-class set collapses the model.** Measured on the demo (Lite0, birds 25–40 %, seed 0, validation
  only): the paper's set was 8 images, all landbirds on water; validation worst-class accuracy went 0.68
  (stage-2 start) → 0.36 → 0.06 in two epochs, almost every image predicted "landbird". The cross-entropy term
  alone does it (CE only: same collapse; CE off: 0.65–0.68, no collapse; head frozen or start from ERM: still
  collapses). Cross-entropy on anchors of one class is lowered fastest by moving *every* representation toward
  that class — the non-negative Lite0 features share a large common direction that makes this easy — and the
  same 8 anchors repeated 16× per step under momentum 0.9 push the same way every step.
* **Usable set** (:func:`calibration_usable`): every class has ≥ ``calibration_min_per_class`` (default 5)
  samples, so the anchors' pulls oppose each other. ``calibration_errors="auto"`` (default) takes the paper's
  set when usable, else the cross-fit set when usable; when neither is, stage 2 runs on the paper's set if it
  has samples (else cross-fit's) under the selection guard below; when both are empty CFR returns ERM.
  ``"train"`` / ``"cross-fit"`` force a rule. The record's ``calibration_rule`` says which ran and why.
* **Selection candidates** (issue 10.10, decided here): the stage-1 ERM model, the stage-2 start (epoch 0) and
  every CFR epoch, compared by the same validation rule; ties keep the CFR epoch, then the start. The
  paper keeps "the best validation epoch" of stage 2; adding its two starting points means CFR never returns a
  model that scores below where it started on validation. When ERM wins, ``fallback="erm"`` with
  ``fallback_reason="selection"``. (ERM and JTT keep selecting among epochs 1…E: their epoch 0 is the
  untrained class-mean head, or the zero-shot head that is its own method in every table; AFR selects over its
  γ / λ grid.)
"""

from __future__ import annotations

import copy
import math
import time
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from clipcal.errors import MethodError
from clipcal.methods import _train as T
from clipcal.methods.base import FeatureData, Method, MethodResult, ProgressFn, check_cancel
# the building blocks live next door (one concern each) and are re-exported here, where they were first defined
from clipcal.methods.cfr_calibration import (CALIBRATION_ERRORS, CALIBRATION_RULES, MIN_PER_CLASS,  # noqa: F401
                                             CalibrationChoice, calibration_set, calibration_summary,
                                             calibration_usable, choose_calibration_set, cross_fit_errors,
                                             stratified_folds, usable_definition)
from clipcal.methods.cfr_losses import (RowPlan, cfr_step_loss, contrastive_loss, project_unique,  # noqa: F401
                                        row_plan, supcon_loss)
from clipcal.methods.cfr_sampling import PoolSampler, mine_hard_negatives  # noqa: F401
from clipcal.methods.fit_memo import reuse_notes
from clipcal.methods.fitted import FittedLastLayer
from clipcal.methods.params import Boolean, Integral, Interval, Real, StrOptions

#: (title, markdown) shown on the dashboard's Calibrate page: the method as this module implements it.
TEACHING = (
    "What CFR does",
    "**Contrastive Feature Recalibration** (You et al., CVPR 2024, arXiv 2403.07241) needs **no group "
    "labels**. The image model stays frozen; only its **last projection layer** and the class head are trained, "
    "on the cached features. (1) A plain linear probe (**ERM**) is trained on the training split. (2) The "
    "training images this ERM model gets **wrong** form the **calibration set** — mostly images of the minority "
    "groups, found without any group label. (3) The last layer is retrained so that each calibration image's "
    "representation is **pulled toward correctly classified images of its own class** (positives) and **pushed "
    "away from the most similar images of the other classes** (hard negatives), together with cross-entropy on "
    "the calibration set and a supervised contrastive loss on the training batch; the validation split picks "
    "the epoch. The representation itself moves, which is what the Representations page shows before vs after.",
)
NEGATIVE_MODES = ("hard", "random-other-class")
#: the stage-2 loss terms, each with a switch (hyperparameter of the same name) and a weight ``w_<term>``
LOSS_TERMS = ("ce", "contrastive", "supcon")
INIT_MODES = ("pretrained", "erm")
LOSS_SCHEDULES = ("fixed", "cosine")


def outcome_lines(record: dict) -> list[str]:
    """What a CFR run did, in two or three sentences for every page: which calibration-set rule ran and why,
    and which model the selection returned and why. Pure on the run record (works on stored runs; records
    written before these fields existed give ``[]``).

    Args:
        record: ``MethodResult.record`` of a CFR run (keys ``calibration_rule``, ``calibration_set``,
            ``selection``, ``fallback_reason``).

    Returns:
        list of str, e.g. ``["Calibration set: cross-fit rule, chosen by calibration_errors='auto' — the
        paper's rule gave a set that is not usable (8 samples: landbird 8, waterbird 0 (waterbird < 5)) …",
        "Returned model: CFR epoch 12 (best of 1–100) — highest validation worst-class accuracy …"]``.
    """
    rule, sel = record.get("calibration_rule"), record.get("selection")
    if not isinstance(rule, dict) or not isinstance(sel, dict):
        return []
    cs = record.get("calibration_set") or {}
    used = rule.get("used")
    by_class = ", ".join(f"{k} {v}" for k, v in (cs.get("by_class") or {}).items())
    if used is None:
        first = f"Calibration set: none usable — {rule.get('why', '')}."
    else:
        how = {"train": "the paper's rule (training images the stage-1 ERM model gets wrong)",
               "cross-fit": "the cross-fit rule (training images misclassified by ERM models that did not train "
                            "on them; no group labels)"}[used]
        first = (f"Calibration set: {how}, {cs.get('size', 0)} images ({by_class}) — "
                 f"{rule.get('why', '')}.")
    out = [first]
    chosen = next((c for c in sel.get("candidates", []) if c.get("model") == sel.get("chosen")), None)
    reason = record.get("fallback_reason")
    if reason == "empty calibration set":
        out.append(f"Returned model: the stage-1 ERM model — stage 2 did not run ({reason}), so CFR's numbers "
                   "and its 'after' representation are ERM's.")
    elif chosen is not None:
        out.append(f"Returned model: {chosen['label']} — {sel.get('why', '')}."
                   + (" CFR's numbers and its 'after' representation are therefore ERM's." if reason == "selection"
                      else ""))
    return out


# ---------------------------------------------------------------------------------------------------------
# the estimator
# ---------------------------------------------------------------------------------------------------------


class CFR(Method):
    """Contrastive Feature Recalibration of the image last layer (arXiv 2403.07241; cfr-method.md).

    Annotation-free with the default selection rule (validation worst-class accuracy); ``selection =
    "worst-group"`` reads validation group labels (as the reference does) and is recorded as such.

    ``result_`` (:class:`MethodResult`): ``probs``/``pred`` for every split, ``embeddings_after`` =
    ``normalize(h W*)`` for every row, ``calibration_set`` (row indices), ``curves`` (stage ``erm`` and
    ``cfr``; per epoch ``loss``, ``loss_ce``, ``loss_contrastive``, ``loss_supcon`` and validation metrics) and
    ``record`` (see :meth:`_fit`).

    Raises (from ``fit``): MethodError for a class absent from train, no validation split, bad options,
    worst-group selection without group labels. Cancelled when ``cancel`` is set.
    """

    name: ClassVar[str] = "cfr"
    label: ClassVar[str] = "CFR (contrastive feature recalibration)"
    uses_group_labels: ClassVar[bool] = False
    needs_text: ClassVar[bool] = False
    needs_training: ClassVar[bool] = True
    description: ClassVar[str] = ("Re-trains the image last layer so ERM's mistakes move toward correct samples "
                                  "of their class and away from similar samples of other classes (no group "
                                  "labels).")
    HPARAMS: ClassVar[dict] = {
        "epochs": (100, "CFR epochs (one epoch = one pass over the training split in batches)"),
        "lr": (1e-4, "CFR learning rate (SGD; the reference's 1e-4)"),
        "momentum": (0.9, "SGD momentum"),
        "weight_decay": (1e-5, "SGD weight decay on W and T"),
        "batch_size": (128, "training samples and calibration anchors per step (each)"),
        "n_pos": (16, "positives per anchor: same-class training samples ERM got right"),
        "n_neg": (16, "negatives per anchor: other-class training samples"),
        "negatives": ("hard", "'hard' (nearest other-class by cosine in h) or 'random-other-class' (ablation)"),
        "tau": (1.0, "temperature of the anchor contrastive term"),
        "ce": (True, "loss term on/off: cross-entropy on the calibration set (the anchors)"),
        "contrastive": (True, "loss term on/off: anchor contrastive term (P positives, N negatives)"),
        "supcon": (True, "loss term on/off: supervised contrastive term on the training batch"),
        "supcon_temperature": (0.07, "temperature of the supervised contrastive term"),
        "w_ce": (1.5, "weight (> 0) of cross-entropy on the calibration anchors; switch: ce"),
        "w_contrastive": (1.5, "weight (> 0) of the anchor contrastive term; switch: contrastive"),
        "w_supcon": (1.0, "weight (> 0) of the supervised contrastive term; switch: supcon"),
        "loss_schedule": ("fixed", "'fixed' weights, or 'cosine': CE/contrastive × (1+0.5·cos(2π·ep/epochs))/1.5 "
                                   "as in the reference code"),
        "init": ("pretrained", "stage-2 start: 'pretrained' (W₀ and text head / ERM head) or 'erm'"),
        "train_head": (True, "train the class head T in stage 2 (False: only the last layer W moves)"),
        "dropout": (0.1, "feature dropout on z (training only)"),
        "learn_scale": (False, "learn the logit scale (start 1/0.07); fixed by default"),
        "selection": ("worst-class", "model selection: 'worst-class' (annotation-free) or 'worst-group'"),
        "calibration_errors": ("auto", "'auto': the paper's rule when its set is usable (every class ≥ "
                                       "calibration_min_per_class), else cross-fit; 'train': ERM's errors on its "
                                       "own training samples (the paper); 'cross-fit': errors on held-out folds "
                                       "of train (no group labels)"),
        "calibration_min_per_class": (MIN_PER_CLASS, "a calibration set is usable when every class has at least "
                                                     "this many samples (calibration_errors='auto' switches to "
                                                     "cross-fit otherwise)"),
        "cross_fit_folds": (2, "folds for calibration_errors='cross-fit' (costs folds − 1 extra ERM stages)"),
        "erm_epochs": (T.ERM_DEFAULTS["epochs"], "stage-1 ERM epochs"),
        "erm_lr": (T.ERM_DEFAULTS["lr"], "stage-1 ERM learning rate"),
        "seed": (0, "random seed (batches, sampling, dropout)"),
        "device": ("auto", "'auto' (CUDA when present), 'cpu' or 'cuda'"),
        "precision": ("auto", T.PRECISION_HELP),
    }

    #: domains (clipcal.methods.params); the SGD / stage-1 ones are the shared last-layer declarations
    PARAM_CONSTRAINTS: ClassVar[dict] = {
        **T.LAST_LAYER_CONSTRAINTS,
        "erm_epochs": T.LAST_LAYER_CONSTRAINTS["epochs"],
        "erm_lr": T.LAST_LAYER_CONSTRAINTS["lr"],
        "n_pos": [Interval(Integral, 1, None, closed="left")],
        "n_neg": [Interval(Integral, 1, None, closed="left")],
        "negatives": [StrOptions(NEGATIVE_MODES)],
        "tau": [Interval(Real, 0, None, closed="neither")],
        **{term: [Boolean()] for term in LOSS_TERMS},
        "supcon_temperature": [Interval(Real, 0, None, closed="neither")],
        **{f"w_{term}": [Interval(Real, 0, None, closed="neither")] for term in LOSS_TERMS},
        "loss_schedule": [StrOptions(LOSS_SCHEDULES)],
        "init": [StrOptions(INIT_MODES)],
        "train_head": [Boolean()],
        "calibration_errors": [StrOptions(CALIBRATION_ERRORS)],
        "calibration_min_per_class": [Interval(Integral, 1, None, closed="left")],
        "cross_fit_folds": [Interval(Integral, 2, None, closed="left")],
        "precision": [StrOptions(T.CALIBRATION_PRECISIONS)],
    }

    def __init__(self, epochs: int = 100, lr: float = 1e-4, momentum: float = 0.9, weight_decay: float = 1e-5,
                 batch_size: int = 128, n_pos: int = 16, n_neg: int = 16, negatives: str = "hard",
                 tau: float = 1.0, ce: bool = True, contrastive: bool = True, supcon: bool = True,
                 supcon_temperature: float = 0.07, w_ce: float = 1.5,
                 w_contrastive: float = 1.5, w_supcon: float = 1.0, loss_schedule: str = "fixed",
                 init: str = "pretrained", train_head: bool = True, dropout: float = 0.1, learn_scale: bool = False,
                 selection: str = "worst-class", calibration_errors: str = "auto",
                 calibration_min_per_class: int = MIN_PER_CLASS, cross_fit_folds: int = 2,
                 erm_epochs: int = T.ERM_DEFAULTS["epochs"], erm_lr: float = T.ERM_DEFAULTS["lr"], seed: int = 0,
                 device: str = "auto", precision: str = "auto"):
        self.epochs = epochs
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.n_pos = n_pos
        self.n_neg = n_neg
        self.negatives = negatives
        self.tau = tau
        self.ce = ce
        self.contrastive = contrastive
        self.supcon = supcon
        self.supcon_temperature = supcon_temperature
        self.w_ce = w_ce
        self.w_contrastive = w_contrastive
        self.w_supcon = w_supcon
        self.loss_schedule = loss_schedule
        self.init = init
        self.train_head = train_head
        self.dropout = dropout
        self.learn_scale = learn_scale
        self.selection = selection
        self.calibration_errors = calibration_errors
        self.calibration_min_per_class = calibration_min_per_class
        self.cross_fit_folds = cross_fit_folds
        self.erm_epochs = erm_epochs
        self.erm_lr = erm_lr
        self.seed = seed
        self.device = device
        self.precision = precision

    # -- checks ---------------------------------------------------------------------------------------------
    def check_params(self) -> None:
        """Every value in its domain (``PARAM_CONSTRAINTS``) and at least one loss term on.

        A loss term is switched off by its boolean (``ce``, ``contrastive``, ``supcon``), never by a weight of 0:
        one way to say "off", and the run record lists the terms that were on. Raises MethodError.
        """
        for term in LOSS_TERMS:  # a weight of 0 was the old way to switch off SupCon: say what to do instead
            w = getattr(self, f"w_{term}")
            if isinstance(w, (int, float)) and not isinstance(w, bool) and w == 0:
                raise MethodError(f"cfr.w_{term} must be > 0, got 0",
                                  hint=f"to switch the term off, set cfr.{term}=false")
        super().check_params()
        if not any(getattr(self, term) for term in LOSS_TERMS):
            raise MethodError("every CFR loss term is switched off (cfr.ce, cfr.contrastive and cfr.supcon are "
                              "all false); nothing to train", hint="switch on at least one of them")

    def loss_terms(self) -> dict:
        """Which loss terms are on and their weights, for the run record.

        Returns:
            ``{"ce": {"on": bool, "weight": float, "what": str}, "contrastive": …, "supcon": …}`` plus
            ``"formula"``: the stage-2 loss as run, e.g. ``"1.5·CE(calibration set) + 1.0·SupCon(train batch,
            t=0.07)"`` (× the cosine factor on CE and contrastive when ``loss_schedule="cosine"``).
        """
        what = {"ce": "cross-entropy on the calibration set (anchors)",
                "contrastive": f"anchor contrastive (P={self.n_pos}, N={self.n_neg} {self.negatives}, τ={self.tau:g})",
                "supcon": f"supervised contrastive on the training batch (t={self.supcon_temperature:g})"}
        short = {"ce": "CE(calibration set)", "contrastive": f"contrastive(τ={self.tau:g})",
                 "supcon": f"SupCon(train batch, t={self.supcon_temperature:g})"}
        out = {t: {"on": bool(getattr(self, t)), "weight": float(getattr(self, f"w_{t}")), "what": what[t]}
               for t in LOSS_TERMS}
        out["formula"] = " + ".join(f"{out[t]['weight']:g}·{short[t]}" for t in LOSS_TERMS if out[t]["on"]) + (
            " (CE and contrastive × the cosine factor)" if self.loss_schedule == "cosine" else "")
        return out

    def _check_options(self, data: FeatureData) -> None:
        T.check_selection(self.selection, data)  # the values themselves: check_params, run by Method.fit

    # -- fit ------------------------------------------------------------------------------------------------
    def _fit(self, data: FeatureData, progress: ProgressFn | None, cancel) -> MethodResult:
        """Stage 1 (ERM) → calibration set (rule) → stage 2 (CFR) → selection; see the module docstring.

        Each stage is its own method: :meth:`_stage1_erm`, :meth:`_calibration_stage` (→
        :func:`~clipcal.methods.cfr_calibration.choose_calibration_set`), :meth:`_stage2_start`,
        :meth:`_stage2_samplers`, :meth:`_stage2_epochs`, :meth:`_select`; :meth:`_erm_fallback` when there is
        nothing to calibrate on.

        ``record`` keys beyond the base ones: ``device``, ``fit_seconds``, ``erm`` (chosen epoch, converged,
        seconds, init), ``calibration_set`` (size, fraction, by_class, by_group with names / None, source,
        folds), ``calibration_rule`` (requested, used, why, usable, min_per_class, usable_definition, the
        paper's set and the cross-fit set with their sizes / counts / usability), ``selection`` (rule,
        candidates with validation scores, chosen, why), ``chosen_stage`` ("erm" or "cfr"), ``chosen_epoch``
        (within that stage; 0 = the stage-2 start), ``outcome`` (sentences for the pages),
        ``replacement_sampling`` (list of notes), ``last_layer``, ``init`` (stage-2 start), ``steps_per_epoch``,
        ``mean_unique_rows_per_step``, ``fallback`` (None, or "erm" when the result is the stage-1 ERM model)
        and ``fallback_reason`` (None, "empty calibration set" — stage 2 did not run — or "selection" — it ran and
        no CFR candidate scored above the stage-1 model).
        """
        self._check_options(data)
        t0 = time.perf_counter()
        dev = T.resolve_device(self.device)
        erm_epochs, epochs = int(self.erm_epochs), int(self.epochs)
        n_folds = int(self.cross_fit_folds) if self.calibration_errors == "cross-fit" else 0
        erm, erm_kwargs = self._stage1_erm(data, dev, erm_epochs * (1 + n_folds) + epochs, progress, cancel)
        erm_probs, erm_z = erm.predict_all()
        erm_pred = erm_probs.argmax(1)
        # stage-1 outcome kept for analysis (ERM vs CFR on the same run; the dashboard's error-set view)
        self.stage1_ = MethodResult(method="erm", probs=erm_probs, pred=erm_pred, embeddings_after=erm_z,
                                    record={"chosen_epoch": erm.chosen_epoch, "selection_rule": self.selection,
                                            "converged": erm.converged}, curves=erm.curves, fitted=erm.fitted())
        choice = self._calibration_stage(data, erm_pred, erm_kwargs, progress, cancel)
        notes = erm.notes + reuse_notes(erm, "stage 1 (ERM)") + choice.notes
        W0, wsrc = T.initial_weight(data)
        carried = data.last_layer or {}  # where the backbone's layer comes from, recorded with the embeddings
        if wsrc == "exact" and carried.get("source", "exact") != "exact":
            wsrc = carried["source"]  # e.g. the bundled backbone's fixed random projection
        record = self._base_record(data, dev, erm, choice, wsrc)
        if record["precision"] == "bf16" and not T.bf16_native(dev):
            notes.append(f"precision bf16 is emulated on {dev} (no native bf16 units): slower than fp32 here")
        if choice.used is None or len(choice.cal) == 0:
            return self._erm_fallback(data, erm, choice, record, notes, t0)

        model, init_desc, start_notes = self._stage2_start(data, erm, W0, wsrc, dev)
        record["init"] = init_desc
        notes += start_notes
        seed = int(self.seed)
        model.generator = torch.Generator(device=dev).manual_seed(seed * 1000 + 2)
        gen = torch.Generator().manual_seed(seed * 1000 + 3)
        evaluator = T.Evaluator(data, dev, rule=self.selection)
        # the stage-2 start is a selection candidate (epoch 0), like every CFR epoch and the stage-1 model
        opt = T.make_optimizer(model, lr=float(self.lr), momentum=float(self.momentum),
                               weight_decay=float(self.weight_decay))
        start_score, _ = evaluator.evaluate(model, 0, "cfr")
        start_state = copy.deepcopy(model.state_dict())
        samplers = self._stage2_samplers(data, choice, erm_pred, evaluator.h, gen, dev, record)
        notes += ["replacement sampling — " + note for note in record["replacement_sampling"]]
        pre_cfr = erm_epochs * (1 + choice.n_folds)
        loop, steps, uniq_counts = self._stage2_epochs(
            data, model, opt, evaluator, choice.cal, samplers, gen, dev,
            T.stage_progress(progress, pre_cfr, pre_cfr + epochs), cancel)
        notes += T.unconverged_note("cfr", loop.train_losses, loop.best_epoch,
                                    f"lr {self.lr} may be too small for this start")
        probs, z_after, fitted = self._select(data, erm, erm_probs, erm_z, model, start_state, start_score,
                                              init_desc, loop, evaluator, record, notes)
        record.update(
            steps_per_epoch=steps,
            mean_unique_rows_per_step=float(np.mean(uniq_counts)) if uniq_counts else None,
            rows_per_step=int(self.batch_size) * (2 + int(self.n_pos) + int(self.n_neg)),
            cfr_seconds=round(loop.seconds, 3), fit_seconds=round(time.perf_counter() - t0, 3), notes=notes,
            scale=model.scale)
        record["outcome"] = outcome_lines(record)
        curves = pd.concat([erm.curves, loop.curves], ignore_index=True)
        return MethodResult(method=self.name, probs=probs, pred=probs.argmax(1), embeddings_after=z_after,
                            calibration_set=choice.cal, record=record, curves=curves, fitted=fitted)

    # -- the stages -------------------------------------------------------------------------------------------
    def _stage1_erm(self, data: FeatureData, dev: torch.device, grand: float, progress: ProgressFn | None,
                    cancel) -> tuple[T.TrainedLastLayer, dict]:
        """Stage 1: the ERM last layer and head (cross-entropy on train, best validation epoch kept).

        Trained with ``erm_epochs`` / ``erm_lr`` and the shared SGD settings; progress counts its epochs from 0
        out of ``grand``. Returns the trained model and the recipe (reused by the cross-fit folds).
        """
        erm_kwargs = dict(stage="erm", epochs=int(self.erm_epochs), lr=float(self.erm_lr),
                          weight_decay=float(self.weight_decay), momentum=float(self.momentum),
                          batch_size=int(self.batch_size), learn_scale=bool(self.learn_scale),
                          dropout=float(self.dropout), selection=self.selection, device=str(dev),
                          precision=str(self.precision))
        erm = T.train_last_layer(data, **erm_kwargs, seed=int(self.seed),
                                 progress=T.stage_progress(progress, 0, grand), cancel=cancel)
        return erm, erm_kwargs

    def _calibration_stage(self, data: FeatureData, erm_pred: np.ndarray, erm_kwargs: dict,
                           progress: ProgressFn | None, cancel) -> CalibrationChoice:
        """The calibration set: the paper's rule, cross-fit, or ``"auto"`` (the paper's when usable) —
        :func:`~clipcal.methods.cfr_calibration.choose_calibration_set` with this estimator's settings."""
        return choose_calibration_set(
            data, erm_pred, mode=self.calibration_errors, min_per_class=int(self.calibration_min_per_class),
            folds=int(self.cross_fit_folds), seed=int(self.seed), erm_kwargs=erm_kwargs,
            erm_epochs=int(self.erm_epochs), epochs=int(self.epochs), progress=progress, cancel=cancel)

    def _base_record(self, data: FeatureData, dev: torch.device, erm: T.TrainedLastLayer,
                     choice: CalibrationChoice, wsrc: str) -> dict:
        """The record's fields known once the calibration set is chosen (stage 2 adds the rest); ``wsrc`` is
        where the starting last layer comes from (a key of ``WEIGHT_SOURCES`` or the embedding set's source)."""
        carried = data.last_layer or {}
        n_folds = choice.n_folds
        return {
            "uses_group_labels": self.selection == "worst-group",
            "selection_rule": f"{self.selection}: {T.SELECTION_RULES[self.selection]}",
            "seed": int(self.seed),
            "loss_terms": self.loss_terms(),
            "device": str(dev),
            "precision": T.resolve_calibration_precision(self.precision, dev),
            "last_layer": T.WEIGHT_SOURCES.get(wsrc, carried.get("description", wsrc)),
            "erm": {"chosen_epoch": erm.chosen_epoch, "best_score": erm.best_score, "converged": erm.converged,
                    "final_train_loss": erm.train_losses[-1] if erm.train_losses else None,
                    "seconds": round(erm.seconds, 3), "init": erm.init,
                    # reused: an identical earlier fit answered stage 1 (fit memo); seconds is then the look-up
                    "reused": erm.reused, "trained_seconds": round(erm.trained_seconds or erm.seconds, 3)},
            "calibration_rule": choice.rule,
            "calibration_set": {**calibration_summary(data, choice.cal, data.indices("train")),
                                "source": CALIBRATION_RULES[choice.used or "train"] + (
                                    f" ({n_folds - 1} of {n_folds} folds each)" if choice.used == "cross-fit"
                                    else ""),
                                "folds": choice.fold_records},
            "replacement_sampling": [],
            "fallback": None,
            "fallback_reason": None,
        }

    def _erm_fallback(self, data: FeatureData, erm: T.TrainedLastLayer, choice: CalibrationChoice, record: dict,
                      notes: list[str], t0: float) -> MethodResult:
        """The result when there is nothing to calibrate on (empty set): the stage-1 ERM model, said so."""
        mode, used = self.calibration_errors, choice.used
        reason = "empty calibration set"
        if used is not None:
            notes.append("calibration set is empty: " + (
                "ERM models trained on the other folds classify every held-out training sample correctly"
                if used == "cross-fit" else "the ERM model classifies every training sample correctly")
                + "; CFR fell back to the ERM result" + (
                    " (calibration_errors='cross-fit' or 'auto' finds the samples ERM gets wrong when it has "
                    "not trained on them, still without group labels)" if mode == "train" else ""))
        else:
            notes.append(f"calibration set is empty under both rules ({choice.rule['why']}); CFR fell back to the "
                         "ERM result")
        record.update(
            fallback="erm", fallback_reason=reason, chosen_stage="erm", chosen_epoch=erm.chosen_epoch,
            best_score=erm.best_score, init=None,
            selection={"rule": self.selection, "chosen": "erm",
                       "candidates": [{"model": "erm", "label": f"stage-1 ERM (epoch {erm.chosen_epoch})",
                                       "epoch": erm.chosen_epoch, "val_score": erm.best_score}],
                       "why": f"stage 2 did not run ({reason})"},
            fit_seconds=round(time.perf_counter() - t0, 3), notes=notes + T.init_notes(erm.init, data))
        record["outcome"] = outcome_lines(record)
        s1 = self.stage1_
        return MethodResult(method=self.name, probs=s1.probs, pred=s1.pred, embeddings_after=s1.embeddings_after,
                            calibration_set=choice.cal, record=record, curves=erm.curves, fitted=s1.fitted)

    def _stage2_start(self, data: FeatureData, erm: T.TrainedLastLayer, W0: np.ndarray, wsrc: str,
                      dev: torch.device) -> tuple[T.LastLayer, str, list[str]]:
        """Stage 2's starting model: the pretrained W₀ with the text head (ERM's head without a text tower) —
        the reference — or, with ``init="erm"``, the stage-1 W and head. Returns (model, description, notes)."""
        if self.init == "erm":
            W_start, T_start, init_desc = erm.weight(), erm.head(), "erm (stage-1 W and head)"
            notes = []
        else:
            if data.text_head is not None:
                T_start, hsrc = T.normalize_rows(data.text_head), "text head (zero-shot)"
            else:
                T_start, hsrc = erm.head(), "ERM head (no text tower)"
            W_start, init_desc = W0, f"pretrained W ({wsrc}) + {hsrc}"
            notes = T.init_notes({"weight": wsrc, "head": "text" if data.text_head is not None else "erm"}, data)
        model = T.LastLayer(W_start, T_start, learn_scale=bool(self.learn_scale), dropout=float(self.dropout),
                            train_head=bool(self.train_head)).to(dev)
        model.bf16 = T.resolve_calibration_precision(self.precision, dev) == "bf16"
        return model, init_desc, notes

    def _stage2_samplers(self, data: FeatureData, choice: CalibrationChoice, erm_pred: np.ndarray,
                         h: torch.Tensor, gen: torch.Generator, dev: torch.device, record: dict) -> dict:
        """Positives and negatives of every anchor (cfr-method.md, "Stage 2").

        Positives: training rows of the anchor's class that ERM classified correctly (cross-fit: correct out of
        fold, i.e. every training row outside the calibration set), drawn per step by a :class:`PoolSampler`.
        Negatives: the ``n_neg`` nearest other-class training rows in ``h``, mined once
        (:func:`mine_hard_negatives`), or drawn per step from the other classes (``random-other-class``).
        Every fall-back to sampling with replacement is appended to ``record["replacement_sampling"]``.

        Returns:
            ``{"pos": PoolSampler, "neg_table": [A, N] int64 tensor or None, "neg": PoolSampler or None}``.
        """
        tr, cal = data.indices("train"), choice.cal
        P, N = int(self.n_pos), int(self.n_neg)
        correct = np.setdiff1d(tr, cal) if choice.used == "cross-fit" else tr[erm_pred[tr] == data.y[tr]]
        pos_pools = {}
        for c in range(data.n_classes):
            pool = correct[data.y[correct] == c]
            if len(pool) == 0:
                pool = tr[data.y[tr] == c]
                record["replacement_sampling"].append(
                    f"class {data.class_names[c]!r}: ERM classified no training sample of this class correctly; "
                    f"positives drawn from all {len(pool)} training samples of the class")
            pos_pools[c] = torch.as_tensor(pool)
        pos_sampler = PoolSampler(pos_pools, P, gen)
        for c in pos_sampler.short_classes:
            record["replacement_sampling"].append(
                f"positives: class {data.class_names[c]!r} has only {len(pos_pools[c])} correctly classified "
                f"training samples (< P = {P}); drawn with replacement")
        if self.negatives == "hard":
            tn = time.perf_counter()
            neg_table, n_short = mine_hard_negatives(h, data.y, cal, tr, N, seed=int(self.seed), device=dev)
            record["hard_negative_seconds"] = round(time.perf_counter() - tn, 3)
            if n_short:
                record["replacement_sampling"].append(
                    f"negatives: {n_short} anchor(s) have fewer than N = {N} other-class training samples; "
                    f"padded with replacement")
            return {"pos": pos_sampler, "neg_table": torch.as_tensor(neg_table), "neg": None}
        neg_pools = {c: torch.as_tensor(tr[data.y[tr] != c]) for c in range(data.n_classes)}
        neg_sampler = PoolSampler(neg_pools, N, gen)
        for c in neg_sampler.short_classes:
            record["replacement_sampling"].append(
                f"negatives: only {len(neg_pools[c])} training samples outside class "
                f"{data.class_names[c]!r} (< N = {N}); drawn with replacement")
        return {"pos": pos_sampler, "neg_table": None, "neg": neg_sampler}

    def _stage2_epochs(self, data: FeatureData, model: T.LastLayer, opt, evaluator: T.Evaluator, cal: np.ndarray,
                       samplers: dict, gen: torch.Generator, dev: torch.device, progress: ProgressFn | None,
                       cancel) -> tuple[T.LoopResult, int, list[int]]:
        """Stage 2's epochs: each step takes ``batch_size`` training rows and as many calibration anchors
        (cycled through fresh permutations) with their positives and negatives, and minimises
        :func:`cfr_step_loss`; :func:`clipcal.methods._train.run_epochs` keeps the best validation epoch.

        Returns:
            (the epoch loop's result, steps per epoch, distinct rows projected in the first steps).
        """
        tr = data.indices("train")
        epochs, B = int(self.epochs), int(self.batch_size)
        h = evaluator.h
        y_all = torch.as_tensor(data.y, device=dev)
        y_cpu = torch.as_tensor(data.y)
        tr_t, cal_t = torch.as_tensor(tr), torch.as_tensor(cal)
        pos_sampler, neg_table, neg_sampler = samplers["pos"], samplers["neg_table"], samplers["neg"]
        steps = math.ceil(len(tr) / B)
        cal_state = {"perm": torch.empty(0, dtype=torch.int64), "pos": 0}
        uniq_counts: list[int] = []
        on = [t for t in LOSS_TERMS if getattr(self, t)]

        def next_anchors() -> torch.Tensor:
            """Next B calibration positions (into ``cal``), cycling through fresh permutations."""
            parts, need = [], B
            while need > 0:
                if cal_state["pos"] >= len(cal_state["perm"]):
                    cal_state["perm"], cal_state["pos"] = torch.randperm(len(cal), generator=gen), 0
                take = cal_state["perm"][cal_state["pos"]:cal_state["pos"] + need]
                cal_state["pos"] += len(take)
                parts.append(take)
                need -= len(take)
            return torch.cat(parts)

        def plan_epoch() -> list[tuple]:
            """Every step's rows, drawn on the host (same draws, same order as step by step) and sent to the
            device in one non-blocking copy: ``[(batch, anchors, pos, neg, RowPlan)]`` of device views."""
            perm = torch.randperm(len(tr), generator=gen)
            host, layout = [], []
            for s in range(steps):
                batch = tr_t[perm[s * B:(s + 1) * B]]
                apos = next_anchors()
                anchors = cal_t[apos]
                ay = y_cpu[anchors]
                pos = pos_sampler.sample(ay)
                neg = neg_table[apos] if neg_sampler is None else neg_sampler.sample(ay)
                plan = row_plan(batch, anchors, pos, neg)
                parts = (batch, anchors, pos, neg) + plan.tensors()
                host += [t.reshape(-1) for t in parts]
                layout.append([tuple(t.shape) for t in parts])
            buf = T.to_device(torch.cat(host), dev)
            out, at = [], 0
            for shapes in layout:
                views = []
                for shp in shapes:
                    n = math.prod(shp)
                    views.append(buf[at:at + n].view(shp))
                    at += n
                batch, anchors, pos, neg, uniq, inv, order, counts = views
                out.append((batch, anchors, pos, neg,
                            RowPlan(uniq, inv, order, counts, (shapes[0], shapes[1], shapes[2], shapes[3]))))
            return out

        def one_epoch(ep: int) -> dict:
            if self.loss_schedule == "cosine":
                f = (1 + 0.5 * math.cos(2 * math.pi * (ep - 1) / epochs)) / 1.5
            else:
                f = 1.0
            planned = plan_epoch()
            if ep == 1:
                uniq_counts.extend(len(p[4].uniq) for p in planned[:5])
            acc = torch.zeros(1 + len(on), device=dev)  # the loss and its terms, read once per epoch
            for batch, anchors, pos, neg, plan in planned:
                check_cancel(cancel)                    # an epoch can take tens of seconds on a CPU
                loss, terms = cfr_step_loss(
                    model, h, y_all, batch, anchors, pos, neg, tau=float(self.tau),
                    supcon_temperature=float(self.supcon_temperature), w_ce=float(self.w_ce) * f,
                    w_contrastive=float(self.w_contrastive) * f, w_supcon=float(self.w_supcon),
                    ce=bool(self.ce), contrastive=bool(self.contrastive), supcon=bool(self.supcon), plan=plan)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                acc += torch.stack([loss.detach()] + [terms[t] for t in on])
            means = (acc / steps).tolist()
            return {"loss": means[0], **{f"loss_{t}": v for t, v in zip(on, means[1:])}}

        loop = T.run_epochs(model, epochs=epochs, train_epoch=one_epoch, evaluator=evaluator, stage="cfr",
                            progress=progress, cancel=cancel, lr=float(self.lr))
        return loop, steps, uniq_counts

    def _select(self, data: FeatureData, erm: T.TrainedLastLayer, erm_probs: np.ndarray, erm_z: np.ndarray,
                model: T.LastLayer, start_state: dict, start_score: float, init_desc: str, loop: T.LoopResult,
                evaluator: T.Evaluator, record: dict, notes: list[str]
                ) -> tuple[np.ndarray, np.ndarray, FittedLastLayer]:
        """Model selection: stage-1 ERM, the stage-2 start (epoch 0) and the best CFR epoch, one validation rule.

        Ties keep the CFR epoch (the paper's choice), then the start: a starting point replaces it only when it
        scores strictly higher. Loads the chosen state into ``model``, fills the record's ``selection``,
        ``chosen_stage``, ``chosen_epoch``, ``best_score`` (and ``fallback`` when ERM wins).

        Returns:
            (probs [N, K], calibrated embeddings [N, e], the chosen fitted last layer).
        """
        erm_label = f"stage-1 ERM (epoch {erm.chosen_epoch})"
        candidates = [
            {"model": "erm", "label": erm_label, "epoch": erm.chosen_epoch, "val_score": float(erm.best_score)},
            {"model": "start", "label": f"CFR start (epoch 0: {init_desc})", "epoch": 0,
             "val_score": float(start_score)},
            {"model": "cfr", "label": f"CFR epoch {loop.best_epoch} (best of 1–{int(self.epochs)})",
             "epoch": loop.best_epoch, "val_score": float(loop.best_score)},
        ]
        best = max(reversed(candidates), key=lambda c: c["val_score"])  # max() keeps the first of equal scores
        rule_name = f"validation {self.selection} accuracy"
        others = "; ".join(f"{c['label']} {c['val_score']:.3f}" for c in candidates if c is not best)
        why = f"highest {rule_name}: {best['label']} {best['val_score']:.3f} (vs {others})"
        if best["model"] == "erm":
            probs, z_after, fitted = erm_probs, erm_z, erm.fitted()
            chosen_stage, chosen_epoch = "erm", erm.chosen_epoch
            record.update(fallback="erm", fallback_reason="selection")
            notes.append(f"no CFR epoch scored above the stage-1 ERM model on {rule_name} ({why}); CFR returns "
                         "the ERM model")
        else:
            if best["model"] == "start":
                model.load_state_dict(start_state)
                model.eval()
            probs, z_after = evaluator.predict(model)
            fitted = T.last_layer_of(model, data)
            chosen_stage, chosen_epoch = "cfr", best["epoch"]
        record.update(chosen_stage=chosen_stage, chosen_epoch=chosen_epoch, best_score=best["val_score"],
                      selection={"rule": self.selection, "chosen": best["model"], "candidates": candidates,
                                 "why": why})
        return probs, z_after, fitted

    @staticmethod
    def _calibration_summary(data: FeatureData, cal: np.ndarray, tr: np.ndarray) -> dict:
        """Size and make-up of the calibration set — :func:`clipcal.methods.cfr_calibration.calibration_summary`."""
        return calibration_summary(data, cal, tr)
