"""The run story is built once per (run, method) and served from the page memo on reruns (issue 14.3: at CelebA
size building it on every rerun was a measurable part of the Representations page's ≈ 1 s rerun)."""

from __future__ import annotations

from clipcal import story
from pages.ui import state
from tests.test_app_setup_pages import _no_exception


def test_reruns_do_not_rebuild_the_story(app, seeded_store, monkeypatch):
    built = []
    real = story.run_story
    monkeypatch.setattr(story, "run_story", lambda *a, **k: built.append(1) or real(*a, **k))
    at = app("representations", **{state.K_RUN: seeded_store["run_id"]})
    _no_exception(at)
    first = len(built)
    headline = [m.value for m in at.markdown if m.value.startswith("**")][0]
    at.run()
    at.run()
    _no_exception(at)
    assert len(built) == first <= 1  # the first render may find it memoised by an earlier test: never rebuilt
    assert headline in [m.value for m in at.markdown]
