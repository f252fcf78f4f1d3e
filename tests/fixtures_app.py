"""Fixtures of the dashboard tests (auto-loaded by tests/conftest.py).

``seeded_store`` — the session store (``CLIPCAL_CACHE``) seeded by calling the core directly, the way a
headless ``python -m clipcal`` job would: ``demo_small`` (240 images) embedded with ``tiny:clip``, one
calibration run with every method that applies (short training: the numbers need not be good, only real),
and the joint UMAP of CFR's before/after embeddings. Returns a dict with ``root, bench, emb, run, run_id,
methods, n_samples, bench_spec, backbone``.

``seeded_embeddings`` — the first half of it (embeddings only), for pages that need no run.

``app`` — a factory ``app(page=None)`` for an AppTest of app.py with the session state pointing at the
seeded benchmark and backbone, already run once (and switched to ``page`` if given). Tests of pages that
show runs request ``seeded_store`` as well.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BACKBONE = "tiny:clip"
#: Short training so the whole seeding stays around half a minute on 2 cores.
FAST_HPARAMS = {
    "erm": {"epochs": 8}, "jtt": {"epochs": 8}, "afr": {"epochs": 8, "gammas": [0.0, 4.0], "regs": [0.0]},
    "dfr": {"n_retrain": 2}, "cfr": {"epochs": 8, "erm_epochs": 8}, "zeroshot": {},
}


def _fast_hparams(methods) -> dict:
    """Only the hyperparameters each method really has (their names come from its HPARAMS)."""
    from clipcal.methods import get_method

    out = {}
    for m in methods:
        known = get_method(m).HPARAMS
        out[m] = {k: v for k, v in FAST_HPARAMS.get(m, {}).items() if k in known}
    return out


@pytest.fixture(scope="session")
def seeded_embeddings(demo_small, emb_tiny, _session_store):
    """The session store with ``demo_small`` embedded by ``tiny:clip`` (no run yet)."""
    from clipcal.embed import embed_benchmark
    from clipcal.store import Store
    from tests.fixtures_data import DEMO_SMALL

    emb = embed_benchmark(demo_small, emb_tiny, store=Store(_session_store))
    return {"root": _session_store, "bench": demo_small, "emb": emb, "n_samples": len(emb.sample_ids),
            "bench_spec": {"name": "demo", "root": None, "options": dict(DEMO_SMALL)}, "backbone": BACKBONE}


@pytest.fixture(scope="session")
def seeded_store(seeded_embeddings, emb_tiny):
    """``seeded_embeddings`` plus a run of every applicable method and CFR's joint UMAP (module docstring)."""
    from clipcal.methods import FeatureData
    from clipcal.projection import joint_umap
    from clipcal import pipeline
    from clipcal.methods.applicability import available_methods
    from clipcal.store import Store

    t0 = time.monotonic()
    s = dict(seeded_embeddings)
    bench, emb, store = s["bench"], s["emb"], Store(s["root"])
    classes = available_methods()
    methods = [m for m in classes if emb_tiny.has_text or not classes[m].needs_text]
    from clipcal.runs import run_calibration

    run = run_calibration(bench, emb, methods=methods, hparams=_fast_hparams(methods), store=store)
    run_id = pipeline.run_key(run)
    fd = FeatureData.from_store(bench, emb)
    after = run.results["cfr"].embeddings_after if "cfr" in run.results else None
    # the joint UMAP the Representations page shows for CFR (same key fields and parameters as the page)
    joint_umap(fd.embeddings, after, store=store,
               key_fields={"benchmark": bench.fingerprint(), "backbone": BACKBONE, "run": run_id,
                           "method": "cfr" if after is not None else "before"}, **pipeline.UMAP_PARAMS)
    print(f"seeded the store with a run and a projection in {time.monotonic() - t0:.1f} s")
    s.update(run=run, run_id=run_id, methods=list(run.results))
    return s


@pytest.fixture
def app(seeded_embeddings):
    """``app(page=None, **state)`` → an AppTest of app.py over the seeded store, run once."""
    from streamlit.testing.v1 import AppTest

    from pages.ui.state import K_BACKBONE, K_BENCH

    def make(page: str | None = None, timeout: float = 120, **state):
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout)
        at.session_state[K_BENCH] = dict(seeded_embeddings["bench_spec"])
        at.session_state[K_BACKBONE] = seeded_embeddings["backbone"]
        for k, v in state.items():
            at.session_state[k] = v
        at.run()
        if page:
            at.switch_page(f"pages/{page}.py")
            at.run()
        return at

    return make


@pytest.fixture
def image_only_backbone(monkeypatch):
    """The seeded embeddings as an image-only backbone gives them (``has_text=False``), for pages that must say
    what they cannot do without a text tower."""
    import dataclasses

    from pages.ui import resources

    real = resources.load_embeddings
    monkeypatch.setattr(resources, "load_embeddings",
                        lambda bench, spec=None: dataclasses.replace(real(bench, spec), has_text=False))


def map_key(at, opt: str) -> str:
    """Key of the Data page's column-mapping selectbox ``opt`` (``"y_col"``, …) for the CSV shown now: those keys
    carry a hash of the file and its header (pages/data.py), so the one present is looked up by its prefix."""
    keys = [sb.key for sb in at.selectbox if str(sb.key).startswith(f"data.map.{opt}.")]
    assert len(keys) == 1, f"expected one mapping selectbox for {opt}, found {keys}"
    return keys[0]
