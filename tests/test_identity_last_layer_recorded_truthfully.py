"""A run records how its starting last layer W was obtained, truthfully (issue 10, item 10).

An RN50-style backbone (projection not a single matrix) stores ``h = z`` and ``proj_weight = I`` with
``projection = "identity"``. That was recorded as "approximation: last layer initialised by given" — a word from
the code, not a description. Kind-level rule: every source of W has one plain description
(``clipcal.methods._train.WEIGHT_SOURCES``) used by every method's notes and CFR's ``last_layer`` record.
"""

from __future__ import annotations

import numpy as np

from clipcal.methods._train import WEIGHT_SOURCES, initial_weight
from clipcal.methods.base import FeatureData
from clipcal.methods.cfr import CFR
from clipcal.methods.erm import ERM
from clipcal.synthetic import generate


def _rn50_style(proj: np.ndarray | None = None) -> FeatureData:
    d = generate(n_train=300, n_val=120, n_test=120, dim=16, seed=3).data
    z = d.embeddings
    return FeatureData(features=z, embeddings=z, y=d.y, a=d.a, group=d.group, split=d.split,
                       sample_ids=d.sample_ids, class_names=d.class_names, attr_names=d.attr_names,
                       proj_weight=np.eye(z.shape[1], dtype=np.float32) if proj is None else proj,
                       projection="identity", backbone_spec="open_clip:RN50:random")


def test_a_stored_identity_layer_is_recorded_as_the_identity_approximation():
    data = _rn50_style()
    W, source = initial_weight(data)
    assert source == "identity" and np.array_equal(W, np.eye(data.embed_dim, dtype=np.float32))
    rec = CFR(erm_epochs=2, epochs=1).fit(data).result_.record
    assert rec["last_layer"].startswith("identity (approximation)")
    assert "given" not in rec["last_layer"]
    assert any(n.startswith("last layer W: identity (approximation)") for n in rec["notes"])
    erm = ERM(epochs=2).fit(data).result_.record
    assert erm["init"]["weight"] == "identity"
    assert any(n.startswith("last layer W: identity (approximation)") for n in erm["notes"])


def test_a_stored_non_identity_matrix_on_an_identity_backbone_is_named_as_such():
    rng = np.random.default_rng(0)
    data = _rn50_style(rng.standard_normal((16, 16)).astype(np.float32))
    assert initial_weight(data)[1] == "stored-approximation"
    assert "not the backbone's own projection" in WEIGHT_SOURCES["stored-approximation"]


def test_every_weight_source_has_a_description():
    assert set(WEIGHT_SOURCES) == {"exact", "identity", "stored-approximation", "least-squares", "given"}
    assert all(isinstance(v, str) and len(v) > 20 for v in WEIGHT_SOURCES.values())
