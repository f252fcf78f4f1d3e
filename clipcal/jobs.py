"""Background jobs for the dashboard: long work (embedding, calibration, UMAP) in worker threads.

A Streamlit rerun (every widget click) re-executes the page script and would kill work done in the script
thread (field-notes.md, pitfall 6). So pages hand long work to a :class:`JobManager` that lives for the
whole server process (``st.cache_resource``) and poll the :class:`Job` it returns:

* **one job per key** — ``submit(key, …)`` while a job with that key is pending or running returns the running
  job instead of starting a second one (double clicks, two tabs);
* **progress** — the job's function gets a ``progress`` callback accepting the core's progress shapes
  (an object with ``done``/``total`` such as ``clipcal.embed.Progress``, or ``(done, total[, message])``);
  the job keeps the latest :class:`JobProgress` with rate and ETA;
* **cancel** — ``job.cancel()`` sets a ``threading.Event`` passed as ``cancel`` to functions that accept it;
  the ``progress`` callback also raises :class:`~clipcal.errors.Cancelled` once the event is set, so
  functions that only report progress stop at their next report. What the core wrote so far is its own
  business (it writes atomically and keeps finished shards);
* **status / result / error** — ``pending → running → done | failed | cancelled``; the return value or the
  exception (with its formatted traceback for an expander) is kept on the job.

No Streamlit here: the module is plain ``threading`` and is tested directly (tests/test_jobs.py).
"""

from __future__ import annotations

import inspect
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from clipcal.errors import Cancelled, ClipcalError

PENDING, RUNNING, DONE, FAILED, CANCELLED = "pending", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)


#: seconds of recent reports the rate (and so the ETA) is measured over
RATE_WINDOW_S = 60.0


@dataclass(frozen=True)
class JobProgress:
    """A snapshot of a job's progress.

    Attributes:
        done: items finished (images, epochs, steps — whatever the function counts).
        total: items in all; ``None`` when unknown.
        rate: items per second (the reporter's own figure if it gave one, else measured over the last
            :data:`RATE_WINDOW_S` seconds of the current stage), ``None`` before two reports.
        eta_s: seconds left, ``None`` when unknown.
        message: the reporter's last message ("" if none).
        time: ``time.monotonic()`` of the report.
        extra: anything else the reporter attached (``stage``, ``curves``…), for pages to show.
    """

    done: float = 0
    total: float | None = None
    rate: float | None = None
    eta_s: float | None = None
    message: str = ""
    time: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        """``done / total`` clipped to [0, 1]; ``None`` when the total is unknown or zero."""
        if not self.total:
            return None
        return max(0.0, min(1.0, float(self.done) / float(self.total)))


class Job:
    """One unit of background work; created by :meth:`JobManager.submit`, never directly.

    Attributes:
        key: the manager key (one running job per key).
        label: human-readable name shown by pages.
        status: ``pending`` / ``running`` / ``done`` / ``failed`` / ``cancelled``.
        result: the function's return value once ``done``.
        error: the exception once ``failed`` or ``cancelled`` (``None`` otherwise).
        error_details: formatted traceback of ``error`` (for an expander; ``""`` if none).
        started / finished: ``time.time()`` stamps (``None`` until they happen).
        history: every progress snapshot, oldest first (capped at ``max_history``).
    """

    def __init__(self, key: str, label: str, max_history: int = 2000):
        self.key = key
        self.label = label
        self.status = PENDING
        self.result: Any = None
        self.error: BaseException | None = None
        self.error_details = ""
        self.submitted = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self.history: list[JobProgress] = []
        self.max_history = max_history
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._t0: float | None = None
        self._first: tuple[float, float] | None = None  # (time, done) of the first report, for the rate
        self._progress = JobProgress()
        self.thread: threading.Thread | None = None

    # -- state seen by pages -------------------------------------------------------------------------
    @property
    def progress(self) -> JobProgress:
        """Latest :class:`JobProgress` snapshot."""
        with self._lock:
            return self._progress

    @property
    def is_running(self) -> bool:
        """True while pending or running."""
        return self.status not in FINISHED

    @property
    def cancel_requested(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._cancel.is_set()

    @property
    def cancel_event(self) -> threading.Event:
        """The event handed to the function as ``cancel``."""
        return self._cancel

    @property
    def elapsed_s(self) -> float:
        """Seconds from start to finish (or to now while running); 0 before start."""
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started

    @property
    def error_message(self) -> str:
        """``str(error)`` for a :class:`ClipcalError` (its message + hint), else ``"<Type>: <message>"``."""
        if self.error is None:
            return ""
        if isinstance(self.error, ClipcalError):
            return str(self.error)
        return f"{type(self.error).__name__}: {self.error}"

    def cancel(self) -> None:
        """Ask the job to stop; it ends as ``cancelled`` at the function's next check or report."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job finished; return whether it did within ``timeout`` seconds."""
        return self._done.wait(timeout)

    def __repr__(self) -> str:
        return f"Job({self.key!r}, {self.status}, {self.progress.done}/{self.progress.total})"

    # -- called from the worker thread ---------------------------------------------------------------
    def report(self, *args, **kwargs) -> None:
        """The ``progress`` callback given to the function.

        Accepts ``report("message")`` (keeps the counts), ``report(obj)`` where ``obj`` has ``done`` and
        ``total`` (and optionally ``images_per_s`` /
        ``rate``, ``eta_s``, ``message``; other public attributes go to ``extra``), ``report(done, total)``,
        ``report(done, total, message)``, or keywords ``done=, total=, message=, rate=, eta_s=, **extra``.

        Raises:
            Cancelled: when :meth:`cancel` was called, so that the function stops here.
        """
        if self._cancel.is_set():
            raise Cancelled("cancelled by the user", hint="work finished so far is kept; start again to resume")
        now = time.monotonic()
        extra: dict = {}
        rate = eta = None
        message = ""
        if len(args) == 1 and isinstance(args[0], str):  # a status message alone (e.g. "fitting UMAP")
            prev = self._progress
            done, total, message = kwargs.pop("done", prev.done), kwargs.pop("total", prev.total), args[0]
        elif len(args) == 1 and not isinstance(args[0], (int, float)):
            obj = args[0]
            if isinstance(obj, dict):
                src = dict(obj)
            else:
                src = {k: getattr(obj, k) for k in dir(obj) if not k.startswith("_")
                       and not callable(getattr(obj, k, None))}
            done, total = src.pop("done", 0), src.pop("total", None)
            rate = src.pop("images_per_s", None)
            rate = src.pop("rate", rate)
            eta = src.pop("eta_s", None)
            message = str(src.pop("message", "") or "")
            extra.update(src)
        else:
            done = args[0] if len(args) > 0 else kwargs.pop("done", 0)
            total = args[1] if len(args) > 1 else kwargs.pop("total", None)
            message = str(args[2] if len(args) > 2 else kwargs.pop("message", "") or "")
        rate = kwargs.pop("rate", rate)
        eta = kwargs.pop("eta_s", eta)
        extra.update(kwargs)
        done = float(done or 0)
        total = float(total) if total is not None else None
        with self._lock:
            prev = self._progress
            # a new stage (count going back, or another total) restarts the rate measurement
            if self._first is None or done < self._first[1] or (self.history and total != prev.total):
                self._first = (now, done)
            t_first, d_first = self._first
            # rate over the last RATE_WINDOW_S of this stage (not since its start: a method whose first phase
            # is fast — CFR's ERM stage — would otherwise promise an ETA of seconds for minutes)
            ref_t, ref_d = t_first, d_first
            for q in reversed(self.history):
                if q.time < t_first:
                    break
                ref_t, ref_d = q.time, q.done
                if now - q.time >= RATE_WINDOW_S:
                    break
            if rate is None and now > ref_t and done > ref_d:
                rate = (done - ref_d) / (now - ref_t)
            if eta is None and rate and total is not None:
                eta = max(total - done, 0.0) / rate
            p = JobProgress(done=done, total=total, rate=rate, eta_s=eta, message=message, time=now,
                            extra=extra)
            self._progress = p
            self.history.append(p)
            if len(self.history) > self.max_history:
                del self.history[: len(self.history) - self.max_history]

    def _run(self, fn: Callable, args: tuple, kwargs: dict) -> None:
        self.started = time.time()
        self.status = RUNNING
        try:
            if self._cancel.is_set():
                raise Cancelled("cancelled before it started")
            result = fn(*args, **kwargs)
        except Cancelled as err:
            self.error, self.error_details = err, ""
            self.status = CANCELLED
        except BaseException as err:  # noqa: BLE001 - a worker must never die silently
            self.error = err
            self.error_details = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            self.status = FAILED
        else:
            self.result = result
            self.status = DONE
        finally:
            self.finished = time.time()
            release_freed_heap()  # before _done: a waiter sees the job's memory already handed back
            self._done.set()


def release_freed_heap() -> bool:
    """Hand the C heap's free pages back to the operating system (glibc's ``malloc_trim(0)``, via ctypes).

    A job's large temporaries (a UMAP fit, a model's weights, a calibration's batches) are freed when it ends, but
    glibc keeps freed heap memory for reuse, so the long-lived dashboard server's RSS stayed ≈ 0.6 GB higher after a
    CelebA-size map job (bench/app_memory.py). Called by every job when it finishes.

    Returns:
        True when ``malloc_trim`` was called (Linux with glibc); False elsewhere (nothing to do or not possible).
    """
    import ctypes  # noqa: PLC0415
    import gc  # noqa: PLC0415
    import sys  # noqa: PLC0415

    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return False
    gc.collect()  # objects in reference cycles still hold their buffers until collected
    trim(0)
    return True


def _accepts(fn: Callable, name: str) -> bool:
    """Whether ``fn`` names a parameter ``name`` (a bare ``**kwargs`` does not count: it usually forwards
    to options that would reject it)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = params.get(name)
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


class JobManager:
    """Starts and keeps background jobs, one per key; thread-safe; one per server process.

    Example::

        jobs = JobManager()
        job = jobs.submit("embed:demo:lite0", embed_benchmark, label="Embedding demo",
                          benchmark=b, backbone=bb)
        ...                      # later reruns: jobs.get("embed:demo:lite0").progress
    """

    def __init__(self, max_finished: int = 50):
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self.max_finished = max_finished

    def submit(self, key: str, fn: Callable, *args, label: str | None = None, restart: bool = False,
               **kwargs) -> Job:
        """Run ``fn(*args, **kwargs, progress=…, cancel=…)`` in a daemon worker thread.

        ``progress`` (:meth:`Job.report`) and ``cancel`` (``threading.Event``) are passed only to a function
        with a parameter of that name (not merely ``**kwargs``), and only if the caller did not pass them.

        Args:
            key: identity of the work; while a job with this key is pending or running it is returned and
                nothing new starts. A finished job with the key is replaced.
            fn: the work; its return value becomes ``job.result``.
            label: name for pages (default ``key``).
            restart: replace a finished job only; kept for readability at call sites (a running job is
                never replaced — cancel it first).

        Returns:
            The :class:`Job` (new, or the one already running under ``key``).
        """
        with self._lock:
            old = self._jobs.get(key)
            if old is not None and old.is_running:
                return old
            job = Job(key, label or key)
            if _accepts(fn, "progress") and "progress" not in kwargs:
                kwargs["progress"] = job.report
            if _accepts(fn, "cancel") and "cancel" not in kwargs:
                kwargs["cancel"] = job.cancel_event
            job.thread = threading.Thread(target=job._run, args=(fn, args, kwargs), daemon=True,
                                          name=f"clipcal-job:{key}")
            self._jobs.pop(key, None)
            self._jobs[key] = job
            self._prune()
            job.thread.start()
            return job

    def get(self, key: str) -> Job | None:
        """The job last submitted under ``key`` (running or finished), or ``None``."""
        with self._lock:
            return self._jobs.get(key)

    def jobs(self, running_only: bool = False) -> list[Job]:
        """All kept jobs, oldest first."""
        with self._lock:
            out = list(self._jobs.values())
        return [j for j in out if j.is_running] if running_only else out

    def cancel(self, key: str) -> bool:
        """Cancel the job under ``key``; return whether a running one was found."""
        job = self.get(key)
        if job is None or not job.is_running:
            return False
        job.cancel()
        return True

    def forget(self, key: str) -> None:
        """Drop a finished job's record (a running one is kept)."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and not job.is_running:
                del self._jobs[key]

    def cancel_all(self, wait_s: float = 0.0) -> None:
        """Cancel every running job and wait up to ``wait_s`` seconds in all for them to end."""
        running = self.jobs(running_only=True)
        for j in running:
            j.cancel()
        deadline = time.monotonic() + wait_s
        for j in running:
            j.wait(max(0.0, deadline - time.monotonic()))

    def _prune(self) -> None:
        finished = [k for k, j in self._jobs.items() if not j.is_running]
        for k in finished[: max(0, len(finished) - self.max_finished)]:
            del self._jobs[k]
