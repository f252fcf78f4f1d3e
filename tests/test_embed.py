"""Embedding: correct arrays, skipped images reported, resume after SIGKILL, cancel, OOM, caching, CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from clipcal.embed import (
    KIND,
    EmbeddingSet,
    Progress,
    class_text_embeddings,
    text_embeddings,
    embed_benchmark,
    embedding_key,
    load_embeddings,
)
from clipcal.errors import Cancelled, NoTextTowerError
from clipcal.store import Store

REPO = Path(__file__).resolve().parent.parent


def _reference(bench, bb, ids):
    """Embed the given ids one batch at a time, straight through the backbone (no loader, no store)."""
    from clipcal.data.images import load_image

    t = bench.table.set_index("sample_id")
    x = torch.stack([bb.preprocess(load_image(bench.image_path(t.loc[i, "path"]))) for i in ids])
    h, z = bb.encode_images(x)
    return h.numpy(), z.numpy()


def test_embed_arrays_skips_and_manifest(tmp_path, emb_tiny, emb_make_benchmark):
    bench = emb_make_benchmark(tmp_path / "data", n=20, bad=2)
    store = Store(tmp_path / "store")
    reports = []
    es = embed_benchmark(bench, emb_tiny, store=store, batch_size=8, num_workers=0, shard_size=8,
                         progress=reports.append)
    good = [f"s{i:04d}" for i in range(20)]
    assert list(es.sample_ids) == good and len(es) == 20 and es.n_computed == 20  # encoded, not rows walked
    assert es.features.shape == (20, 128) and es.embeddings.shape == (20, 64)
    assert es.features.dtype == es.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(es.embeddings, axis=1), 1, atol=1e-5)
    h, z = _reference(bench, emb_tiny, good)
    np.testing.assert_allclose(es.features, h, atol=1e-5)
    np.testing.assert_allclose(es.embeddings, z, atol=1e-5)
    np.testing.assert_array_equal(es.proj_weight, emb_tiny.proj_weight())
    assert es.projection == "exact" and es.has_text and es.backbone_spec == "tiny:clip"
    # unreadable images: reported with their reasons, never silently dropped
    sk = es.skipped.set_index("sample_id")["reason"].to_dict()
    assert set(sk) == {"bad00", "bad01"}
    assert "truncated" in sk["bad00"] and "bad00.jpg" in sk["bad00"]
    assert "not an image" in sk["bad01"] and "bad01.png" in sk["bad01"]
    m = es.manifest
    assert m["meta"]["n_embedded"] == 20 and m["meta"]["n_skipped"] == 2
    assert m["meta"]["skipped"][0]["sample_id"] == "bad00"
    assert m["key_fields"] == embedding_key(bench, emb_tiny.identity())
    assert m["meta"]["benchmark"]["fingerprint"] == bench.fingerprint()
    assert set(m["arrays"]) == {"features", "embeddings", "sample_ids", "proj_weight"}
    # progress: monotone, ends at the total, rate and ETA reported while embedding
    done = [r.done for r in reports]
    assert done == sorted(done) and done[-1] == 22 and all(r.total == 22 for r in reports)
    assert any(r.images_per_s and r.images_per_s > 0 and r.eta_s is not None for r in reports)
    # shards are gone once the entry exists
    assert not any((store.root / ".partial" / KIND).iterdir())


def test_second_run_embeds_nothing_and_load_embeddings(tmp_path, emb_tiny, emb_make_benchmark, monkeypatch):
    bench = emb_make_benchmark(tmp_path / "data", n=12)
    store = Store(tmp_path / "store")
    first = embed_benchmark(bench, emb_tiny, store=store, num_workers=0)

    def forbidden(x):
        raise AssertionError("encode_images called on a cached benchmark")

    monkeypatch.setattr(emb_tiny, "encode_images", forbidden)
    reports = []
    again = embed_benchmark(bench, emb_tiny, store=store, num_workers=0, progress=reports.append)
    assert again.n_computed == 0 and again.key == first.key
    assert reports[-1].message == "already embedded (from the store)"
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    loaded = load_embeddings(bench, "tiny:clip", store=store)
    assert isinstance(loaded, EmbeddingSet) and loaded.key == first.key
    assert load_embeddings(bench, "tiny:clip", store=store, precision="fp32").key == first.key
    assert load_embeddings(bench, "tiny:clip", store=store, precision="bf16") is None
    assert load_embeddings(bench, "bundled:efficientnet-lite0", store=store) is None


def test_a_replaced_or_truncated_image_is_embedded_again(tmp_path, emb_tiny, emb_make_benchmark):
    """Regression (newcomer trial): after an image file changed, embed said "already embedded" and kept the
    old embedding (and a now-corrupt image kept one too)."""
    import dataclasses

    from PIL import Image

    bench = emb_make_benchmark(tmp_path / "data", n=12)
    store = Store(tmp_path / "store")
    first = embed_benchmark(bench, emb_tiny, store=store, num_workers=0)
    # the same files loaded again: same entry, nothing computed
    same = dataclasses.replace(bench, table=bench.table.copy())
    assert embed_benchmark(same, emb_tiny, store=store, num_workers=0).n_computed == 0
    # replace one image by another picture
    path = bench.image_path(bench.table["path"].iloc[1])
    Image.new("RGB", (30, 30), (255, 255, 0)).save(path)
    changed = dataclasses.replace(bench, table=bench.table.copy())
    assert changed.fingerprint() != bench.fingerprint()
    again = embed_benchmark(changed, emb_tiny, store=store, num_workers=0)
    assert again.n_computed == 12 and again.key != first.key
    assert not np.allclose(again.embeddings[1], first.embeddings[1])
    np.testing.assert_allclose(again.embeddings[0], first.embeddings[0], atol=1e-5)
    # truncate another: it is skipped now, not served from the old entry
    p2 = bench.image_path(bench.table["path"].iloc[2])
    p2.write_bytes(p2.read_bytes()[:40])
    cut = dataclasses.replace(bench, table=bench.table.copy())
    es = embed_benchmark(cut, emb_tiny, store=store, num_workers=0)
    assert bench.table["sample_id"].iloc[2] in set(es.skipped["sample_id"])


def test_workers_give_the_same_arrays(tmp_path, emb_tiny, emb_make_benchmark):
    bench = emb_make_benchmark(tmp_path / "data", n=16, bad=1)
    a = embed_benchmark(bench, emb_tiny, store=Store(tmp_path / "s0"), batch_size=8, num_workers=0)
    b = embed_benchmark(bench, emb_tiny, store=Store(tmp_path / "s2"), batch_size=8, num_workers=2)
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    np.testing.assert_array_equal(a.sample_ids, b.sample_ids)
    assert list(b.skipped["sample_id"]) == ["bad00"]


def test_cancel_keeps_shards_and_resumes(tmp_path, emb_tiny, emb_make_benchmark):
    bench = emb_make_benchmark(tmp_path / "data", n=24)
    store = Store(tmp_path / "store")
    ev = threading.Event()

    def stop_after_first_batch(p):
        if p.message == "embedding":
            ev.set()

    with pytest.raises(Cancelled) as info:
        embed_benchmark(bench, emb_tiny, store=store, batch_size=4, shard_size=4, num_workers=0,
                        progress=stop_after_first_batch, cancel=ev)
    assert "resume after image 4" in info.value.hint
    assert "after 4 of 24 images; 4 of them are stored (finished shards of up to 4 images)" in info.value.message
    key_fields = embedding_key(bench, emb_tiny.identity())
    part = store.partial_dir(KIND, key_fields)
    assert sorted(p.name for p in part.glob("shard-*.json")) == ["shard-00000.json"]
    assert store.get(KIND, key_fields) is None
    reports = []
    es = embed_benchmark(bench, emb_tiny, store=store, batch_size=4, shard_size=4, num_workers=0,
                         progress=reports.append)
    assert es.n_computed == 20 and len(es) == 24
    assert reports[0].message.startswith("resuming: 1 of 6 shards")
    ref = embed_benchmark(bench, emb_tiny, store=Store(tmp_path / "ref"), batch_size=4, shard_size=4,
                          num_workers=0)
    np.testing.assert_array_equal(es.embeddings, ref.embeddings)
    np.testing.assert_array_equal(es.features, ref.features)
    # cancelled inside the first shard: the message says nothing was kept (it used to promise a resume)
    ev.clear()
    with pytest.raises(Cancelled) as info:
        embed_benchmark(bench, emb_tiny, store=Store(tmp_path / "other"), batch_size=4, shard_size=8,
                        num_workers=0, progress=stop_after_first_batch, cancel=ev)
    assert "0 of them are stored" in info.value.message and "nothing was stored yet" in info.value.hint


_CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    import pandas as pd
    from clipcal.backbones import load_backbone
    from clipcal.data.base import Benchmark
    from clipcal.embed import embed_benchmark
    from clipcal.store import Store
    bench = Benchmark(name="csv", root={root!r}, table=pd.read_csv({csv!r}), class_names=["blue", "red"],
                      attr_names=["p", "q"])
    bb = load_backbone("tiny:clip", device="cpu")
    fast = bb.encode_images
    def slow(x):
        time.sleep(0.4)  # slow enough that the parent kills us between shards
        return fast(x)
    bb.encode_images = slow
    embed_benchmark(bench, bb, store=Store({store!r}), batch_size=4, shard_size=8, num_workers=0)
    print("finished")
""")


@pytest.mark.slow  # a fresh interpreter imports torch + open_clip
def test_killed_process_resumes_to_identical_arrays(tmp_path, emb_tiny, emb_make_benchmark):
    bench = emb_make_benchmark(tmp_path / "data", n=32, bad=1)
    csv = tmp_path / "table.csv"
    bench.table.drop(columns=["group"]).to_csv(csv, index=False)
    store = Store(tmp_path / "store")
    key_fields = embedding_key(bench, emb_tiny.identity())
    part = store.partial_dir(KIND, key_fields)
    code = _CHILD.format(repo=str(REPO), root=str(bench.root), csv=str(csv), store=str(store.root))
    child = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (part / "shard-00000.json").exists():
            assert child.poll() is None, child.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "child wrote no shard within 120 s"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    written = sorted(p.name for p in part.glob("shard-*.json"))
    assert "shard-00000.json" in written and len(written) < 5  # killed in mid-embedding (5 shards in all)
    assert store.get(KIND, key_fields) is None
    resumed = embed_benchmark(bench, emb_tiny, store=store, batch_size=4, shard_size=8, num_workers=0)
    assert resumed.n_computed == 32 - 8 * len(written)  # images encoded: the bad row (last) is not counted
    ref = embed_benchmark(bench, emb_tiny, store=Store(tmp_path / "ref"), batch_size=4, shard_size=8,
                          num_workers=0)
    for name in ("features", "embeddings", "sample_ids", "proj_weight"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(ref, name))
    assert resumed.skipped.equals(ref.skipped) and list(resumed.skipped["sample_id"]) == ["bad00"]
    assert resumed.key == ref.key


def test_out_of_memory_halves_the_batch(tmp_path, emb_tiny, emb_make_benchmark, monkeypatch):
    bench = emb_make_benchmark(tmp_path / "data", n=16)
    real = emb_tiny.encode_images
    sizes = []

    def picky(x):
        sizes.append(len(x))
        if len(x) > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(x)

    monkeypatch.setattr(emb_tiny, "encode_images", picky)
    msgs = []
    es = embed_benchmark(bench, emb_tiny, store=Store(tmp_path / "s"), batch_size=16, num_workers=0,
                         progress=lambda p: msgs.append(p.message))
    assert sizes[:3] == [16, 8, 4] and set(sizes[2:]) == {4}
    assert "out of memory: batch size halved to 8" in msgs and "out of memory: batch size halved to 4" in msgs
    monkeypatch.setattr(emb_tiny, "encode_images", real)
    ref = embed_benchmark(bench, emb_tiny, store=Store(tmp_path / "r"), batch_size=16, num_workers=0)
    np.testing.assert_allclose(es.embeddings, ref.embeddings, atol=1e-5)


def test_corrupt_entry_is_rebuilt(tmp_path, emb_tiny, emb_make_benchmark):
    bench = emb_make_benchmark(tmp_path / "data", n=8)
    store = Store(tmp_path / "store")
    es = embed_benchmark(bench, emb_tiny, store=store, num_workers=0)
    before = np.array(es.embeddings)  # es.embeddings is a memory map of the file corrupted below
    f = store.root / KIND / es.key / "embeddings.npy"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    again = embed_benchmark(bench, emb_tiny, store=store, num_workers=0)
    assert again.n_computed == 8
    np.testing.assert_array_equal(again.embeddings, before)
    assert any((store.root / ".trash").iterdir())


def test_class_text_embeddings_cached(tmp_path, emb_tiny, emb_lite0, monkeypatch):
    from clipcal.prompts import IMAGENET_TEMPLATES

    store = Store(tmp_path / "store")
    w = class_text_embeddings(emb_tiny, ["landbird", "waterbird"], store=store)
    assert w.shape == (2, 64) and w.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1, atol=1e-5)
    t = emb_tiny.encode_text([tpl.replace("{}", "waterbird") for tpl in IMAGENET_TEMPLATES])
    ref = t.mean(0) / np.linalg.norm(t.mean(0))
    np.testing.assert_allclose(w[1], ref, atol=1e-5)
    one = class_text_embeddings(emb_tiny, ["landbird", "waterbird"], templates=["a photo of a {}."], store=store)
    np.testing.assert_allclose(one[0], emb_tiny.encode_text(["a photo of a landbird."])[0], atol=1e-5)
    monkeypatch.setattr(emb_tiny, "encode_text", lambda *_a, **_k: (_ for _ in ()).throw(AssertionError("cached!")))
    np.testing.assert_array_equal(class_text_embeddings(emb_tiny, ["landbird", "waterbird"], store=store), w)
    assert len(store.list("text")) == 2
    with pytest.raises(NoTextTowerError):
        class_text_embeddings(emb_lite0, ["a", "b"], store=store)


def test_text_embeddings_from_a_spec_load_only_the_text_tower_and_only_on_a_miss(tmp_path, emb_tiny,
                                                                                 monkeypatch):
    import clipcal.backbones as B

    store = Store(tmp_path / "store")
    texts = ["water", "a bamboo forest"]
    loaded, seen = [], {}
    real_load = B.load_text_encoder

    def spy(spec, **kw):
        bb = real_load(spec, **kw)
        loaded.append(bb)
        real_encode = bb.encode_text

        def encode(texts_, **k):
            seen["visual"] = bb.model.visual  # what exists while encoding
            return real_encode(texts_, **k)

        bb.encode_text = encode
        return bb

    monkeypatch.setattr(B, "load_text_encoder", spy)
    t = text_embeddings("tiny:clip", texts, store=store)
    assert t.shape == (2, 64) and t.dtype == np.float32
    np.testing.assert_allclose(t, emb_tiny.encode_text(texts), atol=1e-5)  # same as the full model's
    assert seen == {"visual": None}
    assert len(loaded) == 1 and loaded[0].model is None  # released after encoding
    # a hit: no model at all; a loaded backbone with the same identity hits the same entry
    np.testing.assert_array_equal(text_embeddings("tiny:clip", texts, store=store), t)
    assert len(loaded) == 1 and len(store.list("text")) == 1
    np.testing.assert_array_equal(text_embeddings(emb_tiny, texts, store=store), t)
    with pytest.raises(NoTextTowerError, match="no text tower"):
        text_embeddings("bundled:efficientnet-lite0", texts, store=store)
    assert len(loaded) == 1


@pytest.mark.slow
def test_demo_integration_tiny_and_lite0(demo_small, emb_tiny, emb_lite0, tmp_path):
    """Small Waterbirds-lite → tiny random backbone and bundled Lite0 → store → reload; second run is free."""
    store = Store(tmp_path / "store")
    n = len(demo_small.table)
    ids = demo_small.table["sample_id"].to_numpy()
    for bb, d, e in ((emb_tiny, 128, 64), (emb_lite0, 1280, 512)):
        es = embed_benchmark(demo_small, bb, store=store, batch_size=32)
        assert es.n_computed == n and len(es) == n and es.skipped.empty
        assert es.features.shape == (n, d) and es.embeddings.shape == (n, e)
        np.testing.assert_array_equal(es.sample_ids, ids)
        back = load_embeddings(demo_small, bb.spec, store=store)
        assert back is not None and back.key == es.key
        np.testing.assert_array_equal(back.features, es.features)
        m = back.manifest
        assert m["meta"]["benchmark"]["name"] == "demo" and m["meta"]["backbone_spec"] == bb.spec
        assert m["key_fields"]["backbone"]["weights"] == bb.identity()["weights"]
        assert embed_benchmark(demo_small, bb, store=store).n_computed == 0
    lite = load_embeddings(demo_small, "bundled:efficientnet-lite0", store=store)
    # real features carry the class: a nearest-class-mean rule on Lite0 features beats chance (0.5) clearly —
    # on the default waterbirds-like demo (small birds, by design a weak class signal) it gives 0.675 on these
    # 80 test images, 3 binomial standard deviations above chance; the easy demo gave > 0.7
    y = demo_small.table["y"].to_numpy()
    split = demo_small.table["split"].astype(str).to_numpy()
    f = np.asarray(lite.embeddings)
    mu = np.stack([f[(split == "train") & (y == k)].mean(0) for k in (0, 1)])
    pred = (f[split == "test"] @ mu.T).argmax(1)
    assert (pred == y[split == "test"]).mean() > 0.6


def test_cli_embed_and_list(tmp_store_root, capsys):
    # A private store: other tests embed the same small demo into the session store first.
    from clipcal.cli import main

    args = ["embed", "--benchmark", "demo", "--n-train", "120", "--n-val", "40", "--n-test", "80",
            "--data-seed", "0", "--backbone", "tiny:clip", "--workers", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "embedded 240 images in this run" in out and "skipped:   none" in out and "where:" in out
    assert main(args) == 0
    assert "already embedded: 240 images from the store" in capsys.readouterr().out
    assert main(["embed", "--list-backbones"]) == 0
    out = capsys.readouterr().out
    assert "bundled:efficientnet-lite0" in out and "open_clip:ViT-B-32:openai" in out
    assert main(["embed", "--backbone", "open_clip:ViT-B-33:openai"]) == 2
    err = capsys.readouterr().err
    assert "unknown open_clip architecture" in err and "ViT-B-32" in err


def test_fresh_run_reports_before_the_first_batch(tmp_path, emb_tiny, emb_make_benchmark, monkeypatch):
    """A fresh run reports done=0 before encoding, so the CLI bar starts at 0 (it once started at the first
    batch's count and showed the rate of the last few images only: "66/66 … 2.32 s/img")."""
    bench = emb_make_benchmark(tmp_path / "data", n=12)
    encoded = []
    real = emb_tiny.encode_images
    monkeypatch.setattr(emb_tiny, "encode_images", lambda x: (encoded.append(len(x)), real(x))[1])
    seen = []
    embed_benchmark(bench, emb_tiny, store=Store(tmp_path / "store"), batch_size=8, num_workers=0,
                    progress=lambda p: seen.append((p.done, p.message, sum(encoded))))
    assert seen[0] == (0, "starting", 0)
    from clipcal.commands.embed import embed_progress

    bar = embed_progress()
    for done, msg in [(0, "starting"), (8, "embedding"), (12, "embedding")]:
        bar(Progress(done, 12, None, None, msg))
    assert bar.bar.n == 12 and bar.bar.initial == 0
    bar.close()


def test_cli_embed_bad_numbers_rejected_before_loading(monkeypatch, capsys):
    """--batch-size 0 once loaded the backbone, then failed with a bare "batch_size (0) … must be ≥ 1"."""
    from clipcal import backbones
    from clipcal.cli import main

    monkeypatch.setattr(backbones, "load_backbone", lambda *a, **k: pytest.fail("backbone loaded"))
    for opt, val, msg in [("--batch-size", "0", "0 is too small: must be ≥ 1"),
                          ("--workers", "-1", "-1 is too small: must be ≥ 0"),
                          ("--batch-size", "lots", "'lots' is not a whole number")]:
        with pytest.raises(SystemExit) as info:
            main(["embed", "--benchmark", "demo", opt, val])
        assert info.value.code == 2 and msg in capsys.readouterr().err
