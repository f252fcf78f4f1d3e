"""What the store's integrity checks cost on a Waterbirds-sized store (issue 10, item 5).

Builds, in a scratch folder, what a Waterbirds user has after one embedding and some runs:

* ``--n`` (11,788) image files — generated noise JPEGs of about Waterbirds' size (``--image-px``), for the
  benchmark fingerprint, which hashes image contents through a digest cache (item 5d);
* one embedding entry of Waterbirds' shape with ViT-B/32 widths (features [N, 768], embeddings [N, 512] float32,
  ids, projection), opened with ``Store.get`` (item 5b: sha256 of every array, or stamps trusted);
* the same arrays as embedding shards of 1,024 rows, read back verified as a resume / assembly does (item 5a);
* ``--runs`` run-sized manifests (metrics and group tables in ``meta``), listed with ``Store.list``, which checks
  every manifest's checksum (item 5c).

For each check it times the **cold** case (no verification cache: the first open after embedding, copying or
restoring a store — every byte is hashed) and the **warm** case (the cache of stat stamps says nothing changed),
``--repeats`` times, and reports the median. The OS page cache is warm in both (the files were just written; a
cold disk adds its read time to the cold figures — dropping the page cache needs root and disturbs other users).
It also times what each check replaced (stat-only fingerprint, unverified shard loads, listing without
checksums), so the overhead is explicit. Prints one line per figure, then one JSON line.

Quiet-machine run (the lead)::

    HF_HUB_OFFLINE=1 .venv/bin/python bench/store_verify.py            # ≈ 1–2 min, ≈ 1 GB of scratch disk

Smoke test (tiny)::

    HF_HUB_OFFLINE=1 .venv/bin/python bench/store_verify.py --n 300 --runs 3 --repeats 2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:  # noqa: BLE001 — informational only
        return "uptime unavailable"


def _median(fn, repeats: int, before=None) -> float:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times), 4)


def _wait_out_racy_window(paths) -> None:
    """Stamps younger than integrity.RACY_NS are not trusted; wait until every file is older."""
    from clipcal import integrity

    newest = max(max(os.stat(p).st_mtime_ns, os.stat(p).st_ctime_ns) for p in paths)
    wait = (newest + integrity.RACY_NS - time.time_ns()) / 1e9
    if wait > 0:
        time.sleep(wait + 0.05)


def make_images(folder: Path, n: int, px: int, seed: int = 0) -> tuple[list[str], int]:
    """``n`` JPEG files of noise (64 distinct pictures, each file with its own trailing id so every file's
    bytes differ); returns (absolute paths, total bytes)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    bases = []
    for _ in range(64):
        arr = rng.integers(0, 255, (px, px, 3), dtype=np.uint8)
        arr = (arr // 4 + np.linspace(0, 190, px, dtype=np.uint8)[None, :, None]).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=85)
        bases.append(buf.getvalue())
    paths, total = [], 0
    for i in range(n):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"{i:06d}.jpg"
        data = bases[i % 64] + i.to_bytes(4, "little")  # bytes after EOI are ignored by decoders
        p.write_bytes(data)
        paths.append(str(p))
        total += len(data)
    return paths, total


def bench_fingerprint(work: Path, n: int, px: int, repeats: int) -> dict:
    """Item 5d: the benchmark fingerprint's per-image content digests."""
    import pandas as pd

    from clipcal.data.base import Benchmark
    from clipcal.integrity import file_digests

    t0 = time.perf_counter()
    paths, total = make_images(work / "images", n, px)
    gen_s = time.perf_counter() - t0
    rel = [os.path.relpath(p, work / "images") for p in paths]
    table = pd.DataFrame({"sample_id": rel, "path": rel, "split": ["train", "val", "test"] * (n // 3) +
                          ["train"] * (n % 3), "y": np.arange(n) % 2, "a": (np.arange(n) // 2) % 2})
    cache = work / "digests.npz"

    def drop_cache():
        cache.unlink(missing_ok=True)

    def stat_only():  # what the fingerprint did before: one os.stat per file (sizes)
        for p in paths:
            os.stat(p).st_size

    def new_bench():
        return Benchmark(name="csv", root=work / "images", table=table, class_names=["landbird", "waterbird"],
                         attr_names=["land", "water"])

    _wait_out_racy_window(paths)
    out = {"files": n, "bytes": total, "mean_kb": round(total / n / 1024, 1), "generate_s": round(gen_s, 2)}
    out["stat_only_s"] = _median(stat_only, repeats)
    out["cold_hash_all_s"] = _median(lambda: file_digests(paths, cache), repeats, before=drop_cache)
    file_digests(paths, cache)
    out["warm_cached_s"] = _median(lambda: file_digests(paths, cache), repeats)
    out["cold_one_thread_s"] = _median(lambda: file_digests(paths, cache, threads=1), 1, before=drop_cache)
    # a user replaces 1 % of the images: only those are read again
    file_digests(paths, cache)
    changed = paths[:: 100]
    for p in changed:
        Path(p).write_bytes(Path(p).read_bytes())  # same bytes, new ctime: stamp changed
    _wait_out_racy_window(changed)
    _, _, stats = file_digests(paths, cache)
    out["one_percent_changed_s"] = stats["seconds"]
    out["one_percent_changed_rehashed"] = stats["hashed"]
    # the whole Benchmark.fingerprint() through the store's cache folder (table hashing included)
    os.environ["CLIPCAL_CACHE"] = str(work / "cache")
    shutil.rmtree(work / "cache", ignore_errors=True)
    fresh = []  # a new Benchmark object per call (the fingerprint is kept per object); built outside the timing
    out["benchmark_fingerprint_cold_s"] = _median(lambda: fresh[-1].fingerprint(), 1,
                                                  before=lambda: fresh.append(new_bench()))
    out["benchmark_fingerprint_warm_s"] = _median(lambda: fresh[-1].fingerprint(), repeats,
                                                  before=lambda: fresh.append(new_bench()))
    return out


def _embedding_arrays(n: int, d: int, e: int) -> dict:
    rng = np.random.default_rng(0)
    h = rng.normal(size=(n, d)).astype(np.float32)
    w = np.linalg.qr(rng.normal(size=(d, e)))[0].astype(np.float32)
    z = h @ w
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    return {"features": h, "embeddings": z.astype(np.float32), "sample_ids": np.array([f"{i:06d}.jpg" for i in
                                                                                         range(n)]),
            "proj_weight": w}


def bench_entry(work: Path, n: int, d: int, e: int, repeats: int) -> dict:
    """Item 5b: opening the embedding entry (sha256 of every array vs. trusted stat stamps)."""
    from clipcal.store import VERIFIED, Store

    st = Store(work / "store")
    arrays = _embedding_arrays(n, d, e)
    kf = {"format": 1, "benchmark": "bench", "backbone": {"spec": "open_clip:ViT-B-32:openai"}}
    entry = st.put("embeddings", kf, arrays)
    files = [entry.path / r["file"] for r in entry.manifest["arrays"].values()]
    _wait_out_racy_window(files)
    size = sum(f.stat().st_size for f in files)

    def forget():
        (entry.path / VERIFIED).unlink(missing_ok=True)

    out = {"entry_bytes": size}
    out["cold_full_hash_s"] = _median(lambda: st.get("embeddings", kf), repeats, before=forget)
    st.get("embeddings", kf)
    out["warm_stamps_trusted_s"] = _median(lambda: st.get("embeddings", kf), repeats)
    out["shape_only_s"] = _median(lambda: st.get("embeddings", kf, verify="shape"), repeats)
    out["verify_full_s"] = _median(lambda: st.get("embeddings", kf, verify="full"), repeats)
    return out


def bench_shards(work: Path, n: int, d: int, e: int, repeats: int, shard_size: int = 1024) -> dict:
    """Item 5a: reading finished shards back, verified (resume planning and assembly each do this once)."""
    from clipcal.embed import _read_shard, _shard_name, _write_shard

    folder = work / "shards"
    folder.mkdir(parents=True, exist_ok=True)
    arrays = _embedding_arrays(n, d, e)
    bounds = [(i, s, min(n, s + shard_size)) for i, s in enumerate(range(0, n, shard_size))]
    t0 = time.perf_counter()
    for i, a, b in bounds:
        _write_shard(folder, i, a, b, list(range(a, b)), arrays["features"][a:b], arrays["embeddings"][a:b], [])
    write_s = time.perf_counter() - t0

    def verified():
        assert all(_read_shard(folder, i, a, b, d, e) is not None for i, a, b in bounds)

    def unverified():  # what resume did before: np.load of the three files, no checksum
        for i, _, _ in bounds:
            for part in ("features", "embeddings", "rows"):
                np.load(folder / f"{_shard_name(i)}.{part}.npy", allow_pickle=False)

    return {"shards": len(bounds), "write_all_s": round(write_s, 3),
            "read_verified_s": _median(verified, repeats), "read_unverified_s": _median(unverified, repeats)}


def _run_meta(rng) -> dict:
    """A meta dict shaped like a stored calibration run's (6 methods × val/test metrics, 6 × 3 × 4 groups)."""
    methods = ["zeroshot", "erm", "jtt", "afr", "dfr", "cfr"]
    metrics = [{"method": m, "split": s, "status": "ok", "worst_group": float(rng.random()),
                "overall": float(rng.random()), "mean_group": float(rng.random()),
                "train_weighted": float(rng.random()), "worst_class": float(rng.random())}
               for m in methods for s in ("val", "test")]
    groups = [{"method": m, "split": s, "group": g, "class": "waterbird", "attribute": "land", "n": 100,
               "correct": 90, "accuracy": float(rng.random()), "ci_low": 0.8, "ci_high": 0.95}
              for m in methods for s in ("train", "val", "test") for g in range(4)]
    records = {m: {"hparams": {"lr": 0.01, "epochs": 100}, "chosen_epoch": 40,
                   "notes": ["x" * 80] * 3} for m in methods}
    return {"config": {"methods": methods}, "metrics": metrics, "group_tables": groups, "records": records,
            "versions": {"python": "3.11"}, "notes": []}


def bench_manifests(work: Path, runs: int, repeats: int) -> dict:
    """Item 5c: ``Store.list('runs')`` checks every manifest's checksum (what the run list reads)."""
    import clipcal.store as store_mod
    from clipcal.store import MANIFEST, Store, json_checksum

    st = Store(work / "runs-store")
    rng = np.random.default_rng(0)
    for i in range(runs):
        st.put("runs", {"i": i}, {"pred": np.zeros(11788, np.int64)}, meta=_run_meta(rng))
    manifests = [json.loads(p.read_text()) for p in (st.root / "runs").glob(f"*/{MANIFEST}")]
    listed = _median(lambda: st.list("runs"), repeats)
    real = store_mod._check_manifest
    store_mod._check_manifest = lambda m: None
    try:
        unchecked = _median(lambda: st.list("runs"), repeats)
    finally:
        store_mod._check_manifest = real
    per = _median(lambda: [json_checksum(m) for m in manifests], repeats) / max(runs, 1)
    return {"runs": runs, "manifest_kb": round(np.mean([(p.stat().st_size) for p in
                                                        (st.root / "runs").glob(f"*/{MANIFEST}")]) / 1024, 1),
            "list_checked_s": listed, "list_unchecked_s": unchecked, "checksum_per_manifest_ms": round(per * 1e3, 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=11788, help="images / rows (Waterbirds: 11,788)")
    ap.add_argument("--d", type=int, default=768, help="feature width (ViT-B/32: 768)")
    ap.add_argument("--e", type=int, default=512, help="embedding width (ViT-B/32: 512)")
    ap.add_argument("--image-px", type=int, default=320, help="side of the generated noise JPEGs (320 ≈ 38 KB)")
    ap.add_argument("--runs", type=int, default=50, help="stored runs to list")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    args = ap.parse_args(argv)

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="store-verify-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["CLIPCAL_CACHE"] = str(work / "cache")
    out = {"bench": "store_verify", "n": args.n, "d": args.d, "e": args.e, "cpus": os.cpu_count(),
           "load_before": _uptime()}
    try:
        out["fingerprint"] = fp = bench_fingerprint(work, args.n, args.image_px, args.repeats)
        print(f"fingerprint, {fp['files']:,} images ({fp['mean_kb']} KB each): stat only (old, sizes) "
              f"{fp['stat_only_s']:.3f} s · content cold (hash all) {fp['cold_hash_all_s']:.3f} s "
              f"(1 thread {fp['cold_one_thread_s']:.3f} s) · warm (cached digests) {fp['warm_cached_s']:.3f} s · "
              f"1 % changed {fp['one_percent_changed_s']:.3f} s ({fp['one_percent_changed_rehashed']} re-hashed) · "
              f"Benchmark.fingerprint() cold {fp['benchmark_fingerprint_cold_s']:.3f} s, warm "
              f"{fp['benchmark_fingerprint_warm_s']:.3f} s", flush=True)
        out["entry"] = en = bench_entry(work, args.n, args.d, args.e, args.repeats)
        print(f"embedding entry open ({en['entry_bytes'] / 1e6:.1f} MB): cold (sha256 of all arrays) "
              f"{en['cold_full_hash_s']:.3f} s · warm (stamps trusted) {en['warm_stamps_trusted_s']:.4f} s · "
              f"shape only {en['shape_only_s']:.4f} s · verify='full' {en['verify_full_s']:.3f} s", flush=True)
        out["shards"] = sh = bench_shards(work, args.n, args.d, args.e, args.repeats)
        print(f"shards ({sh['shards']} × 1,024 rows): read verified {sh['read_verified_s']:.3f} s vs unverified "
              f"{sh['read_unverified_s']:.3f} s (done twice per resumed run: planning and assembly)", flush=True)
        out["manifests"] = mf = bench_manifests(work, args.runs, args.repeats)
        print(f"run list ({mf['runs']} runs, {mf['manifest_kb']} KB manifests): with checksums "
              f"{mf['list_checked_s']:.3f} s vs without {mf['list_unchecked_s']:.3f} s "
              f"({mf['checksum_per_manifest_ms']:.2f} ms per manifest)", flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    out["load_after"] = _uptime()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
