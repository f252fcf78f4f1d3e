"""Calibrate page, live training curves: the job fragment (polled every second) rebuilds the plotly figure only
when new metrics arrived, and still draws the chart on every run."""

from __future__ import annotations

import time

import pytest

from clipcal import views
from clipcal.jobs import Job
from pages.ui import jobs

METRICS = {"loss": 1.0, "loss_ce": 0.5, "val_worst_group": 0.4}


def _job() -> Job:
    job = Job("calib.test", "fake calibration")
    job.report(done=0, total=10, message="starting")  # no metrics yet
    return job


def test_signature_counts_metric_rows_and_ignores_plain_progress():
    job = _job()
    assert views.live_curves_signature(job.history) == (0, None, None)
    job.report(done=1, total=10, stage="erm", metrics=METRICS)
    sig1 = views.live_curves_signature(job.history)
    assert sig1[:2] == (3, 1.0) and sig1 == (len(views.live_curves_table(job)), 1.0, job.history[-1].time)
    job.report(done=1.5, total=10, message="batch 5/10")  # progress within an epoch: same curves
    assert views.live_curves_signature(job.history) == sig1
    job.report(done=2, total=10, stage="erm", metrics={"loss": 0.8, "val_worst_group": float("nan")})
    assert views.live_curves_signature(job.history)[:2] == (4, 2.0)  # NaN is not a row (as in the table)


def test_signature_changes_when_the_capped_history_keeps_its_length():
    job = _job()
    job.max_history = 3
    for e in range(1, 4):
        job.report(done=e, total=10, stage="cfr", metrics={"loss": 1.0 / e})
    before = views.live_curves_signature(job.history)
    time.sleep(0.002)
    job.report(done=3, total=10, stage="cfr", metrics={"loss": 0.1})  # same count, same epoch, later report
    after = views.live_curves_signature(job.history)
    assert before[:2] == after[:2] == (3, 3.0) and after != before


@pytest.fixture
def builds(monkeypatch):
    """Count the calls of clipcal.figures.training_curves_figure (what costs ~0.3 s of CPU per call)."""
    import clipcal.figures as F

    calls = []
    real = F.training_curves_figure

    def counted(curves, **kw):
        calls.append(len(curves))
        return real(curves, **kw)

    monkeypatch.setattr(F, "training_curves_figure", counted)
    return calls


def test_figure_is_rebuilt_only_when_new_metrics_arrived(builds):
    job, cache = _job(), {}
    assert jobs.live_curves_figure(job, cache, "k") is None and builds == []  # nothing reported yet
    job.report(done=1, total=10, stage="erm", metrics=METRICS)
    fig = jobs.live_curves_figure(job, cache, "k")
    assert builds == [3] and fig.layout.title.text.startswith("Live")
    for i in range(5):  # polls without news, incl. plain progress reports: the same object, no rebuild
        job.report(done=1 + i / 10, total=10, message="batch")
        assert jobs.live_curves_figure(job, cache, "k") is fig
    assert builds == [3]
    job.report(done=2, total=10, stage="erm", metrics=METRICS)
    fig2 = jobs.live_curves_figure(job, cache, "k")
    assert fig2 is not fig and builds == [3, 6]
    assert sorted(set(fig2.data[0].x)) == [1.0, 2.0]
    # another job under the same key (a new run) never reuses the old figure, even with equal-looking history
    other = _job()
    other.submitted = job.submitted + 1
    other.history = list(job.history)
    assert jobs.live_curves_figure(other, cache, "k") is not fig2 and builds == [3, 6, 6]


def _fragment_script():
    """AppTest script: the Calibrate page's job widget over a running job that reported one epoch."""
    import time

    import streamlit as st

    from pages.ui import jobs as panels
    from pages.ui import resources

    jobs = resources.get_jobs()
    if jobs.get("calib.live-test") is None:
        def work(progress=None, cancel=None):
            progress(done=1, total=5, stage="cfr", metrics={"loss": 1.0, "val_worst_group": 0.5})
            cancel.wait(60)

        job = jobs.submit("calib.live-test", work, label="fake calibration")
        st.session_state["test.cancel"] = job.cancel_event
        t0 = time.monotonic()
        while not job.history and time.monotonic() - t0 < 10:
            time.sleep(0.02)
    panels.job_status("calib.live-test", live="curves")


def test_fragment_draws_the_cached_chart_on_every_run(builds):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_fragment_script, default_timeout=60)
    try:
        at.run()
        assert not at.exception
        assert len(at.get("plotly_chart")) == 1 and "fake calibration" in at.get("progress")[0].proto.text
        first = at.session_state["_live.calib.live-test"][1]
        at.run()
        at.run()
        assert not at.exception
        assert len(at.get("plotly_chart")) == 1  # re-emitted: not dropped by the fragment
        assert at.session_state["_live.calib.live-test"][1] is first and builds == [2]
    finally:
        at.session_state["test.cancel"].set()
