"""Group metrics: per-group accuracy with intervals, worst-group, the three "averages", worst-class.

"Average accuracy" means three different things in the literature (field-notes.md, pitfall 2), so all three
are reported, labelled (:data:`METRIC_DEFINITIONS`):

* ``overall`` — plain accuracy over all samples (DFR, SpuCo);
* ``mean_group`` — unweighted mean of the group accuracies (SubpopBench);
* ``train_weighted`` — group accuracies weighted by the *training* split's group proportions, the number the
  Waterbirds literature calls "average accuracy" (group_DRO, WILDS, JTT).

Groups are ``g = y · A + a`` (A attribute values); empty groups appear with n = 0 and NaN accuracy and are left
out of minima and means, never a crash. Intervals are 95 % Wilson score intervals (Wilson 1927), which stay
inside [0, 1] and behave for small groups (Waterbirds' smallest training group has 56 images).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

#: (title, markdown) shown on the dashboard's Groups page.
TEACHING = (
    "What worst-group accuracy means",
    "Accuracy is computed separately for every group; **worst-group accuracy** is the lowest of them. "
    "It shows whether the model works for everyone or only for the majority. The *average* accuracy is "
    "reported three ways because papers disagree: plain **overall** accuracy on the test set, the "
    "**mean over groups**, and the **train-weighted** average (each group's accuracy weighted by its "
    "share of the training set — the Waterbirds convention). Intervals are 95 % (Wilson) — a group "
    "of 20 test images can easily move by ±20 points.",
)

METRIC_DEFINITIONS: dict[str, str] = {
    "worst_group": "Worst-group accuracy: the lowest accuracy over (class × spurious attribute) groups with "
                   "at least one sample.",
    "overall": "Overall accuracy: fraction of all samples classified correctly (plain average; DFR/SpuCo "
               "convention).",
    "mean_group": "Mean group accuracy: unweighted mean of the accuracies of the non-empty groups "
                  "(SubpopBench convention).",
    "train_weighted": "Train-weighted average accuracy: group accuracies weighted by the training split's group "
                      "proportions (the Waterbirds 'average accuracy' of group_DRO/WILDS/JTT). Not given (—) when "
                      "some training images have no spurious-attribute label: their groups, so the proportions, "
                      "are unknown.",
    "worst_class": "Worst-class accuracy: the lowest per-class accuracy (needs no group labels).",
    "accuracy": "Accuracy of the group: correct / n.",
    "ci": "95 % Wilson score interval of the group accuracy.",
}

Z95 = 1.959963984540054


def wilson_interval(correct, n, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for ``correct`` successes out of ``n`` (arrays or scalars).

    Returns:
        (low, high) float64 arrays; NaN where ``n`` = 0. Source: Wilson (1927), JASA 22:209–212:
        ``(p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)``.
    """
    c = np.asarray(correct, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = c / n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
        lo = np.where(n > 0, np.clip(centre - half, 0.0, 1.0), np.nan)
        hi = np.where(n > 0, np.clip(centre + half, 0.0, 1.0), np.nan)
    return lo, hi


def _infer_attrs(group: np.ndarray, n_classes: int, n_attrs: int | None) -> int:
    if n_attrs is not None:
        return int(n_attrs)
    g = group[group >= 0]
    return int(g.max() // max(n_classes, 1) + 1) if len(g) else 0


def group_table(y, pred, group, class_names: list[str], attr_names: list[str] | None = None) -> pd.DataFrame:
    """Tidy per-group accuracy table.

    Args:
        y: [n] int true classes. pred: [n] int predictions. group: [n] int ``y·A + a`` or -1 (unknown).
        class_names: K names. attr_names: A names; empty/None → one row per class (group = -1,
            attribute "unknown").

    Returns:
        DataFrame with columns ``group, class, attribute, n, correct, accuracy, ci_low, ci_high``: one row for
        every group 0 … K·A−1 (empty ones with n = 0 and NaN accuracy/interval), plus one row per class with
        ``group = -1`` / attribute "unknown" for samples without an attribute label when there are any.
    """
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    group = np.asarray(group, dtype=np.int64)
    if not (len(y) == len(pred) == len(group)):
        raise ValueError(f"y, pred, group lengths differ: {len(y)}, {len(pred)}, {len(group)}")
    k = len(class_names)
    attr_names = list(attr_names or [])
    na = len(attr_names)
    correct = pred == y
    rows = []
    for g in range(k * na):
        m = group == g
        rows.append((g, class_names[g // na], attr_names[g % na], int(m.sum()), int(correct[m].sum())))
    unknown = group < 0 if na else np.ones(len(y), bool)
    if unknown.any():
        for c in range(k):
            m = unknown & (y == c)
            if na and not m.any():
                continue
            rows.append((-1, class_names[c], "unknown", int(m.sum()), int(correct[m].sum())))
    t = pd.DataFrame(rows, columns=["group", "class", "attribute", "n", "correct"])
    t["group"] = t["group"].astype(np.int64)
    t["n"] = t["n"].astype(np.int64)
    t["correct"] = t["correct"].astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        t["accuracy"] = np.where(t["n"] > 0, t["correct"] / t["n"].clip(lower=1), np.nan)
    t["ci_low"], t["ci_high"] = wilson_interval(t["correct"].to_numpy(), t["n"].to_numpy())
    return t


def _acc_by(values: np.ndarray, correct: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    keep = values >= 0
    n = np.bincount(values[keep], minlength=n_bins)[:n_bins].astype(np.float64)
    c = np.bincount(values[keep], weights=correct[keep].astype(np.float64), minlength=n_bins)[:n_bins]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, c / np.maximum(n, 1), np.nan), n


def summarize(y, pred, group, train_group_counts=None, n_classes: int | None = None,
              n_attrs: int | None = None) -> dict:
    """Headline metrics of one split (definitions in :data:`METRIC_DEFINITIONS`).

    Args:
        y / pred / group: [n] int arrays (group -1 = unknown attribute).
        train_group_counts: [K·A] training counts per group (for ``train_weighted``); ``None`` → NaN.
        n_classes: K (default ``max(y, pred) + 1``). n_attrs: A (default from ``train_group_counts`` or the
            largest group index).

    Returns:
        ``{"worst_group", "overall", "mean_group", "train_weighted", "worst_class", "n"}`` (floats; group
        figures NaN without group labels; ``n`` int). Groups empty in this split are ignored; for
        ``train_weighted`` the training proportions are renormalised over the groups present here.
    """
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    group = np.asarray(group, dtype=np.int64)
    if n_classes is None:
        n_classes = int(max(y.max(initial=0), pred.max(initial=0)) + 1)
    if n_attrs is None and train_group_counts is not None and len(train_group_counts):
        n_attrs = len(train_group_counts) // n_classes
    na = _infer_attrs(group, n_classes, n_attrs)
    n_groups = n_classes * na
    correct = pred == y
    out = {"n": int(len(y)), "overall": float(correct.mean()) if len(y) else float("nan")}
    cls_acc, _ = _acc_by(y, correct, n_classes)
    out["worst_class"] = float(np.nanmin(cls_acc)) if np.isfinite(cls_acc).any() else float("nan")
    nan = float("nan")
    if n_groups and (group >= 0).any():
        g_acc, _ = _acc_by(group, correct, n_groups)
        ok = np.isfinite(g_acc)
        out["worst_group"] = float(np.min(g_acc[ok]))
        out["mean_group"] = float(np.mean(g_acc[ok]))
        if train_group_counts is not None and len(train_group_counts) == n_groups:
            w = np.asarray(train_group_counts, dtype=np.float64)
            w = np.where(ok, w, 0.0)
            out["train_weighted"] = float((w * np.nan_to_num(g_acc)).sum() / w.sum()) if w.sum() > 0 else nan
        else:
            out["train_weighted"] = nan
    else:
        out.update(worst_group=nan, mean_group=nan, train_weighted=nan)
    return {k: out[k] for k in ("worst_group", "overall", "mean_group", "train_weighted", "worst_class", "n")}


METRIC_COLUMNS = ("worst_group", "overall", "mean_group", "train_weighted", "worst_class")


def train_group_weights(data) -> np.ndarray | None:
    """The training split's group counts, the weights of ``train_weighted`` — or ``None`` when they are unknown.

    Args:
        data: a :class:`~clipcal.methods.base.FeatureData` (``group`` -1 = unknown attribute).

    Returns:
        [K·A] int64 counts of every group in the training split; ``None`` without group labels or when any
        training row's attribute is unknown — those rows belong to some group, so the proportions cannot be
        vouched for, and weighting by the known rows alone would silently drop (or shrink) groups whose
        training images carry no attribute label (a whole class, in the case that was reported).
    """
    if not data.n_groups or training_groups_unknown(data.group, data.split):
        return None
    return data.group_counts("train")


def training_groups_unknown(group, split) -> bool:
    """Whether any training row's group is unknown (``group`` < 0): then the training proportions are not known
    and ``train_weighted`` is not given (:func:`train_group_weights`; :func:`clipcal.runs.load_run` applies the
    same rule to runs stored before it). ``group`` [N] int, ``split`` [N] str."""
    return bool((np.asarray(group)[np.asarray(split).astype(str) == "train"] < 0).any())


def method_table(results: Mapping, data, splits: tuple[str, ...] = ("val", "test"),
                 not_applicable: Mapping[str, str] | None = None, labels: Mapping[str, str] | None = None
                 ) -> pd.DataFrame:
    """One row per method per split with every headline metric.

    Args:
        results: ``{method name: MethodResult}`` fitted on ``data`` (``pred`` over all rows).
        data: the :class:`~clipcal.methods.base.FeatureData` (y, group, split, train group counts).
        splits: splits to report.
        not_applicable: ``{method name: reason}`` for methods that could not run — one row each with
            NaN metrics and ``status`` "not applicable: <reason>".
        labels: display names ``{method name: label}``.

    Returns:
        DataFrame with columns ``method, label, split, n, worst_group, overall, mean_group, train_weighted,
        worst_class, uses_group_labels, selection_rule, chosen_epoch, status``.
    """
    labels = dict(labels or {})
    train_counts = train_group_weights(data)
    rows = []
    for name, res in results.items():
        for split in splits:
            m = data.mask(split)
            s = summarize(data.y[m], res.pred[m], data.group[m], train_counts, data.n_classes, data.n_attrs)
            rows.append({"method": name, "label": labels.get(name, name), "split": split, "n": s["n"],
                         **{k: s[k] for k in METRIC_COLUMNS},
                         "uses_group_labels": bool(res.record.get("uses_group_labels", False)),
                         "selection_rule": str(res.record.get("selection_rule", "")),
                         "chosen_epoch": res.record.get("chosen_epoch"), "status": "ok"})
    for name, reason in (not_applicable or {}).items():
        rows.append({"method": name, "label": labels.get(name, name), "split": "", "n": 0,
                     **{k: float("nan") for k in METRIC_COLUMNS}, "uses_group_labels": False,
                     "selection_rule": "", "chosen_epoch": None,
                     "status": reason if str(reason).startswith("not applicable") else f"not applicable: {reason}"})
    cols = ["method", "label", "split", "n", *METRIC_COLUMNS, "uses_group_labels", "selection_rule",
            "chosen_epoch", "status"]
    return pd.DataFrame(rows, columns=cols)
