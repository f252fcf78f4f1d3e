"""Where the time of "Run the demo path" goes: build → embed → calibrate, from the CLI (no dashboard).

Runs :func:`clipcal.pipeline.demo_path` (the same function Home's button runs in a job) on the default demo and
the bundled backbone, and prints one JSON line: wall seconds to the end of each stage (from the stage prefixes
of the progress messages), to the first stored run (the first calibrated result) and to the end, each
method's fit seconds (the run's ``seconds``), the process CPU seconds (in all, and at each stage mark and stored
run: ``stages_cpu_s``, ``first_run_cpu_s`` — comparable under load, unlike the wall times), the DataLoader
workers' CPU seconds and the 1-minute load before / after.
For a clean-store figure point ``CLIPCAL_CACHE`` at an empty folder (``--clean`` deletes it first).

Usage::

    CLIPCAL_CACHE=/tmp/demo-cache ../shared/tools/quiet .venv/bin/python bench/demo_path_speed.py --clean

Goal (issue 13): clean store → first calibrated result ≤ 60 s on this 2-core CPU, idle. Figures measured under
load are not timings to quote (quote the load printed with them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

T0 = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import clipcal  # noqa: E402,F401 — sets OMP_WAIT_POLICY before torch is loaded


def load1() -> float:
    """The 1-minute load average."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def main(argv=None) -> dict:
    """Run the demo path once and return (and print) the timing record."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clean", action="store_true", help="delete $CLIPCAL_CACHE first (a clean store)")
    ap.add_argument("--methods", default=None, help="comma-separated methods (default: every one that applies)")
    args = ap.parse_args(argv)
    from clipcal.paths import cache_root

    root = Path(cache_root())
    if args.clean:
        if "CLIPCAL_CACHE" not in os.environ:
            ap.error("--clean deletes $CLIPCAL_CACHE: set it to a scratch folder")
        shutil.rmtree(root, ignore_errors=True)
    load_before = load1()
    cpu0 = time.process_time()
    start = time.perf_counter()
    marks: dict[str, float] = {}
    cpu_marks: dict[str, float] = {}

    def progress(*args, **kwargs):
        msg = kwargs.get("message", args[2] if len(args) > 2 else "") or ""
        stage = msg.split(":")[0]
        for marked, now in ((marks, time.perf_counter() - start), (cpu_marks, time.process_time() - cpu0)):
            marked.setdefault(f"first {stage}", round(now, 2))
            marked[f"last {stage}"] = round(now, 2)

    from clipcal import catalog, pipeline
    from clipcal.runs import list_runs, load_run
    from clipcal.store import Store

    store = Store(str(root))
    methods = args.methods.split(",") if args.methods else None
    runs_seen: list[tuple[float, str]] = []
    orig_put = store.put

    def put(kind, *a, **k):  # note when each run is stored: the first one is the first calibrated result
        out = orig_put(kind, *a, **k)
        if kind == "runs":
            runs_seen.append((round(time.perf_counter() - start, 2), ",".join(a[0]["methods"]),
                              round(time.process_time() - cpu0, 2)))
        return out

    store.put = put
    summary = pipeline.demo_path(dict(catalog.DEFAULT_BENCH), catalog.DEFAULT_BACKBONE, methods=methods,
                                 store=store, progress=progress)
    total = time.perf_counter() - start
    seconds = {}
    for key in list_runs(store)["key"]:
        seconds.update(load_run(key, store=store).manifest["meta"]["seconds"])
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    rec = {"summary": summary, "import_s": round(start - T0, 2), "total_s": round(total, 2),
           "first_run_s": runs_seen[0][0] if runs_seen else None,
           "first_run_cpu_s": runs_seen[0][2] if runs_seen else None, "runs": runs_seen, "stages": marks,
           "stages_cpu_s": cpu_marks,
           "method_s": seconds, "cpu_s": round(time.process_time() - cpu0, 1),
           "worker_cpu_s": round(children.ru_utime + children.ru_stime, 1),
           "load_before": load_before, "load_after": load1(), "store": str(root)}
    print(json.dumps(rec))
    return rec


if __name__ == "__main__":
    main()
