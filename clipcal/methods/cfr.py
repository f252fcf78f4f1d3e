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
*distinct* row (batch ∪ anchors ∪ positives ∪ negatives) through W once (``torch.unique`` + one matrix
product + a gather), hard negatives are mined once with a chunked, bounded-memory top-k, and validation is
the only per-epoch evaluation. The recipe (epochs, P, N, batch) is never changed for speed. What remains is
two matrix products per step over the distinct rows (≈ 2,600 of 4,352 on Waterbirds-shaped data, ≈ 8 GFLOP
at 1,024 → 768): ~31 TFLOP for 100 epochs, minutes on a CPU, seconds on a GPU.

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
import torch.nn.functional as F

from clipcal.errors import MethodError
from clipcal.methods import _train as T
from clipcal.methods.base import FeatureData, Method, MethodResult, ProgressFn, check_cancel
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
CALIBRATION_ERRORS = ("auto", "train", "cross-fit")
#: what each calibration-set rule takes (record ``calibration_rule`` / ``calibration_set.source``)
CALIBRATION_RULES = {
    "train": "the paper's rule: training samples the stage-1 ERM model misclassifies",
    "cross-fit": "cross-fit: training samples misclassified by ERM models that did not train on them",
}
#: default of ``calibration_min_per_class`` — see :func:`calibration_usable`
MIN_PER_CLASS = 5


# ---------------------------------------------------------------------------------------------------------
# calibration set and sampling
# ---------------------------------------------------------------------------------------------------------


def calibration_set(y: np.ndarray, pred: np.ndarray, train_idx: np.ndarray) -> np.ndarray:
    """Rows of the training split that the ERM model misclassifies (argmax ≠ y) — the calibration set.

    Args:
        y: [N] int64 labels of all rows.
        pred: [N] int64 ERM predictions of all rows (argmax of its probabilities).
        train_idx: [n_train] int64 row indices of the training split.

    Returns:
        [n_cal] int64 row indices, ascending; no threshold, no cap (cfr-method.md, "Calibration set").
    """
    tr = np.sort(np.asarray(train_idx, dtype=np.int64))
    return tr[np.asarray(pred)[tr] != np.asarray(y)[tr]]


def usable_definition(min_per_class: int) -> str:
    """The definition of a usable calibration set, in words (recorded with every CFR run)."""
    return (f"usable = at least {min_per_class} calibration sample(s) in every class: cross-entropy on anchors "
            "that miss a class is minimised by moving every representation toward the classes the anchors hold "
            "(the collapse seen on the demo), while anchors of every class pull against each other")


def calibration_usable(y: np.ndarray, cal: np.ndarray, class_names: list[str],
                       min_per_class: int = MIN_PER_CLASS) -> tuple[bool, str]:
    """Whether a calibration set can drive CFR's stage 2, and why — no group labels read.

    Usable ⇔ every class has at least ``min_per_class`` samples in the set (:func:`usable_definition`). Why
    every class: stage 2's cross-entropy on the calibration anchors (logit scale 1/0.07, the same few anchors
    in every step, SGD momentum 0.9) is lowered fastest by moving *all* representations toward the classes the
    anchors hold. Measured on the demo (Lite0, birds 25–40 %, seed 0; validation only): the paper's set was 8
    images, all landbirds on water; validation worst-class accuracy went 0.68 (stage-2 start) → 0.36 after one
    epoch → 0.06 after two, with nearly every image predicted "landbird". With the cross-entropy term off it
    stayed at 0.65–0.68; with only that term on it collapsed the same way; training only W (head frozen) or
    starting from ERM collapsed too (0.795 → 0.615 → 0.44 …). A set covering both classes (cross-fit, 47
    images) climbed instead (0.68 → 0.815 in 10 epochs).

    Args:
        y: [N] int labels of all rows.
        cal: [n_cal] int row indices of the calibration set.
        class_names: K names (index = class).
        min_per_class: the least count every class needs (≥ 1).

    Returns:
        (usable, reason) — the reason names the size and the per-class counts, e.g. ``"8 samples: landbird 8,
        waterbird 0 (waterbird < 5)"``.
    """
    counts = np.bincount(np.asarray(y)[np.asarray(cal, dtype=np.int64)], minlength=len(class_names))
    made_of = ", ".join(f"{n} {int(c)}" for n, c in zip(class_names, counts))
    short = [n for n, c in zip(class_names, counts) if c < min_per_class]
    if len(cal) == 0:
        return False, "empty (0 samples)"
    if short:
        return False, f"{len(cal)} samples: {made_of} ({', '.join(short)} < {min_per_class})"
    return True, f"{len(cal)} samples: {made_of}"


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


def stratified_folds(y: np.ndarray, rows: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Assign ``rows`` to ``k`` folds, each class spread evenly over the folds (seeded).

    Args:
        y: [N] int labels of all rows.
        rows: [n] int row indices to split (the training split).
        k: number of folds, ≥ 2.
        seed: numpy seed of the per-class permutation.

    Returns:
        [n] int64 fold number in ``[0, k)`` of each entry of ``rows`` (same order as ``rows``).
    """
    rows = np.asarray(rows, dtype=np.int64)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(rows), dtype=np.int64)
    offset = 0
    for c in np.unique(np.asarray(y)[rows]):
        pos = rng.permutation(np.flatnonzero(np.asarray(y)[rows] == c))
        fold[pos] = (np.arange(len(pos)) + offset) % k   # offset: small classes don't all start in fold 0
        offset += len(pos)
    return fold


def cross_fit_errors(data: FeatureData, *, folds: int, seed: int, train_kwargs: dict,
                     progress: ProgressFn | None = None, cancel=None, epochs_per_fold: int = 1,
                     offset: float = 0.0, grand_total: float = 1.0) -> tuple[np.ndarray, list[dict]]:
    """Training rows misclassified by an ERM model that did not train on them (out-of-fold errors).

    The annotation-free alternative to "errors of ERM on its own training samples" for when ERM fits the whole
    training split (high-dimensional features, few images — the calibration set would be empty). The training
    split is cut into ``folds`` class-stratified folds; for each fold an ERM last layer is trained on the other
    folds with the stage-1 recipe (``train_kwargs``, validation selection as configured) and predicts the
    held-out fold. No group labels are read. Cost ≈ ``folds − 1`` times one ERM stage of the same length.

    Args:
        data: the feature data (train and val splits used).
        folds: number of folds k ≥ 2.
        seed: seeds the fold assignment and each fold's training (``seed * 100 + fold``).
        train_kwargs: keyword arguments of :func:`clipcal.methods._train.train_last_layer` (stage-1 recipe).
        progress, cancel: as in :meth:`Method.fit`; each fold reports ``epochs_per_fold`` units from
            ``offset`` out of ``grand_total``.

    Returns:
        (calibration set [n_cal] int64 row indices ascending, per-fold records ``{fold, n_fit, n_heldout,
        n_errors, chosen_epoch}``).

    Raises:
        MethodError: a class has fewer training samples than ``folds`` (a fold would lack it).
    """
    tr = data.indices("train")
    counts = np.bincount(data.y[tr], minlength=data.n_classes)
    if folds < 2 or counts.min() < folds:
        small = [data.class_names[c] for c in np.flatnonzero(counts < folds)]
        raise MethodError(f"cross-fit calibration set needs ≥ {folds} training samples per class and ≥ 2 folds "
                          f"(folds = {folds}; too small: {small})",
                          hint="use calibration_errors='train' or fewer folds")
    fold_of = stratified_folds(data.y, tr, folds, seed)
    errors, records = [], []
    for f in range(folds):
        fit_rows, held = tr[fold_of != f], tr[fold_of == f]
        m = T.train_last_layer(data, train_idx=fit_rows,
                               **{**train_kwargs, "seed": seed * 100 + f, "stage": f"cross-fit {f + 1}/{folds}"},
                               progress=T.stage_progress(progress, offset + f * epochs_per_fold, grand_total),
                               cancel=cancel)
        probs, _ = m.predict_all()
        err = held[probs[held].argmax(1) != data.y[held]]
        errors.append(err)
        records.append({"fold": f, "n_fit": int(len(fit_rows)), "n_heldout": int(len(held)),
                        "n_errors": int(len(err)), "chosen_epoch": m.chosen_epoch})
    return np.sort(np.concatenate(errors)).astype(np.int64), records


def _pad_with_replacement(chosen: torch.Tensor, pool: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Fill ``chosen`` [m] up to ``k`` entries with uniform draws (with replacement) from ``pool``."""
    extra = pool[torch.randint(len(pool), (k - len(chosen),), generator=gen)]
    return torch.cat([chosen, extra])


@torch.no_grad()
def mine_hard_negatives(features: np.ndarray | torch.Tensor, y: np.ndarray, anchors: np.ndarray,
                        candidates: np.ndarray, n_neg: int = 16, chunk: int = 2048, seed: int = 0,
                        device: str | torch.device = "cpu") -> tuple[np.ndarray, int]:
    """For each anchor, the ``n_neg`` candidates of *other* classes nearest by cosine similarity.

    Similarity is computed in the frozen feature space ``h`` (cfr-method.md: hard negatives, precomputed once)
    in blocks of ``chunk`` anchors × ``chunk`` candidates with a running top-k, so memory stays bounded
    (O(chunk² + chunk·n_neg)) whatever the number of samples.

    Args:
        features: [N, d] float features ``h`` of all rows.
        y: [N] int labels of all rows.
        anchors: [A] row indices of the anchors (calibration samples).
        candidates: [C] row indices the negatives are drawn from (the training split).
        n_neg: N, negatives per anchor.
        chunk: block size of the chunked matrix product.
        seed: seeds the with-replacement padding (only used when an anchor has fewer than ``n_neg``
            other-class candidates).
        device: where to compute.

    Returns:
        (neg [A, n_neg] int64 row indices, most similar first; number of anchors that had fewer than
        ``n_neg`` other-class candidates and were padded with replacement).

    Raises:
        MethodError: an anchor has no other-class candidate at all.
    """
    dev = torch.device(device)
    feats = torch.as_tensor(features)
    y_t = torch.as_tensor(np.asarray(y), dtype=torch.int64)
    anc = torch.as_tensor(np.asarray(anchors, dtype=np.int64))
    cand = torch.as_tensor(np.asarray(candidates, dtype=np.int64))
    A = len(anc)
    out = torch.empty((A, n_neg), dtype=torch.int64)
    if A == 0:
        return out.numpy(), 0
    y_c = y_t[cand].to(dev)
    class_counts = torch.bincount(y_t[cand], minlength=int(y_t.max()) + 1)
    n_other = len(cand) - class_counts[y_t[anc]]
    if (n_other == 0).any():
        a = int(anc[int(torch.nonzero(n_other == 0)[0])])
        raise MethodError(f"anchor row {a} (class {int(y_t[a])}) has no training sample of another class to use "
                          "as a negative", hint="CFR needs at least two classes in the training split")
    k_eff = min(n_neg, len(cand))
    for s in range(0, A, chunk):
        a_idx = anc[s:s + chunk]
        ha = F.normalize(feats[a_idx.to(feats.device)].to(dev, torch.float32), dim=-1)
        ya = y_t[a_idx].to(dev)
        best_v = torch.full((len(a_idx), k_eff), -math.inf, device=dev)
        best_i = torch.zeros((len(a_idx), k_eff), dtype=torch.int64, device=dev)
        for c in range(0, len(cand), chunk):
            c_idx = cand[c:c + chunk].to(dev)
            hc = F.normalize(feats[c_idx.to(feats.device)].to(dev, torch.float32), dim=-1)
            sim = ha @ hc.T
            sim.masked_fill_(ya[:, None] == y_c[c:c + chunk][None, :], -math.inf)
            v = torch.cat([best_v, sim], dim=1)
            i = torch.cat([best_i, c_idx[None, :].expand(len(a_idx), -1)], dim=1)
            top_v, top_j = v.topk(k_eff, dim=1)
            best_v, best_i = top_v, torch.gather(i, 1, top_j)
        out[s:s + chunk, :k_eff] = best_i.cpu()
        # rows whose k_eff-th value is -inf had too few other-class candidates; fixed below
    gen = torch.Generator().manual_seed(int(seed))
    n_short = 0
    for r in torch.nonzero(n_other < n_neg).flatten().tolist():
        m = int(n_other[r])
        n_short += 1
        pool = cand[y_t[cand] != y_t[anc[r]]]
        out[r] = _pad_with_replacement(out[r, :m], pool, n_neg, gen)
    return out.numpy(), n_short


class PoolSampler:
    """Draws ``k`` rows per anchor from a per-class pool, without replacement where the pool is large enough.

    Args:
        pools: ``{class: 1-D int64 tensor of row indices}`` — the rows an anchor of that class may draw.
        k: draws per anchor.
        generator: CPU ``torch.Generator`` (determinism).

    Attributes:
        short_classes: classes whose pool held fewer than ``k`` rows (drawn with replacement).
    """

    def __init__(self, pools: dict[int, torch.Tensor], k: int, generator: torch.Generator):
        self.pools = pools
        self.k = int(k)
        self.gen = generator
        self.short_classes = sorted(c for c, p in pools.items() if 0 < len(p) < self.k)

    def sample(self, anchor_y: torch.Tensor) -> torch.Tensor:
        """[A] anchor labels (CPU int64) → [A, k] int64 row indices."""
        out = torch.empty((len(anchor_y), self.k), dtype=torch.int64)
        for c in torch.unique(anchor_y).tolist():
            rows = torch.nonzero(anchor_y == c).flatten()
            pool = self.pools[c]
            m = len(pool)
            if m >= self.k:
                pick = self._without_replacement(len(rows), m)
            else:
                pick = torch.randint(m, (len(rows), self.k), generator=self.gen)
            out[rows] = pool[pick]
        return out

    def _without_replacement(self, n: int, m: int) -> torch.Tensor:
        """[n, k] positions in ``range(m)``, distinct within each row, uniform (m ≥ k).

        Small pools: top-k of uniform keys (O(n·m), far faster than ``torch.multinomial`` on the CPU). Large
        pools: uniform draws with the rows that hold a repeat drawn again (rare when m ≫ k).
        """
        k = self.k
        if m <= 64 * k:
            return torch.rand(n, m, generator=self.gen).topk(k, dim=1).indices
        pick = torch.randint(m, (n, k), generator=self.gen)
        while True:
            srt = pick.sort(dim=1).values
            bad = torch.nonzero((srt[:, 1:] == srt[:, :-1]).any(dim=1)).flatten()
            if len(bad) == 0:
                return pick
            pick[bad] = torch.randint(m, (len(bad), k), generator=self.gen)


# ---------------------------------------------------------------------------------------------------------
# loss terms
# ---------------------------------------------------------------------------------------------------------


def contrastive_loss(anchor: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                     tau: float = 1.0) -> torch.Tensor:
    """CFR's anchor-level contrastive term (cfr-method.md, "Stage 2").

    For anchor a with positives p_1..p_P and negatives n_1..n_N (all unit vectors):
    ``mean_{a,k} −log( e^{a·p_k/τ} / (e^{a·p_k/τ} + Σ_m e^{a·n_m/τ}) )``.

    Args:
        anchor: [A, e] float (unit rows).
        positives: [A, P, e] float (unit rows).
        negatives: [A, N, e] float (unit rows).
        tau: temperature τ (the reference uses 1).

    Returns:
        scalar tensor (differentiable w.r.t. all three inputs).
    """
    a = anchor.unsqueeze(-1)                                   # [A, e, 1]; batched mat-vec, no transposed copies
    sp = torch.matmul(positives, a).squeeze(-1) / tau          # [A, P]
    sn = torch.matmul(negatives, a).squeeze(-1) / tau          # [A, N]
    neg_lse = torch.logsumexp(sn, dim=1, keepdim=True)  # [A, 1]
    # −log(e^{sp} / (e^{sp} + Σ e^{sn})) = log(e^{sp} + e^{lse_n}) − sp
    return (torch.logaddexp(sp, neg_lse.expand_as(sp)) - sp).mean()


def supcon_loss(z: torch.Tensor, y: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss over one batch (Khosla et al., NeurIPS 2020, Eq. 2, "L_out").

    ``L = mean_{i ∈ I'} −1/|P(i)| Σ_{p ∈ P(i)} log( e^{z_i·z_p/t} / Σ_{a ≠ i} e^{z_i·z_a/t} )`` where P(i) are
    the other batch samples of i's class and I' the anchors with |P(i)| ≥ 1. Without the
    ``temperature / base_temperature`` factor of the authors' code (it equals 1 at t = 0.07).

    Args:
        z: [B, e] float (unit rows).
        y: [B] int64 labels.
        temperature: t.

    Returns:
        scalar tensor; 0 (still attached to ``z``) when no sample has a same-class partner in the batch.
    """
    B = z.shape[0]
    sim = (z @ z.T) / temperature
    self_mask = torch.eye(B, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, -math.inf)
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (y[:, None] == y[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not bool(has.any()):
        return z.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(1)[has] / n_pos[has]
    return per_anchor.mean()


def project_unique(model: T.LastLayer, h: torch.Tensor, *index_sets: torch.Tensor) -> list[torch.Tensor]:
    """Project each *distinct* row once: ``normalize(h[u] W)`` for the union u of all index sets, then gather.

    Mathematically identical (values and gradients) to projecting each index set separately; costs one matrix
    product of ``|u|`` rows instead of ``Σ |index set|``.

    Args:
        model: the :class:`~clipcal.methods._train.LastLayer`.
        h: [N, d] features (on the model's device).
        index_sets: int64 tensors of any shape (on the same device).

    Returns:
        one tensor per index set, shape ``index.shape + (e,)``, unit rows, no dropout.
    """
    flat = torch.cat([i.reshape(-1) for i in index_sets])
    uniq, inv = torch.unique(flat, return_inverse=True)
    # index_select's backward is one index_add (advanced indexing's index_put is slower on the CPU), and
    # torch.split's backward is one cat (slicing would zero-fill a full-size gradient per part)
    z = model.project(h.index_select(0, uniq)).index_select(0, inv)
    parts = torch.split(z, [i.numel() for i in index_sets])
    return [p.view(*i.shape, z.shape[-1]) for p, i in zip(parts, index_sets)]


def cfr_step_loss(model: T.LastLayer, h: torch.Tensor, y: torch.Tensor, batch: torch.Tensor,
                  anchors: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, *, tau: float = 1.0,
                  supcon_temperature: float = 0.07, w_ce: float = 1.5, w_contrastive: float = 1.5,
                  w_supcon: float = 1.0, ce: bool = True, contrastive: bool = True, supcon: bool = True,
                  dedup: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The CFR loss of one step (cfr-method.md, "Stage 2").

    ``w_ce·CE(anchors) + w_contrastive·contrastive(anchors, pos, neg; τ) + w_supcon·SupCon(batch; t)``, each
    term only where its switch (``ce``, ``contrastive``, ``supcon``) is on — switched-off terms are not computed.
    Feature dropout (model's, training mode) acts on the anchors' and batch's z; those are re-normalised
    for the contrastive terms. Positives / negatives get no dropout.

    Args:
        model: LastLayer (train mode for dropout).
        h: [N, d] features; y: [N] labels (same device).
        batch: [B] training rows; anchors: [A] calibration rows; pos: [A, P] rows; neg: [A, N] rows.
        dedup: project each distinct row once (default); False projects every set separately (reference
            behaviour, used by the tests to show both give the same loss and gradients).

    Returns:
        (total loss, detached scalars of the terms that are on: ``{"ce", "contrastive", "supcon"}``).

    Raises:
        MethodError: every term switched off (nothing to train).
    """
    if not (ce or contrastive or supcon):
        raise MethodError("every CFR loss term is switched off; nothing to train",
                          hint="switch on at least one of ce, contrastive, supcon")
    if dedup:
        zb, za, zp, zn = project_unique(model, h, batch, anchors, pos, neg)
    else:
        zb, za = model.project(h[batch]), model.project(h[anchors])
        zp = model.project(h[pos.reshape(-1)]).reshape(*pos.shape, -1)
        zn = model.project(h[neg.reshape(-1)]).reshape(*neg.shape, -1)
    parts, terms = [], {}
    if ce or contrastive:
        za_d = model.feature_dropout(za)
        if ce:
            ce_v = F.cross_entropy(model.logits_from_z(za_d), y[anchors])
            parts.append(w_ce * ce_v)
            terms["ce"] = ce_v.detach()
        if contrastive:
            con = contrastive_loss(F.normalize(za_d, dim=-1), zp, zn, tau=tau)
            parts.append(w_contrastive * con)
            terms["contrastive"] = con.detach()
    if supcon:
        zb_d = model.feature_dropout(zb)
        sc = supcon_loss(F.normalize(zb_d, dim=-1), y[batch], temperature=supcon_temperature)
        parts.append(w_supcon * sc)
        terms["supcon"] = sc.detach()
    return sum(parts[1:], parts[0]), terms


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
                 device: str = "auto"):
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
        seed = int(self.seed)
        erm_epochs, epochs = int(self.erm_epochs), int(self.epochs)
        mode = self.calibration_errors
        min_pc = int(self.calibration_min_per_class)
        k_folds = int(self.cross_fit_folds)
        n_folds = k_folds if mode == "cross-fit" else 0  # "auto" adds them only if it needs cross-fit
        grand = erm_epochs * (1 + n_folds) + epochs
        notes: list[str] = []
        uses_groups = self.selection == "worst-group"

        # ---- stage 1: ERM --------------------------------------------------------------------------
        erm_kwargs = dict(stage="erm", epochs=erm_epochs, lr=float(self.erm_lr),
                          weight_decay=float(self.weight_decay), momentum=float(self.momentum),
                          batch_size=int(self.batch_size), learn_scale=bool(self.learn_scale),
                          dropout=float(self.dropout), selection=self.selection, device=str(dev))
        erm = T.train_last_layer(data, **erm_kwargs, seed=seed, progress=T.stage_progress(progress, 0, grand),
                                 cancel=cancel)
        notes += erm.notes
        erm_probs, erm_z = erm.predict_all()
        erm_pred = erm_probs.argmax(1)
        # stage-1 outcome kept for analysis (ERM vs CFR on the same run; the dashboard's error-set view)
        self.stage1_ = MethodResult(method="erm", probs=erm_probs, pred=erm_pred, embeddings_after=erm_z,
                                    record={"chosen_epoch": erm.chosen_epoch, "selection_rule": self.selection,
                                            "converged": erm.converged}, curves=erm.curves)
        tr = data.indices("train")

        # ---- calibration set: the paper's rule, cross-fit, or "auto" (paper's when usable) -----------
        paper_cal = calibration_set(data.y, erm_pred, tr)
        paper_ok, paper_why = calibration_usable(data.y, paper_cal, data.class_names, min_pc)
        rule = {"requested": mode, "used": None, "why": "", "usable": None, "min_per_class": min_pc,
                "usable_definition": usable_definition(min_pc),
                "paper_rule": {"size": int(len(paper_cal)), "usable": paper_ok, "made_of": paper_why},
                "cross_fit": None}
        fold_records = None
        if mode == "train" or (mode == "auto" and paper_ok):
            used, cal, usable = "train", paper_cal, paper_ok
            rule["why"] = ("requested (calibration_errors='train')" if mode == "train" else
                           f"auto: the paper's rule gave a usable set ({paper_why})")
        else:
            if mode == "auto":
                n_folds = k_folds
                grand = erm_epochs * (1 + n_folds) + epochs
            try:
                cf_cal, fold_records = cross_fit_errors(
                    data, folds=n_folds, seed=seed, train_kwargs=erm_kwargs, progress=progress, cancel=cancel,
                    epochs_per_fold=erm_epochs, offset=erm_epochs, grand_total=grand)
                cf_ok, cf_why = calibration_usable(data.y, cf_cal, data.class_names, min_pc)
            except MethodError as err:
                if mode == "cross-fit":
                    raise
                cf_cal, cf_ok, cf_why = None, False, f"could not be built: {err.message}"
            rule["cross_fit"] = {"size": None if cf_cal is None else int(len(cf_cal)), "usable": cf_ok,
                                 "made_of": cf_why, "folds": n_folds}
            if mode == "cross-fit":
                used, cal, usable = "cross-fit", cf_cal, cf_ok
                rule["why"] = "requested (calibration_errors='cross-fit')"
            elif cf_ok:
                used, cal, usable = "cross-fit", cf_cal, True
                rule["why"] = (f"auto: the paper's rule gave a set that is not usable ({paper_why}); the cross-fit "
                               f"rule gave a usable one ({cf_why})")
            elif len(paper_cal) or (cf_cal is not None and len(cf_cal)):
                # neither is usable: run on the paper's set if it has samples (else cross-fit's) — the selection
                # below keeps the stage-1 ERM model or the stage-2 start whenever stage 2 does worse on validation
                used = "train" if len(paper_cal) else "cross-fit"
                cal, usable = (paper_cal if used == "train" else cf_cal), False
                rule["why"] = (f"auto: neither rule gave a usable set (paper's rule: {paper_why}; cross-fit: "
                               f"{cf_why}); stage 2 ran on the {'paper' if used == 'train' else 'cross-fit'} "
                               "rule's set, guarded by the selection (stage-1 ERM and the start are candidates)")
            else:  # both empty: nothing to calibrate on
                used, cal, usable = None, paper_cal, False
                rule["why"] = (f"auto: both rules gave an empty set (paper's rule: {paper_why}; cross-fit: "
                               f"{cf_why}); CFR returns the stage-1 ERM model")
        rule.update(used=used, usable=usable)
        if used is not None and not usable and len(cal):
            notes.append(f"calibration set not usable by clipcal's definition ({rule['usable_definition']}): "
                         f"{paper_why if used == 'train' else rule['cross_fit']['made_of']}; stage 2 ran anyway "
                         f"({rule['why']}) — the selection keeps the stage-1 ERM model or the stage-2 start if "
                         "every CFR epoch scores below them on validation"
                         + (" (calibration_errors='auto' would try the cross-fit rule)" if mode == "train" else ""))
        pre_cfr = erm_epochs * (1 + n_folds)
        W0, wsrc = T.initial_weight(data)
        carried = data.last_layer or {}  # where the backbone's layer comes from, recorded with the embeddings
        if wsrc == "exact" and carried.get("source", "exact") != "exact":
            wsrc = carried["source"]  # e.g. the bundled backbone's fixed random projection
        last_layer = T.WEIGHT_SOURCES.get(wsrc, carried.get("description", wsrc))
        erm_label = f"stage-1 ERM (epoch {erm.chosen_epoch})"
        record = {
            "uses_group_labels": uses_groups,
            "selection_rule": f"{self.selection}: {T.SELECTION_RULES[self.selection]}",
            "seed": seed,
            "loss_terms": self.loss_terms(),
            "device": str(dev),
            "last_layer": last_layer,
            "erm": {"chosen_epoch": erm.chosen_epoch, "best_score": erm.best_score, "converged": erm.converged,
                    "final_train_loss": erm.train_losses[-1] if erm.train_losses else None,
                    "seconds": round(erm.seconds, 3), "init": erm.init},
            "calibration_rule": rule,
            "calibration_set": {**self._calibration_summary(data, cal, tr),
                                "source": CALIBRATION_RULES[used or "train"] + (
                                    f" ({n_folds - 1} of {n_folds} folds each)" if used == "cross-fit" else ""),
                                "folds": fold_records},
            "replacement_sampling": [],
            "fallback": None,
            "fallback_reason": None,
        }
        if used is None or len(cal) == 0:
            reason = "empty calibration set"
            if used is not None:
                notes.append("calibration set is empty: " + (
                    "ERM models trained on the other folds classify every held-out training sample correctly"
                    if used == "cross-fit" else "the ERM model classifies every training sample correctly")
                    + "; CFR fell back to the ERM result" + (
                        " (calibration_errors='cross-fit' or 'auto' finds the samples ERM gets wrong when it has "
                        "not trained on them, still without group labels)" if mode == "train" else ""))
            else:
                notes.append(f"calibration set is empty under both rules ({rule['why']}); CFR fell back to the "
                             "ERM result")
            record.update(
                fallback="erm", fallback_reason=reason, chosen_stage="erm", chosen_epoch=erm.chosen_epoch,
                best_score=erm.best_score, init=None,
                selection={"rule": self.selection, "chosen": "erm",
                           "candidates": [{"model": "erm", "label": erm_label, "epoch": erm.chosen_epoch,
                                           "val_score": erm.best_score}],
                           "why": f"stage 2 did not run ({reason})"},
                fit_seconds=round(time.perf_counter() - t0, 3), notes=notes + T.init_notes(erm.init, data))
            record["outcome"] = outcome_lines(record)
            return MethodResult(method=self.name, probs=erm_probs, pred=erm_pred, embeddings_after=erm_z,
                                calibration_set=cal, record=record, curves=erm.curves)

        # ---- stage 2 start ----------------------------------------------------------------------------
        if self.init == "erm":
            W_start, T_start, init_desc = erm.weight(), erm.head(), "erm (stage-1 W and head)"
        else:
            if data.text_head is not None:
                T_start, hsrc = T.normalize_rows(data.text_head), "text head (zero-shot)"
            else:
                T_start, hsrc = erm.head(), "ERM head (no text tower)"
            W_start, init_desc = W0, f"pretrained W ({wsrc}) + {hsrc}"
        record["init"] = init_desc
        notes += T.init_notes({"weight": wsrc, "head": "text" if data.text_head is not None else "erm"}, data) \
            if self.init == "pretrained" else []

        model = T.LastLayer(W_start, T_start, learn_scale=bool(self.learn_scale), dropout=float(self.dropout),
                            train_head=bool(self.train_head)).to(dev)
        model.generator = torch.Generator(device=dev).manual_seed(seed * 1000 + 2)
        gen = torch.Generator().manual_seed(seed * 1000 + 3)
        opt = T.make_optimizer(model, lr=float(self.lr), momentum=float(self.momentum),
                               weight_decay=float(self.weight_decay))
        evaluator = T.Evaluator(data, dev, rule=self.selection)
        # the stage-2 start is a selection candidate (epoch 0), like every CFR epoch and the stage-1 model
        start_score, _ = evaluator.evaluate(model, 0, "cfr")
        start_state = copy.deepcopy(model.state_dict())
        h = evaluator.h
        y_all = torch.as_tensor(data.y, device=dev)
        y_cpu = torch.as_tensor(data.y)
        tr_t = torch.as_tensor(tr)
        cal_t = torch.as_tensor(cal)
        P, N, B = int(self.n_pos), int(self.n_neg), int(self.batch_size)

        # positives: training rows of the anchor's class that ERM classified correctly (cross-fit: correct
        # out of fold, i.e. every training row outside the calibration set)
        correct = np.setdiff1d(tr, cal) if used == "cross-fit" else tr[erm_pred[tr] == data.y[tr]]
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

        # negatives
        if self.negatives == "hard":
            tn = time.perf_counter()
            neg_table, n_short = mine_hard_negatives(evaluator.h, data.y, cal, tr, N, seed=seed, device=dev)
            neg_table = torch.as_tensor(neg_table)
            record["hard_negative_seconds"] = round(time.perf_counter() - tn, 3)
            if n_short:
                record["replacement_sampling"].append(
                    f"negatives: {n_short} anchor(s) have fewer than N = {N} other-class training samples; "
                    f"padded with replacement")
            neg_sampler = None
        else:
            neg_pools = {c: torch.as_tensor(tr[data.y[tr] != c]) for c in range(data.n_classes)}
            neg_sampler = PoolSampler(neg_pools, N, gen)
            for c in neg_sampler.short_classes:
                record["replacement_sampling"].append(
                    f"negatives: only {len(neg_pools[c])} training samples outside class "
                    f"{data.class_names[c]!r} (< N = {N}); drawn with replacement")
        for note in record["replacement_sampling"]:
            notes.append("replacement sampling — " + note)

        steps = math.ceil(len(tr) / B)
        cal_state = {"perm": torch.empty(0, dtype=torch.int64), "pos": 0}
        uniq_counts: list[int] = []

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

        def one_epoch(ep: int) -> dict:
            if self.loss_schedule == "cosine":
                f = (1 + 0.5 * math.cos(2 * math.pi * (ep - 1) / epochs)) / 1.5
            else:
                f = 1.0
            perm = torch.randperm(len(tr), generator=gen)
            sums = {"loss": 0.0, **{t: 0.0 for t in LOSS_TERMS if getattr(self, t)}}
            for s in range(steps):
                check_cancel(cancel)                    # an epoch can take tens of seconds on a CPU
                batch = tr_t[perm[s * B:(s + 1) * B]]
                apos = next_anchors()
                anchors = cal_t[apos]
                ay = y_cpu[anchors]
                pos = pos_sampler.sample(ay)
                neg = neg_table[apos] if neg_sampler is None else neg_sampler.sample(ay)
                b_d, a_d, p_d, n_d = (t.to(dev) for t in (batch, anchors, pos, neg))
                loss, terms = cfr_step_loss(
                    model, h, y_all, b_d, a_d, p_d, n_d, tau=float(self.tau),
                    supcon_temperature=float(self.supcon_temperature), w_ce=float(self.w_ce) * f,
                    w_contrastive=float(self.w_contrastive) * f, w_supcon=float(self.w_supcon),
                    ce=bool(self.ce), contrastive=bool(self.contrastive), supcon=bool(self.supcon))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if ep == 1 and s < 5:
                    uniq_counts.append(int(torch.unique(torch.cat([batch, anchors, pos.flatten(),
                                                                   neg.flatten()])).numel()))
                sums["loss"] += float(loss.detach())
                for k, v in terms.items():
                    sums[k] += float(v)
            return {("loss" if k == "loss" else f"loss_{k}"): v / steps for k, v in sums.items()}

        loop = T.run_epochs(model, epochs=epochs, train_epoch=one_epoch, evaluator=evaluator, stage="cfr",
                            progress=T.stage_progress(progress, pre_cfr, grand), cancel=cancel, lr=float(self.lr))
        if not T.check_converged(loop.train_losses):
            notes.append(f"cfr: training loss had not levelled off after {epochs} epochs "
                         f"(last {loop.train_losses[-1]:.4f}); lr {self.lr} may be too small for this start")

        # ---- selection: stage-1 ERM, the stage-2 start (epoch 0) and the best CFR epoch, one rule -------
        # Ties keep the CFR epoch (the paper's choice), then the start: a starting point replaces it only when it
        # scores strictly higher.
        candidates = [
            {"model": "erm", "label": erm_label, "epoch": erm.chosen_epoch, "val_score": float(erm.best_score)},
            {"model": "start", "label": f"CFR start (epoch 0: {init_desc})", "epoch": 0,
             "val_score": float(start_score)},
            {"model": "cfr", "label": f"CFR epoch {loop.best_epoch} (best of 1–{epochs})",
             "epoch": loop.best_epoch, "val_score": float(loop.best_score)},
        ]
        best = max(reversed(candidates), key=lambda c: c["val_score"])  # max() keeps the first of equal scores
        rule_name = f"validation {self.selection} accuracy"
        others = "; ".join(f"{c['label']} {c['val_score']:.3f}" for c in candidates if c is not best)
        why = f"highest {rule_name}: {best['label']} {best['val_score']:.3f} (vs {others})"
        if best["model"] == "erm":
            probs, z_after = erm_probs, erm_z
            chosen_stage, chosen_epoch = "erm", erm.chosen_epoch
            record.update(fallback="erm", fallback_reason="selection")
            notes.append(f"no CFR epoch scored above the stage-1 ERM model on {rule_name} ({why}); CFR returns "
                         "the ERM model")
        else:
            if best["model"] == "start":
                model.load_state_dict(start_state)
                model.eval()
            probs, z_after = evaluator.predict(model)
            chosen_stage, chosen_epoch = "cfr", best["epoch"]
        record.update(
            chosen_stage=chosen_stage, chosen_epoch=chosen_epoch, best_score=best["val_score"],
            selection={"rule": self.selection, "chosen": best["model"], "candidates": candidates, "why": why},
            steps_per_epoch=steps,
            mean_unique_rows_per_step=float(np.mean(uniq_counts)) if uniq_counts else None,
            rows_per_step=int(B + B * (1 + P + N)), cfr_seconds=round(loop.seconds, 3),
            fit_seconds=round(time.perf_counter() - t0, 3), notes=notes,
            scale=model.scale)
        record["outcome"] = outcome_lines(record)
        curves = pd.concat([erm.curves, loop.curves], ignore_index=True)
        return MethodResult(method=self.name, probs=probs, pred=probs.argmax(1), embeddings_after=z_after,
                            calibration_set=cal, record=record, curves=curves)

    @staticmethod
    def _calibration_summary(data: FeatureData, cal: np.ndarray, tr: np.ndarray) -> dict:
        """Size and make-up of the calibration set (record only — never used for training)."""
        by_class = {data.class_names[c]: int((data.y[cal] == c).sum()) for c in range(data.n_classes)}
        out = {"size": int(len(cal)), "fraction_of_train": float(len(cal) / max(len(tr), 1)),
               "by_class": by_class, "by_group": None}
        if data.has_attributes:
            names = data.group_names()
            g = data.group[cal]
            counts = np.bincount(g[g >= 0], minlength=data.n_groups)[: data.n_groups]
            gt = data.group[tr]
            train_counts = np.bincount(gt[gt >= 0], minlength=data.n_groups)[: data.n_groups]
            out["by_group"] = {names[i]: {"n": int(counts[i]), "of_train": int(train_counts[i]),
                                          "rate": float(counts[i] / train_counts[i]) if train_counts[i] else None}
                               for i in range(data.n_groups)}
            out["unknown_group"] = int((g < 0).sum())
        return out
