"""Text-only loading (:func:`load_text_encoder`): the text tower alone, its tensors read lazily into a model
built on PyTorch's ``meta`` device, for the pages and commands that only encode prompts."""

from __future__ import annotations

import warnings

from clipcal.backbones.devices import resolve_device
from clipcal.backbones.models import Backbone, _quiet_logging, _tokenizer, _warn_settings, load_backbone, no_text_tower
from clipcal.backbones.settings import ModelSettingsWarning
from clipcal.backbones.sources import Resolved, resolve
from clipcal.backbones.spec import BackboneSpec, _open_clip, parse_spec
from clipcal.backbones.weights import check_weights, model_cfg
from clipcal.errors import BackboneError


class _TextOnlyBackbone(Backbone):
    """An open_clip model holding only its text tower (``model.visual is None``): :meth:`encode_text` works,
    image methods do not. Built by :func:`load_text_encoder`."""

    def __init__(self, resolved, model, device, tokenizer, how: str):
        import torch

        with torch.inference_mode():
            e = int(model.encode_text(tokenizer(["a"]).to(device)).shape[-1])
        super().__init__(resolved, model, None, device, "fp32", None, "identity", e, e, tokenizer)
        #: ``"text weights only"`` (lazy checkpoint read) or ``"whole model, image tower dropped"``.
        self.load_path = how

    def encode_images(self, x):
        raise BackboneError(f"{self.spec} was loaded without its image tower (load_text_encoder)",
                            hint="use clipcal.backbones.load_backbone to encode images")

    def preprocess(self, image):
        return self.encode_images(None)


def _lazy_state_dict(path: str) -> dict | None:
    """The checkpoint's non-image-tower tensors without reading the others: safetensors opened lazily, torch
    zip files memory-mapped (``torch.load(mmap=True)``), so the image tower's tensors stay on disk. A nested
    ``state_dict`` and DataParallel's ``module.`` prefix are unwrapped. None for formats that cannot be read
    lazily (legacy torch pickles, TorchScript archives, numpy ``.npz``)."""
    import torch

    visual = ("visual.", "module.visual.")
    if path.endswith((".npz", ".npy")):
        return None
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt", device="cpu") as f:
                ck = {k: f.get_tensor(k) for k in f.keys() if not k.startswith(visual)}
        else:
            ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable lazily: the whole-model path reports what is wrong with it
        return None
    if isinstance(ck, dict) and isinstance(ck.get("state_dict"), dict):
        ck = ck["state_dict"]
    if not isinstance(ck, dict) or not ck:
        return None
    return {k[7:] if k.startswith("module.") else k: v for k, v in ck.items() if not k.startswith(visual)}


def _text_only_open_clip(r: Resolved):
    """open_clip model with text weights only, or None when this spec needs the whole-model path.

    The model is instantiated on PyTorch's ``meta`` device (shapes, no memory, no random init), its image tower
    removed, and the checkpoint's text tensors assigned (``load_state_dict(assign=True)``; non-fp32 tensors
    cast to fp32 as ``load_backbone`` does). Non-persistent causal masks are rebuilt with open_clip's
    ``TextTransformer.build_causal_mask``. Anything unexpected (keys the model lacks, missing text keys, shape
    mismatches, Hugging Face text towers, CoCa) returns None.
    """
    import torch
    from types import SimpleNamespace

    oc = _open_clip()
    from open_clip.model import convert_to_custom_text_state_dict
    from open_clip.transformer import TextTransformer

    if r.status == "random" or not r.local_file:
        return None
    cfg = model_cfg(r)
    if cfg is None or cfg.get("text_cfg", {}).get("hf_model_name") or "multimodal_cfg" in cfg:
        return None
    sd = _lazy_state_dict(r.local_file)
    if sd is None:
        return None
    try:
        with torch.device("meta"), _quiet_logging():
            model = oc.create_model(r.model_name, pretrained=None, load_weights=False, device="meta",
                                    precision="fp32", force_quick_gelu=r.quick_gelu)
    except Exception:  # noqa: BLE001 - a tower that cannot be built without data: the whole-model path
        return None
    model.visual = None
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    sd = {k: (v.float() if v.is_floating_point() and v.dtype != torch.float32 else v) for k, v in sd.items()}
    own = model.state_dict()
    if any(k not in own or tuple(own[k].shape) != tuple(v.shape) for k, v in sd.items()):
        return None
    missing = model.load_state_dict(sd, strict=False, assign=True).missing_keys
    if any(not k.startswith(("logit_scale", "logit_bias")) for k in missing):
        return None
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if not t.is_meta:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        if attr == "attn_mask":
            mask = TextTransformer.build_causal_mask(SimpleNamespace(num_pos=t.shape[0]))
            owner.register_buffer(attr, mask, persistent=False)
        elif attr in ("logit_scale", "logit_bias"):  # unused by encode_text
            setattr(owner, attr, torch.nn.Parameter(torch.zeros(t.shape), requires_grad=False))
        else:
            return None
    return model.eval()


def load_text_encoder(spec: str | BackboneSpec, device: str = "cpu") -> Backbone:
    """Load only what :meth:`Backbone.encode_text` needs: the text tower, in fp32.

    For a checkpoint file (a tag's cached weights, a local checkpoint, a local dir, a cached hub snapshot) the
    text tensors are read lazily (safetensors, or ``torch.load(mmap=True)``) into a model built on the
    ``meta`` device without its image tower: for ViT-L/14, 123 M of 428 M parameters (≈ 0.5 of 1.7 GB fp32)
    are ever in memory. Random-weight specs (``tiny:clip``, ``…:random``; their text weights depend on the image
    tower's random draws) and checkpoints that cannot be read lazily (legacy pickles, TorchScript, ``.npz``,
    Hugging Face text towers, CoCa) build the whole model with :func:`load_backbone` and drop its image tower
    before returning (the peak is the whole model's). Either way the embeddings equal
    ``load_backbone(spec, "cpu", "fp32").encode_text`` (tests/test_backbones.py).

    Args:
        spec: a spec string or :class:`BackboneSpec` with a text tower.
        device: where the text tower runs (default CPU).

    Returns:
        A :class:`Backbone` whose :meth:`~Backbone.encode_text` works (float32 [n, e], unit rows), whose
        ``identity()`` is the fp32 backbone's, whose image methods raise :class:`BackboneError`; attribute
        ``load_path`` says which path was taken. Release it with :meth:`Backbone.close`.

    Raises:
        NoTextTowerError: the backbone is image-only.
        BackboneError / WeightsUnavailableError: as :func:`load_backbone`.
    """
    ps = parse_spec(spec)
    if not ps.has_text:
        raise no_text_tower(str(ps))
    dev = resolve_device(device)
    r = resolve(ps)
    check_weights(ps)
    _warn_settings(r)
    model = _text_only_open_clip(r) if r.source.builder == "open_clip" else None
    how = "text weights only"
    if model is None:
        with warnings.catch_warnings():  # warned above already
            warnings.simplefilter("ignore", ModelSettingsWarning)
            full = load_backbone(ps, device="cpu", precision="fp32")
        model, full.model = full.model, None
        model.visual = None  # text only: the image tower is freed before encoding
        full.close()
        how = "whole model, image tower dropped"
    model.to(dev)
    return _TextOnlyBackbone(r, model, dev, _tokenizer(r), how)
