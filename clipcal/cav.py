"""Concepts from example images: concept activation vectors (CAV) and TCAV scores, for every backbone.

A *concept* is a set of images (the demo's bird-free background photos, a folder, or a selection of the
benchmark's own images). A linear probe (scikit-learn ``LogisticRegression``, seeded) separates the concept's
embeddings from random images of the benchmark; its unit weight vector is the CAV — the direction in which
the representation "means" the concept. Source: Kim et al., "Interpretability Beyond Feature Attribution:
Quantitative Testing with Concept Activation Vectors (TCAV)", ICML 2018.

Where each CAV lives (the two spaces of a run):

* **before** — the backbone's own L2-normalised image embedding ``z`` (``FeatureData.embeddings``); concept
  images outside the benchmark are embedded with the same backbone through :func:`clipcal.embed.embed_benchmark`
  (and the store).
* **after** — a method's calibrated embedding ``z' = normalize(h W)`` (``MethodResult.embeddings_after``). A run
  stores ``z'`` per sample and the fitted ``W`` (:meth:`clipcal.runs.Run.fitted`): concept images outside the
  benchmark go through that ``W`` (:func:`stored_last_layer`); for runs stored before fitted layers were kept,
  ``W`` is recovered from the run's own pairs ``(h, z')`` by least squares (:func:`recover_last_layer`, checked on
  held-out rows and refused when it does not reproduce them); a selection of the benchmark's images takes its
  rows of ``z'`` directly.

Scores reported (:func:`cav_report`):

* **per-group concept score** — mean cosine of each group's embeddings with the CAV (averaged over the CAVs of
  the random runs), before (CAV learned in ``z``) and after (CAV learned in ``z'``), and the share of the group
  the probe puts on the concept side;
* **TCAV score** of class k — the fraction of class-k inputs whose class score rises along the CAV: the
  directional derivative ``∇_r log p_k(x) · v`` of the method's log-probability w.r.t. its representation r
  (``z'`` for last-layer methods, ``z`` for zero-shot and DFR). Every method here is softmax over logits linear
  in r, so ``∇_r log p_k = g_k − Σ_j p_j g_j`` with ``g_j`` the gradient of logit j; the logit differences are
  recovered exactly from the run's stored probabilities (:func:`recover_linear_head`, checked on held-out rows).
  The log-probability is used because softmax logits are defined only up to a shift per input; for two classes
  its sign is that of the class's log-odds. Significance as in the paper: TCAV scores of CAVs from ``n_random``
  different random counterexample sets vs those of random-vs-random CAVs, two-sided ``scipy.stats.ttest_ind``.

Numbers the tool cannot vouch for are withheld with the reason: fewer than :data:`MIN_CONCEPT_IMAGES` concept
images, a probe near chance on held-out images (:data:`MIN_PROBE_ACCURACY`), a head or last layer that could not
be recovered. This module never imports streamlit or torch.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from clipcal.concepts import float_rows
from clipcal.errors import DataError, MethodError

#: (title, markdown) shown on the Spurious attributes page next to the section.
TEACHING = (
    "Concepts from images: what is a CAV?",
    "A **concept activation vector** (CAV; Kim et al., ICML 2018) names a direction in the embedding space by "
    "examples instead of words: show it images of the concept (e.g. water backgrounds without birds) and random "
    "images of the benchmark, train a linear probe to tell them apart, and take the probe's weight direction. "
    "This needs no text tower, so it works for every backbone.\n\n"
    "**How to read the scores.** *Probe accuracy* on held-out images first: near 50 % means the concept is not "
    "linearly separable in this space and nothing else is shown. *Per-group concept score* = mean cosine "
    "between a group's embeddings and the CAV: if the water groups score high and the land groups low, the "
    "representation encodes the background; after a calibration that removed it, the gap between groups "
    "shrinks. *TCAV score* of a class = share of its images whose class probability rises when the "
    "representation moves along the CAV: near 1 the method's decision for that class leans on the concept, "
    "near 0 the concept pushes away from it. It counts only if it differs significantly (two-sided t-test, "
    "p < 0.05) from the TCAV scores of random directions, each learned from two random image sets. With a "
    "linear head on the representation each direction moves all images of a two-class problem the same way, "
    "so single scores are 0 or 1 and the test is over the repeated random runs.",
)

#: Fewer concept images than this: no CAV is learned (the probe would fit noise).
MIN_CONCEPT_IMAGES = 10
#: Mean held-out accuracy of the concept probes below this (chance = 0.5): "not linearly separable".
MIN_PROBE_ACCURACY = 0.7
#: Random counterexample sets (and random-vs-random CAVs) per concept; the paper uses tens to hundreds.
DEFAULT_N_RANDOM = 10
#: Significance level of the TCAV t-test.
ALPHA = 0.05
#: A recovered last layer must reproduce the stored calibrated embeddings of held-out rows to this cosine
#: (5th percentile), and concept features must lie in the span of the rows it was fitted on to this share.
LAST_LAYER_MIN_COS = 0.99
#: Image file endings read from a concept folder.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------------------------------------
# the probe


@dataclass
class CAV:
    """One concept activation vector.

    Attributes:
        vector: [e] float64 unit vector, pointing from the counterexamples to the concept.
        intercept: probe bias in units of the unit vector (``x · vector + intercept > 0`` = concept side).
        accuracy: probe accuracy on held-out concept and counterexample images (balanced sets: chance 0.5).
    """

    vector: np.ndarray
    intercept: float
    accuracy: float

    def concept_side(self, x: np.ndarray) -> np.ndarray:
        """[N] bool: which rows of ``x`` [N, e] the probe puts on the concept side."""
        return np.asarray(x, dtype=np.float64) @ self.vector + self.intercept > 0


def learn_cav(concept: np.ndarray, counter: np.ndarray, seed: int = 0, test_size: float = 0.3,
              C: float = 1.0) -> CAV:
    """Fit a linear probe concept-vs-counterexamples and return its normalised weight vector (the CAV).

    ``sklearn.linear_model.LogisticRegression(C, solver="liblinear", random_state=seed)`` on a stratified
    ``1 - test_size`` share of the rows (``train_test_split``, seeded); accuracy is measured on the rest.
    (liblinear: ~13× faster than lbfgs for these small binary problems, measured on 80 × 24 rows.)

    Args:
        concept: [n, e] embeddings of the concept images.
        counter: [m, e] embeddings of counterexamples (random images), same space.
        seed: split and solver seed.
        test_size: held-out share.
        C: inverse L2 strength.

    Returns:
        :class:`CAV`.

    Raises:
        MethodError: shapes disagree, or fewer than 2 rows on a side.
    """
    from clipcal.deps import require

    require("sklearn", "concept activation vectors (logistic-regression probe)")
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 - slowish import
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    a, b = np.asarray(concept, dtype=np.float64), np.asarray(counter, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise MethodError(f"concept {a.shape} and counterexample {b.shape} embeddings must be [n, e] in one space")
    if len(a) < 2 or len(b) < 2:
        raise MethodError(f"a probe needs ≥ 2 images on each side, got {len(a)} concept and {len(b)} others")
    x = np.concatenate([a, b])
    y = np.r_[np.ones(len(a), int), np.zeros(len(b), int)]
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)
    clf = LogisticRegression(C=C, solver="liblinear", max_iter=2000, random_state=seed).fit(xtr, ytr)
    w = clf.coef_[0]
    norm = float(np.linalg.norm(w))
    if norm == 0:
        return CAV(np.zeros_like(w), 0.0, float((clf.predict(xte) == yte).mean()))
    return CAV(w / norm, float(clf.intercept_[0]) / norm, float((clf.predict(xte) == yte).mean()))


# ---------------------------------------------------------------------------------------------------------
# what the run does not store: the method's head and last layer, recovered from what it does store


@dataclass
class HeadFit:
    """Outcome of :func:`recover_linear_head`.

    Attributes:
        grad: [K, e] gradient of logit_k − logit_0 w.r.t. the representation (row 0 is zero).
        ok: the fit reproduces held-out rows' log-probability ratios (``reason`` says otherwise).
        rmse: held-out root-mean-square error of the log ratios (nats); reason: empty when ok.
    """

    grad: np.ndarray
    ok: bool
    rmse: float
    reason: str = ""


def _holdout(n: int, every: int = 10) -> np.ndarray:
    m = np.zeros(n, bool)
    m[::every] = True
    return m


def recover_linear_head(rep: np.ndarray, probs: np.ndarray, holdout_every: int = 10) -> HeadFit:
    """The method's logit differences as a linear function of its representation, from its stored outputs.

    Every method of :mod:`clipcal.methods` is ``softmax(r Gᵀ + b)`` on a representation r (``z`` or ``z'``), so
    ``log p_k − log p_0 = (g_k − g_0) · r + (b_k − b_0)`` exactly; ``numpy.linalg.lstsq`` on 9 rows of 10 recovers
    ``g_k − g_0`` and the 10th row checks it. Rows where a probability underflowed to 0 are left out.

    Args:
        rep: [N, e] the representation the method's head reads.
        probs: [N, K] the method's stored class probabilities.
        holdout_every: every this-many-th row is held out for the check.

    Memory: the [fit rows, e + 1] float64 design matrix (and ``lstsq``'s own copy of it), built a block at a time;
    no float64 copy of all N rows.

    Returns:
        :class:`HeadFit`; ``ok`` when the held-out RMSE is ≤ 1 % of the log ratios' spread (or ≤ 1e-4 nats).
    """
    r = rep if hasattr(rep, "shape") else np.asarray(rep)
    p = np.asarray(probs, dtype=np.float64)
    if r.shape[0] != p.shape[0]:
        raise MethodError(f"representation has {r.shape[0]} rows, probabilities {p.shape[0]}")
    k, e = p.shape[1], r.shape[1]
    usable = (p > 0).all(axis=1) & np.isfinite(p).all(axis=1)
    lr = np.log(np.where(usable[:, None], p, 1.0))
    target = lr[:, 1:] - lr[:, :1]  # [N, K-1]
    ho = _holdout(len(r), holdout_every)
    fit, test = usable & ~ho, usable & ho
    grad = np.zeros((k, e))
    if fit.sum() < 2 or test.sum() < 1:
        return HeadFit(grad, False, float("nan"), "too few rows with usable probabilities to recover the head")

    from clipcal import rowblocks

    def design(rows):  # [rows, e + 1] float64 = [r, 1] of those rows only, read a block at a time
        idx = np.flatnonzero(rows)
        x = np.ones((len(idx), e + 1))
        for sl in rowblocks.row_blocks(len(idx), e + 1):
            x[sl, :e] = float_rows(r, idx[sl])
        return x

    coef, *_ = np.linalg.lstsq(design(fit), target[fit], rcond=None)
    grad[1:] = coef[:-1].T
    err = design(test) @ coef - target[test]
    rmse = float(np.sqrt(np.mean(err ** 2)))
    spread = float(target[test].std())
    ok = rmse <= max(1e-2 * spread, 1e-4)
    why = "" if ok else (f"the method's scores are not reproduced by a linear head on its representation "
                         f"(held-out RMSE {rmse:.3g} nats vs spread {spread:.3g}); fewer rows than dimensions?")
    return HeadFit(grad, ok, rmse, why)


@dataclass
class LastLayerFit:
    """Outcome of :func:`recover_last_layer`.

    Attributes:
        W: [d, e] last layer up to a global scale (``normalize(h W)`` is what matters), or ``None``.
        basis: [r, d] orthonormal basis of the fitted rows' feature span (to check new features lie in it).
        heldout_cos: 5th-percentile cosine between ``normalize(h W)`` and the stored ``z'`` of held-out rows.
        ok, reason: whether ``W`` may be applied to new images, and why not.
        source: ``"stored"`` (the run's own fitted ``W``, exact) or ``"recovered"`` (least squares).
    """

    W: np.ndarray | None
    basis: np.ndarray | None
    heldout_cos: float
    ok: bool
    reason: str = ""
    source: str = "recovered"

    def apply(self, h: np.ndarray) -> tuple[np.ndarray | None, str]:
        """``(normalize(h W), "")`` for new features [n, d], or ``(None, reason)`` when the fit is not usable or
        the features leave the span it was fitted on (their share inside < :data:`LAST_LAYER_MIN_COS`)."""
        if not self.ok:
            return None, self.reason
        h = np.asarray(h, dtype=np.float64)
        if self.basis is None:  # fitted around a prior: W is its starting layer outside the fitted span
            return _unit(h @ self.W), ""
        inside = np.linalg.norm(h @ self.basis.T, axis=1) / np.maximum(np.linalg.norm(h, axis=1), 1e-12)
        if inside.min() < LAST_LAYER_MIN_COS:
            return None, (f"the concept images' features leave the span of the benchmark's features (share inside "
                          f"{inside.min():.3f}), so the recovered last layer is not determined for them")
        return _unit(h @ self.W), ""


def recover_last_layer(h: np.ndarray, z_after: np.ndarray, prior: np.ndarray | None = None, iters: int = 10,
                       holdout_every: int = 10) -> LastLayerFit:
    """Recover the calibrated last layer W from the run's stored pairs ``z' = normalize(h W)``.

    Alternating least squares on ``h_i W = c_i z'_i`` (unknown per-row norms ``c_i``): ``W`` by the pseudo-inverse
    of the fitted rows' features (``numpy.linalg.svd``), then ``c_i = (h_i W) · z'_i``. With ``prior`` (the
    layer every method starts from: the backbone's projection, or the identity) ``W = prior + Δ`` with Δ of least
    norm, i.e. W keeps its starting value outside the span of the features — which is what SGD does: every update
    of W is a sum of outer products with training features (weight decay only shrinks it uniformly). Without a
    prior, W is determined only on that span and new features must lie in it. With a prior and fewer independent
    rows than dimensions every choice of ``c`` fits exactly; the one giving the smallest Δ is taken (on the demo with
    Lite0, 1,080 rows × 1,280 dims, the ERM layer then reproduced held-out rows to cosine 0.999999, against 0.9925
    for ``c = ‖h · prior‖``). Every ``holdout_every``-th row is
    held out and must be reproduced (5th-percentile cosine ≥ :data:`LAST_LAYER_MIN_COS`).

    Args:
        h: [N, d] frozen pre-projection features (``FeatureData.features``).
        z_after: [N, e] the method's calibrated embeddings, same rows.
        prior: [d, e] starting layer, or ``None``.

    Returns:
        :class:`LastLayerFit` (``basis`` is ``None`` when a prior covers the rest of the space).
    """
    h = np.asarray(h, dtype=np.float64)
    z = _unit(z_after)
    if h.shape[0] != z.shape[0]:
        raise MethodError(f"features have {h.shape[0]} rows, calibrated embeddings {z.shape[0]}")
    ho = _holdout(len(h), holdout_every)
    hf, zf = h[~ho], z[~ho]
    if len(hf) < 2 or not ho.any():
        return LastLayerFit(None, None, float("nan"), False, "too few rows to recover the last layer")
    u, s, vt = np.linalg.svd(hf, full_matrices=False)
    r = int((s > s[0] * 1e-6).sum()) if len(s) and s[0] > 0 else 0
    if r == 0:
        return LastLayerFit(None, None, float("nan"), False, "the features are all zero")
    pinv = vt[:r].T @ ((u[:, :r] / s[:r]).T)  # [d, n_fit]
    P = None if prior is None else np.asarray(prior, dtype=np.float64)
    c = np.linalg.norm(hf if P is None else hf @ P, axis=1)
    if P is not None and r == len(hf):
        # fewer independent rows than dimensions: any row norms c fit exactly, so take the c whose Δ is smallest
        # — min_c ‖A (c ⊙ z − h P)‖ with A = pinv(h): normal equations (G ∘ z zᵀ) c = rowdot(G h P, z), G = (h hᵀ)⁺
        G = (u[:, :r] / s[:r] ** 2) @ u[:, :r].T
        c = np.linalg.lstsq(G * (zf @ zf.T), np.einsum("ij,ij->i", G @ (hf @ P), zf), rcond=None)[0]
        iters = 0
        W = P + pinv @ (c[:, None] * zf - hf @ P)
    for _ in range(iters):
        W = pinv @ (c[:, None] * zf) if P is None else P + pinv @ (c[:, None] * zf - hf @ P)
        c = np.einsum("ij,ij->i", hf @ W, zf)
        if P is None:
            c /= max(abs(c.mean()), 1e-12)  # no prior: fix the free global scale
    cos = np.einsum("ij,ij->i", _unit(h[ho] @ W), z[ho])
    q = float(np.quantile(cos, 0.05))
    ok = q >= LAST_LAYER_MIN_COS
    why = "" if ok else (f"the run's calibrated embeddings could not be reproduced from the features by one "
                         f"linear layer (held-out cosine {q:.3f} < {LAST_LAYER_MIN_COS}); the run does not store W")
    return LastLayerFit(W if ok else None, vt[:r] if P is None else None, q, ok, why)


# ---------------------------------------------------------------------------------------------------------
# TCAV


def tcav_scores(rep: np.ndarray, probs: np.ndarray, grad: np.ndarray, k: int, cavs) -> np.ndarray:
    """TCAV score of class ``k`` for each CAV: share of the rows whose ``log p_k`` rises along the CAV.

    ``S_k(x) = ∇_r log p_k(x) · v = a_k − Σ_j p_j(x) a_j`` with ``a = G v`` (G: :attr:`HeadFit.grad`).

    Args:
        rep: [n, e] representation of the class's inputs (only its row count is used: the head is linear).
        probs: [n, K] the method's probabilities of those rows.
        grad: [K, e] logit gradients (any common offset cancels).
        k: the class.
        cavs: CAVs (:class:`CAV` or [e] vectors).

    Returns:
        [len(cavs)] float64 in [0, 1] (NaN when there are no rows).
    """
    p = np.asarray(probs, dtype=np.float64)
    if len(p) == 0:
        return np.full(len(cavs), np.nan)
    out = []
    for v in cavs:
        a = np.asarray(grad, dtype=np.float64) @ np.asarray(getattr(v, "vector", v), dtype=np.float64)
        s = a[k] - p @ a
        out.append(float((s > 0).mean()))
    return np.asarray(out)


def tcav_test(concept: np.ndarray, random: np.ndarray) -> float:
    """Two-sided p-value of ``scipy.stats.ttest_ind`` between the TCAV scores of concept CAVs and of random
    CAVs (Kim et al. 2018, §3.3); 1.0 when both sets are one identical constant, 0.0 when they are two
    different constants (scipy returns NaN / an infinite statistic there)."""
    from clipcal.deps import require

    require("scipy", "the TCAV significance test (scipy.stats.ttest_ind)")
    from scipy import stats  # noqa: PLC0415

    a, b = np.asarray(concept, float), np.asarray(random, float)
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return 1.0 if a[0] == b[0] else 0.0
    with warnings.catch_warnings():  # "precision loss" when the scores are nearly constant: the p-value stands
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b).pvalue)


# ---------------------------------------------------------------------------------------------------------
# concept images


@dataclass
class ConceptImages:
    """A concept's images in the backbone's spaces.

    Attributes:
        name: what the page calls it (``"water backgrounds"``, a folder, ``"selection (24 images)"``).
        embeddings: [n, e] backbone embeddings z.
        features: [n, d] pre-projection features h (to apply a recovered last layer), or ``None``.
        rows: [n] row positions in the run's FeatureData when the images are the benchmark's own, else ``None``.
        skipped: ``sample_id, reason`` of unreadable images.
    """

    name: str
    embeddings: np.ndarray
    features: np.ndarray | None = None
    rows: np.ndarray | None = None
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["sample_id", "reason"]))

    def __len__(self) -> int:
        return len(self.embeddings)


def folder_benchmark(folder: str | os.PathLike, name: str | None = None, max_images: int = 1000):
    """A one-class :class:`~clipcal.data.base.Benchmark` of the images under ``folder`` (recursive, sorted), so
    they embed through :func:`clipcal.embed.embed_benchmark` and the store like any benchmark.

    Raises:
        DataError: the folder does not exist or holds fewer than :data:`MIN_CONCEPT_IMAGES` image files
            (by ending, :data:`IMAGE_SUFFIXES`).
    """
    from clipcal.data.base import Benchmark

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"concept folder {root} does not exist or is not a folder",
                        hint="give the path of a folder holding example images of the concept")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)[:max_images]
    if len(files) < MIN_CONCEPT_IMAGES:
        raise DataError(f"concept folder {root} holds {len(files)} image file(s) ({', '.join(IMAGE_SUFFIXES)}); "
                        f"a concept needs at least {MIN_CONCEPT_IMAGES}",
                        hint="add more example images of the concept to the folder")
    rel = [p.relative_to(root).as_posix() for p in files]
    table = pd.DataFrame({"sample_id": rel, "path": rel, "split": "train", "y": 0})
    return Benchmark(name=f"concept:{name or root.name}", root=root.resolve(), table=table,
                     class_names=["concept"], params={"folder": str(root.resolve())})


def embed_concept_folder(folder, backbone, store=None, name: str | None = None, progress=None,
                         cancel=None) -> ConceptImages:
    """Embed the images of a folder with ``backbone`` (loaded model or spec) through the store
    (:func:`folder_benchmark`, :func:`clipcal.embed.embed_benchmark`; kept, so a second call is instant).

    Raises:
        DataError: as :func:`folder_benchmark`; NothingEmbeddedError when no image could be read.
    """
    from clipcal.embed import embed_benchmark

    bench = folder_benchmark(folder, name=name)
    emb = embed_benchmark(bench, backbone, store=store, progress=progress, cancel=cancel, num_workers=0)
    return ConceptImages(name or Path(folder).name, np.asarray(emb.embeddings), np.asarray(emb.features),
                         None, emb.skipped)


def demo_background_concept(kind: str, backbone, store=None, n: int = 50, image_size: int = 224,
                            progress=None, cancel=None) -> ConceptImages:
    """The demo's bird-free background photos of one kind (``"water"`` / ``"land"``) as a concept: ``n`` crops
    (:func:`clipcal.data.demo.build_background_crops`) embedded with ``backbone`` through the store."""
    from clipcal.data.demo import build_background_crops

    folder = build_background_crops(kind, n=n, image_size=image_size)
    return embed_concept_folder(folder, backbone, store=store, name=f"{kind} backgrounds (demo photos, no birds)",
                                progress=progress, cancel=cancel)


def selection_concept(fd, ids, name: str | None = None) -> ConceptImages:
    """The benchmark's own images ``ids`` (e.g. a lasso selection) as a concept, in the run's rows.

    Raises:
        DataError: ids that are not rows of this run (the first few named).
    """
    pos = {s: i for i, s in enumerate(np.asarray(fd.sample_ids).astype(str))}
    ids = list(dict.fromkeys(str(i) for i in ids))
    missing = [i for i in ids if i not in pos]
    if missing:
        raise DataError(f"{len(missing)} selected sample id(s) are not in this run, e.g. {missing[:3]}",
                        hint="select on the Representations page of the same run, or upload its selection CSV")
    rows = np.asarray([pos[i] for i in ids], dtype=np.int64)
    return ConceptImages(name or f"selection ({len(rows)} images)", fd.embeddings[rows], fd.features[rows], rows)


def ids_from_csv(data: bytes | str, source: str = "the uploaded file") -> list[str]:
    """Sample ids from a selection CSV (the Representations page's download): its ``sample_id`` column, in order.

    Raises:
        DataError: not a CSV with a ``sample_id`` column.
    """
    import io

    text = data.decode("utf-8-sig", errors="replace") if isinstance(data, bytes) else data
    try:
        t = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except Exception as err:  # noqa: BLE001 - any parse failure is the same user error
        raise DataError(f"{source} is not a readable CSV ({err})",
                        hint="upload the selection CSV downloaded from the Representations page") from None
    if "sample_id" not in t.columns:
        raise DataError(f"{source} has no sample_id column (columns: {list(t.columns)[:8]})",
                        hint="upload the selection CSV downloaded from the Representations page")
    return [i for i in t["sample_id"].str.strip() if i]


def concept_from_source(source: dict, fd=None, backbone=None, store=None, progress=None,
                        cancel=None) -> ConceptImages:
    """The concept images a source names: ``{"kind": "demo", "background": "water" | "land", "n": 50,
    "image_size": 224}``, ``{"kind": "folder", "path": str}`` or ``{"kind": "selection", "ids": [...]}`` (rows of
    ``fd``). ``backbone`` (spec or loaded model) embeds demo / folder images through ``store``.

    Raises:
        DataError: unknown kind, or as :func:`folder_benchmark` / :func:`selection_concept`.
    """
    kind = source.get("kind")
    if kind == "selection":
        return selection_concept(fd, source.get("ids") or [], name=source.get("name"))
    if kind == "demo":
        return demo_background_concept(source["background"], backbone, store=store, n=int(source.get("n", 50)),
                                       image_size=int(source.get("image_size", 224)), progress=progress,
                                       cancel=cancel)
    if kind == "folder":
        return embed_concept_folder(source["path"], backbone, store=store, progress=progress, cancel=cancel)
    raise DataError(f"unknown concept source {kind!r}", hint="use demo, folder or selection")


def job_key(run_id: str, method: str, source: dict, counter_source: dict | None, n_random: int) -> str:
    """Key of the dashboard job computing one concept report (one running job per key, :mod:`clipcal.jobs`)."""
    import hashlib
    import json

    blob = json.dumps([source, counter_source, int(n_random)], sort_keys=True, default=str)
    return f"cav:{run_id}:{method}:{hashlib.sha1(blob.encode()).hexdigest()[:12]}"


def concept_report_job(fd, result, source: dict, counter_source: dict | None = None, backbone=None, store=None,
                       n_random: int = DEFAULT_N_RANDOM, seed: int = 0, progress=None, cancel=None) -> CAVReport:
    """Everything the page's job does: the concept (and counter) images from their sources
    (:func:`concept_from_source`), then :func:`cav_report`. ``progress(message)`` is told each stage."""
    def say(msg):
        if progress is not None:
            progress(msg)

    say("embedding the concept images")
    concept = concept_from_source(source, fd, backbone, store, cancel=cancel)
    counter = None
    if counter_source is not None:
        say("embedding the counterexample images")
        counter = concept_from_source(counter_source, fd, backbone, store, cancel=cancel)
    say(f"learning {2 * n_random} probes per space and testing TCAV")
    return cav_report(fd, result, concept, n_random=n_random, seed=seed, counter=counter)


# ---------------------------------------------------------------------------------------------------------
# the report


@dataclass
class CAVReport:
    """Outcome of :func:`cav_report`.

    Attributes:
        concept: the concept's name; method: the method whose predictions / calibrated embeddings are used.
        n_concept: concept images used; n_random: random counterexample sets (= random-vs-random CAVs).
        probe: one row per space (``space`` = before / after): ``space, accuracy, accuracy_sd, separable``.
        groups: per group (per class without attribute labels) of ``split``: ``group, name, n,
            score_before, score_after, share_before, share_after`` — mean cosine with the CAV and share on the
            concept side (``after`` NaN where there is no after); NaN where that space is not separable.
        tcav: per class: ``class_index, class, n, space, tcav, tcav_sd, random_tcav, random_sd, p_value,
            significant, n_random, shown, reason`` — ``tcav`` etc. NaN and ``shown`` False where not vouched for.
        notes: what was assumed or withheld, one sentence each.
        split: the split the scores are computed on.
    """

    concept: str
    method: str
    n_concept: int
    n_random: int
    probe: pd.DataFrame
    groups: pd.DataFrame
    tcav: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    split: str = "test"


def _draws(n_c: int, pool_size: int, m: int, n_random: int, rng, counter: bool):
    """Per run: (concept rows, counterexample rows, random set A, random set B). Without a counter set, the
    counterexamples and both random sets are drawn from the pool (A is the run's counterexample set, as in the
    paper); with one, concept and counter rows are subsampled and A / B are a random split of their union."""
    out = []
    for _ in range(n_random):
        ci = np.sort(rng.choice(n_c, size=m, replace=False))
        if counter:
            ki = np.sort(rng.choice(pool_size, size=m, replace=False))
            both = rng.permutation(2 * m)  # positions in [concept subsample; counter subsample]
            out.append((ci, ki, both[:m], both[m:]))
        else:
            ab = rng.choice(pool_size, size=2 * m, replace=False)
            out.append((ci, ab[:m], ab[:m], ab[m:]))
    return out


def _space_cavs(concept: np.ndarray, pool: np.ndarray, draws, seed: int, relative: bool):
    """Concept CAVs (concept vs counterexamples) and random CAVs (random set B vs A) in one space."""
    con, rnd = [], []
    for i, (ci, ki, ra, rb) in enumerate(draws):
        con.append(learn_cav(concept[ci], pool[ki], seed=seed + i))
        union = np.concatenate([concept[ci], pool[ki]]) if relative else pool
        rnd.append(learn_cav(union[rb], union[ra], seed=seed + i))
    return con, rnd


def stored_last_layer(result) -> LastLayerFit | None:
    """The method's own fitted last layer ``W`` [d, e] as stored with the run (``MethodResult.fitted``), or
    ``None`` for runs stored before fitted layers were kept (then :func:`recover_last_layer` is used)."""
    fitted = getattr(result, "fitted", None)
    if fitted is None or getattr(fitted, "W", None) is None:
        return None
    return LastLayerFit(np.asarray(fitted.W, dtype=np.float64), None, 1.0, True, source="stored")


def start_layer(fd) -> np.ndarray | None:
    """The last layer every method starts from: the backbone's projection (``projection == "exact"``), the
    identity for an identity-initialised layer (d = e), else ``None``."""
    if fd.proj_weight is not None:
        return np.asarray(fd.proj_weight, dtype=np.float64)
    return np.eye(fd.feature_dim) if fd.feature_dim == fd.embed_dim else None


def _after_embeddings(fd, result, images: ConceptImages, fit: LastLayerFit | None, notes: list[str]):
    """The images' embeddings in the method's calibrated space (or None, with a note), and the fit used."""
    z_after = result.embeddings_after
    if images.rows is not None:
        return np.asarray(z_after)[images.rows], fit
    if fit is None:
        fit = stored_last_layer(result) or recover_last_layer(fd.features, z_after, prior=start_layer(fd))
    after, why = fit.apply(images.features) if images.features is not None else (None, "no features")
    if after is None:
        notes.append(f"'after' not shown for {images.name}: {why}")
    return after, fit


def cav_report(fd, result, concept: ConceptImages, n_random: int = DEFAULT_N_RANDOM, seed: int = 0,
               split: str = "test", last_layer: LastLayerFit | None = None,
               counter: ConceptImages | None = None) -> CAVReport:
    """Concept scores per group before / after calibration and TCAV per class, with significance.

    Counterexamples, ``n_random`` runs, seeded (m = set size):

    * default — random images of the benchmark: each run draws 2m of the run's rows that are not concept images
      (m = min(concept size, pool / 2)); the first m are the concept CAV's counterexamples, and a random CAV
      separates the other m from them (Kim et al. 2018: random-vs-random CAVs);
    * ``counter`` given — a *relative* CAV (the paper's "concept A vs concept B", e.g. water vs land
      backgrounds, both without birds, so the probe cannot learn "no bird"): each run subsamples m of each set
      (m = the smaller set), and a random CAV separates a random half of their union from the other half.

    The same draws serve both spaces, so before and after differ only in the representation.

    Args:
        fd: the run's :class:`~clipcal.methods.base.FeatureData` (rows = the run's rows).
        result: the method's :class:`~clipcal.methods.base.MethodResult`.
        concept: :class:`ConceptImages` (from :func:`selection_concept`, :func:`embed_concept_folder`,
            :func:`demo_background_concept`).
        n_random: runs (≥ 2 for a t-test; the paper uses ≥ 10).
        seed: seed of the draws and probes.
        split: rows the group scores and TCAV are computed on.
        last_layer: a :func:`recover_last_layer` fit of this method (computed here when needed and not given).
        counter: counterexample images for a relative CAV, or ``None`` (random benchmark images).

    Returns:
        :class:`CAVReport`.

    Raises:
        DataError: fewer than :data:`MIN_CONCEPT_IMAGES` concept (or counter) images, or too few benchmark
            images to draw random sets from.
        MethodError: concept embeddings of another dimension than the benchmark's (another backbone).
    """
    notes: list[str] = []
    n_c = len(concept)
    for images in (concept, counter):
        if images is None:
            continue
        if len(images) < MIN_CONCEPT_IMAGES:
            raise DataError(f"the concept {images.name!r} has {len(images)} usable image(s); a CAV needs at least "
                            f"{MIN_CONCEPT_IMAGES}", hint="add example images (or select more points)")
        if images.embeddings.shape[1] != fd.embeddings.shape[1]:
            raise MethodError(f"concept embeddings have dimension {images.embeddings.shape[1]}, the run's "
                              f"{fd.embeddings.shape[1]}", hint="embed the concept images with the run's backbone")
    if n_random < 2:
        raise MethodError(f"n_random must be ≥ 2 for the t-test, got {n_random}")
    if counter is None:
        pool_rows = np.setdiff1d(np.arange(fd.n), concept.rows if concept.rows is not None else [])
        m = int(min(n_c, len(pool_rows) // 2))
        if m < MIN_CONCEPT_IMAGES:
            raise DataError(f"only {len(pool_rows)} benchmark images besides the concept: too few for random sets "
                            f"of {MIN_CONCEPT_IMAGES}", hint="use a larger benchmark or a smaller selection")
        pool_size = len(pool_rows)
    else:
        m = int(min(n_c, len(counter)))
        pool_size = len(counter)
    draws = _draws(n_c, pool_size, m, n_random, np.random.default_rng(seed), counter is not None)
    if max(n_c, pool_size if counter is not None else 0) > m:
        notes.append(f"each run uses {m} images of each set (sets of equal size)")

    # spaces: before = backbone embedding z; after = the method's calibrated z' (if it changes the embeddings)
    if counter is None:  # only the pool rows the draws use are read; the draws renumbered into them
        used = np.unique(np.concatenate([np.r_[ki, ra, rb] for _, ki, ra, rb in draws]))
        draws = [(ci, *(np.searchsorted(used, r) for r in (ki, ra, rb))) for ci, ki, ra, rb in draws]

    def pool_of(x_bench, counter_x):
        return float_rows(x_bench, pool_rows[used]) if counter is None else counter_x

    spaces = {"before": (fd.embeddings, concept.embeddings, pool_of(fd.embeddings, getattr(counter, "embeddings", None)))}
    if result.embeddings_after is None:
        notes.append(f"{result.method} does not change the embeddings: there is no 'after' space")
    else:
        fit = last_layer
        c_after, fit = _after_embeddings(fd, result, concept, fit, notes)
        k_after = None
        if counter is not None and c_after is not None:
            k_after, fit = _after_embeddings(fd, result, counter, fit, notes)
        if c_after is not None and (counter is None or k_after is not None):
            spaces["after"] = (result.embeddings_after, c_after, pool_of(result.embeddings_after, k_after))
            if fit is not None and fit.source == "stored":
                notes.append("'after' embeddings of images outside the benchmark use the run's stored last layer W")
            elif fit is not None:
                notes.append(f"'after' embeddings of images outside the benchmark use the last layer recovered from "
                             f"the run (held-out cosine ≥ {fit.heldout_cos:.4f} on 95 % of rows; this run was "
                             f"stored before fitted layers were kept)")
    cavs, probe_rows = {}, []
    for name, (_, xc, xp) in spaces.items():
        con, rnd = _space_cavs(np.asarray(xc, dtype=np.float64), np.asarray(xp, dtype=np.float64), draws, seed,
                               counter is not None)
        acc = np.array([c.accuracy for c in con])
        sep = bool(acc.mean() >= MIN_PROBE_ACCURACY)
        cavs[name] = (con, rnd, sep)
        probe_rows.append((name, float(acc.mean()), float(acc.std(ddof=1)), sep))
        if not sep:
            notes.append(f"{name}: the concept is not linearly separable from its counterexamples (held-out probe "
                         f"accuracy {acc.mean():.2f} < {MIN_PROBE_ACCURACY}; chance 0.5) — its scores are not shown")
    probe = pd.DataFrame(probe_rows, columns=["space", "accuracy", "accuracy_sd", "separable"])

    rows = fd.mask(split)
    groups = _group_scores(fd, rows, spaces, cavs)
    tcav = _tcav_table(fd, result, rows, spaces, cavs, notes)
    name = concept.name if counter is None else f"{concept.name} vs {counter.name}"
    return CAVReport(name, result.method, n_c, n_random, probe, groups, tcav, notes, split)


def _group_scores(fd, rows: np.ndarray, spaces: dict, cavs: dict) -> pd.DataFrame:
    by_group = bool((fd.group[rows] >= 0).any())
    key = fd.group if by_group else fd.y
    names = fd.group_names() if by_group else fd.class_names
    out = []
    for g in sorted(int(v) for v in np.unique(key[rows]) if v >= 0):
        m = rows & (key == g)
        rec = {"group": g, "name": names[g] if g < len(names) else str(g), "n": int(m.sum())}
        for name in ("before", "after"):
            if name in spaces and cavs[name][2]:
                x = float_rows(spaces[name][0], m)  # this group's rows only, not a float64 copy of all N
                xu, con = _unit(x), cavs[name][0]
                rec[f"score_{name}"] = float(np.mean([(xu @ c.vector).mean() for c in con]))
                rec[f"share_{name}"] = float(np.mean([c.concept_side(x).mean() for c in con]))
            else:
                rec[f"score_{name}"] = rec[f"share_{name}"] = float("nan")
        out.append(rec)
    cols = ["group", "name", "n", "score_before", "score_after", "share_before", "share_after"]
    return pd.DataFrame(out, columns=cols)


def _tcav_table(fd, result, rows, spaces, cavs, notes) -> pd.DataFrame:
    space = "after" if result.embeddings_after is not None else "before"
    cols = ["class_index", "class", "n", "space", "tcav", "tcav_sd", "random_tcav", "random_sd", "p_value",
            "significant", "n_random", "shown", "reason"]
    reason = ""
    head = None
    if space not in spaces:
        reason = "no concept embeddings in the method's representation ('after' not available)"
    elif not cavs[space][2]:
        reason = "concept not linearly separable in the method's representation"
    else:
        rep = result.embeddings_after if space == "after" else fd.embeddings
        head = recover_linear_head(rep, result.probs)
        if not head.ok:
            reason = head.reason
    if reason:
        notes.append(f"TCAV not shown: {reason}")
    out = []
    for k, cname in enumerate(fd.class_names):
        m = rows & (fd.y == k)
        rec = {"class_index": k, "class": cname, "n": int(m.sum()), "space": space}
        why = reason or ("" if m.any() else "no images of this class in the split")
        if why:
            rec.update(tcav=np.nan, tcav_sd=np.nan, random_tcav=np.nan, random_sd=np.nan, p_value=np.nan,
                       significant=False, n_random=len(cavs.get(space, ([], []))[1]), shown=False, reason=why)
        else:
            con, rnd, _ = cavs[space]
            p = np.asarray(result.probs, dtype=np.float64)[m]
            s_con = tcav_scores(None, p, head.grad, k, con)
            s_rnd = tcav_scores(None, p, head.grad, k, rnd)
            pv = tcav_test(s_con, s_rnd)
            rec.update(tcav=float(s_con.mean()), tcav_sd=float(s_con.std(ddof=1)), random_tcav=float(s_rnd.mean()),
                       random_sd=float(s_rnd.std(ddof=1)), p_value=pv, significant=bool(pv < ALPHA),
                       n_random=len(rnd), shown=True, reason="")
        out.append(rec)
    return pd.DataFrame(out, columns=cols)
