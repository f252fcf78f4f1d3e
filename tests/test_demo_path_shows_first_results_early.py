""""Run the demo path" shows its first calibrated result as soon as it exists (issue 13.3): the model loads while
the benchmark builds, the fast methods (ERM, DFR, zero-shot) are stored as a run of their own before the slow ones
train, and Home shows that run while the job goes on."""

from __future__ import annotations

import sys
import threading

import pytest

from clipcal import pipeline
from pages.ui import resources, state
from pages.ui import story as story_ui


def _record_runs(monkeypatch) -> list[list[str]]:
    import clipcal.runs as runs

    calls: list[list[str]] = []
    monkeypatch.setattr(runs, "run_calibration", lambda bench, emb, methods, **kw: calls.append(list(methods)))
    return calls


def test_fast_methods_are_stored_first_then_every_method(seeded_embeddings, monkeypatch):
    calls = _record_runs(monkeypatch)
    pipeline.demo_path(seeded_embeddings["bench_spec"], seeded_embeddings["emb"].backbone_spec)
    assert calls == [["zeroshot", "erm", "dfr"], ["zeroshot", "erm", "jtt", "afr", "dfr", "cfr"]]
    calls.clear()
    pipeline.demo_path(seeded_embeddings["bench_spec"], seeded_embeddings["backbone"], methods=["erm", "dfr"])
    assert calls == [["erm", "dfr"]]  # nothing slow to wait for: one run


def test_both_runs_share_one_fit_memo(seeded_embeddings, monkeypatch):
    """The full run's ERM (and JTT's identification model, CFR's stage 1) is the first run's ERM fit, not a second
    training: both run_calibration calls see the same open fit memo, and none is left open afterwards."""
    import clipcal.runs as runs
    from clipcal.methods.fit_memo import active_memo

    seen = []
    monkeypatch.setattr(runs, "run_calibration", lambda bench, emb, methods, **kw: seen.append(active_memo()))
    pipeline.demo_path(seeded_embeddings["bench_spec"], seeded_embeddings["emb"].backbone_spec)
    assert len(seen) == 2 and seen[0] is not None and seen[0] is seen[1]
    assert active_memo() is None


def test_the_model_loads_while_the_benchmark_builds(seeded_embeddings, monkeypatch):
    """The build waits (up to 10 s) for the model load to start: before the change the load began only after
    the build returned, so it never started in time."""
    import clipcal.backbones as backbones

    loading, real_load, real_bench = threading.Event(), backbones.load_backbone, pipeline.load_bench
    loaded = []

    def load(*a, **k):
        loading.set()
        loaded.append(real_load(*a, **k))
        return loaded[-1]

    def build(*a, **k):
        assert loading.wait(10), "the model load did not start while the benchmark was built"
        return real_bench(*a, **k)

    monkeypatch.setattr(backbones, "load_backbone", load)
    monkeypatch.setattr(pipeline, "load_bench", build)
    _record_runs(monkeypatch)
    pipeline.demo_path(seeded_embeddings["bench_spec"], seeded_embeddings["backbone"], methods=["erm"])
    assert len(loaded) == 1 and loaded[0].model is None  # and closed when the path ended


@pytest.mark.slow
def test_home_shows_the_first_results_while_the_job_runs(app, seeded_store, monkeypatch):
    from clipcal.runs import run_calibration
    from clipcal.store import Store
    from tests.fixtures_app import _fast_hparams

    key = pipeline.demo_job_key(seeded_store["bench_spec"], seeded_store["backbone"])
    release = threading.Event()
    job = resources.get_jobs().submit(key, lambda: release.wait(60) and "done", label="Demo path (test)",
                                      restart=True)
    store = Store(seeded_store["root"])
    first = None
    try:
        at = app(**{state.K_DEMO_JOB: key})
        assert not at.exception
        assert not any(h.value == "First results" for h in at.subheader)  # older runs are not this job's
        reruns = []  # st.rerun calls made by the story (the job fragment's own reruns are not counted)
        monkeypatch.setattr(story_ui.st, "rerun", lambda *a, **k: reruns.append(1)
                            if sys._getframe(1).f_globals["__name__"] == story_ui.__name__ else None)
        first = run_calibration(seeded_store["bench"], seeded_store["emb"], methods=["erm"],
                                hparams=_fast_hparams(["erm"]), store=store)
        at.run()
        assert not at.exception
        assert job.is_running
        assert any(h.value == "First results" for h in at.subheader)
        assert any("still training" in c.value for c in at.caption)
        assert at.session_state[state.K_RUN] == pipeline.run_key(first)  # the session that started it sees it
        # the sidebar was drawn before the switch: the page asks for one rerun so it shows the new run, and only
        # once (the next pass finds the run already shown)
        assert reruns == [1]
        at.run()
        assert reruns == [1]
    finally:
        release.set()
        job.wait(30)
        if first is not None:
            store.delete("runs", first.manifest["key_fields"])
        resources.get_jobs().forget(key)
