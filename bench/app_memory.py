"""Peak memory (RSS) of the dashboard server on Waterbirds-sized data, page by page (issue 4 quality bar:
"Waterbirds-sized data keeps the app under 3 GB RSS").

What it does:

1. Seeds a temporary store (``CLIPCAL_CACHE``) the way a headless ``python -m clipcal`` job would: a csv
   benchmark of 11,788 small generated JPEGs (64×64) with Waterbirds' split sizes 4,795 / 1,199 / 5,794 and
   group counts (``calibrate_speed.WATERBIRDS_GROUPS``); features from ``calibrate_speed.shaped_features``
   stored as the embeddings of ``--backbone`` (default ``open_clip:ViT-L-14:checkpoint``: random ViT-L/14
   weights saved once to a file in the work folder and loaded as ``open_clip:ViT-L-14:<file>``, as real weights
   are; d = 1,024 → e = 768 and a text tower, as Waterbirds under ViT-L/14; ``open_clip:ViT-L-14:random``
   builds the model from a seed instead; ``bundled:efficientnet-lite0`` gives 1,280 → 512, image-only),
   under the key and manifest ``clipcal.embed.embed_benchmark`` writes; and one calibration run with every
   method that applies, with SHORTENED training (``SHORT_HPARAMS``, printed: memory, not accuracy, is measured).
   The joint UMAP and the concept text embeddings are not precomputed (emptied before each drive): the server
   fits the UMAP (2 × 11,788 points) when Representations opens and encodes the concepts on Spurious
   attributes, as it would for a new user.
2. Starts ``streamlit run app.py`` headless on a free port (tests/fixtures_browser.py's ``streamlit_server``)
   and drives every page in Debian's Chromium with Playwright: Home, Data, Embed, Calibrate, Groups,
   Representations (waits for the UMAP job, box-selects points, then the hover-thumbnail map), Spurious
   attributes (every tab).
3. Samples the server's RSS (its process and all descendants, from ``/proc/<pid>/status`` VmRSS, or psutil
   when installed) every 0.5 s, attributed to the page being driven, and reads the kernel's own peak
   (``VmHWM``) of the server process at the end, which also catches spikes between samples.

Prints one JSON object: seeding seconds, per page ``wall_s`` and ``peak_rss_mb``, overall peak, VmHWM, the
goal (3,072 MB) and machine load (``uptime``) before and after. Usage::

    .venv/bin/python bench/app_memory.py                                      # ViT-L/14 weights from a file, text tower
    .venv/bin/python bench/app_memory.py --backbone bundled:efficientnet-lite0
    .venv/bin/python bench/app_memory.py --keep /tmp/appmem     # keep the seeded store (+ screenshots) there
    .venv/bin/python bench/app_memory.py --size celeba --warm-map --pages spurious   # one page, fresh server

Takes about 10–20 minutes on the shared 2-core build machine (most of it the calibration run and the UMAP).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from calibrate_speed import WATERBIRDS_GROUPS, _uptime, shaped_features  # noqa: E402

GOAL_MB = 3 * 1024
IMAGE_PX = 64
CLASS_NAMES, ATTR_NAMES = ["landbird", "waterbird"], ["land", "water"]
#: Training shortened for a memory measurement (arrays have their full size; only epochs / grids shrink).
SHORT_HPARAMS = {
    "erm": {"epochs": 3}, "jtt": {"epochs": 3}, "afr": {"epochs": 3, "gammas": [0.0, 4.0], "regs": [0.0]},
    "dfr": {"n_retrain": 2}, "cfr": {"epochs": 1, "erm_epochs": 3},
}
DIMS = {"open_clip:ViT-L-14:checkpoint": (1024, 768), "open_clip:ViT-L-14:random": (1024, 768),
        "bundled:efficientnet-lite0": (1280, 512)}
CHECKPOINT_NAME = "ViT-L-14-random-weights.pt"


def checkpoint_spec(work: Path) -> str:
    """``open_clip:ViT-L-14:<file>`` for a 1.7 GB state dict of random ViT-L/14 weights written into ``work``
    once (kept with ``--keep``): it stands in for downloaded weights, which a user loads from a file — the
    ``:random`` spec builds the model from a seed instead, which is not how the text tower is loaded for real
    weights (``clipcal.backbones.load_text_encoder``)."""
    import torch

    from clipcal.backbones import load_backbone

    path = work / CHECKPOINT_NAME
    if not path.is_file():
        bb = load_backbone("open_clip:ViT-L-14:random", device="cpu", precision="fp32")
        torch.save(bb.model.state_dict(), path.with_suffix(".part"))
        bb.close()
        path.with_suffix(".part").replace(path)
    return f"open_clip:ViT-L-14:{path}"


# ---------------------------------------------------------------------------------------------------------
# seeding
# ---------------------------------------------------------------------------------------------------------
def write_images(folder: Path, fd, px: int = IMAGE_PX, class_names=CLASS_NAMES, attr_names=ATTR_NAMES) -> Path:
    """One ``px``×``px`` JPEG per sample (colour by class and background, plus noise; kept if already there) and
    ``metadata.csv`` with string labels (``class_names`` / ``attr_names`` must sort as 0 / 1, as in ``fd``)."""
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(0)
    base = np.array([[[60, 140, 60], [60, 90, 170]], [[200, 160, 60], [230, 230, 240]]], np.float32)  # [y, a]
    rows = []
    for i, (sid, y, a, split) in enumerate(zip(fd.sample_ids, fd.y, fd.a, fd.split)):
        rel = f"images/{split}/{sid}.jpg"
        path = folder / rel
        if not path.exists():
            img = base[y, a] + rng.normal(0, 25, (px, px, 3))
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=85)
        # names, not integers + --class-names: the dashboard reopens a csv benchmark from its manifest without
        # the class/attribute names (clipcal.catalog.bench_spec_from_meta), which would change its fingerprint
        rows.append({"id": sid, "filename": rel, "split": split, "y": class_names[y], "a": attr_names[a]})
        if (i + 1) % 20000 == 0:
            print(f"  images: {i + 1} / {len(fd.y)}", file=sys.stderr)
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
    return folder / "metadata.csv"


def store_embeddings(bench, fd, spec: str, store):
    """Store ``fd``'s features / embeddings as ``spec``'s embeddings of ``bench``: same key, arrays and manifest
    fields as :func:`clipcal.embed.embed_benchmark`, so the app and ``load_embeddings`` find them."""
    from clipcal.backbones import backbone_identity, parse_spec
    from clipcal.embed import KIND, embedding_key, load_embeddings

    ident = backbone_identity(spec, device="cpu", precision="fp32")
    meta = {"benchmark": bench.describe(), "backbone_spec": str(parse_spec(spec)), "projection": fd.projection,
            "has_text": fd.has_text, "feature_dim": fd.feature_dim, "embed_dim": fd.embed_dim,
            "n_embedded": fd.n, "n_skipped": 0, "skipped": [], "device": "cpu", "batch_size": 64,
            "elapsed_s_last_run": 0.0, "note": "bench/app_memory.py: shaped random features, not a model's"}
    store.put(KIND, embedding_key(bench, ident), {
        "features": fd.features, "embeddings": fd.embeddings, "sample_ids": np.asarray(fd.sample_ids).astype(str),
        "proj_weight": fd.proj_weight}, meta=meta)
    es = load_embeddings(bench, spec, store=store)
    if es is None:
        raise SystemExit("the stored embeddings are not found by load_embeddings: key or manifest drifted")
    return es


def seed(work: Path, spec: str, dims: tuple[int, int]) -> dict:
    """Benchmark files + embeddings + a calibration run in ``work`` (store at ``work/store``); ``dims`` = (d, e)."""
    from clipcal.data import load_benchmark
    from clipcal.methods import METHODS, get_method
    from clipcal.runs import run_calibration
    from clipcal.store import Store

    d, e = dims
    has_text = not spec.startswith("bundled:")
    t0 = time.monotonic()
    fd = shaped_features(WATERBIRDS_GROUPS, d, e, text_head=has_text)
    write_images(work / "data", fd)
    t_images = time.monotonic() - t0
    shutil.rmtree(work / "store", ignore_errors=True)  # a half-seeded store from an interrupted run
    bench = load_benchmark("csv", root=work / "data")
    assert list(bench.class_names) == CLASS_NAMES and list(bench.attr_names) == ATTR_NAMES
    store = Store(work / "store")
    es = store_embeddings(bench, fd, spec, store)
    methods = [m for m in METHODS if has_text or not get_method(m).needs_text]
    print(f"calibrating {methods} with SHORTENED training {SHORT_HPARAMS} (memory, not accuracy)…",
          file=sys.stderr)
    t1 = time.monotonic()
    run = run_calibration(bench, es, methods, hparams={m: SHORT_HPARAMS.get(m, {}) for m in methods}, store=store,
                          text_head=fd.text_head)
    counts = bench.table.groupby("split").size().to_dict()
    return {"n": len(bench.table), "splits": counts, "feature_dim": d, "embed_dim": e, "backbone": spec,
            "methods": list(run.results), "not_applicable": run.not_applicable, "shortened": SHORT_HPARAMS,
            "images_s": round(t_images, 1), "calibration_s": round(time.monotonic() - t1, 1),
            "seed_s": round(time.monotonic() - t0, 1)}


# ---------------------------------------------------------------------------------------------------------
# RSS of the server process tree
# ---------------------------------------------------------------------------------------------------------
def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(p.name))
    return kids


def tree_rss_mb(pid: int) -> float:
    """RSS of ``pid`` plus all its descendants, MB (psutil when installed, else /proc VmRSS)."""
    try:
        import psutil

        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - a process that ended between listing and reading counts 0
        return 0.0
    kids, todo, total = _children(), [pid], 0
    while todo:
        p = todo.pop()
        total += _status_kb(p, "VmRSS")
        todo += kids.get(p, [])
    return total / 1024


def server_pid(timeout_s: float = 30) -> int:
    """The pid of the ``streamlit run`` child of this process."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        for pid in _children().get(os.getpid(), []):
            try:
                if b"streamlit" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
            except OSError:
                continue
        time.sleep(0.2)
    raise SystemExit("could not find the streamlit server process")


class Sampler(threading.Thread):
    """Samples the server tree's RSS every ``interval_s``; ``label`` names the page being driven."""

    def __init__(self, pid: int, interval_s: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.label = "start-up"
        self.peaks: dict[str, float] = {}
        self.samples = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            mb = tree_rss_mb(self.pid)
            self.peaks[self.label] = max(self.peaks.get(self.label, 0.0), mb)
            self.samples += 1
            self.halt.wait(self.interval_s)


# ---------------------------------------------------------------------------------------------------------
# driving the pages
# ---------------------------------------------------------------------------------------------------------
#: The steps :func:`drive` takes, in order (``--pages`` picks some; representations-hover needs representations).
PAGES = ["home", "data", "embed", "calibrate", "groups", "representations", "representations-hover", "spurious"]


def drive(page, url: str, sampler: Sampler, umap_timeout_s: float, walls: dict, has_text: bool,
          shots: Path | None = None, pages: list[str] | None = None) -> None:
    """Open every page (or ``pages``, in :data:`PAGES` order) as a user would, filling ``walls`` with
    ``{page: wall seconds}`` (each page's peak RSS is in ``sampler``); a screenshot of each page in ``shots``."""
    from tests.fixtures_browser import box_select, goto, images_loaded, no_exception, wait_settled

    def step(name: str, fn) -> None:
        sampler.label = name
        t0 = time.monotonic()
        fn()
        no_exception(page, name, chars=2000)
        walls[name] = round(time.monotonic() - t0, 1)
        if shots is not None:
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        print(f"  {name}: {walls[name]} s, peak so far {sampler.peaks.get(name, 0):.0f} MB", file=sys.stderr)

    def representations() -> None:
        goto(page, f"{url}/representations", "Representations")
        # the server fits the joint UMAP of 2 × 11,788 points in a background job; the map replaces the notice
        page.get_by_text("What moved").first.wait_for(timeout=umap_timeout_s * 1000)
        wait_settled(page, 300)
        page.wait_for_selector(".js-plotly-plot", timeout=300_000)
        n = box_select(page, page.locator(".js-plotly-plot").first, settle_s=300)
        images_loaded(page, 120, 300)
        print(f"  representations: box selection of {n} points", file=sys.stderr)

    def hover_map() -> None:
        page.locator('[data-testid="stRadio"] label', has_text="Hover thumbnails").first.click()
        page.locator('[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg.marks').first \
            .wait_for(timeout=900_000)
        wait_settled(page, 600)

    def spurious() -> None:
        goto(page, f"{url}/spurious", "Candidate concepts", settle_s=900)  # text backbones load the model
        if has_text:  # (a) scores the shipped vocabulary with the text tower: wait for its chart
            page.locator('[data-testid="stTabPanel"] .js-plotly-plot').first.wait_for(timeout=900_000)
        for tab, intro in [("(b) Attribute decodability", "A linear probe is trained"),
                           ("(c) Cluster discovery", "k-means within each class"),
                           ("(d) Calibration set vs groups", "Which training samples a method singled out"),
                           ("(e) Worst-group gallery", "Test images of the group where")]:
            page.get_by_role("tab", name=tab).click()
            # the page's one script run computes every tab before it shows any: at CelebA size on the loaded 2-core
            # machine (b) and (c) took more than the 5 minutes this wait had
            page.get_by_text(intro).first.wait_for(state="visible", timeout=umap_timeout_s * 1000)
            images_loaded(page, 120, 300)

    steps = {"home": lambda: goto(page, url, "Calibration runs", settle_s=300),
             "data": lambda: (goto(page, f"{url}/data", "Samples per group", settle_s=600),
                              images_loaded(page, 120, 300)),
             "embed": lambda: goto(page, f"{url}/embed", "Next: Calibrate", settle_s=300),
             "calibrate": lambda: goto(page, f"{url}/calibrate", "Training curves", settle_s=300),
             "groups": lambda: goto(page, f"{url}/groups", "How each method was trained", settle_s=300),
             "representations": representations, "representations-hover": hover_map, "spurious": spurious}
    assert list(steps) == PAGES
    for name in pages or PAGES:
        step(name, steps[name])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="peak RSS of the dashboard server on Waterbirds-sized data")
    ap.add_argument("--backbone", default="open_clip:ViT-L-14:checkpoint", choices=list(DIMS),
                    help="whose embeddings the features pose as (dims and text tower follow it); "
                    "'…:checkpoint' = random ViT-L/14 weights saved to a file in the work folder")
    ap.add_argument("--keep", metavar="DIR", help="seed into DIR and keep it (reused if already seeded)")
    ap.add_argument("--umap-timeout", type=float, default=1800, help="seconds to wait for the server's UMAP")
    ap.add_argument("--size", choices=["waterbirds", "celeba"], default="waterbirds",
                    help="celeba: the CelebA-shaped store of bench/celeba_shaped.py (202,599 images, stand-in "
                    "methods; --keep defaults to /tmp/h-dash-cache); its goal is 4 GB")
    ap.add_argument("--warm-map", action="store_true",
                    help="keep the stored UMAP (e.g. from bench/umap_speed.py --size celeba): measure the pages, "
                    "not the server's fit")
    ap.add_argument("--pages", help=f"comma-separated steps to drive, of {','.join(PAGES)} (default all; "
                    "'spurious' alone measures that page from a fresh server)")
    args = ap.parse_args(argv)
    pages = None
    if args.pages:
        pages = [p.strip() for p in args.pages.split(",") if p.strip()]
        unknown = sorted(set(pages) - set(PAGES))
        if unknown:
            ap.error(f"unknown page(s) {unknown}; choose from {PAGES}")
        pages = [p for p in PAGES if p in pages]
        if "representations-hover" in pages and "representations" not in pages:
            ap.error("representations-hover switches the Representations page's map: add representations")
    if args.size == "celeba":
        from celeba_shaped import seed as seed_celeba

        args.keep = args.keep or "/tmp/h-dash-cache"

    from tests.fixtures_browser import chromium_page, streamlit_server

    goal_mb = 4 * 1024 if args.size == "celeba" else GOAL_MB
    out: dict = {"load_before": _uptime(), "goal_mb": goal_mb, "size": args.size, "pages_driven": pages or PAGES}
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="clipcal-appmem-"))
    try:
        marker = work / "seeded.json"
        if args.size == "celeba":
            out["data"] = seed_celeba(work)
        elif marker.exists() and any((work / "store" / "embeddings").glob("*/manifest.json")):
            out["data"] = json.loads(marker.read_text())
            print(f"reusing the seeded store in {work}", file=sys.stderr)
        else:
            work.mkdir(parents=True, exist_ok=True)
            spec = checkpoint_spec(work) if args.backbone.endswith(":checkpoint") else args.backbone
            out["data"] = seed(work, spec, DIMS[args.backbone])
            marker.write_text(json.dumps(out["data"]))
        print(json.dumps(out["data"]), file=sys.stderr)
        # the server must fit the joint UMAP and encode the concept prompts itself, cold, as for a new user:
        # drop the map, numba's compiled code and the text embeddings left by an earlier run on this store
        for kind in ("numba", "text") if args.warm_map else ("projections", "numba", "text"):
            shutil.rmtree(work / "store" / kind, ignore_errors=True)
        log = work / "streamlit.log"
        with streamlit_server(work / "store", log=log, start_timeout_s=180) as url:
            sampler = Sampler(server_pid())
            sampler.start()
            t0 = time.monotonic()
            walls: dict[str, float] = {}
            try:
                with chromium_page(default_timeout_ms=120_000) as page:
                    try:
                        drive(page, url, sampler, args.umap_timeout, walls,
                              has_text=not out["data"]["backbone"].startswith("bundled:"),
                              shots=work / "shots" if args.keep else None, pages=pages)
                    except Exception:
                        page.screenshot(path=str(work / "failed.png"), full_page=True)
                        raise
            except Exception as err:  # noqa: BLE001 - still print what was measured, and where it stopped
                out["error"] = f"{type(err).__name__} at {sampler.label}: {str(err)[:1500]}"
                print(f"server log: {log}; screenshot: {work / 'failed.png'}", file=sys.stderr)
            finally:
                sampler.halt.set()
                sampler.join()
                out["vm_hwm_mb"] = round(_status_kb(sampler.pid, "VmHWM") / 1024, 1)
        out["pages"] = {k: {"wall_s": walls.get(k), "peak_rss_mb": round(v, 1)} for k, v in sampler.peaks.items()}
        out["peak_rss_mb"] = round(max(sampler.peaks.values()), 1)
        out["drive_s"] = round(time.monotonic() - t0, 1)
        out["samples"] = sampler.samples
        out["under_goal"] = max(out["peak_rss_mb"], out["vm_hwm_mb"]) < goal_mb
        out["load_after"] = _uptime()
        print(json.dumps(out, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
