"""Issue 13.3: the demo images are generated in several threads (Pillow releases the GIL in its heavy steps), and
every file — images, samples.csv, params.json — is the same bytes as a build in one thread."""

from __future__ import annotations

import threading

import clipcal.data.demo as demo

SMALL = {"n_train": 24, "n_val": 8, "n_test": 8, "seed": 3, "image_size": 64}


def _files(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "COMPLETE"}  # COMPLETE holds the build time


def test_three_threads_write_the_bytes_of_one(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "_CHUNK", 4)  # 10 chunks to share
    threads = {1: set(), 3: set()}
    render = demo._render
    p = demo.demo_params(**SMALL)
    built = {}
    for workers in (1, 3):
        def spy(*args, _seen=threads[workers], **kwargs):
            _seen.add(threading.current_thread().name)
            return render(*args, **kwargs)

        monkeypatch.setattr(demo, "_render", spy)
        dest = tmp_path / f"w{workers}"
        dest.mkdir()
        reports = []
        demo._build(dest, p, lambda *a: reports.append(a), workers=workers)
        built[workers] = _files(dest)
        assert reports[0][:2] == (0, 40) and reports[-1][:2] == (40, 40)  # a report before the first image
        assert [r[0] for r in reports[1:]] == list(range(4, 41, 4))  # then one per chunk, in order
    assert len(threads[1]) == 1 and len(threads[3]) > 1  # really built in several threads
    assert len(built[1]) == 40 + 2 and built[3] == built[1]
