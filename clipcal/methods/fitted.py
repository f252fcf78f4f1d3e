"""A fitted last layer and class head, applied to new pre-projection features (numpy only, no torch).

Every method that classifies through the image last layer (ERM, JTT, AFR, CFR; DFR and zero-shot over the
backbone's own last layer) ends in the same affine-cosine model::

    z      = normalize(h W)                    h: pre-projection feature [n, d], W: [d, e]
    logits = scale · z headᵀ + bias            head: [K, e], bias: [K] (zero for ERM, JTT, CFR, zero-shot)
    probs  = softmax(logits)

:class:`FittedLastLayer` holds ``W, head, scale, bias, classes`` and computes :meth:`~FittedLastLayer.transform`
(the calibrated embedding z), :meth:`~FittedLastLayer.decision_function`, :meth:`~FittedLastLayer.predict_proba`
and :meth:`~FittedLastLayer.predict` for any rows — the same numbers the method's all-rows result holds for the
rows it was fitted on (float64 arithmetic here, float32 in training: equal to ≈ 1e-6). A fitted estimator
(:meth:`clipcal.methods.base.Method.fit`) exposes these as ``W_``, ``head_``, ``scale_``, ``bias_``,
``classes_``; a stored run keeps them as arrays (``<method>__W`` …, :func:`clipcal.runs.run_calibration`), so
:func:`clipcal.export.export_run` can rebuild the model without refitting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipcal.errors import MethodError

#: how the logits are computed, in words (exported model cards and classifier.json say the same)
FORMULA = "z = normalize(h @ W); logits = scale * z @ head.T + bias; probs = softmax(logits)"


class NotFittedError(MethodError):
    """A fitted-state attribute or ``predict_proba`` / ``predict`` / ``transform`` was used before ``fit``
    (scikit-learn's ``NotFittedError``, as a :class:`~clipcal.errors.MethodError`)."""


@dataclass(frozen=True)
class FittedLastLayer:
    """The fitted last layer and class head of one method.

    Attributes:
        W: [d, e] float32 last layer (the calibrated ``visual.proj`` for an open_clip ViT).
        head: [K, e] float32 class head (unit rows for ERM, JTT, CFR and zero-shot; AFR's and DFR's linear
            layers are not normalised).
        scale: logit scale s (float; 1/0.07 by default for trained heads, 100 for zero-shot, 1 for AFR / DFR).
        bias: [K] float32 (zeros where the method has none).
        classes: K class names (index = class).

    Raises (on construction):
        MethodError: shapes that do not fit together, or NaN / inf values.
    """

    W: np.ndarray
    head: np.ndarray
    scale: float
    bias: np.ndarray
    classes: tuple

    def __post_init__(self) -> None:
        W = np.ascontiguousarray(self.W, dtype=np.float32)
        head = np.ascontiguousarray(self.head, dtype=np.float32)
        k = len(self.classes)
        bias = np.zeros(k, np.float32) if self.bias is None else np.asarray(self.bias, np.float32).reshape(-1)
        if W.ndim != 2 or head.shape != (k, W.shape[1]) or bias.shape != (k,):
            raise MethodError(f"fitted last layer does not fit together: W {W.shape}, head {head.shape}, "
                              f"bias {bias.shape}, {k} classes (expected W [d, e], head [K, e], bias [K])")
        if not (np.isfinite(W).all() and np.isfinite(head).all() and np.isfinite(bias).all()
                and np.isfinite(self.scale)):
            raise MethodError("fitted last layer holds NaN or inf values")
        object.__setattr__(self, "W", W)
        object.__setattr__(self, "head", head)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))

    @property
    def feature_dim(self) -> int:
        """d, the width of the features h this layer takes."""
        return int(self.W.shape[0])

    def _check(self, h) -> np.ndarray:
        """``h`` as a float64 [n, d] array; MethodError naming the shape or the first bad rows otherwise."""
        x = np.asarray(h)
        if x.ndim == 1 and x.shape[0] == self.feature_dim:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise MethodError(f"features must be [n, {self.feature_dim}] pre-projection features h, got shape "
                              f"{x.shape}", hint="use the same backbone's features (EmbeddingSet.features)")
        if not np.issubdtype(x.dtype, np.number):
            raise MethodError(f"features must be numbers, got dtype {x.dtype}")
        x = x.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        if len(bad):
            raise MethodError(f"features contain NaN or inf in {len(bad)} row(s): rows {bad[:5].tolist()}",
                              hint="re-embed these images (float32) or drop them")
        return x

    def transform(self, h) -> np.ndarray:
        """[n, d] features → [n, e] float32 calibrated, L2-normalised embeddings ``normalize(h W)``."""
        z = self._check(h) @ self.W.astype(np.float64)
        return (z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def decision_function(self, h) -> np.ndarray:
        """[n, d] features → [n, K] float64 logits ``scale · z headᵀ + bias``."""
        z = self._check(h) @ self.W.astype(np.float64)
        z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        return self.scale * (z @ self.head.astype(np.float64).T) + self.bias.astype(np.float64)

    def predict_proba(self, h) -> np.ndarray:
        """[n, d] features → [n, K] float32 class probabilities (rows sum to 1)."""
        logits = self.decision_function(h)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def predict(self, h) -> np.ndarray:
        """[n, d] features → [n] int64 class indices (argmax of the logits)."""
        return self.decision_function(h).argmax(axis=1).astype(np.int64)

    # -- storage (runs keep these as arrays, never pickles) -----------------------------------------------
    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """``{prefix + "W": …, prefix + "head": …, prefix + "bias": …, prefix + "scale": [1] float64}``."""
        return {f"{prefix}W": self.W, f"{prefix}head": self.head, f"{prefix}bias": self.bias,
                f"{prefix}scale": np.array([self.scale], dtype=np.float64)}

    @classmethod
    def from_arrays(cls, get, prefix: str, classes) -> "FittedLastLayer":
        """Rebuild from arrays written by :meth:`arrays`; ``get(name)`` returns one array."""
        return cls(W=get(f"{prefix}W"), head=get(f"{prefix}head"), bias=get(f"{prefix}bias"),
                   scale=float(np.asarray(get(f"{prefix}scale")).reshape(-1)[0]), classes=tuple(classes))


def backbone_last_layer(data, head: np.ndarray, scale: float, bias: np.ndarray | None = None
                        ) -> FittedLastLayer | None:
    """The backbone's own last layer with a head over its embeddings (zero-shot, DFR), or ``None``.

    W is ``data.proj_weight`` (``z = normalize(h W)`` is how the stored embeddings were computed), else the
    identity when d == e (h is the final embedding). ``None`` when neither holds (no stored projection and
    d ≠ e): the method's result stays, but it cannot be applied to new features ``h``.
    """
    if data.proj_weight is not None:
        W = data.proj_weight
    elif data.feature_dim == data.embed_dim:
        W = np.eye(data.feature_dim, dtype=np.float32)
    else:
        return None
    return FittedLastLayer(W=W, head=head, scale=scale, bias=bias, classes=tuple(data.class_names))
