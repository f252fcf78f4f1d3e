"""Export a calibrated model from a stored run, usable without clipcal (issue 11.4).

What is written (one folder per run and method, see :func:`export_run`):

* **open_clip backbones whose last layer is ``visual.proj``** (ViTs; ``projection == "exact"``):
  ``open_clip_model.safetensors`` — the backbone's full state dict with ``visual.proj`` replaced by the method's
  calibrated last layer W, loadable with plain open_clip::

      model, _, preprocess = open_clip.create_model_and_transforms(ARCH, pretrained="open_clip_model.safetensors")
      z = model.encode_image(preprocess(image)[None], normalize=True)     # the calibrated embedding

  (``tiny:clip``'s architecture is clipcal's own config: register the exported ``model_configs/`` folder first
  with ``open_clip.add_model_config(folder)``, as clipcal does);
* **other backbones** (the bundled EfficientNet-Lite0, towers without a single projection matrix):
  ``last_layer.safetensors`` with ``W`` [d, e], applied to the backbone's pre-projection feature h;
* always ``classifier.safetensors`` (``head`` [K, e], ``bias`` [K], ``logit_scale`` [1]) and
  ``classifier.json`` (class names, scale, the formula ``logits = scale · z headᵀ + bias``, the backbone, how
  to load it), and ``README.md`` saying the same in words.

The formula throughout (:data:`clipcal.methods.fitted.FORMULA`): ``z = normalize(h W)``,
``logits = scale · z headᵀ + bias``, ``probs = softmax(logits)``. Weights are written with safetensors (no
pickles); the fitted model comes from the run's stored arrays (:meth:`clipcal.runs.Run.fitted`), so nothing is
refitted.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipcal.errors import StoreError
from clipcal.methods.fitted import FORMULA, FittedLastLayer

EXPORT_FORMAT = 1
CHECKPOINT = "open_clip_model.safetensors"
LAST_LAYER = "last_layer.safetensors"
CLASSIFIER = "classifier.safetensors"
CLASSIFIER_JSON = "classifier.json"
PREPROCESS_KEYS = ("size", "mean", "std", "interpolation", "resize_mode")


@dataclass
class Export:
    """What :func:`export_run` wrote.

    Attributes:
        folder: the export folder.
        kind: ``"open_clip-checkpoint"`` (calibrated ``visual.proj`` inside a full open_clip checkpoint) or
            ``"last-layer"`` (W beside the unchanged backbone).
        files: names of the files written, relative to ``folder``.
        card: the content of ``classifier.json``.
    """

    folder: Path
    kind: str
    files: list[str] = field(default_factory=list)
    card: dict = field(default_factory=dict)

    def summary(self) -> str:
        """One line for the CLI and the Groups page: what was written where and how to load it."""
        if self.kind == "open_clip-checkpoint":
            how = (f"an open_clip checkpoint with the calibrated visual.proj (open_clip.create_model_and_transforms"
                   f"(\"{self.card.get('load', {}).get('arch', '')}\", pretrained=\"{CHECKPOINT}\"))")
        else:
            how = f"the calibrated last layer W ({LAST_LAYER}) to apply to the backbone's pre-projection features"
        return f"{self.card.get('method_label', '')}: {how} and the class head ({CLASSIFIER}) in {self.folder}"


def exportable_methods(run) -> list[str]:
    """Methods of ``run`` (in run order) whose fitted model is stored — what an export can take.

    Empty for runs stored before fitted layers were kept, and without zero-shot / DFR on embedding sets with no
    projection (their model cannot be applied to new features)."""
    return [m for m in run.methods if m in run.results and run.results[m].fitted is not None]


def export_folder(store, key: str, method: str) -> Path:
    """The default export folder under the store: ``<store root>/exports/<run key>-<method>``."""
    return Path(store.root) / "exports" / f"{key}-{method}"


def _save(tensors: dict[str, np.ndarray], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)
    _readable_as_umask(path)


def _readable_as_umask(path: Path) -> None:
    """Give a safetensors file the permissions of any new file (safetensors writes 0600): on a shared server the
    weights must be as readable as the JSON and README beside them."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _checkpoint_backbone(spec: str, projection: str, W: np.ndarray):
    """The loaded open_clip backbone when the calibrated W can replace its ``visual.proj``, else ``None``."""
    from clipcal.backbones import load_backbone, parse_spec
    from clipcal.errors import BackboneError

    if projection != "exact":
        return None
    try:
        parsed = parse_spec(spec)
    except BackboneError:  # not a loadable backbone (e.g. synthetic features): the last-layer export applies
        return None
    if parsed.source not in ("open_clip", "tiny"):
        return None
    bb = load_backbone(spec, device="cpu", precision="fp32")
    proj = getattr(getattr(bb.model, "visual", None), "proj", None)
    if proj is None or tuple(proj.shape) != tuple(W.shape):
        return None
    return bb


def export_run(run, method: str, out: str | Path | None = None, store=None, overwrite: bool = True) -> Export:
    """Write the calibrated model of ``method`` in a stored run to a folder (see the module docstring).

    Args:
        run: a :class:`clipcal.runs.Run` or its store key.
        method: the method whose fitted model is exported (``"cfr"``, ``"erm"`` …).
        out: the folder (created; files in it are replaced); default :func:`export_folder` under the store.
        store: :class:`clipcal.store.Store` (default ``Store()``).
        overwrite: False refuses a folder that already holds an export.

    Returns:
        :class:`Export`.

    Raises:
        StoreError: no run with that key; the folder cannot be written, or holds an export and ``overwrite``
            is False. MethodError: the method did not run or has no fitted last layer (a run stored before
            fitted layers were kept). BackboneError / WeightsUnavailableError: an open_clip backbone whose
            weights are not on this machine (the checkpoint needs them).
    """
    from clipcal.runs import load_run
    from clipcal.store import Store

    store = store if store is not None else Store()
    if isinstance(run, str):
        run = load_run(run, store)
    fitted: FittedLastLayer = run.fitted(method)
    folder = Path(out) if out is not None else export_folder(store, run.key, method)
    if (folder / CLASSIFIER_JSON).exists() and not overwrite:
        raise StoreError(f"{folder} already holds an export", hint="choose another --out folder or remove it")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"cannot create the export folder {folder}: {err.strerror or err}",
                         hint="choose a folder you can write (--out DIR)") from None
    meta = run.manifest.get("meta", {}) or {}
    emb = meta.get("embeddings", {}) or {}
    spec = str(run.config.get("backbone", ""))
    record = run.result(method).record
    label = (meta.get("labels") or {}).get(method, method)
    bb = _checkpoint_backbone(spec, str(emb.get("projection", "")), fitted.W)
    tensor_meta = {"format": "clipcal-export", "run": run.key, "method": method, "backbone": spec}
    files: list[str] = []
    try:
        if bb is not None:
            kind, load = "open_clip-checkpoint", _write_checkpoint(bb, fitted, folder, tensor_meta, files)
        else:
            kind = "last-layer"
            _save({"W": fitted.W}, folder / LAST_LAYER, tensor_meta)
            files.append(LAST_LAYER)
            load = {"backbone": spec, "feature": record.get("last_layer") or emb.get("projection", ""),
                    "how": "h = the backbone's pre-projection feature (clipcal: EmbeddingSet.features, or "
                           "Backbone.encode_images(x)[0]); z = normalize(h @ W) with W from last_layer.safetensors"}
        _save({"head": fitted.head, "bias": fitted.bias,
               "logit_scale": np.array([fitted.scale], np.float32)}, folder / CLASSIFIER, tensor_meta)
        files.append(CLASSIFIER)
        card = {
            "format": EXPORT_FORMAT, "kind": kind, "method": method, "method_label": label, "run": run.key,
            "backbone": spec, "benchmark": run.config.get("benchmark_name", ""),
            "classes": list(fitted.classes), "scale": fitted.scale, "has_bias": bool(np.any(fitted.bias)),
            "feature_dim": int(fitted.W.shape[0]), "embed_dim": int(fitted.W.shape[1]),
            "formula": FORMULA, "load": load,
            "selection_rule": record.get("selection_rule", ""), "uses_group_labels": bool(
                record.get("uses_group_labels", False)),
            "files": files + [CLASSIFIER_JSON, "README.md"],
        }
        (folder / CLASSIFIER_JSON).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
        (folder / "README.md").write_text(_readme(card))
    except OSError as err:
        raise StoreError(f"cannot write the export into {folder}: {err.strerror or err}",
                         hint="check the free space and permissions of that folder") from None
    return Export(folder=folder, kind=kind, files=card["files"], card=card)


def _write_checkpoint(bb, fitted: FittedLastLayer, folder: Path, tensor_meta: dict, files: list[str]) -> dict:
    """Write the full open_clip state dict with ``visual.proj`` = W; return the card's ``load`` section."""
    from safetensors.torch import save_file
    import torch

    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
             for k, v in bb.model.state_dict().items()}
    state["visual.proj"] = torch.from_numpy(np.array(fitted.W, dtype=np.float32))
    save_file(state, str(folder / CHECKPOINT), metadata=tensor_meta)
    _readable_as_umask(folder / CHECKPOINT)
    files.append(CHECKPOINT)
    resolved = bb._resolved  # noqa: SLF001 - the open_clip name and settings this backbone was built with
    arch = str(resolved.model_name)
    load = {"arch": arch, "pretrained": CHECKPOINT, "force_quick_gelu": bool(resolved.quick_gelu),
            "preprocess": {k: v for k, v in (resolved.preprocess or {}).items() if k in PREPROCESS_KEYS},
            "model_config_dir": None}
    from clipcal.backbones import MODEL_CONFIG_DIR

    own = MODEL_CONFIG_DIR / f"{arch}.json"
    if own.is_file():  # clipcal's own architecture (tiny:clip): ship its config for add_model_config
        (folder / "model_configs").mkdir(exist_ok=True)
        shutil.copyfile(own, folder / "model_configs" / own.name)
        files.append(f"model_configs/{own.name}")
        load["model_config_dir"] = "model_configs"
    return load


def _readme(card: dict) -> str:
    """The exported folder's README.md: what it holds and how to use it without clipcal."""
    classes = ", ".join(f"{i}: {c}" for i, c in enumerate(card["classes"]))
    bias = " + bias" if card["has_bias"] else ""
    lines = [f"# {card['method_label']} — calibrated model exported by clipcal", "",
             f"Run `{card['run']}`, method `{card['method']}`, backbone `{card['backbone']}`, benchmark "
             f"`{card['benchmark']}`. Classes: {classes}. Model selection: {card['selection_rule']} "
             f"(group labels used: {'yes' if card['uses_group_labels'] else 'no'}).", "",
             "The model: `z = normalize(h @ W)`, `logits = scale * z @ head.T" + bias + "`, `probs = softmax(logits)`"
             f" with scale = {card['scale']:.6g}; `head`, `bias` and `logit_scale` are in `{CLASSIFIER}`.", ""]
    load = card["load"]
    if card["kind"] == "open_clip-checkpoint":
        reg = ""
        if load.get("model_config_dir"):
            reg = (f"open_clip.add_model_config(\"{load['model_config_dir']}\")  # clipcal's own architecture "
                   f"{load['arch']}\n")
        qg = ", force_quick_gelu=True" if load["force_quick_gelu"] else ""
        pp = f", force_preprocess_cfg={json.dumps(load['preprocess'])}" if load["preprocess"] else ""
        lines += ["`open_clip_model.safetensors` is the backbone with its last layer `visual.proj` replaced by the "
                  "calibrated W, so `encode_image` returns the calibrated embedding:", "", "```python",
                  "import open_clip, torch",
                  "from safetensors.numpy import load_file",
                  reg + f"model, _, preprocess = open_clip.create_model_and_transforms(\"{load['arch']}\", "
                  f"pretrained=\"{CHECKPOINT}\"{qg}{pp})",
                  "model.eval()",
                  f"c = load_file(\"{CLASSIFIER}\")",
                  "with torch.no_grad():",
                  "    z = model.encode_image(preprocess(image)[None], normalize=True).numpy()",
                  "logits = float(c[\"logit_scale\"][0]) * z @ c[\"head\"].T + c[\"bias\"]",
                  "```", ""]
    else:
        lines += [f"`{LAST_LAYER}` holds the calibrated last layer W [{card['feature_dim']}, {card['embed_dim']}]. "
                  "It applies to the backbone's pre-projection feature h (" + str(load.get("feature", "")) + "), "
                  "which the unchanged backbone computes:", "", "```python",
                  "import numpy as np",
                  "from safetensors.numpy import load_file",
                  f"W = load_file(\"{LAST_LAYER}\")[\"W\"]; c = load_file(\"{CLASSIFIER}\")",
                  "z = h @ W; z /= np.linalg.norm(z, axis=1, keepdims=True)",
                  "logits = float(c[\"logit_scale\"][0]) * z @ c[\"head\"].T + c[\"bias\"]",
                  "```", "", f"With clipcal: `Backbone.encode_images(x)[0]` gives h for `{card['backbone']}`.", ""]
    lines += [f"Files: {', '.join(card['files'])}. Written with safetensors (no pickles)."]
    return "\n".join(lines) + "\n"


def zip_export(export: Export | str | Path) -> Path:
    """Zip an export folder next to it (``<folder>.zip``, replaced) — e.g. for a download button."""
    folder = Path(export.folder if isinstance(export, Export) else export)
    if not (folder / CLASSIFIER_JSON).is_file():
        raise StoreError(f"{folder} holds no clipcal export", hint="export a run first (python -m clipcal export)")
    try:
        return Path(shutil.make_archive(str(folder), "zip", root_dir=folder))
    except OSError as err:
        raise StoreError(f"cannot write {folder}.zip: {err.strerror or err}") from None


__all__ = ["Export", "export_run", "export_folder", "exportable_methods", "zip_export"]
