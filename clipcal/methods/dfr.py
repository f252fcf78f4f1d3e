"""DFR — Deep Feature Reweighting (Kirichenko, Izmailov, Wilson, ICLR 2023, "Last Layer Re-Training is
Sufficient for Robustness to Spurious Correlations"; the DFR^Tr_Val variant, arXiv 2204.02937).

Uses validation **group labels** — the labelled reference point, not an annotation-free method:

1. Split the labelled validation rows in two halves, stratified by group (seeded).
2. For each ``C`` in the grid: fit an L1 logistic regression (sklearn ``LogisticRegression``, ``l1_ratio=1``,
   liblinear for K = 2, saga otherwise) on a group-balanced subsample of the first half (every group
   down-sampled to the smallest non-empty group) of the standardised embeddings ``z``; score worst-group
   accuracy on the second half.
3. Final model with the best ``C``: as in the DFR paper, ``n_retrain`` fits on group-balanced subsamples of the
   whole validation split, coefficients averaged (``refit="full-val"``, default); or the first-half model
   only (``refit="half"``, the brief description in cfr-method.md's baseline table).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from clipcal.errors import MethodError
from clipcal.methods._train import accuracy_by
from clipcal.methods.base import Method, MethodResult, check_cancel, report, softmax
from clipcal.methods.fitted import backbone_last_layer
from clipcal.methods.params import Integral, Interval, ListOf, Real, StrOptions


def balanced_subsample(groups: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows down-sampled so every non-empty group has as many as the smallest one (sorted int64)."""
    g = groups[rows]
    present = np.unique(g)
    m = min(int((g == x).sum()) for x in present)
    pick = [rng.choice(rows[g == x], size=m, replace=False) for x in present]
    return np.sort(np.concatenate(pick)).astype(np.int64)


def _fit_lr(x, y, C, seed, n_classes):
    from sklearn.linear_model import LogisticRegression

    solver = "liblinear" if n_classes == 2 else "saga"
    clf = LogisticRegression(C=float(C), l1_ratio=1.0, solver=solver, max_iter=2000, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny balanced sets
        clf.fit(x, y)
    return clf


def _linear_params(clf, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(coef [K, e], intercept [K]) so that softmax(x coefᵀ + b) = predict_proba (binary: ±w/2)."""
    classes = list(clf.classes_)
    coef = np.zeros((n_classes, clf.coef_.shape[1]))
    b = np.zeros(n_classes)
    if len(classes) == 2 and clf.coef_.shape[0] == 1:
        coef[classes[1]], b[classes[1]] = clf.coef_[0] / 2, clf.intercept_[0] / 2
        coef[classes[0]], b[classes[0]] = -clf.coef_[0] / 2, -clf.intercept_[0] / 2
    else:
        for i, c in enumerate(classes):
            coef[c], b[c] = clf.coef_[i], clf.intercept_[i]
        for c in set(range(n_classes)) - set(classes):
            b[c] = -1e9  # a class never seen in validation is never predicted
    return coef, b


def standardised_logits(x: np.ndarray, scaler, coef: np.ndarray, bias: np.ndarray, block_bytes: int = 1 << 23
                        ) -> np.ndarray:
    """``scaler.transform(x) @ coefᵀ + bias`` [N, K] float64 for embeddings ``x`` [N, e] (float32), a block of
    rows at a time: float64 copies of at most ``block_bytes`` (8 MiB), never of all N rows.
    ``scaler``: a fitted ``sklearn.preprocessing.StandardScaler``; ``coef`` [K, e], ``bias`` [K]."""
    out = np.empty((len(x), coef.shape[0]), dtype=np.float64)
    block = max(1, block_bytes // (8 * max(x.shape[1], 1)))
    for s in range(0, len(x), block):
        out[s:s + block] = scaler.transform(x[s:s + block].astype(np.float64)) @ coef.T + bias
    return out


class DFR(Method):
    """Deep Feature Reweighting: group-balanced logistic regression on validation embeddings (uses group labels)."""

    name = "dfr"
    label = "DFR (uses group labels)"
    uses_group_labels = True
    description = "logistic regression on group-balanced validation data, C tuned by worst-group (Kirichenko et al. 2022)"
    HPARAMS = {
        "Cs": ([1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01], "grid of inverse L1 strengths C (DFR's grid)"),
        "refit": ("full-val", "final fit: full-val (DFR paper: balanced subsamples of all val, averaged) or half"),
        "n_retrain": (10, "balanced subsamples averaged in the final fit"),
        "seed": (0, "random seed (halves, subsamples)"),
    }
    PARAM_CONSTRAINTS = {
        "Cs": [ListOf(Interval(Real, 0, None, closed="neither"))],
        "refit": [StrOptions(("full-val", "half"))],
        "n_retrain": [Interval(Integral, 1, None, closed="left")],
        "seed": [Interval(Integral, 0, 2**32 - 1, closed="both")],
    }

    def __init__(self, Cs=(1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01), refit="full-val", n_retrain=10, seed=0):
        self.Cs = Cs
        self.refit = refit
        self.n_retrain = n_retrain
        self.seed = seed

    def _fit(self, data, progress, cancel) -> MethodResult:
        from sklearn.preprocessing import StandardScaler

        data.check_attributes("val")
        Cs = [float(c) for c in np.atleast_1d(self.Cs)]
        rng = np.random.default_rng(int(self.seed))
        val = data.indices("val")
        val = val[data.group[val] >= 0]
        g = data.group
        first, second = [], []
        for x in np.unique(g[val]):
            r = rng.permutation(val[g[val] == x])
            first.append(r[: (len(r) + 1) // 2])
            second.append(r[(len(r) + 1) // 2:])
        first, second = np.sort(np.concatenate(first)), np.sort(np.concatenate(second))
        notes = []
        if len(np.unique(data.y[first])) < 2:
            raise MethodError("the labelled validation split has fewer than 2 classes; DFR cannot fit",
                              hint="add validation samples of every class")
        # only validation rows are fitted on: standardise those (float64), never a float64 copy of all N rows
        # (2 × 0.8 GB at CelebA size); every row is predicted in blocks at the end
        scaler = StandardScaler()
        xs = scaler.fit_transform(data.embeddings[val].astype(np.float64))
        at = np.full(data.n, -1, dtype=np.int64)
        at[val] = np.arange(len(val))                  # row index → row of xs
        total = len(Cs) + (int(self.n_retrain) if self.refit == "full-val" else 0)
        best, rows = None, []
        for i, C in enumerate(Cs):
            check_cancel(cancel)
            sub = balanced_subsample(g, first, rng)
            clf = _fit_lr(xs[at[sub]], data.y[sub], C, int(self.seed), data.n_classes)
            ev = second if len(second) else first
            correct = clf.predict(xs[at[ev]]) == data.y[ev]
            acc = accuracy_by(g[ev], correct, data.n_groups)
            wg = float(np.nanmin(acc))
            rows += [{"epoch": i, "stage": "dfr", "split": "val", "metric": "C", "value": C},
                     {"epoch": i, "stage": "dfr", "split": "val", "metric": "worst_group_half2", "value": wg}]
            if best is None or wg > best[0]:
                best = (wg, C, clf)
            report(progress, i + 1, total, f"DFR C={C:g} · held-out val worst-group {wg:.3f}", "dfr", val_score=wg)
        if not len(second):
            notes.append("validation too small to split; C was tuned on the same half it was fitted on")
        wg, C, clf = best
        if self.refit == "half":
            coef, b = _linear_params(clf, data.n_classes)
        else:
            coefs, bs = [], []
            for j in range(int(self.n_retrain)):
                check_cancel(cancel)
                sub = balanced_subsample(g, val, rng)
                clf_j = _fit_lr(xs[at[sub]], data.y[sub], C, int(self.seed) + j, data.n_classes)
                cj, bj = _linear_params(clf_j, data.n_classes)
                coefs.append(cj)
                bs.append(bj)
                report(progress, len(Cs) + j + 1, total, f"DFR final fit {j + 1}/{self.n_retrain}", "dfr")
            coef, b = np.mean(coefs, axis=0), np.mean(bs, axis=0)
        probs = softmax(standardised_logits(data.embeddings, scaler, coef, b))
        # the same model on the backbone's embeddings z: the standardisation folded into the head and bias
        inv = 1.0 / scaler.scale_
        fitted = backbone_last_layer(data, head=coef * inv, scale=1.0, bias=b - coef @ (scaler.mean_ * inv))
        return MethodResult(
            method=self.name, probs=probs, pred=probs.argmax(1), embeddings_after=None, calibration_set=None,
            record={"uses_group_labels": True,
                    "selection_rule": "C by worst-group accuracy on the second half of validation (group labels)",
                    "seed": int(self.seed), "chosen_epoch": None, "chosen_C": C, "val_half_worst_group": wg,
                    "n_val_labelled": int(len(val)), "notes": notes},
            curves=pd.DataFrame(rows), fitted=fitted)
