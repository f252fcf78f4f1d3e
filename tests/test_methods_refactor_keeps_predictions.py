"""Refactoring the methods into estimators (issue 11.3: shared last-layer hyperparameters declared once, CFR's
``_fit`` split into its stages, fitted attributes) changes no number.

Kind-level rule: a seeded fit gives bit-identical probabilities, predictions, calibrated embeddings and
calibration sets before and after a refactor. The golden file ``tests/golden/methods_before_estimator_refactor.json``
holds, per array, the SHA-256 of its bytes with its dtype and shape (equal digests = bit-identical arrays; text, not
a binary fixture) and its sum (to tell how far a mismatch is). The arrays were recorded from the code *before* the
refactor (commit 01d96de); to record again, run this module as a script (before a refactor, never after)::

    HF_HUB_OFFLINE=1 .venv/bin/python tests/test_methods_refactor_keeps_predictions.py tests/golden/methods_before_estimator_refactor.json

The cases cover every CFR path (auto / paper's rule / cross-fit; hard and random-other-class negatives; the
pretrained and the ERM start; fixed and learnt scale; each selection outcome ERM / CFR epoch) and ERM, JTT, AFR.
The CPU is named so a GPU machine computes the same thing (the recording ran on the CPU).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).parent / "golden" / "methods_before_estimator_refactor.json"

CASES = {
    "cfr_auto": ("cfr", dict(erm_epochs=4, epochs=3, lr=1e-3, seed=0)),
    "cfr_train_rand": ("cfr", dict(erm_epochs=3, epochs=2, lr=1e-3, seed=1, calibration_errors="train",
                                   negatives="random-other-class", loss_schedule="cosine")),
    "cfr_crossfit_erm": ("cfr", dict(erm_epochs=3, epochs=2, lr=5e-3, seed=2, calibration_errors="cross-fit",
                                     init="erm", learn_scale=True)),
    "cfr_train_hard": ("cfr", dict(erm_epochs=2, epochs=3, lr=1e-2, seed=0, calibration_errors="train")),
    "erm": ("erm", dict(epochs=4, seed=0)),
    "jtt": ("jtt", dict(epochs=3, id_epochs=2, seed=0)),
    "afr": ("afr", dict(epochs=3, seed=0, gammas=[0.0, 4.0], regs=[0.0, 0.1])),
}


def _data():
    from clipcal.synthetic import generate

    return generate(n_train=300, n_val=120, n_test=120, dim=16, seed=3).data


def _fit(name: str, data):
    from clipcal.methods import make_method

    method, hp = CASES[name]
    return make_method(method, **hp, device="cpu").fit(data)


def fingerprint(a: np.ndarray) -> dict:
    """``{dtype, shape, sha256, sum}`` of an array: the digest of its C-order bytes decides bit identity."""
    a = np.ascontiguousarray(a)
    return {"dtype": str(a.dtype), "shape": list(a.shape), "sha256": hashlib.sha256(a.tobytes()).hexdigest(),
            "sum": float(a.sum(dtype=np.float64))}


def _arrays(r) -> dict:
    out = {"probs": r.probs}
    if r.embeddings_after is not None:
        out["z"] = r.embeddings_after
    if r.calibration_set is not None:
        out["cal"] = r.calibration_set
    return out


def record(path: str) -> None:
    """Write the golden file from the code as it is now (run before a refactor, never after)."""
    data = _data()
    out = {name: {k: fingerprint(v) for k, v in _arrays(_fit(name, data).result_).items()} for name in CASES}
    Path(path).write_text(json.dumps(out, indent=1) + "\n")


@pytest.fixture(scope="module")
def data():
    return _data()


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("name", list(CASES))
def test_seeded_fit_is_bit_identical_to_the_recording_before_the_refactor(name, data, golden):
    r = _fit(name, data).result_
    got = _arrays(r)
    assert sorted(got) == sorted(golden[name])  # the same outputs exist (z only for CFR, cal for CFR / JTT)
    for k, arr in got.items():
        assert fingerprint(arr) == golden[name][k], f"{name} {k} differs from the recording"
    np.testing.assert_array_equal(r.pred, r.probs.argmax(1))


if __name__ == "__main__":
    record(sys.argv[1])
