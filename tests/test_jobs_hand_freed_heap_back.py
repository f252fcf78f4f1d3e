"""A finished job hands the heap pages it freed back to the operating system (``jobs.release_freed_heap``: glibc's
``malloc_trim``): the dashboard server lives for days, and glibc keeps freed memory for reuse — after a CelebA-size
map job the server's RSS stayed ≈ 0.6 GB above what it held before (bench/app_memory.py)."""

from __future__ import annotations

import ctypes
import sys

import numpy as np
import pytest

from clipcal import jobs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RSS and malloc_trim are Linux/glibc")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def _fragmenting_work():
    """≈ 300 MB in 100 KB blocks (below glibc's mmap threshold: heap memory), freed, with one small block allocated
    after them kept alive — the heap cannot shrink from its top, only malloc_trim returns the pages in between."""
    blocks = [np.ones(100 * 1024 // 8) for _ in range(3000)]
    pin = np.ones(16)
    del blocks
    return pin


def test_release_freed_heap_calls_malloc_trim():
    try:
        ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        pytest.skip("no glibc malloc_trim here (e.g. musl): release_freed_heap returns False")
    assert jobs.release_freed_heap() is True


def test_a_finished_job_leaves_no_freed_heap_resident():
    manager = jobs.JobManager()
    jobs.release_freed_heap()
    base = _rss_mb()
    job = manager.submit("frag", _fragmenting_work)
    job.wait(60)
    assert job.status == jobs.DONE and job.result is not None
    grown = _rss_mb() - base
    assert grown < 100, f"the server kept {grown:.0f} MB of the job's freed heap"
