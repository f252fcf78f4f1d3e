"""A local checkpoint gets the model settings its weights were trained with, or a clear warning (issue 10, item 1).

Kind-level rule: a weights file does not record its activation (GELU vs QuickGELU: the same tensors) nor its
preprocessing (mean/std, interpolation, resize mode), and wrong ones give plausible but wrong embeddings. So
``open_clip:<arch>@<tag>:<file>`` names the pretrained configuration the file belongs to and is built with it
(no warning); without it clipcal guesses what it honestly can, warns naming the published choices and how they
differ, and records the settings used in the store key. Built from scratch: random ``ViT-B-32-quickgelu`` weights
saved as ``ViT-B-32.pt`` (OpenAI's file name) and random ``PE-Core-T-16-384`` weights saved to a plain file.
"""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

from clipcal.backbones import (ModelSettingsWarning, backbone_identity, load_backbone, model_settings,
                               parse_spec)
from clipcal.errors import BackboneError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)


def _random_state_dict(arch: str) -> dict:
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model(arch, pretrained=None)
    return {k: v.half() for k, v in model.state_dict().items()}  # half the bytes; loading casts back to fp32


@pytest.fixture(scope="module")
def vitb32_files(tmp_path_factory):
    """Random ViT-B-32-quickgelu weights as ``ViT-B-32.pt`` and, same bytes, as ``weights.pt`` (a hard link)."""
    d = tmp_path_factory.mktemp("vitb32")
    torch.save(_random_state_dict("ViT-B-32-quickgelu"), d / "ViT-B-32.pt")
    os.link(d / "ViT-B-32.pt", d / "weights.pt")
    return d / "ViT-B-32.pt", d / "weights.pt"


@pytest.fixture(scope="module")
def pe_file(tmp_path_factory):
    """Random PE-Core-T-16-384 weights in a file whose name says nothing."""
    p = tmp_path_factory.mktemp("pe") / "weights.pt"
    torch.save(_random_state_dict("PE-Core-T-16-384"), p)
    return p


def _load(spec: str):
    """Load on the CPU; return (backbone, ModelSettingsWarning messages)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bb = load_backbone(spec, device="cpu", precision="fp32")
    return bb, [str(w.message) for w in caught if issubclass(w.category, ModelSettingsWarning)]


def _has_quick_gelu(model) -> bool:
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in model.modules())


def _transform_facts(bb) -> dict:
    """What the built image transform does: resize size + interpolation, crop or not, mean/std."""
    import torchvision.transforms as T

    steps = bb._preprocess.transforms  # noqa: SLF001 - the transform the embedding loop applies
    resize = next(s for s in steps if isinstance(s, T.Resize))
    norm = next(s for s in steps if isinstance(s, T.Normalize))
    return {"resize": resize.size, "interpolation": resize.interpolation.value,
            "crop": any(isinstance(s, T.CenterCrop) for s in steps),
            "mean": tuple(round(float(x), 6) for x in norm.mean), "std": tuple(round(float(x), 6) for x in norm.std)}


# ----------------------------------------------------------------------------------------------------------
# (a) activation: OpenAI-style weights under the plain ViT-B-32 architecture
# ----------------------------------------------------------------------------------------------------------
def test_openai_file_name_without_named_config_gets_quickgelu_and_a_warning_naming_the_choices(vitb32_files):
    openai_named, _ = vitb32_files
    bb, warned = _load(f"open_clip:ViT-B-32:{openai_named}")
    try:
        assert _has_quick_gelu(bb.model)  # was GELU, silently
        ident = bb.identity()
        assert ident["quick_gelu"] is True and ident["pretrained_cfg"] == "openai"
        assert bb.settings.source == "file" and not bb.settings.confirmed
        assert "ViT-B-32.pt" in bb.settings.reason
    finally:
        bb.close()
    assert len(warned) == 1
    w = warned[0]
    # the choices: tags of both activations, and how to name one
    assert "QuickGELU" in w and "GELU" in w and "openai" in w and "laion2b_s34b_b79k" in w
    assert "@default" in w and "open_clip:ViT-B-32@<tag>:" in w


def test_neutral_file_name_without_named_config_uses_arch_defaults_and_warns(vitb32_files):
    _, neutral = vitb32_files
    bb, warned = _load(f"open_clip:ViT-B-32:{neutral}")
    try:
        assert not _has_quick_gelu(bb.model)  # open_clip's default for the arch, said to be a guess
        assert bb.identity()["quick_gelu"] is False and bb.identity()["pretrained_cfg"] == "default"
    finally:
        bb.close()
    assert len(warned) == 1 and "openai" in warned[0] and "GELU" in warned[0]


def test_named_openai_config_gets_quickgelu_without_warning(vitb32_files):
    _, neutral = vitb32_files
    bb, warned = _load(f"open_clip:ViT-B-32@openai:{neutral}")
    try:
        assert _has_quick_gelu(bb.model)
        assert warned == []
        assert bb.settings.confirmed and bb.settings.tag == "openai" and bb.settings.source == "spec"
        assert _transform_facts(bb) == {"resize": 224, "interpolation": "bicubic", "crop": True,
                                        "mean": tuple(round(x, 6) for x in OPENAI_MEAN),
                                        "std": (0.268630, 0.261303, 0.275777)}
    finally:
        bb.close()


def test_named_config_sets_the_store_key_and_a_contradicting_file_hint_is_warned(vitb32_files):
    openai_named, neutral = vitb32_files
    qg = backbone_identity(f"open_clip:ViT-B-32@openai:{neutral}", device="cpu")
    gelu = backbone_identity(f"open_clip:ViT-B-32@laion2b_s34b_b79k:{neutral}", device="cpu")
    assert qg["quick_gelu"] is True and gelu["quick_gelu"] is False
    assert (qg["pretrained_cfg"], gelu["pretrained_cfg"]) == ("openai", "laion2b_s34b_b79k")
    assert qg != gelu  # different settings → different embedding store keys
    # named explicitly, but the file name is OpenAI's: used as named, with a warning saying so
    s = model_settings(f"open_clip:ViT-B-32@laion2b_s34b_b79k:{openai_named}")
    assert s.quick_gelu is False and s.warning and "laion2b_s34b_b79k" in s.warning and "openai" in s.warning
    # @default: the architecture's own settings, confirmed, no warning
    d = model_settings(f"open_clip:ViT-B-32@default:{neutral}")
    assert (d.quick_gelu, d.basis, d.confirmed, d.warning) == (False, "default", True, None)


def test_choices_table_lists_every_published_tag_and_what_differs(vitb32_files):
    _, neutral = vitb32_files
    table = model_settings(f"open_clip:ViT-B-32:{neutral}").choices_table()
    import open_clip

    assert set(table["tag"]) == set(open_clip.list_pretrained_tags_by_model("ViT-B-32")) | {"default"}
    row = table.set_index("tag").loc["openai"]
    assert row["activation"] == "QuickGELU" and row["differs"] == "quick_gelu" and not row["used"]
    assert table.set_index("tag").loc["default", "used"]


# ----------------------------------------------------------------------------------------------------------
# (b) preprocessing: PE-Core's published weights use mean/std 0.5, bilinear, squash resize
# ----------------------------------------------------------------------------------------------------------
PE_PUBLISHED = {"resize": (384, 384), "interpolation": "bilinear", "crop": False,
                "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def test_pe_core_file_without_named_config_gets_its_published_preprocessing_and_a_warning(pe_file):
    bb, warned = _load(f"open_clip:PE-Core-T-16-384:{pe_file}")
    try:
        assert _transform_facts(bb) == PE_PUBLISHED  # was OpenAI mean/std, bicubic, centre crop
        pre = bb.identity()["preprocess"]
        assert (pre["mean"], pre["interpolation"], pre["resize_mode"]) == ([0.5] * 3, "bilinear", "squash")
        assert bb.settings.source == "shared" and not bb.settings.confirmed
    finally:
        bb.close()
    assert len(warned) == 1 and "meta" in warned[0] and "@default" in warned[0] and "squash" in warned[0]


def test_pe_core_named_meta_config_gets_published_preprocessing_without_warning(pe_file):
    bb, warned = _load(f"open_clip:PE-Core-T-16-384@meta:{pe_file}")
    try:
        assert _transform_facts(bb) == PE_PUBLISHED and warned == []
        assert bb.identity()["pretrained_cfg"] == "meta"
    finally:
        bb.close()


def test_pe_core_named_default_gets_the_architecture_defaults_without_warning(pe_file):
    bb, warned = _load(f"open_clip:PE-Core-T-16-384@default:{pe_file}")
    try:
        assert _transform_facts(bb) == {"resize": 384, "interpolation": "bicubic", "crop": True,
                                        "mean": tuple(round(x, 6) for x in OPENAI_MEAN),
                                        "std": (0.268630, 0.261303, 0.275777)}
        assert warned == []
    finally:
        bb.close()


# ----------------------------------------------------------------------------------------------------------
# what the file itself can tell, and the spec syntax
# ----------------------------------------------------------------------------------------------------------
def test_torchscript_archive_is_recognised_as_openai_format(tmp_path):
    class M(torch.nn.Module):
        def forward(self, x):
            return x * 2

    p = tmp_path / "model.pt"
    with warnings.catch_warnings():  # torch 2.14 deprecates TorchScript; OpenAI's files still are TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(M()), str(p))
    s = model_settings(f"open_clip:ViT-B-32:{p}")
    assert s.tag == "openai" and s.quick_gelu is True and "TorchScript" in s.reason and s.warning


def test_hugging_face_cache_folder_names_the_tag(tmp_path):
    snap = tmp_path / "models--timm--vit_base_patch32_clip_224.openai" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").write_bytes(b"\0" * 64)
    s = model_settings(f"open_clip:ViT-B-32:{snap / 'open_clip_model.safetensors'}")
    assert s.tag == "openai" and s.quick_gelu is True


def test_open_clip_config_beside_the_file_is_used_and_confirmed(tmp_path):
    (tmp_path / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"quick_gelu": True}, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3,
                                                              "interpolation": "bilinear", "resize_mode": "squash"}}))
    (tmp_path / "w.pt").write_bytes(b"\0" * 64)
    s = model_settings(f"open_clip:ViT-B-32:{tmp_path / 'w.pt'}")
    assert (s.source, s.confirmed, s.warning, s.quick_gelu) == ("config", True, None, True)
    assert (s.preprocess["mean"], s.preprocess["resize_mode"]) == ([0.5] * 3, "squash")


def test_named_config_spec_round_trips_and_bad_names_list_the_choices(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(b"\0" * 64)
    ps = parse_spec(f"open_clip:ViT-B-32@openai:{f}")
    assert (ps.arch, ps.pretrained_cfg, ps.checkpoint) == ("ViT-B-32", "openai", str(f))
    assert parse_spec(str(ps)) == ps
    with pytest.raises(BackboneError) as e:
        parse_spec(f"open_clip:ViT-B-32@opena:{f}")
    assert "openai" in e.value.hint and "default" in e.value.hint
    with pytest.raises(BackboneError, match="not a file path"):
        parse_spec("open_clip:ViT-B-32@openai:openai")


def test_specs_that_carry_their_config_report_settings_without_warning():
    tag = model_settings("open_clip:ViT-B-32:openai")
    assert (tag.source, tag.tag, tag.quick_gelu, tag.warning) == ("tag", "openai", True, None)
    assert model_settings("tiny:clip").source == "random"
    lite = model_settings("bundled:efficientnet-lite0")
    assert lite.source == "bundled" and lite.preprocess["mean"] == [0.5] * 3
    assert "QuickGELU" in tag.summary() and "224 px" in tag.summary()
    hub = model_settings("open_clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")  # not downloaded here
    assert hub.source == "config" and hub.summary().startswith("settings not known yet")


def test_bundled_cnn_settings_name_no_transformer_activation():
    """The bundled EfficientNet-Lite0 is a CNN (ReLU6): its settings line must not claim GELU (newcomer trial)."""
    from clipcal.backbones import model_settings

    line = model_settings("bundled:efficientnet-lite0").summary()
    assert "GELU" not in line and line.startswith("mean/std")
    assert model_settings("tiny:clip").summary().startswith("GELU · ")
