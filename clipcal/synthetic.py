"""Synthetic spurious-embedding generator: features with known core and spurious directions.

Each sample's pre-projection feature is::

    h = core · u_y + spurious · v_a + ε,      ε ~ N(0, (noise² / d) I)   (so E‖ε‖ ≈ noise)

with ``u_k`` (K classes) and ``v_a`` (A attribute values) unit vectors, all mutually orthogonal, each set
centred over its members and rescaled to unit norm (K = 2: ``u₁ = −u₀``, a single core direction). The core
direction predicts ``y`` on every split. The spurious attribute agrees with the class (``a = y mod A``) for a
fraction ``correlation`` of each training class and is spread uniformly over the other values otherwise; on
val and test ``a`` is independent of ``y`` with all groups of equal size. Ground truth is therefore known:
an unbiased classifier uses ``u`` only.

Defaults follow cfr-method.md's measured notes (d = 64; core 0.6, spurious 1.5, noise norm 4, 95 % train
correlation): there, logistic regression trained to convergence reached test worst-group ≈ 0.47 and
group-balanced reweighting ≈ 0.87 — the gap an annotation-free method should close. (This generator on
seed 0 with 2,000 training samples: see :func:`reference_baselines` and tests/test_synthetic.py.)

Usage::

    ds = generate(correlation=0.95, seed=0)
    ds.data            # FeatureData (features, embeddings, y, a, group, split …)
    ds.benchmark()     # a Benchmark (name "synthetic", no image files) with the same table
    ds.embedding_set() # an EmbeddingSet-like object for clipcal.runs.run_calibration
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from clipcal.errors import MethodError
from clipcal.methods.base import FeatureData

DEFAULTS = {
    "n_train": 2000, "n_val": 600, "n_test": 2000, "dim": 64, "n_classes": 2, "n_attrs": None,
    "correlation": 0.95, "core": 0.6, "spurious": 1.5, "noise": 4.0, "embed_dim": None, "text_head": None, "text_lean": 0.3,
    "seed": 0,
}


def _centred_unit_directions(basis: np.ndarray) -> np.ndarray:
    """Rows of an orthonormal ``basis`` [m, d] centred over the rows and rescaled to unit norm."""
    c = basis - basis.mean(axis=0, keepdims=True)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


@dataclass
class SyntheticDataset:
    """A generated dataset with its ground truth.

    Attributes:
        data: the FeatureData (all splits).
        table: canonical sample table (sample_id, path = "", split, y, a, group).
        core_dirs: [K, d] float64 unit class directions ``u_k``.
        spurious_dirs: [A, d] float64 unit attribute directions ``v_a``.
        params: the generator arguments.
    """

    data: FeatureData
    table: pd.DataFrame
    core_dirs: np.ndarray
    spurious_dirs: np.ndarray
    params: dict = field(default_factory=dict)

    def benchmark(self):
        """A :class:`~clipcal.data.base.Benchmark` named ``synthetic`` with this table (no image files)."""
        from clipcal.data.base import Benchmark

        return Benchmark(name="synthetic", root=Path("."), table=self.table,
                         class_names=list(self.data.class_names), attr_names=list(self.data.attr_names),
                         params={k: v for k, v in self.params.items()}, target_name="class",
                         attr_name="spurious attribute")

    def embedding_set(self):
        """An object with the ``clipcal.embed.EmbeddingSet`` attributes, for ``run_calibration`` and tests."""
        d = self.data
        key = "synthetic-" + "-".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return _synthetic_embedding_set_class()(
            sample_ids=d.sample_ids.copy(), features=d.features, embeddings=d.embeddings,
            proj_weight=d.proj_weight, projection=d.projection, has_text=d.has_text,
            backbone_spec="synthetic", skipped=pd.DataFrame({"sample_id": [], "reason": []}), key=key,
            manifest={"backbone": {"spec": "synthetic"}, "params": dict(self.params)},
            text_head=d.text_head)


def _synthetic_embedding_set_class():
    """``EmbeddingSet`` plus the synthetic text head (imported lazily: clipcal.embed is the real type)."""
    from clipcal.embed import EmbeddingSet

    @dataclass
    class _SyntheticEmbeddingSet(EmbeddingSet):
        text_head: np.ndarray | None = None

    return _SyntheticEmbeddingSet


def generate(n_train: int = 2000, n_val: int = 600, n_test: int = 2000, dim: int = 64, n_classes: int = 2,
             n_attrs: int | None = None, correlation: float = 0.95, core: float = 0.6, spurious: float = 1.5,
             noise: float = 4.0, embed_dim: int | None = None, text_head: str | None = None,
             text_lean: float = 0.3, seed: int = 0) -> SyntheticDataset:
    """Generate a spurious-correlation dataset of features (module docstring).

    Args:
        n_train / n_val / n_test: split sizes (val/test are rounded down to a multiple of K·A so every group
            has the same size; train is split evenly over classes).
        dim: d, feature width (needs ≥ K + A).
        n_classes: K ≥ 2. n_attrs: A ≥ 2 attribute values (default K).
        correlation: fraction of each training class whose attribute agrees with it, in [1/A, 1].
        core / spurious: lengths of the class and attribute signals.
        noise: expected norm of the isotropic Gaussian noise.
        embed_dim: e; ``None`` → e = d with an identity last layer (``projection="identity"``); else a
            random orthonormal projection [d, e] given as the exact ``proj_weight``.
        text_head: ``None`` (no text tower), ``"leaning"`` (a CLIP-like zero-shot head that leans on the
            spurious attribute: class ``c``'s row ∝ ``u_c + text_lean · v_{c mod A}``; at the defaults its test
            worst-group accuracy is ≈ 0.6 and overall ≈ 0.8, the kind of start CFR's reference code assumes),
            ``"core"`` (the ideal zero-shot head: class directions projected
            into the embedding space) or ``"spurious"`` (a head aligned with the attribute, for tests).
        text_lean: weight of the spurious direction in the ``"leaning"`` head.
        seed: everything is drawn from ``numpy.random.default_rng(seed)``.

    Returns:
        :class:`SyntheticDataset`.

    Raises:
        MethodError: invalid sizes, ``dim`` too small, correlation outside [1/A, 1].
    """
    k = int(n_classes)
    na = int(n_attrs) if n_attrs is not None else k
    if k < 2 or na < 2:
        raise MethodError(f"need n_classes ≥ 2 and n_attrs ≥ 2, got {k} and {na}")
    if dim < k + na:
        raise MethodError(f"dim = {dim} is too small for {k} class and {na} attribute directions")
    if not (1.0 / na <= correlation <= 1.0):
        raise MethodError(f"correlation must lie in [1/n_attrs, 1] = [{1 / na:.3f}, 1], got {correlation}")
    if min(n_train, n_val, n_test) < k * na:
        raise MethodError(f"every split needs at least K·A = {k * na} samples")
    params = dict(n_train=n_train, n_val=n_val, n_test=n_test, dim=dim, n_classes=k, n_attrs=na,
                  correlation=correlation, core=core, spurious=spurious, noise=noise, embed_dim=embed_dim,
                  text_head=text_head, text_lean=text_lean, seed=seed)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, k + na)))
    u = _centred_unit_directions(q[:, :k].T)
    v = _centred_unit_directions(q[:, k:].T)

    ys, as_, splits = [], [], []
    # train: classes as even as possible; within a class, `correlation` of it on the aligned attribute
    per_class = np.full(k, n_train // k)
    per_class[: n_train % k] += 1
    for c in range(k):
        n_c = per_class[c]
        aligned = c % na
        n_al = int(round(correlation * n_c))
        others = [x for x in range(na) if x != aligned]
        rest = rng.choice(others, size=n_c - n_al) if others else np.zeros(0, int)
        ys.append(np.full(n_c, c))
        as_.append(np.concatenate([np.full(n_al, aligned), rest]))
        splits += ["train"] * n_c
    for name, n_split in (("val", n_val), ("test", n_test)):
        per_group = n_split // (k * na)
        for c in range(k):
            for a in range(na):
                ys.append(np.full(per_group, c))
                as_.append(np.full(per_group, a))
                splits += [name] * per_group
    y = np.concatenate(ys).astype(np.int64)
    a = np.concatenate(as_).astype(np.int64)
    split = np.array(splits)
    n = len(y)
    eps = rng.standard_normal((n, dim)) * (noise / np.sqrt(dim))
    h = core * u[y] + spurious * v[a] + eps

    if embed_dim is None:
        proj, projection = None, "identity"
        z = h
        e = dim
    else:
        e = int(embed_dim)
        if e < 2:
            raise MethodError(f"embed_dim must be ≥ 2, got {e}")
        p, _ = np.linalg.qr(rng.standard_normal((dim, max(e, 1))))
        proj = p[:, :e] if p.shape[1] >= e else np.pad(p, ((0, 0), (0, e - p.shape[1])))
        projection = "exact"
        z = h @ proj
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    head = None
    if text_head is not None:
        dirs = {"core": u, "spurious": v[np.arange(k) % na],
                "leaning": u + float(text_lean) * v[np.arange(k) % na]}.get(text_head)
        if dirs is None:
            raise MethodError(f"text_head must be None, 'leaning', 'core' or 'spurious', got {text_head!r}")
        t = dirs if proj is None else dirs @ proj
        head = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)

    # shuffle rows within the whole table so split order is not trivially contiguous per group
    order = rng.permutation(n)
    y, a, split, h, z = y[order], a[order], split[order], h[order], z[order]
    sample_ids = np.array([f"syn-{i:06d}" for i in range(n)])
    class_names = [f"class{c}" for c in range(k)]
    attr_names = [f"attr{x}" for x in range(na)]
    group = y * na + a
    data = FeatureData(features=h.astype(np.float32), embeddings=z.astype(np.float32), y=y, a=a, group=group,
                       split=split, sample_ids=sample_ids, class_names=class_names, attr_names=attr_names,
                       proj_weight=None if proj is None else proj.astype(np.float32), projection=projection,
                       text_head=None if head is None else head.astype(np.float32),
                       has_text=head is not None, backbone_spec="synthetic", benchmark_name="synthetic")
    table = pd.DataFrame({"sample_id": sample_ids, "path": "", "split": split, "y": y, "a": a, "group": group})
    return SyntheticDataset(data=data, table=table, core_dirs=u, spurious_dirs=v, params=params)


def make_feature_data(**kwargs) -> FeatureData:
    """``generate(**kwargs).data``."""
    return generate(**kwargs).data


def reference_baselines(data: FeatureData, C: float = 1e4, seed: int = 0) -> dict:
    """Test worst-group / overall accuracy of two logistic regressions on the training features.

    ``"logreg"``: plain (ERM to convergence, large C). ``"group_balanced"``: each training group weighted by
    1 / its size (uses group labels — the upper reference). sklearn ``LogisticRegression(lbfgs)`` on the
    standardised features ``h``.

    Returns:
        ``{"logreg": {"worst_group": float, "overall": float}, "group_balanced": {...}}``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    tr, te = data.mask("train"), data.mask("test")
    sc = StandardScaler().fit(data.features[tr])
    xtr, xte = sc.transform(data.features[tr]), sc.transform(data.features[te])
    g = data.group[tr]
    counts = np.bincount(g, minlength=data.n_groups)
    out = {}
    for name, w in (("logreg", None), ("group_balanced", 1.0 / counts[g])):
        clf = LogisticRegression(C=C, max_iter=5000, random_state=seed)
        clf.fit(xtr, data.y[tr], sample_weight=None if w is None else w * len(w) / w.sum())
        pred = clf.predict(xte)
        correct = pred == data.y[te]
        gt = data.group[te]
        accs = [correct[gt == j].mean() for j in range(data.n_groups) if (gt == j).any()]
        out[name] = {"worst_group": float(min(accs)), "overall": float(correct.mean())}
    return out


def compare(methods=("erm", "jtt", "afr", "dfr"), seeds=(0, 1, 2), hparams: dict | None = None,
            progress=None, on_row=None, **gen_kwargs) -> pd.DataFrame:
    """Fit ``methods`` on the generator for each seed (data seed = method seed) and score the test split.

    ``on_row(dict)`` is called after each fit (e.g. to print as you go).

    Returns:
        DataFrame with one row per method and seed: ``method, seed, worst_group, overall, mean_group,
        train_weighted, worst_class, seconds`` (test split); methods that cannot run get a ``status``.
    """
    import time

    from clipcal.errors import ClipcalError
    from clipcal.methods import make_method
    from clipcal.metrics import summarize, train_group_weights

    rows = []
    for seed in seeds:
        d = generate(seed=int(seed), **gen_kwargs).data
        te = d.mask("test")
        for m in methods:
            kw = dict((hparams or {}).get(m, {}))
            t0 = time.perf_counter()
            try:
                est = make_method(m, **kw)
                if "seed" in est.get_params() and "seed" not in kw:
                    est.set_params(seed=int(seed))
                res = est.fit(d, progress=progress).result_
            except ClipcalError as err:
                rows.append({"method": m, "seed": seed, "status": f"not applicable: {err.message}"})
                continue
            s = summarize(d.y[te], res.pred[te], d.group[te], train_group_weights(d), d.n_classes)
            rows.append({"method": m, "seed": seed, **{k: s[k] for k in ("worst_group", "overall", "mean_group",
                                                                           "train_weighted", "worst_class")},
                         "seconds": round(time.perf_counter() - t0, 2), "status": "ok"})
            if on_row is not None:
                on_row(rows[-1])
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    """``python -m clipcal.synthetic [--methods …] [--seeds …] [--correlation …]``: mean ± sd table."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m clipcal.synthetic",
                                description="Compare calibration methods on the synthetic spurious-feature "
                                            "generator (test split, mean ± sd over seeds).")
    p.add_argument("--methods", default="erm,jtt,afr,dfr")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--correlation", type=float, default=DEFAULTS["correlation"])
    p.add_argument("--n-train", type=int, default=DEFAULTS["n_train"])
    p.add_argument("--text-head", default=None, choices=["leaning", "core", "spurious"],
                   help="give the data a zero-shot head (default: none, as for an image-only backbone)")
    p.add_argument("--set", action="append", default=[], dest="sets", metavar="METHOD.NAME=VALUE")
    args = p.parse_args(argv)
    from clipcal.commands.calibrate import parse_sets

    df = compare(args.methods.split(","), args.seeds, parse_sets(args.sets), on_row=lambda r: print(r, flush=True),
                 correlation=args.correlation, n_train=args.n_train, text_head=args.text_head)
    print(df.to_string(index=False))
    ok = df[df["status"] == "ok"]
    agg = ok.groupby("method", sort=False)[["worst_group", "overall", "mean_group", "train_weighted",
                                            "seconds"]].agg(["mean", "std"])
    print("\ntest split, mean ± sd over seeds", args.seeds)
    for m, r in agg.iterrows():
        print(f"{m:>5}: worst-group {r[('worst_group', 'mean')]:.3f} ± {r[('worst_group', 'std')]:.3f} · overall "
              f"{r[('overall', 'mean')]:.3f} ± {r[('overall', 'std')]:.3f} · mean-group "
              f"{r[('mean_group', 'mean')]:.3f} · train-weighted {r[('train_weighted', 'mean')]:.3f} · "
              f"{r[('seconds', 'mean')]:.1f} s/fit")
    return 0


if __name__ == "__main__":  # pragma: no cover - command-line entry
    raise SystemExit(main())
