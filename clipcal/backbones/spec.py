"""Backbone specs: the parsed form (:class:`BackboneSpec`), the one parser (:func:`parse_spec`), the default.

A spec names a model and where its weights come from; the forms are listed in :mod:`clipcal.backbones`. Specs are
data: build them with :func:`parse_spec` or the :class:`BackboneSpec` constructors (``BackboneSpec.from_tag``,
``from_checkpoint``, ``from_local_dir``, ``from_hf_hub``, ``random``, ``bundled``, ``tiny``,
``spec.with_image_size``), never by formatting strings; ``str(spec)`` is the canonical text. Which *source*
(``spec.kind``) a spec belongs to, and everything that depends on it, is the table in
:mod:`clipcal.backbones.sources` (the way open_clip's ``parse_model_name`` picks a source by prefix and
``pretrained.py`` keeps the weights registry).
"""

from __future__ import annotations

import difflib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from clipcal.errors import BackboneError

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
TINY_ARCH = "clipcal-tiny"
LITE0_DEFAULT_PX = 160
LITE0_EMBED_DIM = 512
RANDOM_SEED = 0
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
DEFAULT_CFG = "default"  # `@default`: the architecture's own settings (no published tag)

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


@dataclass(frozen=True)
class BackboneSpec:
    """A parsed backbone spec (forms: :mod:`clipcal.backbones`).

    Attributes:
        source: ``"open_clip"``, ``"bundled"`` or ``"tiny"`` (the spec's prefix; :attr:`kind` is the finer
            source the weights come from).
        arch: open_clip model name (``ViT-B-32``), ``efficientnet-lite0`` or ``clipcal-tiny``; ``None`` for
            ``hf-hub`` / ``local-dir`` (the config comes with the weights).
        tag: pretrained tag (``openai``), ``"random"``, or ``None``.
        checkpoint: absolute path of a checkpoint file, or ``None``.
        hf_hub: ``org/repo`` or ``None``.
        local_dir: absolute folder path or ``None``.
        image_size: input size in pixels for ``bundled`` (default 160), else ``None``.
        pretrained_cfg: for a checkpoint file, the pretrained tag whose configuration (QuickGELU, preprocessing)
            the file was trained with, or ``"default"`` (the architecture's own settings); ``None`` = not named
            (guessed and warned about, :func:`clipcal.backbones.model_settings`).

    Build variants through the class, not by formatting strings::

        BackboneSpec.from_tag("ViT-B-32", "openai")              # open_clip:ViT-B-32:openai
        BackboneSpec.from_checkpoint("ViT-B-32", "ft.pt", config="openai")
        DEFAULT_SPEC.with_image_size(224)                       # bundled:efficientnet-lite0@224
    """

    source: str
    arch: str | None = None
    tag: str | None = None
    checkpoint: str | None = None
    hf_hub: str | None = None
    local_dir: str | None = None
    image_size: int | None = None
    pretrained_cfg: str | None = None

    @property
    def kind(self) -> str:
        """Where the weights come from — the key of :data:`clipcal.backbones.sources.SOURCES`: ``"tiny"``,
        ``"bundled"``, ``"hf-hub"``, ``"local-dir"``, ``"checkpoint"``, ``"random"`` or ``"tag"``."""
        if self.source in ("tiny", "bundled"):
            return self.source
        if self.hf_hub:
            return "hf-hub"
        if self.local_dir:
            return "local-dir"
        if self.checkpoint:
            return "checkpoint"
        return "random" if self.tag == "random" else "tag"

    def __str__(self) -> str:
        return _source(self).canonical(self)

    @property
    def has_text(self) -> bool:
        """Whether this backbone has a text tower (every open_clip model does; the bundled one does not)."""
        return _source(self).has_text

    # -- constructors: every one goes through parse_spec, the one grammar (so they validate the same way) ----
    @classmethod
    def from_tag(cls, arch: str, tag: str) -> "BackboneSpec":
        """open_clip architecture + published pretrained tag (``open_clip.list_pretrained()``).

        Raises:
            BackboneError: unknown architecture or tag (with close matches).
        """
        return parse_spec(str(cls(source="open_clip", arch=arch, tag=tag)))

    @classmethod
    def random(cls, arch: str) -> "BackboneSpec":
        """open_clip architecture with random weights from a fixed seed (speed tests only)."""
        return cls.from_tag(arch, "random")

    @classmethod
    def from_checkpoint(cls, arch: str, path: str | os.PathLike, config: str | None = None) -> "BackboneSpec":
        """A checkpoint file for open_clip architecture ``arch``; ``config`` names the pretrained configuration
        (a tag of ``arch``, or ``"default"``) the file belongs to, ``None`` = guessed and warned about.

        Raises:
            BackboneError: unknown architecture or configuration, or ``path`` empty.
        """
        if not str(path).strip():
            raise BackboneError("no checkpoint file given", hint="give the path of a .pt / .safetensors file")
        return parse_spec(str(cls(source="open_clip", arch=str(arch).strip(), pretrained_cfg=config or None,
                                  checkpoint=str(Path(str(path).strip()).expanduser().resolve()))))

    @classmethod
    def from_local_dir(cls, folder: str | os.PathLike) -> "BackboneSpec":
        """A folder holding ``open_clip_config.json`` and a weights file (a downloaded hf-hub snapshot)."""
        if not str(folder).strip():
            raise BackboneError("no folder given", hint="give a folder with open_clip_config.json and weights")
        return parse_spec(str(cls(source="open_clip", local_dir=str(Path(folder).expanduser().resolve()))))

    @classmethod
    def from_hf_hub(cls, repo: str) -> "BackboneSpec":
        """An open_clip model on the Hugging Face hub, ``org/repo``."""
        return parse_spec(str(cls(source="open_clip", hf_hub=str(repo).strip().strip("/"))))

    @classmethod
    def bundled(cls, image_size: int = LITE0_DEFAULT_PX) -> "BackboneSpec":
        """The bundled image-only EfficientNet-Lite0 at ``image_size`` pixels (32–1024)."""
        return parse_spec(str(cls(source="bundled", arch="efficientnet-lite0", image_size=int(image_size))))

    @classmethod
    def tiny(cls) -> "BackboneSpec":
        """The tiny random open_clip model of the tests."""
        return cls(source="tiny", arch=TINY_ARCH, tag="random")

    def with_image_size(self, px: int) -> "BackboneSpec":
        """This spec at another input size (the bundled backbone only: open_clip models fix theirs).

        Raises:
            BackboneError: the spec's source has no image-size choice, or ``px`` outside 32–1024.
        """
        if self.kind != "bundled":
            raise BackboneError(f"backbone {self} has a fixed input size",
                                hint="only bundled:efficientnet-lite0 takes an input size (@<pixels>)")
        return BackboneSpec.bundled(px)


#: The backbone clipcal starts with: works offline, no download (offline.md).
DEFAULT_SPEC = BackboneSpec(source="bundled", arch="efficientnet-lite0", image_size=LITE0_DEFAULT_PX)


def _source(spec: BackboneSpec):
    # the table imports this module, so it is looked up when first needed
    from clipcal.backbones.sources import SOURCES

    return SOURCES[spec.kind]


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
    """Parse a backbone spec string (forms: :mod:`clipcal.backbones`) into a :class:`BackboneSpec`.

    Only the syntax and the open_clip registry are checked here; whether weights are available is checked by
    :func:`~clipcal.backbones.load_backbone` / :func:`~clipcal.backbones.weights_status`.

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
    if s in ("tiny:clip", "tiny"):
        return BackboneSpec.tiny()
    if s.startswith("bundled:"):
        name, _, px = s[len("bundled:"):].partition("@")
        if name.strip().lower() not in ("efficientnet-lite0", "efficientnet_lite0", "lite0"):
            raise BackboneError(f"unknown bundled backbone {name!r}", hint="the bundled backbone is "
                                f"{DEFAULT_SPEC} (optionally @<pixels>, default {LITE0_DEFAULT_PX})")
        size = LITE0_DEFAULT_PX
        if px:
            if not px.isdigit() or not 32 <= int(px) <= 1024:
                raise BackboneError(f"bad image size {px!r} in backbone spec {s!r}",
                                    hint=f"write e.g. {DEFAULT_SPEC}@224 (32–1024 pixels)")
            size = int(px)
        return BackboneSpec(source="bundled", arch="efficientnet-lite0", image_size=size)
    if not s.startswith("open_clip:"):
        from clipcal.backbones.sources import spec_forms

        known = ["open_clip:" + p for p in _pretrained_pairs()] + [str(DEFAULT_SPEC), "tiny:clip"]
        close = _suggest(s, known)
        raise BackboneError(f"unknown backbone spec {s!r}",
                            hint=(f"did you mean: {close}? " if close else "") + "spec forms: "
                            + " | ".join(spec_forms()))
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
