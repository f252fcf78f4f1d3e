"""Text-tower embeddings cached in the store (kind ``text``): zero-shot class heads and free prompts.

Split from :mod:`clipcal.embed` (which re-exports both functions) so that the image pipeline stays one module.
"""

from __future__ import annotations

import numpy as np

from clipcal.store import Store


def class_text_embeddings(backbone, class_names: list[str], templates=None, store: Store | None = None) -> np.ndarray:
    """Zero-shot class weights: per class, the normalised mean of its normalised prompt embeddings.

    Source: Radford et al. 2021 (CLIP), prompt ensembling — the class weight is the L2-normalised mean over
    templates of the L2-normalised text embeddings of the template filled with the class name.

    Args:
        backbone: a loaded :class:`~clipcal.backbones.Backbone` with a text tower (or a spec string).
        class_names: K names, in class-index order.
        templates: ``{}`` strings or callables; default the 80 CLIP ImageNet templates
            (:data:`clipcal.prompts.IMAGENET_TEMPLATES`).
        store: cache (kind ``text``, keyed by backbone identity + class names + templates); default ``Store()``.

    Returns:
        float32 array [K, e], unit rows.

    Raises:
        NoTextTowerError: the backbone is image-only.
    """
    from clipcal.prompts import fill, normalize_templates

    tpl = normalize_templates(templates)
    names = [str(c) for c in class_names]

    def compute(bb) -> np.ndarray:
        prompts = [fill(t, c) for c in names for t in tpl]
        t = bb.encode_text(prompts).reshape(len(names), len(tpl), -1)
        w = t.mean(axis=1)
        w /= np.linalg.norm(w, axis=1, keepdims=True).clip(1e-12)
        return w.astype(np.float32)

    return _cached_text(backbone, {"class_names": names, "templates": tpl}, compute, store,
                        meta={"class_names": names, "n_templates": len(tpl)})


def text_embeddings(backbone, texts: list[str], store: Store | None = None) -> np.ndarray:
    """Text-tower embeddings of free strings (e.g. concept prompts), cached in the store.

    Args:
        backbone: a loaded :class:`~clipcal.backbones.Backbone`, or a spec string. With a spec string the
            text tower alone is loaded (:func:`clipcal.backbones.load_text_encoder`: for checkpoint files only
            the text weights are read, 123 M of ViT-L/14's 428 M parameters) when the store has no entry, and
            released afterwards, so a dashboard does not keep a second CLIP in memory.
        texts: n strings, encoded as given (no templates).
        store: cache (kind ``text``, keyed by backbone identity + the strings); default ``Store()``.

    Returns:
        float32 array [n, e], unit rows (``Backbone.encode_text``).

    Raises:
        NoTextTowerError: the backbone is image-only.
        BackboneError / WeightsUnavailableError: a spec string that cannot be resolved or loaded.
    """
    texts = [str(t) for t in texts]
    return _cached_text(backbone, {"texts": texts}, lambda bb: bb.encode_text(texts), store,
                        meta={"n_texts": len(texts)})


def _cached_text(backbone, key_extra: dict, compute, store: Store | None, meta: dict) -> np.ndarray:
    """Store lookup (kind ``text``) → else compute (spec strings: :func:`~clipcal.backbones.load_text_encoder`,
    released after)."""
    from clipcal.backbones import Backbone, backbone_identity, load_text_encoder, no_text_tower, parse_spec

    store = store if store is not None else Store()
    owned = not isinstance(backbone, Backbone)
    if owned:
        ps = parse_spec(backbone)
        spec = str(ps)
        if not ps.has_text:
            raise no_text_tower(spec)
        ident = backbone_identity(spec, device="cpu", precision="fp32")
    else:
        if not backbone.has_text:
            raise no_text_tower(backbone.spec)
        ident, spec = backbone.identity(), backbone.spec
    key_fields = {"backbone": ident, **key_extra}
    entry = store.get("text", key_fields)
    if entry is not None:
        return np.array(entry.array("embeddings", mmap=False), dtype=np.float32)
    bb = load_text_encoder(spec) if owned else backbone
    try:
        w = np.asarray(compute(bb), dtype=np.float32)
    finally:
        if owned:
            bb.close()
    store.put("text", key_fields, {"embeddings": w}, meta={"backbone_spec": spec, **meta})
    return w
