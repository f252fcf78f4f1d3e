"""The demo path holds at most one backbone on the device (issue 15): the dashboard's job uses the shared model
slot instead of loading a second copy, and the CLI's call closes the model it loaded when it ends.

Every load goes through ``clipcal.backbones.load_backbone`` (patched here to count); a model is resident until
``Backbone.close`` drops it (``model.model is None``)."""

from __future__ import annotations

import pytest

from clipcal import pipeline
from tests.fixtures_data import DEMO_SMALL

SPEC = {"name": "demo", "root": None, "options": dict(DEMO_SMALL)}


def _count_loads(monkeypatch) -> list[dict]:
    """Patch ``load_backbone``: each load appends ``{"model", "open_before"}`` — the models loaded earlier in the
    test that were still resident when this one loaded."""
    import clipcal.backbones as backbones

    real, loads = backbones.load_backbone, []

    def counting(*args, **kwargs):
        open_before = sum(rec["model"].model is not None for rec in loads)
        model = real(*args, **kwargs)
        loads.append({"model": model, "open_before": open_before})
        return model

    monkeypatch.setattr(backbones, "load_backbone", counting)
    return loads


@pytest.mark.slow
def test_cli_demo_path_closes_the_model_it_loaded(demo_small, tmp_path, monkeypatch):
    from clipcal.store import Store

    loads = _count_loads(monkeypatch)
    summary = pipeline.demo_path(SPEC, "tiny:clip", methods=["erm"], store=Store(tmp_path / "store"))
    assert summary.startswith(f"{len(demo_small.table)} images embedded")
    assert len(loads) == 1
    assert loads[0]["model"].model is None, "the demo path left its backbone loaded after it ended"


@pytest.mark.slow
def test_dashboard_demo_path_uses_the_shared_model(tmp_store_root, monkeypatch):
    """The Embed page (or a probe) loaded the model into the shared slot; the demo job then builds and embeds
    the demo in an empty store with that same model: one load in all, never two models resident, the slot's
    model still usable afterwards. (ERM only, so it is quick.)"""
    from pages.ui import jobs, resources

    real = pipeline.demo_path
    monkeypatch.setattr(pipeline, "demo_path", lambda *a, **k: real(*a, **{**k, "methods": ["erm"]}))
    loads = _count_loads(monkeypatch)
    resources.model_slot().close()  # another test's model: closed now, or by its last user
    with resources.model_lease("tiny:clip"):
        pass
    summary = jobs._demo_worker(SPEC, "tiny:clip")
    assert summary.startswith(f"{sum(DEMO_SMALL[k] for k in ('n_train', 'n_val', 'n_test'))} images embedded")
    assert len(loads) == 1, f"the demo path loaded {len(loads)} models (the shared one is already loaded)"
    assert all(rec["open_before"] == 0 for rec in loads)
    with resources.loaded_model("tiny:clip") as model:
        assert model is loads[0]["model"] and model.model is not None
    resources.model_slot().close()
    assert loads[0]["model"].model is None
