"""clipcal.jobs: progress, cancel, errors captured, one job per key, results."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from clipcal.errors import Cancelled, DataError
from clipcal.jobs import CANCELLED, DONE, FAILED, JobManager, JobProgress


def _wait_until(cond, timeout=5.0):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def test_result_and_status():
    jobs = JobManager()
    job = jobs.submit("add", lambda a, b: a + b, 2, 3, label="adding")
    assert job.wait(5)
    assert job.status == DONE
    assert job.result == 5
    assert job.error is None and job.error_message == ""
    assert job.label == "adding"
    assert job.elapsed_s >= 0
    assert jobs.get("add") is job


def test_progress_tuple_form_computes_rate_and_eta():
    gate = threading.Event()

    def work(progress):
        progress(0, 10, "start")
        time.sleep(0.05)
        progress(5, 10, "half")
        gate.wait(5)
        return "ok"

    job = JobManager().submit("p", work)
    _wait_until(lambda: job.progress.done == 5)
    p = job.progress
    assert p.total == 10 and p.message == "half"
    assert p.fraction == pytest.approx(0.5)
    # 5 items in ≥ 0.05 s → rate ≤ 100/s, and ETA = remaining / rate
    assert 0 < p.rate <= 100.0 + 1e-6
    assert p.eta_s == pytest.approx(5 / p.rate)
    assert [h.done for h in job.history] == [0, 5]
    gate.set()
    assert job.wait(5) and job.result == "ok"


@dataclass
class _CoreProgress:  # the shape of clipcal.embed.Progress
    done: int
    total: int
    images_per_s: float
    eta_s: float
    message: str
    stage: str = "embed"


def test_progress_object_form_keeps_reporters_figures_and_extras():
    def work(progress):
        progress(_CoreProgress(30, 120, 15.0, 6.0, "30 / 120 images"))
        return None

    job = JobManager().submit("o", work)
    assert job.wait(5) and job.status == DONE
    p = job.progress
    assert (p.done, p.total, p.rate, p.eta_s, p.message) == (30, 120, 15.0, 6.0, "30 / 120 images")
    assert p.extra == {"stage": "embed"}
    assert p.fraction == pytest.approx(0.25)


def test_progress_keywords_and_unknown_total():
    def work(progress):
        progress(done=3, message="epoch 3", curves="c")

    job = JobManager().submit("k", work)
    job.wait(5)
    j2 = JobManager().submit("s", lambda progress: (progress(2, 4), progress("fitting UMAP")))
    j2.wait(5)
    assert (j2.progress.done, j2.progress.total, j2.progress.message) == (2, 4, "fitting UMAP")
    assert job.progress.done == 3 and job.progress.total is None and job.progress.fraction is None
    assert job.progress.extra == {"curves": "c"}
    assert JobProgress().fraction is None


def test_cancel_through_event():
    started = threading.Event()

    def work(progress, cancel):
        started.set()
        while not cancel.is_set():
            time.sleep(0.005)
        raise Cancelled("stopped", hint="kept")

    jobs = JobManager()
    job = jobs.submit("c", work)
    started.wait(5)
    assert job.is_running
    assert jobs.cancel("c") is True
    assert job.wait(5)
    assert job.status == CANCELLED and job.cancel_requested
    assert "stopped" in job.error_message
    assert jobs.cancel("c") is False  # nothing running any more


def test_cancel_through_progress_callback():
    """A function that only reports progress stops at its next report after cancel()."""
    reached = []
    started = threading.Event()

    def work(progress):
        for i in range(1000):
            progress(i, 1000)
            reached.append(i)
            started.set()
            time.sleep(0.002)
        return "finished"

    job = JobManager().submit("cp", work)
    started.wait(5)
    job.cancel()
    assert job.wait(5)
    assert job.status == CANCELLED
    assert job.result is None
    assert len(reached) < 1000


def test_error_captured_with_details():
    def bad():
        raise DataError("metadata.csv row 3: y is 'x'", hint="fix the row")

    def crash():
        return 1 / 0

    jobs = JobManager()
    j1, j2 = jobs.submit("bad", bad), jobs.submit("crash", crash)
    j1.wait(5), j2.wait(5)
    assert j1.status == FAILED and isinstance(j1.error, DataError)
    assert j1.error_message == "metadata.csv row 3: y is 'x'\n  → fix the row"
    assert j2.status == FAILED and isinstance(j2.error, ZeroDivisionError)
    assert j2.error_message.startswith("ZeroDivisionError:")
    assert "1 / 0" in j2.error_details and "Traceback" in j2.error_details


def test_one_job_per_key():
    gate = threading.Event()
    calls = []

    def work(tag):
        calls.append(tag)
        gate.wait(5)
        return tag

    jobs = JobManager()
    j1 = jobs.submit("same", work, "first")
    j2 = jobs.submit("same", work, "second")  # double click while running
    other = jobs.submit("other", work, "third")
    assert j2 is j1
    gate.set()
    j1.wait(5), other.wait(5)
    assert j1.result == "first" and other.result == "third"
    assert sorted(calls) == ["first", "third"]
    # once finished, the key can be run again
    j3 = jobs.submit("same", work, "again")
    j3.wait(5)
    assert j3 is not j1 and j3.result == "again" and jobs.get("same") is j3


def test_progress_and_cancel_passed_only_when_named():
    seen = {}

    def named(x, progress=None, *, cancel=None):
        seen.update(x=x, progress=progress, cancel=cancel)

    def forwards_options(**options):  # like build_demo(**options): must not receive cancel / progress
        seen["options"] = options

    jobs = JobManager()
    jobs.submit("kw", named, x=1).wait(5)
    assert seen["x"] == 1 and callable(seen["progress"]) and isinstance(seen["cancel"], threading.Event)
    jobs.submit("opts", forwards_options, n_train=8).wait(5)
    assert seen["options"] == {"n_train": 8}
    j = jobs.submit("plain", lambda: 7)
    j.wait(5)
    assert j.result == 7


def test_forget_prune_and_cancel_all():
    gate = threading.Event()
    jobs = JobManager(max_finished=2)
    for i in range(4):
        jobs.submit(f"f{i}", lambda: None).wait(5)
    # pruning runs at submit: the 2 newest finished jobs are kept beside the one just started
    assert [j.key for j in jobs.jobs()] == ["f1", "f2", "f3"]
    running = jobs.submit("r", lambda cancel: gate.wait(5) or cancel.is_set())
    jobs.forget("r")  # a running job is kept
    assert jobs.get("r") is running
    jobs.forget("f3")
    assert jobs.get("f3") is None
    assert jobs.jobs(running_only=True) == [running]
    jobs.cancel_all()
    gate.set()
    running.wait(5)
    assert running.status == DONE and running.result is True  # finished normally, saw the cancel flag


def test_rate_is_measured_over_the_recent_window(monkeypatch):
    """A fast first phase (CFR's ERM stage) must not make the ETA of a slow second phase seconds long."""
    import clipcal.jobs as J

    monkeypatch.setattr(J, "RATE_WINDOW_S", 0.3)
    gate = threading.Event()

    def work(progress):
        progress(0, 100, "start")
        progress(50, 100, "fast phase")      # half the work at once
        time.sleep(0.4)
        progress(51, 100, "slow phase")
        time.sleep(0.4)
        progress(52, 100, "slow phase")       # 1 item per ≈ 0.4 s now
        gate.wait(5)
        return "ok"

    job = JobManager().submit("w", work)
    _wait_until(lambda: job.progress.done == 52)
    p = job.progress
    assert p.rate < 5, p.rate                 # since the start it would be ≥ 52 / 0.8 s = 65/s
    assert p.eta_s > 48 / 5
    gate.set()
    assert job.wait(5)
