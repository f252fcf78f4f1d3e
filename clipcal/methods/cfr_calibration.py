"""CFR's calibration set (cfr-method.md, "Calibration set"): the paper's rule, the cross-fit rule, when a set is
usable, and the stage that picks one (:func:`choose_calibration_set`). No group labels are read anywhere here.

* the paper's rule (:func:`calibration_set`): every training sample the stage-1 ERM model misclassifies;
* cross-fit (:func:`cross_fit_errors`, not in the paper): training samples misclassified by ERM models that did
  not train on them (k class-stratified folds) — for when ERM fits (almost) the whole training split;
* usable (:func:`calibration_usable`): every class has ≥ ``min_per_class`` samples (why: :mod:`clipcal.methods.cfr`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipcal.errors import MethodError
from clipcal.methods import _train as T
from clipcal.methods.base import FeatureData, ProgressFn

CALIBRATION_ERRORS = ("auto", "train", "cross-fit")
#: what each calibration-set rule takes (record ``calibration_rule`` / ``calibration_set.source``)
CALIBRATION_RULES = {
    "train": "the paper's rule: training samples the stage-1 ERM model misclassifies",
    "cross-fit": "cross-fit: training samples misclassified by ERM models that did not train on them",
}
#: default of ``calibration_min_per_class`` — see :func:`calibration_usable`
MIN_PER_CLASS = 5


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



@dataclass
class CalibrationChoice:
    """The calibration set CFR's stage 2 runs on, and how it was chosen.

    Attributes:
        used: ``"train"`` (the paper's rule), ``"cross-fit"`` or ``None`` (both rules gave an empty set).
        cal: [n_cal] int64 row indices, ascending (the paper's set when ``used`` is ``None``).
        usable: whether ``cal`` passed :func:`calibration_usable`.
        rule: the record's ``calibration_rule`` (requested, used, why, usable, min_per_class,
            usable_definition, paper_rule, cross_fit).
        fold_records: per-fold records of the cross-fit rule, or ``None`` when it did not run.
        n_folds: folds trained (0 when the cross-fit rule did not run) — they count in the progress total.
        notes: what a user should know (a set that is not usable and ran anyway).
    """

    used: str | None
    cal: np.ndarray
    usable: bool
    rule: dict
    fold_records: list | None
    n_folds: int
    notes: list


def choose_calibration_set(data: FeatureData, erm_pred: np.ndarray, *, mode: str, min_per_class: int, folds: int,
                           seed: int, erm_kwargs: dict, erm_epochs: int, epochs: int,
                           progress: ProgressFn | None = None, cancel=None) -> CalibrationChoice:
    """CFR's calibration-set stage: the paper's rule, the cross-fit rule, or ``"auto"`` (the paper's when usable).

    ``mode="train"`` takes the paper's set; ``"cross-fit"`` the cross-fit set; ``"auto"`` the paper's set when
    usable, else the cross-fit set when usable; when neither is usable, stage 2 runs on the paper's set if it
    has samples (else cross-fit's) — the selection guards it; when both are empty ``used`` is ``None``.

    Args:
        data: the feature data.
        erm_pred: [N] int64 stage-1 ERM predictions of every row.
        mode: ``calibration_errors`` (``"auto"``, ``"train"``, ``"cross-fit"``).
        min_per_class: ``calibration_min_per_class``.
        folds: ``cross_fit_folds``.
        seed: seeds the folds and their training.
        erm_kwargs: the stage-1 recipe (:func:`clipcal.methods._train.train_last_layer` keyword arguments).
        erm_epochs, epochs: stage-1 and stage-2 epochs (the progress total counts every fold's epochs).
        progress, cancel: as in :meth:`Method.fit`.

    Returns:
        :class:`CalibrationChoice`.

    Raises:
        MethodError: ``mode="cross-fit"`` and the cross-fit set cannot be built (a class smaller than ``folds``).
    """
    tr = data.indices("train")
    n_folds = folds if mode == "cross-fit" else 0  # "auto" adds them only if it needs cross-fit
    paper_cal = calibration_set(data.y, erm_pred, tr)
    paper_ok, paper_why = calibration_usable(data.y, paper_cal, data.class_names, min_per_class)
    rule = {"requested": mode, "used": None, "why": "", "usable": None, "min_per_class": min_per_class,
            "usable_definition": usable_definition(min_per_class),
            "paper_rule": {"size": int(len(paper_cal)), "usable": paper_ok, "made_of": paper_why},
            "cross_fit": None}
    fold_records = None
    notes: list[str] = []
    if mode == "train" or (mode == "auto" and paper_ok):
        used, cal, usable = "train", paper_cal, paper_ok
        rule["why"] = ("requested (calibration_errors='train')" if mode == "train" else
                       f"auto: the paper's rule gave a usable set ({paper_why})")
    else:
        if mode == "auto":
            n_folds = folds
        grand = erm_epochs * (1 + n_folds) + epochs
        try:
            cf_cal, fold_records = cross_fit_errors(
                data, folds=n_folds, seed=seed, train_kwargs=erm_kwargs, progress=progress, cancel=cancel,
                epochs_per_fold=erm_epochs, offset=erm_epochs, grand_total=grand)
            cf_ok, cf_why = calibration_usable(data.y, cf_cal, data.class_names, min_per_class)
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
            # keeps the stage-1 ERM model or the stage-2 start whenever stage 2 does worse on validation
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
    return CalibrationChoice(used=used, cal=cal, usable=usable, rule=rule, fold_records=fold_records,
                             n_folds=n_folds, notes=notes)


def calibration_summary(data: FeatureData, cal: np.ndarray, tr: np.ndarray) -> dict:
    """Size and make-up of the calibration set (record only — never used for training).

    Returns:
        ``{"size", "fraction_of_train", "by_class": {name: n}, "by_group": {name: {n, of_train, rate}} or None,
        "unknown_group"}`` (group counts only where the benchmark has attribute labels).
    """
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
