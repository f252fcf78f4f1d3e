"""A backbone's store key (``identity()``), canonical spec and model settings are a contract with every stored
embedding: the same spec must give the byte-identical dict whatever the code that computes it looks like.

The expected values in ``tests/golden/backbone_store_keys.json`` were recorded from ``clipcal/backbones.py``
*before* it was split into the ``clipcal.backbones`` package (issue 11 item 2), one entry per kind of source:
tiny, bundled (default and @224), random arch (a ViT and a ResNet), published tag (GELU and QuickGELU arch),
checkpoint file (unnamed, ``@openai``, ``@default``, a custom arch), local dir, hf-hub not cached. A change to
any of them orphans users' stored embeddings (a new key) — or worse, serves old ones for new weights.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden" / "backbone_store_keys.json"
LOCAL_DIR_CONFIG = {"model_cfg": {"embed_dim": 32, "quick_gelu": True,
                                  "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "patch_size": 16},
                                  "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                                               "layers": 1}},
                    "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}


def _files(root: Path) -> None:
    """The same bytes the golden values were recorded with (a fake checkpoint is never loaded: identity and
    settings read only its name, size, zip directory and sha256)."""
    (root / "ft_weights.pt").write_bytes(bytes(range(256)) * 8)
    ld = root / "mydir"
    ld.mkdir()
    (ld / "open_clip_config.json").write_text(json.dumps(LOCAL_DIR_CONFIG, sort_keys=True))
    (ld / "open_clip_model.safetensors").write_bytes(b"\x01" * 512)


@pytest.mark.parametrize("spec", sorted(json.loads(GOLDEN.read_text())))
def test_store_key_canonical_spec_and_settings_are_unchanged(spec, tmp_path, monkeypatch):
    from clipcal.backbones import backbone_identity, model_settings, parse_spec
    from clipcal.store import canonical_json, make_key

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CLIPCAL_CACHE", str(tmp_path / "store"))
    _files(tmp_path)
    expected = json.loads(GOLDEN.read_text())[spec]
    real = spec.replace("<root>", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = {"str": str(parse_spec(real)), "identity": backbone_identity(real, "cpu", "fp32"),
               "settings": model_settings(real).as_dict()}
    got = json.loads(json.dumps(got, sort_keys=True).replace(str(tmp_path), "<root>"))
    assert got == expected
    # the store key is the hash of the canonical JSON: same dict → same bytes → same key
    assert canonical_json(got["identity"]) == canonical_json(expected["identity"])
    assert make_key(got["identity"]) == make_key(expected["identity"])
