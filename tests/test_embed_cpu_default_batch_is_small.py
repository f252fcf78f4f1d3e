"""Issue 13.3: with no batch size given, the CPU embeds 16 images per forward pass (the activations stay in the
cache: fewer CPU seconds per image than 64), an accelerator 64 — and the embeddings are the same bytes either way."""

from __future__ import annotations

import numpy as np

from clipcal.embed import KIND, default_batch_size, embed_benchmark, embedding_key
from clipcal.store import Store


def test_default_batch_size_depends_on_the_device():
    assert default_batch_size("cpu") == 16
    assert default_batch_size("cuda") == default_batch_size("cuda:1") == default_batch_size("mps") == 64


def test_cpu_run_without_a_batch_size_uses_16_and_stores_the_same_embeddings(tmp_path, emb_tiny,
                                                                             emb_make_benchmark):
    bench = emb_make_benchmark(tmp_path / "data", n=40)
    store = Store(tmp_path / "default")
    es = embed_benchmark(bench, emb_tiny, store=store, num_workers=0)
    meta = store.get(KIND, embedding_key(bench, emb_tiny.identity())).meta
    assert meta["batch_size"] == 16
    ref = embed_benchmark(bench, emb_tiny, store=Store(tmp_path / "b64"), batch_size=64, num_workers=0)
    assert np.array_equal(es.features, ref.features) and np.array_equal(es.embeddings, ref.embeddings)
