"""DataLoader workers receive the preprocessing transform, not the model (issue 15.4): the dataset held
``backbone.preprocess``, a bound method, so pickling it for spawn / forkserver workers pickled the whole Backbone
(29.7 MiB for ``tiny:clip``; the transform alone is about 1 KiB)."""

from __future__ import annotations

import pickle

import numpy as np

import clipcal.embed as embed_mod
from clipcal.embed import embed_benchmark
from clipcal.store import Store


def test_the_dataset_given_to_workers_pickles_small_and_embeds_the_same(tmp_path, emb_tiny, emb_make_benchmark,
                                                                        monkeypatch):
    bench = emb_make_benchmark(tmp_path / "data", n=10)
    made = []
    real_init = embed_mod._ImageDataset.__init__

    def record(self, paths, preprocess):
        real_init(self, paths, preprocess)
        made.append(self)

    monkeypatch.setattr(embed_mod._ImageDataset, "__init__", record)
    es = embed_benchmark(bench, emb_tiny, store=Store(tmp_path / "s"), batch_size=4, num_workers=0)
    assert len(made) == 1
    size = len(pickle.dumps(made[0]))
    assert size < 100 * 1024, f"the workers' dataset pickles to {size / 2**20:.1f} MiB (the model came along)"

    # the picklable transform gives the same tensors as the backbone's preprocess, so the same embeddings
    from clipcal.data.images import load_image

    x = [emb_tiny.preprocess(load_image(bench.image_path(p))) for p in bench.table["path"]]
    clone = pickle.loads(pickle.dumps(emb_tiny.transform))
    for p, ref in zip(bench.table["path"], x):
        assert np.array_equal(clone(load_image(bench.image_path(p))).numpy(), ref.numpy())
    import torch

    _h, z = emb_tiny.encode_images(torch.stack(x))
    np.testing.assert_array_equal(es.embeddings, z.numpy())
