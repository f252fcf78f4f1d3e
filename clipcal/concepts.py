"""Spurious-attribute inspections: text concepts, attribute decodability, hidden clusters, the calibration
set against the true groups, and the worst group's errors.

All functions take arrays / DataFrames and return DataFrames or small result objects; text embeddings of
concepts are computed by the caller with the same backbone (``Backbone.encode_text``) so this module stays
free of torch.

Sources: concept scoring follows the idea of B2T ("Bias-to-Text", Kim et al., CVPR 2024, arXiv 2301.11104)
and Domino (Eyuboglu et al., ICLR 2022): a concept that matches misclassified images of a class more than
its correctly classified images names a candidate spurious attribute. Attribute decodability is a linear
probe (Kumar et al. / "concept erasure" practice, e.g. INLP, Ravfogel et al., ACL 2020). Cluster discovery
is per-class k-means on embeddings (George, Sohoni et al., NeurIPS 2020).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Sequence

import numpy as np
import pandas as pd

from clipcal.errors import DataError, MethodError

#: (title, markdown) shown on the dashboard's Home, Data and Spurious attributes pages.
TEACHING = (
    "What is a spurious correlation?",
    "A feature that goes along with the class in the training data but does not define it. In "
    "Waterbirds (and the built-in Waterbirds-lite demo) 95 % of the training waterbirds are shown on "
    "water and 95 % of the landbirds on land, so a model can score well by looking at the **background** "
    "instead of the bird. It then fails on the rare *minority groups* — a waterbird on land, a landbird "
    "on water. A **group** is a (class, spurious attribute) pair.",
)

# ---------------------------------------------------------------------------------------------------------
# (a) text concepts


def load_concept_vocabulary() -> list[str]:
    """The shipped candidate concepts (``clipcal/resources/concepts.txt``): unique, in file order.

    Lines starting with ``#`` are section comments; blank lines are skipped.
    """
    text = resources.files("clipcal.resources").joinpath("concepts.txt").read_text(encoding="utf-8")
    out: list[str] = []
    for line in text.splitlines():
        c = line.strip()
        if c and not c.startswith("#") and c not in out:
            out.append(c)
    return out


def concept_prompts(concepts: Sequence[str], template: str = "a photo with {}.") -> list[str]:
    """Prompts to embed for each concept (one per concept, ``template.format(concept)``)."""
    return [template.format(c) for c in concepts]


def _unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def float_rows(x, rows=None, unit: bool = False) -> np.ndarray:
    """``float64`` copy of ``x[rows]``, each row L2-normalised when ``unit`` (as ``_unit``), built a row block at a
    time (:func:`clipcal.rowblocks.take_rows`, which releases the pages of a memory-mapped store array such as a
    run's ``embeddings_after`` after each block).

    The result is the only array of its size: ``_unit(x)[rows]`` held two [N, e] float64 arrays plus the norms'
    temporaries. Every operation is per row, so the values equal ``np.asarray(x, float64)[rows]`` (``_unit`` of it).

    Args:
        x: [N, e] array (any float dtype; a memory map welcome).
        rows: ``None`` (all rows), a [N] bool mask or int positions (order kept).
        unit: L2-normalise each row (norm floored at 1e-12).

    Returns:
        float64 array [len(rows), e].
    """
    from clipcal import rowblocks

    x = x if hasattr(x, "shape") else np.asarray(x)
    out = rowblocks.take_rows(x, rows)
    if unit:
        for sl in rowblocks.row_blocks(len(out), out.shape[1]):
            out[sl] = _unit(out[sl])
    return out


def concept_scores(image_emb: np.ndarray, y, pred, text_emb_of_concepts: np.ndarray,
                   concept_names: Sequence[str], class_names: Sequence[str]) -> pd.DataFrame:
    """Score text concepts per class by how much more they match misclassified than correct images.

    For class k, concept c with text embedding t_c and image embeddings x_i (all L2-normalised):
    ``score = mean_{i: y=k, pred≠k} cos(x_i, t_c) − mean_{i: y=k, pred=k} cos(x_i, t_c)`` and
    ``effect_size = score / pooled standard deviation`` (Cohen's d). A concept with a large positive
    score describes what the errors of that class have in common (a candidate spurious attribute).

    Args:
        image_emb: [N, e] image embeddings (any norm).
        y, pred: [N] int true class and predicted class.
        text_emb_of_concepts: [C, e] text embeddings of the concepts, same backbone and space.
        concept_names: C names.
        class_names: K names (index = y).

    Returns:
        DataFrame ranked within each class (best first), columns ``class_index, class, concept, score,
        effect_size, mean_sim_wrong, mean_sim_correct, n_wrong, n_correct, rank``. A class with no
        misclassified or no correct images gets rows with NaN scores and rank NaN (nothing to compare).

    Raises:
        MethodError: dimensions disagree.
    """
    from clipcal import rowblocks

    x = image_emb if hasattr(image_emb, "shape") else np.asarray(image_emb)
    t = _unit(text_emb_of_concepts)
    y, pred = np.asarray(y).astype(int), np.asarray(pred).astype(int)
    if t.ndim != 2 or x.ndim != 2 or t.shape[1] != x.shape[1]:
        raise MethodError(f"concept embeddings {t.shape} do not match image embeddings {x.shape}",
                          hint="embed the concepts with the same backbone's text tower")
    if len(concept_names) != t.shape[0] or not (len(y) == len(pred) == x.shape[0]):
        raise MethodError(f"lengths disagree: {len(concept_names)} names for {t.shape[0]} concepts; "
                          f"{x.shape[0]} images, {len(y)} labels, {len(pred)} predictions")
    sim = np.empty((x.shape[0], t.shape[0]))  # [N, C] cosine similarities, unit image rows a block at a time
    for sl in rowblocks.row_blocks(x.shape[0], x.shape[1]):
        sim[sl] = float_rows(x[sl], unit=True) @ t.T
    frames = []
    for k, cname in enumerate(class_names):
        m = y == k
        wrong, right = m & (pred != k), m & (pred == k)
        nw, nr = int(wrong.sum()), int(right.sum())
        if nw and nr:
            sw, sr = sim[wrong], sim[right]
            mw, mr = sw.mean(0), sr.mean(0)
            vw = sw.var(0, ddof=1) if nw > 1 else np.zeros_like(mw)
            vr = sr.var(0, ddof=1) if nr > 1 else np.zeros_like(mr)
            dof = max(nw + nr - 2, 1)
            pooled = np.sqrt(((nw - 1) * vw + (nr - 1) * vr) / dof)
            score = mw - mr
            eff = np.where(pooled > 1e-12, score / np.maximum(pooled, 1e-12), np.nan)
        else:
            mw = sim[wrong].mean(0) if nw else np.full(t.shape[0], np.nan)
            mr = sim[right].mean(0) if nr else np.full(t.shape[0], np.nan)
            score = eff = np.full(t.shape[0], np.nan)
        f = pd.DataFrame({"class_index": k, "class": cname, "concept": list(concept_names), "score": score,
                          "effect_size": eff, "mean_sim_wrong": mw, "mean_sim_correct": mr,
                          "n_wrong": nw, "n_correct": nr})
        f = f.sort_values("score", ascending=False, kind="stable", na_position="last")
        f["rank"] = f["score"].rank(ascending=False, method="first")
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------------------
# (b) attribute decodability


@dataclass
class DecodabilityResult:
    """Outcome of :func:`attribute_decodability`.

    Attributes:
        available: False when it could not be measured; ``reason`` says why.
        reason: empty when available.
        table: one row per representation (``before`` / ``after``): ``representation, balanced_accuracy,
            auroc, chance, n_train, n_test, n_attr_values``.
        notes: says when the probe was fitted on a sample of the train + val rows.
    """

    available: bool
    reason: str = ""
    table: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["representation", "balanced_accuracy", "auroc", "chance", "n_train", "n_test",
                 "n_attr_values"]))
    notes: list[str] = field(default_factory=list)


#: Labelled train + val rows above which the decodability probe is fitted on a seeded sample of this many: at
#: CelebA size (182,637 rows × 768) the float64 fit rows were 1.1 GB and each probe ≈ 20 s; the test rows are all
#: scored either way.
PROBE_FIT_MAX = 50_000


def attribute_decodability(emb_before: np.ndarray | None, emb_after: np.ndarray | None, a, split, seed: int = 0,
                           C: float = 1.0, fit_max: int | None = PROBE_FIT_MAX) -> DecodabilityResult:
    """How well a linear probe predicts the spurious attribute from the embeddings, before vs after.

    ``sklearn``'s ``StandardScaler`` (``partial_fit`` over row blocks) then ``LogisticRegression(C,
    class_weight="balanced")`` are fitted on the train and val rows and scored on the test rows; rows with
    ``a = -1`` are excluded. Above ``fit_max`` such rows the probe is fitted on a uniform sample of ``fit_max`` of
    them drawn with ``numpy.random.default_rng(seed)`` — the same rows before and after, so the two stay paired —
    and a note says so. Balanced accuracy (chance = 1 / number of attribute values) and AUROC (one-vs-rest
    macro for > 2 values, chance 0.5) are reported. Calibration that removes the attribute should bring both towards chance.
    Memory: one float64 copy of the fit rows (standardised in place), none of all N rows (:func:`float_rows`).

    Args:
        emb_before: [N, e] embeddings before calibration, or ``None`` (only the "after" row; a dashboard showing
            several methods' "after" computes the shared "before" row once).
        emb_after: [N, e'] embeddings after calibration, or ``None``.
        a: [N] int attribute index, -1 unknown.
        split: [N] ``"train" / "val" / "test"``.
        seed: LogisticRegression random_state.
        C: inverse regularisation strength.
        fit_max: labelled train + val rows above which the probe is fitted on a sample (``None``: never sample).

    Returns:
        :class:`DecodabilityResult`; ``available=False`` (never an exception) when there are no attribute
        labels, fewer than two attribute values in the fit rows, or no labelled test rows.

    Raises:
        MethodError: both embeddings are ``None``, lengths disagree, or ``fit_max`` < 2.
    """
    from clipcal.deps import require

    require("sklearn", "the attribute decodability probe (logistic regression)")
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 - sklearn import is slowish
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score  # noqa: PLC0415
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

    from clipcal import rowblocks

    if emb_before is None and emb_after is None:
        raise MethodError("attribute_decodability needs embeddings before or after calibration; both are None")
    if fit_max is not None and fit_max < 2:
        raise MethodError(f"fit_max must be at least 2, got {fit_max}")
    a = np.asarray(a).astype(int)
    split = np.asarray(split).astype(str)
    if len(split) != len(a):
        raise MethodError(f"attribute labels ({len(a)}) and split ({len(split)}) lengths differ")
    known = a >= 0
    if not known.any():
        return DecodabilityResult(False, "not available: no attribute labels")
    fit_rows = known & np.isin(split, ["train", "val"])
    test_rows = known & (split == "test")
    values = np.unique(a[fit_rows])
    if len(values) < 2:
        return DecodabilityResult(False, "not available: the train/val rows hold fewer than two attribute "
                                         "values")
    if not test_rows.any():
        return DecodabilityResult(False, "not available: no test rows with attribute labels")
    notes = []
    n_fit = int(fit_rows.sum())
    if fit_max is not None and n_fit > fit_max:
        keep = _seeded_sample(np.flatnonzero(fit_rows), fit_max, seed)
        fit_rows = np.zeros(len(a), dtype=bool)
        fit_rows[keep] = True
        notes.append(f"The probe is fitted on a random sample of {fit_max:,} of the {n_fit:,} labelled train + val "
                     f"images (seed {seed}), the same before and after; all {int(test_rows.sum()):,} labelled test "
                     "images are scored.")
        if len(np.unique(a[fit_rows])) < 2:  # a rare attribute value missed by the sample: fit on all rows
            fit_rows, notes = known & np.isin(split, ["train", "val"]), []
    reps = ([("before", emb_before)] if emb_before is not None else []) + (
        [("after", emb_after)] if emb_after is not None else [])
    rows = []
    for name, emb in reps:
        if len(emb) != len(a):
            raise MethodError(f"{name} embeddings have {len(emb)} rows, attributes {len(a)}")
        # float64 copies of the fit and test rows only, scaled in place a block at a time: one [n_fit, e] float64
        # array, where StandardScaler.fit_transform on a float64 copy of all rows held four (all rows, the fit
        # rows, the scaled rows, the variance's temporary); partial_fit's streamed mean and variance agree with
        # fit's to ~1e-15 relative
        x_fit, scaler = float_rows(emb, fit_rows), StandardScaler(copy=False)
        for sl in rowblocks.row_blocks(len(x_fit), x_fit.shape[1]):
            scaler.partial_fit(x_fit[sl])
        clf = LogisticRegression(C=C, class_weight="balanced", max_iter=2000, random_state=seed)
        clf.fit(_scale_in_place(scaler, x_fit), a[fit_rows])
        del x_fit
        at = a[test_rows]
        proba = clf.predict_proba(_scale_in_place(scaler, float_rows(emb, test_rows)))
        bacc = float(balanced_accuracy_score(at, clf.classes_[proba.argmax(1)]))
        present = np.unique(at)
        if len(present) < 2:
            auroc = float("nan")
        elif len(clf.classes_) == 2:
            auroc = float(roc_auc_score(at == clf.classes_[1], proba[:, 1]))
        else:
            cols = [list(clf.classes_).index(v) for v in present if v in clf.classes_]
            p = proba[:, cols] / np.maximum(proba[:, cols].sum(1, keepdims=True), 1e-12)
            auroc = float(roc_auc_score(at, p, multi_class="ovr", average="macro", labels=present))
        rows.append((name, bacc, auroc, 1.0 / len(values), int(fit_rows.sum()), int(test_rows.sum()),
                     int(len(values))))
    table = pd.DataFrame(rows, columns=["representation", "balanced_accuracy", "auroc", "chance", "n_train",
                                        "n_test", "n_attr_values"])
    return DecodabilityResult(True, "", table, notes)


# ---------------------------------------------------------------------------------------------------------
# (c) cluster discovery


@dataclass
class ClusterResult:
    """Outcome of :func:`discover_clusters`.

    Attributes:
        table: one row per (class, cluster): ``class_index, class, cluster, n, accuracy, n_wrong,
            majority_attribute, purity, ids`` (``ids``: list of sample ids, or row positions when no ids
            were given). Clusters are numbered within each class from the lowest accuracy (0) up.
        labels: [N] int cluster number within the sample's class, -1 for rows not clustered.
    """

    table: pd.DataFrame
    labels: np.ndarray
    notes: list[str] = field(default_factory=list)


#: Rows of one class above which k-means is fitted on a seeded sample of this many (every row is still assigned):
#: at CelebA size (172,616 not-blond rows × 768) the fit held two float64 copies of the class (2.1 GB) and took
#: ≈ 100 s of CPU; 50,000 rows keep the centres' sampling error small next to the clusters' spread.
CLUSTER_FIT_MAX = 50_000


def _seeded_sample(rows: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` of the ascending ``rows``, drawn uniformly without replacement, ascending — the large map's own
    sampler (:func:`clipcal.sampled_map.stratified_sample` with one stratum, ``numpy.random.default_rng(seed)``)."""
    from clipcal.sampled_map import stratified_sample  # noqa: PLC0415

    return rows[stratified_sample(None, len(rows), size, seed=seed)]


def _scale_in_place(scaler, x: np.ndarray) -> np.ndarray:
    """``x`` [n, e] float64 standardised by a fitted ``StandardScaler(copy=False)``, a row block at a time, in place."""
    from clipcal import rowblocks

    for sl in rowblocks.row_blocks(len(x), x.shape[1]):
        x[sl] = scaler.transform(x[sl])
    return x


def discover_clusters(emb: np.ndarray, y, correct, k: int = 4, seed: int = 0, a=None, sample_ids=None,
                      class_names: Sequence[str] | None = None, attr_names: Sequence[str] | None = None,
                      n_init: int = 4, fit_max: int | None = CLUSTER_FIT_MAX) -> ClusterResult:
    """Find hidden groups without labels: k-means within each class, with per-cluster accuracy.

    Embeddings are L2-normalised before ``sklearn.cluster.KMeans(n_clusters=k, n_init=n_init,
    random_state=seed)`` (12,000 × 768, k = 4, n_init = 4: ≈ 6 s of CPU). A class with more than ``fit_max`` rows
    is fitted on a uniform sample of ``fit_max`` of them drawn with ``numpy.random.default_rng(seed)``, and every
    row of the class is then assigned to its nearest centre (``KMeans.predict``, a row block at a time); a note
    says so. Memory: one float64 array of the largest class's (or its sample's) unit rows (:func:`float_rows`,
    clustered with ``copy_x=False``) and KMeans' variance temporary of the same size, none of all N rows. A cluster with
    low accuracy is a candidate hidden group; when attribute labels exist, ``majority_attribute`` and ``purity`` (share of the
    cluster's labelled rows with that attribute) show whether it matches the known spurious attribute.

    Args:
        emb: [N, e] embeddings.
        y: [N] int classes.
        correct: [N] bool, whether the model classified the sample correctly.
        k: clusters per class (clipped to the class size).
        seed: KMeans random_state.
        a: optional [N] int attribute (-1 unknown).
        sample_ids: optional [N] ids for the ``ids`` column.
        class_names, attr_names: optional names.
        n_init: k-means restarts (best inertia kept).
        fit_max: rows of one class above which the fit uses a sample (``None``: never sample).

    Returns:
        :class:`ClusterResult` (``notes``: one line per class fitted on a sample).

    Raises:
        MethodError: ``k`` < 1 or ``fit_max`` < ``k``.
    """
    from clipcal.deps import require

    require("sklearn", "cluster discovery (k-means)")
    from sklearn.cluster import KMeans  # noqa: PLC0415

    from clipcal import rowblocks

    if k < 1:
        raise MethodError(f"k must be ≥ 1, got {k}")
    if fit_max is not None and fit_max < k:
        raise MethodError(f"fit_max ({fit_max}) must be at least k ({k})")
    y = np.asarray(y).astype(int)
    correct = np.asarray(correct).astype(bool)
    a = np.full(len(y), -1) if a is None else np.asarray(a).astype(int)
    ids = np.arange(len(y)) if sample_ids is None else np.asarray(sample_ids).astype(str)
    labels = np.full(len(y), -1, dtype=np.int64)
    rows, notes = [], []
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        kk = int(min(k, len(idx)))
        name = class_names[cls] if class_names is not None else str(cls)
        if kk <= 1:
            lab = np.zeros(len(idx), dtype=int)
        elif fit_max is None or len(idx) <= fit_max:
            # the class's unit rows are the only [n, e] float64 array: built a block at a time, clustered without
            # KMeans' own copy (copy_x=False centres them in place; the labels are those of the copying fit)
            lab = KMeans(n_clusters=kk, n_init=n_init, random_state=seed, copy_x=False).fit_predict(
                float_rows(emb, idx, unit=True))
        else:
            fit_rows = _seeded_sample(idx, fit_max, seed)
            km = KMeans(n_clusters=kk, n_init=n_init, random_state=seed, copy_x=False).fit(
                float_rows(emb, fit_rows, unit=True))
            lab = np.empty(len(idx), dtype=np.int64)
            for sl in rowblocks.row_blocks(len(idx), np.shape(emb)[1]):
                lab[sl] = km.predict(float_rows(emb, idx[sl], unit=True))
            notes.append(f"{name}: k-means fitted on a random sample of {fit_max:,} of its {len(idx):,} images "
                         f"(seed {seed}); every image is assigned to its nearest cluster centre.")
        accs = np.array([correct[idx[lab == c]].mean() if (lab == c).any() else np.nan for c in range(kk)])
        order = np.argsort(accs, kind="stable")  # renumber: 0 = worst cluster
        remap = np.empty(kk, dtype=int)
        remap[order] = np.arange(kk)
        lab = remap[lab]
        labels[idx] = lab
        for c in range(kk):
            members = idx[lab == c]
            if not len(members):
                continue
            am = a[members]
            am = am[am >= 0]
            if len(am):
                vals, cnt = np.unique(am, return_counts=True)
                maj = int(vals[cnt.argmax()])
                purity = float(cnt.max() / len(am))
                maj_name = attr_names[maj] if attr_names is not None and maj < len(attr_names) else str(maj)
            else:
                maj_name, purity = "unknown", float("nan")
            rows.append((int(cls), name, c, len(members),
                         float(correct[members].mean()), int((~correct[members]).sum()), maj_name, purity,
                         ids[members].tolist()))
    table = pd.DataFrame(rows, columns=["class_index", "class", "cluster", "n", "accuracy", "n_wrong",
                                        "majority_attribute", "purity", "ids"])
    return ClusterResult(table, labels, notes)


# ---------------------------------------------------------------------------------------------------------
# (d) calibration set vs true groups


@dataclass
class CalibrationSetReport:
    """Outcome of :func:`calibration_set_vs_groups`.

    Attributes:
        table: per group: ``group, name, minority, n_in_set, share_in_set, n_in_pool, share_in_pool,
            enrichment`` (share in set ÷ share in pool; > 1 = over-represented).
        precision: share of the calibration set that is in minority groups (NaN if not available).
        recall: share of the pool's minority-group samples that the calibration set holds.
        n_set: calibration set size; pool: the splits it was drawn from.
        available: False without attribute labels (then ``table`` is per class and ``reason`` says why).
    """

    table: pd.DataFrame
    precision: float
    recall: float
    n_set: int
    pool: list[str]
    available: bool = True
    reason: str = ""


def minority_groups(table: pd.DataFrame, split: str | Sequence[str] = "train") -> list[int]:
    """Groups that are not the largest group of their class in ``split`` (e.g. waterbirds on land).

    Returns the sorted group indices; empty when the table has no attribute labels.
    """
    splits = [split] if isinstance(split, str) else list(split)
    t = table[table["split"].astype(str).isin(splits) & (table["group"] >= 0)]
    out = []
    for _, sub in t.groupby("y"):
        counts = sub["group"].value_counts()
        out += [int(g) for g, n in counts.items() if n < counts.max()]
    return sorted(out)


def calibration_set_vs_groups(calibration_set_indices, table: pd.DataFrame,
                              group_names: Sequence[str] | None = None,
                              minority: Sequence[int] | None = None) -> CalibrationSetReport:
    """The calibration set (CFR) or error set (JTT) against the true groups it was meant to find.

    Args:
        calibration_set_indices: integer row positions into ``table`` (``iloc``), or sample ids (str).
        table: canonical sample table (``sample_id, split, y, a, group``).
        group_names: names of groups 0…G-1 (``Benchmark.group_names()``).
        minority: groups counted as minority; default :func:`minority_groups` of the pool splits.

    Returns:
        :class:`CalibrationSetReport`. The pool is the set of splits the calibration set's rows come from
        (usually train): enrichment compares the set with that pool, and recall counts the pool's minority
        samples.

    Raises:
        DataError: indices out of range or unknown sample ids.
    """
    sel = np.asarray(list(calibration_set_indices))
    if sel.size and sel.dtype.kind in "iu":
        if sel.min() < 0 or sel.max() >= len(table):
            raise DataError(f"calibration-set indices out of range [0, {len(table)})",
                            hint="pass row positions into this table, or sample ids")
        rows = table.iloc[np.unique(sel)]
    else:
        ids = set(map(str, sel.tolist()))
        rows = table[table["sample_id"].astype(str).isin(ids)]
        if len(rows) != len(ids):
            raise DataError(f"{len(ids) - len(rows)} calibration-set sample ids are not in the table",
                            hint="the run and the benchmark table must come from the same benchmark")
    pool_splits = sorted(set(rows["split"].astype(str))) or ["train"]
    pool = table[table["split"].astype(str).isin(pool_splits)]
    n_set = len(rows)
    if not (pool["group"] >= 0).any():
        # No attribute labels: compare by class only.
        cnt_s = rows["y"].value_counts()
        cnt_p = pool["y"].value_counts()
        t = pd.DataFrame({"group": sorted(pool["y"].unique())})
        t["name"] = t["group"].astype(str)
        t["minority"] = False
        t["n_in_set"] = [int(cnt_s.get(g, 0)) for g in t["group"]]
        t["n_in_pool"] = [int(cnt_p.get(g, 0)) for g in t["group"]]
        t["share_in_set"] = t["n_in_set"] / max(n_set, 1)
        t["share_in_pool"] = t["n_in_pool"] / max(len(pool), 1)
        t["enrichment"] = t["share_in_set"] / t["share_in_pool"].where(t["share_in_pool"] > 0)
        t = t[["group", "name", "minority", "n_in_set", "share_in_set", "n_in_pool", "share_in_pool",
               "enrichment"]]
        return CalibrationSetReport(t, float("nan"), float("nan"), n_set, pool_splits, False,
                                    "not available: no attribute labels (shown per class instead)")
    minority = minority_groups(table, pool_splits) if minority is None else [int(g) for g in minority]
    groups = sorted(int(g) for g in pool["group"].unique() if g >= 0)
    cnt_s = rows["group"].value_counts()
    cnt_p = pool["group"].value_counts()
    known_pool = int((pool["group"] >= 0).sum())
    known_set = int((rows["group"] >= 0).sum())
    recs = []
    for g in groups:
        ns, npool = int(cnt_s.get(g, 0)), int(cnt_p.get(g, 0))
        ss, sp = ns / max(known_set, 1), npool / max(known_pool, 1)
        name = group_names[g] if group_names is not None and g < len(group_names) else str(g)
        recs.append((g, name, g in minority, ns, ss, npool, sp, ss / sp if sp > 0 else np.nan))
    t = pd.DataFrame(recs, columns=["group", "name", "minority", "n_in_set", "share_in_set", "n_in_pool",
                                    "share_in_pool", "enrichment"])
    in_min_set = int(rows["group"].isin(minority).sum())
    in_min_pool = int(pool["group"].isin(minority).sum())
    precision = in_min_set / known_set if known_set else float("nan")
    recall = in_min_set / in_min_pool if in_min_pool else float("nan")
    return CalibrationSetReport(t, float(precision), float(recall), n_set, pool_splits)


# ---------------------------------------------------------------------------------------------------------
# (e) worst-group gallery


@dataclass
class Gallery:
    """Outcome of :func:`worst_group_gallery`.

    Attributes:
        by: ``"group"`` or ``"class"`` (when no attribute labels exist).
        group: the group (or class) index shown.
        accuracy: its accuracy on the rows given; n: its size.
        items: misclassified samples, most confident first: ``sample_id, path, split, y, a, group, pred,
            confidence`` (probability of the predicted class), ``prob_true``.
    """

    by: str
    group: int
    accuracy: float
    n: int
    items: pd.DataFrame


def worst_group_gallery(table: pd.DataFrame, pred, probs, group: int | None = None, n: int = 24,
                        split: str | None = "test") -> Gallery:
    """The misclassified samples of the worst (or a chosen) group, sorted by confidence.

    Args:
        table: canonical sample table, rows aligned with ``pred`` and ``probs``.
        pred: [N] int predictions.
        probs: [N, K] float class probabilities.
        group: the group to show; ``None`` = the group with the lowest accuracy among the rows of
            ``split`` (ties: the smaller group index). Without attribute labels, classes take the place
            of groups (``by="class"``).
        n: at most this many items.
        split: restrict to this split (``None`` = all rows).

    Returns:
        :class:`Gallery`; ``items`` is empty when the group has no errors.
    """
    pred = np.asarray(pred).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    if len(pred) != len(table) or probs.shape[0] != len(table):
        raise MethodError(f"predictions ({len(pred)}) / probabilities ({probs.shape[0]}) do not match the "
                          f"table ({len(table)} rows)")
    t = table.reset_index(drop=True).copy()
    t["pred"] = pred
    t["confidence"] = probs[np.arange(len(t)), pred]
    t["prob_true"] = probs[np.arange(len(t)), t["y"].to_numpy()]
    t["correct"] = t["pred"] == t["y"]
    if split is not None:
        t = t[t["split"].astype(str) == split]
    by = "group" if (t["group"] >= 0).any() else "class"
    key = t["group"] if by == "group" else t["y"]
    t = t[key >= 0]
    key = key[key >= 0]
    acc = t.groupby(key.to_numpy())["correct"].mean()
    if group is None:
        if acc.empty:
            raise DataError(f"no rows in split {split!r} to pick a worst group from",
                            hint="choose another split")
        group = int(acc.sort_index().idxmin())
    m = (key == group).to_numpy()
    sub = t[m]
    wrong = sub[~sub["correct"]].sort_values("confidence", ascending=False, kind="stable").head(int(n))
    if "split" in wrong and isinstance(wrong["split"].dtype, pd.CategoricalDtype):
        wrong = wrong.assign(split=wrong["split"].astype(str))
    items = wrong.drop(columns=["correct"]).reset_index(drop=True)
    return Gallery(by, int(group), float(sub["correct"].mean()) if len(sub) else float("nan"), int(len(sub)),
                   items)
