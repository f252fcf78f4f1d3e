"""Backbone specs, offline failures, the exact projection, checkpoints, and the bundled Lite0 being real."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from clipcal.backbones import (
    BackboneSpec,
    backbone_identity,
    file_fingerprint,
    list_backbones,
    lite0_projection,
    load_backbone,
    load_text_encoder,
    parse_spec,
    weights_status,
)
from clipcal.errors import BackboneError, NoTextTowerError, WeightsUnavailableError

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("spec, want", [
    ("tiny:clip", BackboneSpec(source="tiny", arch="clipcal-tiny", tag="random")),
    ("bundled:efficientnet-lite0", BackboneSpec(source="bundled", arch="efficientnet-lite0", image_size=160)),
    ("bundled:efficientnet-lite0@224", BackboneSpec(source="bundled", arch="efficientnet-lite0", image_size=224)),
    ("open_clip:ViT-B-32:openai", BackboneSpec(source="open_clip", arch="ViT-B-32", tag="openai")),
    ("open_clip:ViT-B/32:laion2b_s34b_b79k", BackboneSpec(source="open_clip", arch="ViT-B-32",
                                                          tag="laion2b_s34b_b79k")),
    ("open_clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
     BackboneSpec(source="open_clip", hf_hub="laion/CLIP-ViT-B-32-laion2B-s34B-b79K")),
    ("open_clip:ViT-L-14:random", BackboneSpec(source="open_clip", arch="ViT-L-14", tag="random")),
])
def test_parse_spec(spec, want):
    got = parse_spec(spec)
    assert got == want
    assert parse_spec(str(got)) == got  # the canonical string parses back to the same spec


def test_parse_paths(tmp_path):
    ck = parse_spec(f"open_clip:ViT-B-32-quickgelu:{tmp_path}/w.pt")
    assert ck.checkpoint == str(tmp_path / "w.pt") and ck.arch == "ViT-B-32-quickgelu" and ck.tag is None
    ld = parse_spec(f"open_clip:local-dir:{tmp_path}")
    assert ld.local_dir == str(tmp_path) and str(ld) == f"open_clip:local-dir:{tmp_path}"


@pytest.mark.parametrize("spec, message, suggestion", [
    ("open_clip:ViT-B-33:openai", "unknown open_clip architecture 'ViT-B-33'", "ViT-B-32"),
    ("open_clip:ViT-B-32:opnai", "unknown pretrained tag 'opnai'", "ViT-B-32:openai"),
    ("open_clip:ViT-B-32", "names no weights", "open_clip:ViT-B-32:openai"),
    ("clip:ViT-B-32:openai", "unknown backbone spec", "open_clip:ViT-B-32:openai"),
    ("bundled:resnet50", "unknown bundled backbone", "bundled:efficientnet-lite0"),
    ("bundled:efficientnet-lite0@huge", "bad image size", "@224"),
    ("open_clip:hf-hub:no-slash", "bad hf-hub name", "open_clip:hf-hub:<org>/<repo>"),
])
def test_bad_specs_say_what_to_do(spec, message, suggestion):
    with pytest.raises(BackboneError) as info:
        parse_spec(spec)
    assert message in info.value.message
    assert suggestion in info.value.hint


def test_weights_unavailable_offline_fails_fast_with_a_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        load_backbone("open_clip:ViT-B-32:openai")
    assert time.monotonic() - t0 < 15
    err = str(info.value)
    assert "HF_HUB_OFFLINE" in err and "open_clip:<arch>:/path/to/file" in err and "quickgelu" in err
    assert weights_status("open_clip:ViT-B-32:openai") == "unavailable offline"
    assert weights_status("open_clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K") == "unavailable offline"
    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE"):
        load_backbone("open_clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    t0 = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        load_backbone(f"open_clip:ViT-B-32:{tmp_path / 'missing.pt'}")
    assert time.monotonic() - t0 < 15
    assert "missing.pt" in info.value.message and "check the path" in info.value.hint
    with pytest.raises(WeightsUnavailableError, match="not found"):
        load_backbone(f"open_clip:local-dir:{tmp_path}")


def test_vit_features_times_proj_equal_encode_image(emb_tiny):
    bb = emb_tiny
    assert (bb.feature_dim, bb.embed_dim, bb.projection, bb.has_text) == (128, 64, "exact", True)
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    h, z = bb.encode_images(x)
    assert h.shape == (5, 128) and z.shape == (5, 64) and h.dtype == z.dtype == torch.float32
    with torch.no_grad():
        ref = bb.model.encode_image(x, normalize=True)
    torch.testing.assert_close(z, ref, atol=1e-5, rtol=1e-5)
    W = bb.proj_weight()
    assert W.shape == (128, 64) and W.dtype == np.float32
    zz = h.numpy() @ W
    np.testing.assert_allclose(zz / np.linalg.norm(zz, axis=1, keepdims=True), z.numpy(), atol=1e-5)
    # h is the CLS token after ln_post: zero mean over channels up to ln_post's bias
    v = bb.model.visual
    np.testing.assert_allclose(((h - v.ln_post.bias.detach()) / v.ln_post.weight.detach()).mean(1).numpy(), 0,
                               atol=1e-4)


@pytest.mark.slow  # a fresh interpreter imports torch + open_clip (~10 s, more on a busy machine)
def test_tiny_weights_identical_across_processes(emb_tiny):
    code = ("import torch; from clipcal.backbones import load_backbone; b = load_backbone('tiny:clip', device='cpu');"
            "print(repr(sum(float(p.double().sum()) for p in b.model.parameters())))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    here = sum(float(p.detach().double().sum()) for p in emb_tiny.model.parameters())
    assert float(out.stdout.strip().splitlines()[-1]) == here


def test_local_checkpoint_reloads_with_weights_only(emb_tiny, tmp_path):
    ck = tmp_path / "tiny-ck.pt"
    torch.save(emb_tiny.model.state_dict(), ck)
    bb = load_backbone(f"open_clip:clipcal-tiny:{ck}", device="cpu")
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    h1, z1 = emb_tiny.encode_images(x)
    h2, z2 = bb.encode_images(x)
    torch.testing.assert_close(h1, h2, atol=0, rtol=0)
    torch.testing.assert_close(z1, z2, atol=0, rtol=0)
    ident = bb.identity()
    assert ident["spec"] == "open_clip:clipcal-tiny:<file>" and ident["weights"]["file"] == "tiny-ck.pt"
    assert len(ident["weights"]["sha256"]) == 32 and ident["quick_gelu"] is False
    assert backbone_identity(f"open_clip:clipcal-tiny:{ck}", device="cpu") == ident
    np.testing.assert_allclose(bb.encode_text(["a red square"]), emb_tiny.encode_text(["a red square"]), atol=1e-6)
    bb.close()
    assert bb.model is None


def test_openai_named_checkpoint_gets_quickgelu(emb_tiny, tmp_path):
    ck = tmp_path / "openai-tiny.pt"
    torch.save(emb_tiny.model.state_dict(), ck)
    bb = load_backbone(f"open_clip:clipcal-tiny:{ck}", device="cpu")
    assert bb.identity()["quick_gelu"] is True
    assert type(bb.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert type(emb_tiny.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "GELU"


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    ck = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": Path("/etc/passwd")}, ck)  # needs unpickling a Path: refused
    with pytest.raises(BackboneError, match="refuses to unpickle"):
        load_backbone(f"open_clip:clipcal-tiny:{ck}", device="cpu")


def test_identity_without_loading_matches_loaded(emb_tiny, emb_lite0):
    assert backbone_identity("tiny:clip", device="cpu") == emb_tiny.identity()
    assert backbone_identity("bundled:efficientnet-lite0", device="cpu") == emb_lite0.identity()
    ident = emb_tiny.identity()
    assert ident["preprocess"] == {"size": [64, 64], "mean": pytest.approx([0.48145466, 0.4578275, 0.40821073]),
                                   "std": pytest.approx([0.26862954, 0.26130258, 0.27577711]),
                                   "interpolation": "bicubic", "resize_mode": "shortest"}
    assert ident["precision"] == "fp32" and ident["weights"]["random_seed"] == 0
    assert backbone_identity("tiny:clip", device="cpu", precision="bf16")["precision"] == "bf16"
    assert backbone_identity("bundled:efficientnet-lite0@224", device="cpu")["preprocess"]["size"] == [224, 224]


def test_precision_rules(emb_tiny):
    with pytest.raises(BackboneError, match="fp16 is not supported on the CPU"):
        load_backbone("tiny:clip", device="cpu", precision="fp16")
    with pytest.raises(BackboneError, match="unknown precision"):
        load_backbone("tiny:clip", device="cpu", precision="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(BackboneError, match="CUDA is not available"):
            load_backbone("tiny:clip", device="cuda")
    bf = load_backbone("tiny:clip", device="cpu", precision="bf16")
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    _, z16 = bf.encode_images(x)
    _, z32 = emb_tiny.encode_images(x)
    assert z16.dtype == torch.float32
    assert 0.95 < float((z16 * z32).sum(1).min()) <= 1.0001  # same direction, bf16 rounding only


def test_text_tower(emb_tiny, emb_lite0):
    t = emb_tiny.encode_text(["a photo of a cat.", "a photo of a dog.", "a photo of a cat."])
    assert t.shape == (3, 64) and t.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(t[0], t[2], atol=1e-6)
    assert not np.allclose(t[0], t[1])
    assert emb_lite0.has_text is False
    with pytest.raises(NoTextTowerError) as info:
        emb_lite0.encode_text(["a cat"])
    assert "no text tower" in info.value.message and "open_clip" in info.value.hint


def _save_tiny(model, path: Path, how: str) -> None:
    """The tiny model's weights as a user might have them: zip / legacy torch file, safetensors, fp16,
    nested under "state_dict" with DataParallel's "module." prefix."""
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if how == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    elif how == "legacy":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    elif how == "fp16":
        torch.save({k: v.half() for k, v in sd.items()}, path)
    elif how == "nested":
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    else:
        torch.save(sd, path)


@pytest.mark.parametrize("how, path", [("zip", "text weights only"), ("safetensors", "text weights only"),
                                       ("fp16", "text weights only"), ("nested", "text weights only"),
                                       ("legacy", "whole model, image tower dropped")])
def test_text_encoder_matches_the_whole_model(emb_tiny, tmp_path, how, path):
    """load_text_encoder gives the whole model's text embeddings bit for bit, reading only the text weights
    from files that allow it (legacy pickles fall back to the whole model)."""
    ck = tmp_path / ("tiny.safetensors" if how == "safetensors" else "tiny.pt")
    _save_tiny(emb_tiny.model, ck, how)
    spec = f"open_clip:clipcal-tiny:{ck}"
    texts = ["a photo of a bird.", "water", "", "a bamboo forest " * 20]
    whole = load_backbone(spec, device="cpu", precision="fp32")
    te = load_text_encoder(spec)
    assert te.load_path == path
    np.testing.assert_array_equal(te.encode_text(texts), whole.encode_text(texts))
    assert te.model.visual is None and te.has_text and te.embed_dim == 64
    n_text = sum(p.numel() for n, p in whole.model.named_parameters() if not n.startswith("visual."))
    assert sum(p.numel() for p in te.model.parameters()) == n_text
    assert all(p.dtype == torch.float32 and not p.is_meta for p in te.model.parameters())
    assert te.identity() == backbone_identity(spec, device="cpu", precision="fp32") == whole.identity()
    with pytest.raises(BackboneError, match="without its image tower"):
        te.encode_images(torch.zeros(1, 3, 64, 64))
    te.close()
    assert te.model is None


def test_text_encoder_falls_back_when_the_model_cannot_be_built_without_data(emb_tiny, tmp_path, monkeypatch):
    import open_clip

    ck = tmp_path / "tiny.pt"
    _save_tiny(emb_tiny.model, ck, "zip")
    real = open_clip.create_model

    def no_meta(*args, **kw):  # e.g. a timm tower calling .item() on a tensor while being built
        if str(kw.get("device")) == "meta":
            raise RuntimeError("Tensor.item() cannot be called on meta tensors")
        return real(*args, **kw)

    monkeypatch.setattr(open_clip, "create_model", no_meta)
    te = load_text_encoder(f"open_clip:clipcal-tiny:{ck}")
    assert te.load_path == "whole model, image tower dropped"
    np.testing.assert_array_equal(te.encode_text(["sky"]), emb_tiny.encode_text(["sky"]))


@pytest.mark.parametrize("name, content", [("notes.pt", b"hello, not a checkpoint\n"),
                                           ("cut.safetensors", "safetensors-head"), ("cut.pt", "torch-head"),
                                           ("json.safetensors", b'{"a": 1}')])
def test_unreadable_checkpoints_are_named_with_what_to_do(emb_tiny, tmp_path, name, content):
    """Regression: a truncated .safetensors gave a raw SafetensorError traceback; a text file 'KeyError: 101'."""
    if isinstance(content, str):  # the first bytes of a real file, as an interrupted download leaves it
        full = tmp_path / ("full.safetensors" if "safetensors" in content else "full.pt")
        _save_tiny(emb_tiny.model, full, "safetensors" if "safetensors" in content else "zip")
        content = full.read_bytes()[:1000 if "safetensors" in content else 5000]
    ck = tmp_path / name
    ck.write_bytes(content)
    for load in (load_backbone, load_text_encoder):
        with pytest.raises(BackboneError) as info:
            load(f"open_clip:clipcal-tiny:{ck}", device="cpu")
        assert str(ck) in info.value.message and "could not be read as a checkpoint" in info.value.hint


def test_a_folder_given_as_checkpoint_says_so(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="is a folder, not a checkpoint file.*open_clip:local-dir:"):
        load_backbone(f"open_clip:clipcal-tiny:{tmp_path}", device="cpu")


def test_text_encoder_of_random_and_image_only_specs(emb_tiny):
    te = load_text_encoder("tiny:clip")  # random weights come from the whole model's seeded draws
    assert te.load_path == "whole model, image tower dropped" and te.model.visual is None
    np.testing.assert_array_equal(te.encode_text(["sky", "a red square"]), emb_tiny.encode_text(["sky",
                                                                                                 "a red square"]))
    with pytest.raises(NoTextTowerError, match="no text tower"):
        load_text_encoder("bundled:efficientnet-lite0")


def test_lite0_is_really_pretrained(emb_lite0):
    """sklearn's bundled photo of a Chinese temple is recognised as a building by the ImageNet head."""
    from PIL import Image
    from sklearn.datasets import load_sample_image
    from timm.data import ImageNetInfo

    x = emb_lite0.preprocess(Image.fromarray(load_sample_image("china.jpg")))[None]
    assert x.shape == (1, 3, 160, 160)
    p = emb_lite0.imagenet_logits(x).softmax(-1)[0]
    top = int(p.argmax())
    names = ImageNetInfo().index_to_description(top)
    assert any(w in names for w in ("palace", "bell cote", "stupa", "monastery", "castle", "boathouse", "pagoda"))
    assert float(p[top]) > 0.3  # a random 1000-way head gives ~0.001–0.01


def test_lite0_projection_is_orthonormal_and_defines_the_embedding(emb_lite0):
    P = lite0_projection()
    assert P.shape == (1280, 512) and P.dtype == np.float32
    np.testing.assert_allclose(P.T @ P, np.eye(512), atol=1e-5)
    np.testing.assert_array_equal(emb_lite0.proj_weight(), P)
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(4))
    h, z = emb_lite0.encode_images(x)
    assert h.shape == (2, 1280) and z.shape == (2, 512) and emb_lite0.projection == "exact"
    zz = h.numpy() @ P
    np.testing.assert_allclose(zz / np.linalg.norm(zz, axis=1, keepdims=True), z.numpy(), atol=1e-5)
    assert float(h.min()) >= -0.28  # SiLU/ReLU6 outputs pooled: the pre-logits feature, not logits


def test_fast_tensor_conversion_equals_torchvision():
    import torchvision.transforms as T
    from PIL import Image

    from clipcal.backbones import ToNormalizedTensor

    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ref = T.Normalize(mean, std)(T.ToTensor()(im))
    got = ToNormalizedTensor(mean, std)(im)
    assert got.shape == (3, 37, 53) and got.dtype == torch.float32 and got.is_contiguous()
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=1e-6)


def test_list_backbones_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    df = list_backbones()
    assert list(df.columns) == ["spec", "arch", "tag", "has_text", "status", "note"]
    row = df.set_index("spec").loc["bundled:efficientnet-lite0"]
    assert row["status"] == "bundled" and not row["has_text"]
    vit = df.set_index("spec").loc["open_clip:ViT-B-32:openai"]
    assert vit["status"] == "unavailable offline" and vit["has_text"]
    assert len(df) > 50 and set(df["status"]) <= {"bundled", "random", "cached", "unavailable offline"}


def _fake_hf_cache(root: Path, repo: str, files: dict) -> None:
    """Lay out ``files`` (name → bytes) like huggingface_hub's cache: models--org--repo/snapshots/<rev>/."""
    base = root / ("models--" + repo.replace("/", "--"))
    rev = "0" * 40
    snap = base / "snapshots" / rev
    snap.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(rev)
    for name, data in files.items():
        (snap / name).write_bytes(data)


def test_cached_weights_load_offline_without_the_hub(emb_tiny, tmp_path, monkeypatch):
    """A tag or hf-hub repo already in the HF cache loads under HF_HUB_OFFLINE, from the cached files."""
    import io
    import json

    import huggingface_hub.constants as hfc
    import open_clip.pretrained as ocp

    buf = io.BytesIO()
    torch.save(emb_tiny.model.state_dict(), buf)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # a pretrained tag for the tiny arch, with its own preprocessing, served from the (fake) cache
    monkeypatch.setitem(ocp._PRETRAINED, "clipcal-tiny", {"cachetest": ocp._pcfg(
        hf_hub="clipcal-test/tiny/", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))})
    assert weights_status("open_clip:clipcal-tiny:cachetest") == "unavailable offline"
    _fake_hf_cache(tmp_path / "hub", "clipcal-test/tiny", {"open_clip_pytorch_model.bin": buf.getvalue()})
    assert weights_status("open_clip:clipcal-tiny:cachetest") == "cached"
    bb = load_backbone("open_clip:clipcal-tiny:cachetest", device="cpu")
    assert bb.identity()["preprocess"]["std"] == [0.25, 0.25, 0.25]
    assert bb.identity()["weights"] == {"tag": "cachetest", "source": "clipcal-test/tiny"}
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(bb.encode_images(x)[1], emb_tiny.encode_images(x)[1], atol=0, rtol=0)
    assert backbone_identity("open_clip:clipcal-tiny:cachetest", device="cpu") == bb.identity()
    # an hf-hub repo (config + weights) in the cache
    cfg = {"model_cfg": json.loads((REPO / "clipcal/model_configs/clipcal-tiny.json").read_text()),
           "preprocess_cfg": {"mean": [0.4, 0.4, 0.4], "std": [0.3, 0.3, 0.3]}}
    _fake_hf_cache(tmp_path / "hub", "clipcal-test/tiny-hub", {
        "open_clip_config.json": json.dumps(cfg).encode(), "open_clip_pytorch_model.bin": buf.getvalue()})
    hb = load_backbone("open_clip:hf-hub:clipcal-test/tiny-hub", device="cpu")
    assert hb.identity()["preprocess"]["mean"] == [0.4, 0.4, 0.4] and hb.has_text
    torch.testing.assert_close(hb.encode_images(x)[1], emb_tiny.encode_images(x)[1], atol=0, rtol=0)
    assert hb.encode_text(["a bird"]).shape == (1, 64)


def test_file_fingerprint_is_read_once_per_file_version(tmp_path, monkeypatch):
    """A spec is resolved several times per load; the checkpoint is hashed once per file version (memoised in
    the process and recorded on disk with its stat stamp), and again only when the file changes."""
    import os

    from clipcal.backbones.sources import _fingerprint

    monkeypatch.setenv("CLIPCAL_CACHE", str(tmp_path / "store"))
    monkeypatch.setattr("clipcal.integrity.RACY_NS", 0)  # trust stamps at once (the file was just written)
    f = tmp_path / "w.pt"
    f.write_bytes(b"a" * 5000)
    old = time.time_ns() - 10**10
    os.utime(f, ns=(old, old))
    before = _fingerprint.cache_info().misses
    first = file_fingerprint(f)
    assert file_fingerprint(f) == first and _fingerprint.cache_info().misses == before + 1
    f.write_bytes(b"b" * 5000)  # same size, new content
    os.utime(f, ns=(old, old))  # even with the old mtime restored
    second = file_fingerprint(f)
    assert second["sha256"] != first["sha256"] and second["bytes"] == 5000


def test_checkpoints_differing_only_in_the_middle_are_different_weights(tmp_path, monkeypatch):
    """Everything served from the store is verified by content (issue 10.5 sibling): two same-size weights
    files that differ only in their middle (fine-tuned middle blocks) get different identities — the old
    head-and-tail hash gave them one store key, serving one model's embeddings for the other."""
    monkeypatch.setenv("CLIPCAL_CACHE", str(tmp_path / "store"))
    body = bytearray(b"w" * (5 << 20))
    a = tmp_path / "a.pt"
    a.write_bytes(bytes(body))
    body[len(body) // 2] ^= 1
    b = tmp_path / "b.pt"
    b.write_bytes(bytes(body))
    fa, fb = file_fingerprint(a), file_fingerprint(b)
    assert fa["bytes"] == fb["bytes"] and fa["sha256"] != fb["sha256"]
    assert fa["sha256"] == hashlib.sha256(a.read_bytes()).hexdigest()[:32]