"""How long each dashboard page takes to re-render when its data is in the store (issue 4 quality bar:
"Any page re-renders in ≤ 1 s when its data is in the store").

Runs ``app.py`` with Streamlit's AppTest (the real script runner, in this process, no browser) over an existing
store — e.g. the Waterbirds-sized one ``bench/app_memory.py --keep DIR`` leaves in ``DIR/store`` (embeddings,
a calibration run, the joint UMAP and the concept text embeddings already computed). The session opens what
the store holds (the newest embedding set, its newest run). For every page: one cold run (loads from the
store, fills the in-process caches — not the goal's figure), then ``--repeats`` plain reruns, each timed, as
when a user clicks a widget that changes nothing heavy. Prints one JSON object: per page the cold time, every
rerun time and their median, and the machine load before and after. Usage::

    .venv/bin/python bench/app_memory.py --keep /tmp/appmem          # once: seeds the store (10–20 min)
    .venv/bin/python bench/page_rerun.py --store /tmp/appmem/store

At CelebA size (issue 14 item 3)::

    .venv/bin/python bench/celeba_shaped.py /tmp/h-dash-cache                 # once: the CelebA-shaped store
    .venv/bin/python bench/umap_speed.py --size celeba --store /tmp/h-dash-cache/store   # its map, timed
    .venv/bin/python bench/page_rerun.py --size celeba                       # = --store /tmp/h-dash-cache/store

Each page also reports ``chart_bytes``: the length of every chart's spec as the app sends it (the JSON string in
the element's forward message: ``plotly.io.to_json`` of a plotly figure, the Vega-Lite spec with its data).

A page whose data is missing (no run, no projection) renders its notice instead; the output says which
pages raised. Time is wall clock on a shared machine: compare the medians, not single runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from calibrate_speed import _uptime  # noqa: E402

PAGES = ["home", "data", "embed", "calibrate", "groups", "representations", "spurious"]


def time_page(page: str, repeats: int, timeout_s: float) -> dict:
    """Cold run + ``repeats`` timed reruns of one page in a fresh AppTest session."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout_s)
    at.run()
    at.switch_page(f"pages/{page}.py")
    t0 = time.perf_counter()
    at.run()
    cold = time.perf_counter() - t0
    reruns = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        at.run()
        reruns.append(time.perf_counter() - t0)
    return {"cold_s": round(cold, 3), "reruns_s": [round(x, 3) for x in reruns],
            "median_rerun_s": round(statistics.median(reruns), 3),
            "charts": len(at.get("plotly_chart")) + len(at.get("vega_lite_chart")), "tables": len(at.dataframe),
            "slowest_rerun_s": round(max(reruns), 3),
            "chart_bytes": [len(getattr(getattr(e, "proto", None), "spec", "") or "")
                            for e in [*at.get("plotly_chart"), *at.get("vega_lite_chart")]],
            "images": sum(type(e).__name__ == "Image" for e in at.main), "exception": [e.value[:300] for e in at.exception] or None,
            "errors_shown": [e.value[:200] for e in at.error] or None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="re-render time of each dashboard page over a seeded store")
    ap.add_argument("--store", help="the store folder (CLIPCAL_CACHE), e.g. DIR/store")
    ap.add_argument("--size", choices=["celeba"], help="celeba: the CelebA-shaped store (bench/celeba_shaped.py), "
                    "default --store /tmp/h-dash-cache/store, seeded first if missing")
    ap.add_argument("--repeats", type=int, default=5, help="timed reruns per page (default 5)")
    ap.add_argument("--pages", nargs="*", default=PAGES, choices=PAGES)
    ap.add_argument("--timeout", type=float, default=900, help="seconds one script run may take (cold UMAP …)")
    args = ap.parse_args(argv)
    if args.size == "celeba":
        from celeba_shaped import seed

        args.store = args.store or "/tmp/h-dash-cache/store"
        seed(Path(args.store).parent)
    if not args.store:
        ap.error("--store is required (or --size celeba)")
    os.environ["CLIPCAL_CACHE"] = str(Path(args.store).resolve())
    out: dict = {"store": os.environ["CLIPCAL_CACHE"], "load_before": _uptime(), "goal_s": 1.0, "pages": {}}
    for page in args.pages:
        out["pages"][page] = r = time_page(page, args.repeats, args.timeout)
        print(f"  {page}: cold {r['cold_s']:.2f} s, reruns {r['reruns_s']}", file=sys.stderr)
    out["load_after"] = _uptime()
    out["worst_median_rerun_s"] = max(p["median_rerun_s"] for p in out["pages"].values())
    out["slowest_rerun_s"] = max(p["slowest_rerun_s"] for p in out["pages"].values())
    out["largest_chart_bytes"] = max((b for p in out["pages"].values() for b in p["chart_bytes"]), default=0)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
