"""A validation split without images of some class is noted on every method's record (new-user report: with only
landbirds in val, "validation worst-class accuracy" silently was the landbird accuracy)."""

from __future__ import annotations

import dataclasses

import numpy as np


def test_a_validation_split_missing_a_class_is_noted_on_every_method(syn_small_ds):
    from clipcal.methods import make_method
    from clipcal.methods.base import FeatureData

    bench = syn_small_ds.benchmark()
    t = bench.table.copy()
    t = t[~((t["split"] == "val") & (t["y"] == 1))]
    es = syn_small_ds.embedding_set()
    keep = np.isin(es.sample_ids, t["sample_id"].to_numpy())
    es.sample_ids, es.features, es.embeddings = es.sample_ids[keep], es.features[keep], es.embeddings[keep]
    fd = FeatureData.from_store(dataclasses.replace(bench, table=t), es)
    note = [n for n in fd.notes if n.startswith("the validation split has no images of class(es)")]
    assert len(note) == 1 and repr(bench.class_names[1]) in note[0]
    res = make_method("erm", epochs=2).fit(fd)
    assert note[0] in res.result_.record["notes"]
    assert not any("validation split" in n for n in FeatureData.from_store(bench, syn_small_ds.embedding_set()).notes)
