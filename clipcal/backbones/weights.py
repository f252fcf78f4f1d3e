"""What a spec needs and has here, without building the model: weights status, model settings, store-key
identity, Python packages, and the fail-fast check that runs before any loading (:func:`check_weights`)."""

from __future__ import annotations

import json
from pathlib import Path

from clipcal.backbones.devices import resolve_device, resolve_precision
from clipcal.backbones.settings import ModelSettings
from clipcal.backbones.sources import Resolved, _hf_cached, _hub_reachable, listed, resolve, source_of
from clipcal.backbones.spec import BackboneSpec, _open_clip, hf_offline, parse_spec
from clipcal.deps import require
from clipcal.errors import BackboneError, WeightsUnavailableError


def model_settings(spec: str | BackboneSpec) -> ModelSettings:
    """The settings (activation, preprocessing) a spec's weights will be run with, and why — without loading
    the model or touching the network. For checkpoint files see :mod:`clipcal.backbones.settings`.

    Returns:
        :class:`ModelSettings`; ``warning`` is set when the settings of a checkpoint file are a guess that
        matters (the same text :func:`~clipcal.backbones.load_backbone` warns with).

    Raises:
        BackboneError: bad spec (as :func:`parse_spec`).
    """
    return resolve(parse_spec(spec)).model_settings()


def weights_status(spec: str | BackboneSpec) -> str:
    """``cached`` / ``needs download`` / ``unavailable offline`` / ``bundled`` / ``random`` / ``missing``.

    Never touches the network (checks the local Hugging Face and open_clip caches only).
    """
    return resolve(parse_spec(spec)).status


def _unavailable(r: Resolved, why: str) -> WeightsUnavailableError:
    s = str(r.spec)
    if r.source.local:
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


def _missing_why(r: Resolved) -> str:
    """Why a local spec's weights count as missing, in the user's terms."""
    p = Path(r.where)
    if r.spec.kind == "checkpoint" and p.is_dir():
        return (f"{p} is a folder, not a checkpoint file (a folder with open_clip_config.json is "
                f"open_clip:local-dir:{p})")
    if r.spec.kind == "local-dir" and p.name == "open_clip_config.json" and p.parent.is_dir():
        return f"the folder has no open_clip_config.json ({p.parent})"
    if r.spec.kind == "local-dir" and p.is_dir():
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
    if source_of(ps).builder == "lite0":
        return out + [("timm", "the bundled EfficientNet-Lite0")]
    out.append(("open_clip", f"backbone {ps}"))
    r = resolve(ps)
    cfg = model_cfg(r) if r.model_name and not r.model_name.startswith("hf-hub:") else None
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


def _text_hub_needs(r: Resolved) -> list[tuple[str, str]]:
    """Hugging Face repos a spec's text tower fetches at load time besides its weights (tokenizer, text-model
    config), as ``(repo, what)`` pairs that are NOT in the local cache."""
    cfg = model_cfg(r) if r.model_name and not r.model_name.startswith("hf-hub:") else None
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
    r = resolve(ps)
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
    if r.local_file or r.spec.kind == "checkpoint":  # an LFS / annex pointer, HTML page or empty file is named
        from clipcal.filekind import check_file

        check_file(r.local_file or r.where, "a PyTorch / safetensors checkpoint", error=BackboneError,
                   hint="it could not be read as a checkpoint: download or save it again")
    if r.status == "missing":
        raise _unavailable(r, _missing_why(r))
    if r.status == "unavailable offline":
        raise _unavailable(r, "HF_HUB_OFFLINE is set")
    if r.status == "needs download" and not _hub_reachable():
        raise _unavailable(r, "huggingface.co cannot be reached")


def backbone_identity(spec: str | BackboneSpec, device: str = "auto", precision: str = "auto") -> dict:
    """The store-key identity of a backbone without loading it (same dict as :meth:`Backbone.identity`).

    Returns:
        ``{"spec", "weights", "quick_gelu", "preprocess", "precision"}`` (JSON types). ``spec`` is the canonical
        spec except for file-based specs, whose path is left out (the weights fingerprint identifies them, so a
        moved checkpoint keeps its embeddings).
    """
    return resolve(parse_spec(spec)).identity(resolve_precision(precision, resolve_device(device)))


def model_cfg(r: Resolved) -> dict | None:
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



def list_backbones(include_pretrained: bool = True) -> "pd.DataFrame":  # noqa: F821
    """Every backbone clipcal knows, with whether its weights are usable here.

    Returns:
        DataFrame with columns ``spec, arch, tag, has_text, status, note``; ``status`` is ``bundled``
        (always works), ``random`` (test model), ``cached``, ``needs download`` or ``unavailable offline``.
        Built from ``open_clip.list_pretrained()`` plus the bundled and tiny backbones; no network access.
    """
    import pandas as pd

    rows = listed()
    if include_pretrained:
        for arch, tag in _open_clip().list_pretrained():
            ps = BackboneSpec(source="open_clip", arch=arch, tag=tag)
            try:
                status = resolve(ps).status
            except Exception:  # noqa: BLE001 - a broken registry entry must not hide the others
                status = "unknown"
            rows.append({"spec": str(ps), "arch": arch, "tag": tag, "has_text": True, "status": status, "note": ""})
    return pd.DataFrame(rows, columns=["spec", "arch", "tag", "has_text", "status", "note"])
