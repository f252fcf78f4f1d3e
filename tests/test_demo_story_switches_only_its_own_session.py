"""A finished "Run the demo path" job makes its run the one the result pages show — in the session that started
it only. The job manager is shared by every session of the server (a team's dashboard, or each AppTest), so
another session's finished demo must never replace a run this session chose (seen in the full suite: every
later session opened on the demo path's ERM-only run instead of the one it asked for)."""

from __future__ import annotations

import time

from clipcal import pipeline
from pages.ui import resources, state


def _finished_demo_job(bench_spec: dict, spec: str):
    key = pipeline.demo_job_key(bench_spec, spec)
    job = resources.get_jobs().submit(key, lambda: "240 images embedded, 1 methods calibrated (erm)",
                                      label="Demo path (test)", restart=True)
    t0 = time.monotonic()
    while job.is_running and time.monotonic() - t0 < 30:
        time.sleep(0.05)
    assert job.status == "done", job.error_message
    return key


def test_another_sessions_finished_demo_does_not_replace_this_sessions_run(app, seeded_store):
    from clipcal.runs import run_calibration
    from clipcal.store import Store
    from tests.fixtures_app import _fast_hparams

    store = Store(seeded_store["root"])
    # a newer run (as the demo path stores), so "the demo's run" differs from the run this session chose
    newer = run_calibration(seeded_store["bench"], seeded_store["emb"], methods=["erm"],
                            hparams=_fast_hparams(["erm"]), store=store)
    key = pipeline.demo_job_key(seeded_store["bench_spec"], seeded_store["backbone"])
    try:
        _finished_demo_job(seeded_store["bench_spec"], seeded_store["backbone"])
        chosen = seeded_store["run_id"]
        newest = resources.runs_for(seeded_store["bench"], seeded_store["backbone"])[0]["id"]
        assert newest != chosen

        other = app(**{state.K_RUN: chosen})  # opens on Home, which shows the finished demo's story
        assert not other.exception
        assert any(h.value == "What happened" for h in other.subheader)  # the story is shown to everyone …
        assert other.session_state[state.K_RUN] == chosen  # … but this session's choice stays

        mine = app(**{state.K_RUN: chosen, state.K_DEMO_JOB: key})
        assert mine.session_state[state.K_RUN] == newest  # the session that started it lands on its run
    finally:
        store.delete("runs", newer.manifest["key_fields"])  # the shared test store stays as seeded
        resources.get_jobs().forget(key)  # nor does the finished job show on later sessions' Home
