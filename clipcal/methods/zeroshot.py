"""Zero-shot classification with the backbone's text tower (Radford et al., ICML 2021, "Learning Transferable
Visual Models From Natural Language Supervision", §3.1.4 prompt ensembling).

The head is, for each class, the normalised mean of the normalised text embeddings of the prompt templates
filled with the class name (default: the 80 CLIP ImageNet templates of ``clipcal.prompts``, via
``clipcal.embed.class_text_embeddings``). ``probs = softmax(scale · z · Tᵀ)`` with CLIP's trained logit scale
100. No training, no group labels.
"""

from __future__ import annotations

import numpy as np

from clipcal.errors import MethodError, NoTextTowerError
from clipcal.methods._train import normalize_rows
from clipcal.methods.base import Method, MethodResult, report, softmax
from clipcal.methods.fitted import backbone_last_layer
from clipcal.methods.params import HasAttr, InstanceOf, Interval, ListOf, Real

NOT_APPLICABLE = "not applicable: this backbone has no text tower"


def cosine_logits(x: np.ndarray, head: np.ndarray, scale: float, block_bytes: int = 1 << 23) -> np.ndarray:
    """``scale · normalize(x) · headᵀ`` [N, K] float32 for embeddings ``x`` [N, e] and a head [K, e] (unit rows),
    a block of rows at a time: the normalised copy is at most ``block_bytes`` (8 MiB), never all N rows
    (two [N, e] copies were 0.8 GB at CelebA size)."""
    out = np.empty((len(x), head.shape[0]), dtype=np.float32)
    block = max(1, block_bytes // (4 * max(x.shape[1], 1)))
    for s in range(0, len(x), block):
        out[s:s + block] = scale * normalize_rows(x[s:s + block]) @ head.T
    return out


class ZeroShot(Method):
    """Zero-shot CLIP classifier from class-name prompts (needs a text tower)."""

    name = "zeroshot"
    label = "Zero-shot"
    uses_group_labels = False
    needs_text = True
    needs_training = False
    description = "CLIP zero-shot: class prompts through the text tower, no training"
    HPARAMS = {
        "templates": (None, "prompt templates with {} for the class name (default: the 80 CLIP ImageNet ones)"),
        "class_names": (None, "class names used in the prompts (default: the benchmark's)"),
        "scale": (100.0, "logit scale (CLIP's trained value 100); changes probabilities, not predictions"),
        "backbone": (None, "backbone spec (or loaded Backbone) for custom prompts (default: the data's)"),
    }

    PARAM_CONSTRAINTS = {
        "templates": [None, InstanceOf(str), ListOf(InstanceOf(str))],
        "class_names": [None, ListOf(InstanceOf(str))],
        "scale": [Interval(Real, 0, None, closed="neither")],
        "backbone": [None, InstanceOf(str, "a backbone spec"), HasAttr("has_text", "a loaded Backbone")],
    }

    def __init__(self, templates=None, class_names=None, scale=100.0, backbone=None):
        self.templates = templates
        self.class_names = class_names
        self.scale = scale
        self.backbone = backbone

    def get_params(self) -> dict:
        p = super().get_params()
        if p["backbone"] is not None and not isinstance(p["backbone"], str):
            p["backbone"] = str(getattr(p["backbone"], "spec", p["backbone"]))
        return p

    def _head(self, data) -> tuple[np.ndarray, str]:
        custom = self.templates is not None or self.class_names is not None
        if data.text_head is not None and not custom:
            return data.text_head, "stored text head (default templates)"
        if not data.has_text and not (self.backbone is not None and not isinstance(self.backbone, str)):
            raise NoTextTowerError(NOT_APPLICABLE, hint="zero-shot needs a CLIP backbone with a text tower "
                                                         "(e.g. open_clip:ViT-B-32:openai)")
        names = list(self.class_names) if self.class_names is not None else list(data.class_names)
        if len(names) != data.n_classes:
            raise MethodError(f"{len(names)} class names given for {data.n_classes} classes",
                              hint=f"give one name per class, in order: {data.class_names}")
        templates = self.templates
        if isinstance(templates, str):
            templates = [templates]
        if templates is not None:
            templates = list(templates)
            bad = [t for t in templates if "{}" not in t]
            if not templates or bad:
                raise MethodError(f"prompt templates need a '{{}}' where the class name goes: {bad[:3]}",
                                  hint="e.g. 'a photo of a {}.'")
        backbone = self.backbone
        if backbone is None or isinstance(backbone, str):
            from clipcal.backbones import load_text_encoder

            spec = backbone or data.backbone_spec
            if not spec:
                raise MethodError("zero-shot with custom prompts needs the backbone spec",
                                  hint="pass backbone='open_clip:…' or build FeatureData.from_store")
            backbone = load_text_encoder(spec)  # prompts need the text tower only
        if not getattr(backbone, "has_text", False):
            raise NoTextTowerError(NOT_APPLICABLE, hint="choose a CLIP backbone with a text tower")
        from clipcal.embed import class_text_embeddings

        head = class_text_embeddings(backbone, names, templates=templates)
        return np.asarray(head, np.float32), ("custom prompts" if custom else "default templates")

    def _fit(self, data, progress, cancel) -> MethodResult:
        head, source = self._head(data)
        head = normalize_rows(head)
        if head.shape != (data.n_classes, data.embed_dim):
            raise MethodError(f"text head has shape {head.shape}, expected {(data.n_classes, data.embed_dim)}")
        probs = softmax(cosine_logits(data.embeddings, head, float(self.scale)))
        report(progress, 1, 1, "zero-shot done", "zeroshot")
        return MethodResult(
            method=self.name, probs=probs, pred=probs.argmax(1), embeddings_after=None, calibration_set=None,
            record={"uses_group_labels": False, "selection_rule": "none (no training)", "seed": None,
                    "chosen_epoch": None, "head_source": source, "notes": []},
            fitted=backbone_last_layer(data, head=head, scale=float(self.scale)))
