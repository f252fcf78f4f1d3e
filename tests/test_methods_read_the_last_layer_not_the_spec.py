"""Methods never recognise a backbone by matching its spec string: where the last layer comes from (the model's
own ``visual.proj``, the identity, or the bundled backbone's fixed random projection) is recorded with the
embeddings at embedding time (``EmbeddingSet.last_layer``), carried on ``FeatureData.last_layer``, and what CFR
reads; embedding sets stored before it was recorded get it derived once, from their spec, in one place
(:func:`clipcal.backbones.stored_last_layer`)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from clipcal.backbones import last_layer_info, stored_last_layer
from clipcal.embed import EmbeddingSet, embed_benchmark
from clipcal.methods.cfr import CFR
from clipcal.store import Store
from clipcal.synthetic import generate

LITE0 = "lite0-random-projection"


def test_every_backbone_says_where_its_last_layer_comes_from(emb_lite0, emb_tiny):
    assert emb_lite0.last_layer == last_layer_info(LITE0) and emb_lite0.last_layer["kind"] == emb_lite0.projection
    assert emb_tiny.last_layer == {**last_layer_info("exact"), "kind": emb_tiny.projection}
    assert "random orthonormal" in emb_lite0.last_layer["description"]


def test_the_embedding_set_records_the_last_layer_at_embedding_time(emb_lite0, emb_make_benchmark, tmp_path):
    bench = emb_make_benchmark(tmp_path / "imgs", n=6)
    es = embed_benchmark(bench, emb_lite0, store=Store(tmp_path / "store"), batch_size=4, num_workers=0)
    assert es.manifest["meta"]["last_layer"] == last_layer_info(LITE0)
    assert es.last_layer == last_layer_info(LITE0)


def test_a_set_stored_before_the_field_existed_gets_it_from_its_spec_once():
    assert stored_last_layer("bundled:efficientnet-lite0@224", "exact") == last_layer_info(LITE0)
    assert stored_last_layer("open_clip:ViT-B-32:openai", "exact") == last_layer_info("exact")
    assert stored_last_layer("open_clip:RN50:openai", "identity") == last_layer_info("identity")
    assert stored_last_layer("tiny:clip", "exact") == last_layer_info("exact")
    arrays = {"sample_ids": np.array(["a"]), "features": np.zeros((1, 4), np.float32),
              "embeddings": np.ones((1, 2), np.float32)}
    old_entry = SimpleNamespace(  # an entry whose manifest predates "last_layer"
        meta={"backbone_spec": "bundled:efficientnet-lite0", "projection": "exact", "has_text": False},
        key_fields={}, names=list(arrays), key="k", manifest={},
        array=lambda name, mmap=True: arrays[name])
    assert EmbeddingSet.from_entry(old_entry).last_layer == last_layer_info(LITE0)


def _data(spec: str, last_layer: dict | None):
    data = generate(n_train=200, n_val=80, n_test=80, dim=12, embed_dim=8, seed=1).data
    data.backbone_spec, data.last_layer = spec, last_layer
    return data


def test_cfr_describes_the_last_layer_from_the_embeddings_not_the_spec_string():
    fit = dict(erm_epochs=2, epochs=1, seed=0)
    # the bundled backbone's random projection under any spec text (a renamed or re-sized spec)
    r = CFR(**fit).fit(_data("my-backbone", last_layer_info(LITE0))).result_
    assert r.record["last_layer"] == last_layer_info(LITE0)["description"]
    # a spec that reads like the bundled one, but whose embeddings carry a model's own projection
    r = CFR(**fit).fit(_data("bundled:efficientnet-lite0", last_layer_info("exact"))).result_
    assert r.record["last_layer"] == "exact last layer (visual.proj)"
    # nothing recorded (synthetic data): the stored matrix's kind decides, as before
    r = CFR(**fit).fit(_data("", None)).result_
    assert r.record["last_layer"] == "exact last layer (visual.proj)"


def test_feature_data_carries_the_last_layer_through_subsets(emb_lite0):
    data = _data("x", last_layer_info(LITE0))
    assert data.subset("train").last_layer == last_layer_info(LITE0)
    es = SimpleNamespace(sample_ids=data.sample_ids, features=data.features, embeddings=data.embeddings,
                         proj_weight=data.proj_weight, projection="exact", has_text=False, backbone_spec="x",
                         skipped=pd.DataFrame(), last_layer=last_layer_info(LITE0))
    bench = SimpleNamespace(table=pd.DataFrame({"sample_id": data.sample_ids, "y": data.y, "a": data.a,
                                                "group": data.group, "split": data.split}),
                            class_names=data.class_names, attr_names=data.attr_names, name="b")
    from clipcal.methods.base import FeatureData

    assert FeatureData.from_store(bench, es).last_layer == last_layer_info(LITE0)
