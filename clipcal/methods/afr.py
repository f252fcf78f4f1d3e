"""AFR — Automatic Feature Reweighting (Qiu, Potapczynski, Izmailov, Wilson, ICML 2023, "Simple and Fast
Group Robustness by Automatic Feature Reweighting"), on cached features.

1. Split the train split (stratified by class, seeded) into a part for ERM (``1 − heldout_frac``) and a
   held-out part for reweighting.
2. Train the ERM last layer on the first part (:func:`~clipcal.methods._train.train_last_layer`).
3. On the held-out part, weight each sample by ``wᵢ ∝ exp(−γ · p̂ᵢ)`` where ``p̂ᵢ`` is the ERM model's
   probability of the true class, normalised so every class has the same total weight (AFR eq. 2 and its
   class balancing).
4. Retrain only the final linear layer on the fixed ERM embeddings ``z = normalize(h W_ERM)``:
   ``logits = z Vᵀ + b`` from ``V₀ = s · T_ERM, b₀ = 0``, loss ``Σ wᵢ CEᵢ + λ ‖V − V₀‖²`` (AFR's pull towards
   the ERM layer), full batch with L-BFGS (scipy).
5. γ (and λ) are chosen on validation by the annotation-free rule (default worst-class); the paper tunes
   them by validation worst-group, available here as ``selection="worst-group"``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from clipcal.errors import MethodError
from clipcal.methods._train import (DEFAULT_SCALE, LAST_LAYER_CONSTRAINTS, SELECTION_RULES, init_notes,
                                    selection_score, stage_progress)
from clipcal.methods.base import MethodResult, NonFiniteError, check_cancel, report, softmax
from clipcal.methods.fitted import FittedLastLayer
from clipcal.methods.last_layer import LAST_LAYER_HPARAMS, LastLayerMethod, uses_groups
from clipcal.methods.params import Interval, ListOf, Real


def stratified_split(y: np.ndarray, rows: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rows`` into (kept, held-out) with ≈ ``frac`` of each class held out (≥ 1 per class kept and
    held out when the class has ≥ 2 rows); seeded, returns sorted int64 arrays."""
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(y[rows]):
        r = rows[y[rows] == c]
        n_h = int(round(frac * len(r)))
        if len(r) >= 2:
            n_h = min(max(n_h, 1), len(r) - 1)
        else:
            n_h = 0
        held.append(rng.permutation(r)[:n_h])
    held = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    kept = np.setdiff1d(rows, held)
    return kept.astype(np.int64), held.astype(np.int64)


def afr_weights(p_true: np.ndarray, y: np.ndarray, gamma: float, n_classes: int) -> np.ndarray:
    """AFR weights ``exp(−γ p̂)`` normalised so each class sums to 1/K of the total (float64, sum = 1).

    Computed in log space with each class's largest log-weight subtracted (the class normalisation cancels it),
    so any finite γ gives finite weights: ``exp(γ)`` alone overflows from γ ≈ 710 and made every weight NaN.
    """
    logw = -float(gamma) * np.asarray(p_true, np.float64)
    y = np.asarray(y)
    out = np.zeros_like(logw)
    present = np.unique(y)
    for c in present:
        m = y == c
        w = np.exp(logw[m] - logw[m].max())
        out[m] = w / w.sum() / len(present)
    return out


def fit_linear_head(z: np.ndarray, y: np.ndarray, w: np.ndarray, V0: np.ndarray, reg: float,
                    max_iter: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Full-batch weighted logistic regression on fixed embeddings with a pull towards ``V0``.

    Minimises ``Σ wᵢ CE(z Vᵀ + b, yᵢ) + reg · ‖V − V0‖²`` (w sums to 1) with scipy's L-BFGS-B and the
    analytic gradient, float64, starting at ``(V0, 0)`` (numpy only: no torch optimiser import). Returns
    (V [K, e], b [K]).

    Memory: ``z`` is used as is when already float64 (AFR converts it once for its whole γ, λ grid); the
    per-call temporaries are [n, K] (no [n, K] one-hot either: the true class is indexed). Threads: the
    products are skinny ([n, e] × [e, K]), so BLAS runs on one thread here — with OpenBLAS's two threads on the
    shared 2-core machine each product cost ≈ 15 × the CPU time (measured: [3200, 2]ᵀ × [3200, 512], 23 ms vs
    1.5 ms CPU), which made the grid the slowest part of AFR (an AFR fit at a tenth of CelebA's size spent 143
    of its 145 CPU seconds here).
    """
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    z = np.asarray(z, np.float64)
    w = np.asarray(w, np.float64)
    V0 = np.asarray(V0, np.float64)
    k, e = V0.shape
    rows, y = np.arange(len(z)), np.asarray(y)

    def fun(theta):
        V, b = theta[: k * e].reshape(k, e), theta[k * e:]
        logits = z @ V.T + b
        logits -= logits.max(axis=1, keepdims=True)
        lse = np.log(np.exp(logits).sum(axis=1))
        p = np.exp(logits - lse[:, None])
        loss = float((w * (lse - logits[rows, y])).sum() + reg * ((V - V0) ** 2).sum())
        p[rows, y] -= 1.0                               # p − onehot(y)
        g = w[:, None] * p
        gV = g.T @ z + 2 * reg * (V - V0)
        return loss, np.concatenate([gV.ravel(), g.sum(0)])

    x0 = np.concatenate([V0.ravel(), np.zeros(k)])
    with threadpool_limits(limits=1, user_api="blas"):
        res = minimize(fun, x0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter, "gtol": 1e-9})
    return res.x[: k * e].reshape(k, e).copy(), res.x[k * e:].copy()


def head_logits(z: np.ndarray, V: np.ndarray, b: np.ndarray, block_bytes: int = 1 << 23) -> np.ndarray:
    """``z Vᵀ + b`` [N, K] float64 for embeddings ``z`` [N, e] (float32) and a float64 head ``V`` [K, e], a block
    of rows at a time: ``z @ V.T`` on all rows at once upcast a float64 copy of every row of z (0.8 GB at CelebA
    size); per block the copy is at most ``block_bytes`` (8 MiB) and the arithmetic per row is the same."""
    out = np.empty((len(z), V.shape[0]), dtype=np.float64)
    block = max(1, block_bytes // (8 * max(z.shape[1], 1)))
    for s in range(0, len(z), block):
        out[s:s + block] = z[s:s + block] @ V.T + b
    return out


class AFR(LastLayerMethod):
    """Automatic Feature Reweighting: ERM on part of train, then a reweighted final layer on the held-out part."""

    name = "afr"
    label = "AFR"
    uses_group_labels = False
    description = "last layer retrained on held-out train data with weights ∝ exp(−γ·p(correct)) (Qiu et al. 2023)"
    HPARAMS = {
        "gammas": ([0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0], "grid of γ (weight sharpness) chosen on val"),
        "regs": ([0.0, 0.01, 0.1], "grid of λ, pull of the retrained layer towards the ERM layer"),
        "heldout_frac": (0.2, "fraction of each training class held out for reweighting"),
        **LAST_LAYER_HPARAMS,
    }
    PARAM_CONSTRAINTS = {
        "gammas": [ListOf(Interval(Real, 0, None, closed="left"))],
        "regs": [ListOf(Interval(Real, 0, None, closed="left"))],
        "heldout_frac": [Interval(Real, 0, 1, closed="neither")],
        **LAST_LAYER_CONSTRAINTS,
    }

    def __init__(self, gammas=(0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0), regs=(0.0, 0.01, 0.1), heldout_frac=0.2,
                 **last_layer):
        super().__init__(**last_layer)
        self.gammas = gammas
        self.regs = regs
        self.heldout_frac = heldout_frac

    def _fit(self, data, progress, cancel) -> MethodResult:
        gammas = [float(g) for g in np.atleast_1d(self.gammas)]
        regs = [float(r) for r in np.atleast_1d(self.regs)]
        train = data.indices("train")
        part1, held = stratified_split(data.y, train, float(self.heldout_frac), int(self.seed))
        notes = []
        missing = sorted(set(range(data.n_classes)) - set(data.y[part1].tolist()))
        if missing or len(held) == 0:
            raise MethodError("AFR needs at least 2 training samples of every class to hold some out",
                              hint="use ERM or JTT on this benchmark")
        grid = list(itertools.product(gammas, regs))
        total = int(self.epochs) + len(grid)
        erm = self.fit_erm_stage(data, stage_progress(progress, 0, total), cancel, stage="erm",
                            train_idx=part1)
        probs0, z = erm.predict_all()
        notes += init_notes(erm.init, data) + erm.notes
        V0 = DEFAULT_SCALE * erm.head() if not self.learn_scale else erm.model.scale * erm.head()
        p_true = probs0[held, data.y[held]]
        z_held = z[held].astype(np.float64)            # once for the whole grid, not once per grid point
        val = data.indices("val")
        best, rows = None, []
        for i, (gamma, reg) in enumerate(grid):
            check_cancel(cancel)
            w = afr_weights(p_true, data.y[held], gamma, data.n_classes)
            V, b = fit_linear_head(z_held, data.y[held], w, V0, reg)
            logits_val = z[val] @ V.T + b
            if not np.isfinite(logits_val).all():  # argmax of NaN is class 0: it would score like a real model
                raise NonFiniteError(f"the reweighted last layer gave NaN or inf outputs at γ={gamma:g}, λ={reg:g}",
                                     hint="use smaller values in afr.gammas / afr.regs")
            score = selection_score(self.selection, data.y[val], logits_val.argmax(1), data.group[val],
                                    data.n_classes, data.n_groups)
            rows += [{"epoch": i, "stage": "afr", "split": "val", "metric": "gamma", "value": gamma},
                     {"epoch": i, "stage": "afr", "split": "val", "metric": "reg", "value": reg},
                     {"epoch": i, "stage": "afr", "split": "val", "metric": "val_score", "value": score}]
            s = score if np.isfinite(score) else -np.inf
            if best is None or s > best[0]:
                best = (s, gamma, reg, V, b)
            report(progress, int(self.epochs) + i + 1, total,
                   f"AFR γ={gamma:g} λ={reg:g} · val {self.selection} {score:.3f}", "afr", val_score=score)
        _, gamma, reg, V, b = best
        probs = softmax(head_logits(z, V, b))
        curves = pd.concat([erm.curves, pd.DataFrame(rows)], ignore_index=True)
        return MethodResult(
            method=self.name, probs=probs, pred=probs.argmax(1), embeddings_after=z, calibration_set=None,
            record={"uses_group_labels": uses_groups(self.selection),
                    "selection_rule": SELECTION_RULES[self.selection] + " (γ, λ grid)", "seed": int(self.seed),
                    "chosen_epoch": erm.chosen_epoch, "chosen_gamma": gamma, "chosen_reg": reg,
                    "val_score": float(best[0]), "n_erm_part": int(len(part1)), "n_heldout": int(len(held)),
                    "device": str(erm.evaluator.device), "fit_seconds": round(erm.seconds, 3), "notes": notes},
            curves=curves,
            fitted=FittedLastLayer(W=erm.weight(), head=V, scale=1.0, bias=b, classes=tuple(data.class_names)))
