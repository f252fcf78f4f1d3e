"""Model settings: the pretrained configuration (activation, preprocessing) a backbone's weights are run with.

A state dict records neither the activation the weights were trained with (GELU or QuickGELU — same tensors) nor
their preprocessing (mean/std, interpolation, resize mode), yet wrong ones give plausible but wrong embeddings
(issue 10). ``open_clip:<arch>@<tag>:<file>`` names the pretrained configuration
(``open_clip.get_pretrained_cfg(arch, tag)``) the file belongs to. Without it clipcal guesses
(:func:`checkpoint_settings`: a TorchScript archive is OpenAI's format; the file name or Hugging Face cache folder
of a published tag; an ``open_clip_config.json`` beside the file; the settings every published tag of the arch
shares; else the architecture's defaults, what open_clip itself does), warns with :class:`ModelSettingsWarning`
naming the tags and how their settings differ, and records what it used in the store key
(``identity()["pretrained_cfg"]``, ``quick_gelu``, ``preprocess``). The settings of the other sources (a tag,
a config file, random or bundled weights) are given, not chosen: their table entries say why
(:mod:`clipcal.backbones.sources`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from clipcal.backbones.spec import DEFAULT_CFG, BackboneSpec, _open_clip

SETTING_KEYS = ("quick_gelu", "mean", "std", "interpolation", "resize_mode")


def _preprocess_cfg(model_cfg: dict | None, extra: dict | None) -> dict:
    """open_clip's preprocessing dict for a model config, merged with a tag's / config file's ``extra``."""
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = dataclasses.asdict(PreprocessCfg())
    if extra:
        cfg = merge_preprocess_dict(cfg, extra)
    if model_cfg:
        size = model_cfg.get("vision_cfg", {}).get("image_size")
        if size is not None:
            cfg["size"] = size
    return cfg


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
        # a bundled CNN has no transformer, so GELU vs QuickGELU does not apply to it
        desc = _describe({"quick_gelu": self.quick_gelu, **self.preprocess}, activation=self.source != "bundled")
        return f"{desc} · {px} — {self.reason}"

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


def _describe(s: dict, activation: bool = True) -> str:
    name = _NORM_NAMES.get((_triplet(s["mean"]), _triplet(s["std"])))
    ms = f"mean/std {name}" if name else f"mean {_fmt_triplet(s['mean'])} std {_fmt_triplet(s['std'])}"
    act = f"{'QuickGELU' if s['quick_gelu'] else 'GELU'} · " if activation else ""
    return f"{act}{ms} · {s['interpolation']} · {_RESIZE_WORDS.get(s['resize_mode'], s['resize_mode'])}"


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


def checkpoint_settings(spec: BackboneSpec) -> ModelSettings:
    """Choose a checkpoint file's settings (module docstring) without reading its tensors.

    Returns:
        :class:`ModelSettings` with ``choices`` (every published configuration of the arch) and ``warning`` set
        when the choice is a guess that matters.
    """
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



def preprocess_record(pre: dict) -> dict:
    """The preprocessing fields of a store key / :class:`ModelSettings` in JSON types: ``size`` as ``[h, w]``
    (open_clip gives ``224`` before loading and ``(224, 224)`` after), tuples as lists, other keys dropped."""
    out = {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in pre.items()
           if k in ("size", *SETTING_KEYS[1:])}
    if isinstance(out.get("size"), int):
        out["size"] = [out["size"], out["size"]]
    return out
