"""GPU speed check (issue 13 item 4), ready to run on a CUDA machine: prints one JSON object.

Rows (each ``{"row", "status": "measured" | "skipped" | "error", "reason" or "figures", "seconds"}``):

============================ ===================================================================================
row                          what is measured
============================ ===================================================================================
embed_vit_b_32_bf16          random-weight ViT-B-32 at bf16: the clipcal embedding pipeline (decode in workers,
                             forward, shards, store) vs the raw batched forward of pre-decoded images
                             (``bench/embed_throughput.py``'s ``measure``), images/s and ratio; peak GPU memory
embed_vit_l_14_bf16          the same with random-weight ViT-L-14
cfr_waterbirds_shaped        CFR's default recipe (100 + 100 epochs) on Waterbirds-shaped features (4,795 / 1,199 /
                             5,794; 1,024 → 768) on CUDA: ``bench/calibrate_speed.py`` in a child process (wall
                             seconds per stage, peak GPU memory ``peak_cuda_mb``, peak RSS, worst-group accuracy)
============================ ===================================================================================

Without CUDA the three rows are ``skipped`` with the reason and the script ends in seconds. ``--quick`` shrinks
the sizes (512 / 256 images, 2 + 2 CFR epochs — not the default recipe, said in the output); on a machine without
CUDA it adds two rows that run the same code on the CPU at tiny sizes (``tiny:clip``, 16 images; CFR 1 + 1 epochs
on Lite-shaped features), so that CI proves the script works before a GPU session spends its minutes on it.
Those rows are labelled ``cpu_code_path`` and are no GPU figures. Exit 1 when a row is ``error``.

Images are random 224 px JPEGs in a temporary folder; the store is a temporary one (``CLIPCAL_CACHE`` points
there for the run and is removed at the end).

Usage::

    python bench/gpu_check.py                       # on a CUDA machine: ≈ 2–4 minutes
    python bench/gpu_check.py --quick --json-out gpu_check.json

On a lent GPU machine, carry the wheels that bench/gpu_validate.py's docstring names (its command runs both).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import clipcal  # noqa: E402,F401 — sets OMP_WAIT_POLICY before torch is loaded

SIZES = {  # images per embedding row, batch size, CFR epochs (None = the default recipe)
    "full": {"images": 2048, "batch": 256, "cfr_epochs": None},
    "quick": {"images": 512, "batch": 128, "cfr_epochs": 2},
    "cpu_code_path": {"images": 16, "batch": 8, "cfr_epochs": 1},
}
EMBED_ROWS = (("embed_vit_b_32_bf16", "open_clip:ViT-B-32:random"),
              ("embed_vit_l_14_bf16", "open_clip:ViT-L-14:random"))


class Skipped(Exception):
    """The row cannot be measured here; the message says why."""


def _cuda_reason(device: str) -> str | None:
    """Why CUDA rows cannot run with ``device`` here, or None when they can."""
    import torch

    if not torch.cuda.is_available():
        return f"CUDA is not available on this machine (torch {torch.__version__}, CUDA build " \
               f"{torch.version.cuda or 'none'}): GPU row not measured"
    if not device.lower().startswith("cuda"):
        return f"--device {device} was given: GPU row not measured"
    return None


def embed_row(images, spec: str, device: str, precision: str, batch: int) -> dict:
    """Pipeline vs raw forward of ``spec`` on ``images`` (a Benchmark), with peak GPU memory on CUDA."""
    import torch

    from embed_throughput import measure

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    figures = measure(images, spec, device, precision, batch, workers=[None], naive_n=0)
    if cuda:
        figures["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return figures


def cfr_row(data: str, device: str, epochs: int | None, env: dict) -> dict:
    """``bench/calibrate_speed.py`` in a child process (its own peak memory figures); its JSON object."""
    cmd = [sys.executable, str(BENCH / "calibrate_speed.py"), "--data", data, "--device", device]
    if epochs:
        cmd += ["--epochs", str(epochs), "--erm-epochs", str(epochs)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(f"calibrate_speed.py exited {p.returncode}: {(p.stderr or p.stdout)[-800:]}")
    start = p.stdout.rfind("\n{")  # its JSON object ends the output, after one progress line per epoch
    return json.loads(p.stdout[start + 1 if start >= 0 else 0:])


def machine(device: str) -> dict:
    import torch

    out = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "cpu_count": os.cpu_count(),
           "loadavg_1m": round(os.getloadavg()[0], 2), "device": device}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.device(device).index or 0 if device.startswith("cuda") else 0)
        out["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                      "capability": f"{p.major}.{p.minor}"}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="CUDA device to measure (default cuda)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes; without CUDA adds cpu_code_path rows (CI)")
    ap.add_argument("--json-out", type=Path, help="also write the JSON here")
    ap.add_argument("--cpu-spec", default="tiny:clip", help="backbone of the cpu_code_path embedding row")
    args = ap.parse_args(argv)

    from embed_throughput import _synthetic

    t_all = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="clipcal-gpu-check-"))
    os.environ["CLIPCAL_CACHE"] = str(tmp / "cache")  # never the user's store; the CFR child inherits it
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    reason = _cuda_reason(args.device)
    sizes = SIZES["quick" if args.quick else "full"]
    rows: list[dict] = []

    def row(name: str, fn) -> None:
        t = time.perf_counter()
        r: dict = {"row": name}
        try:
            if reason and not name.endswith("cpu_code_path"):
                raise Skipped(reason)
            r.update(status="measured", figures=fn())
        except Skipped as s:
            r.update(status="skipped", reason=str(s))
        except Exception as err:  # noqa: BLE001 — one row's failure is reported, the others still run
            r.update(status="error", reason=f"{type(err).__name__}: {str(err)[:800]}")
        r["seconds"] = round(time.perf_counter() - t, 2)
        rows.append(r)

    def images(n: int):
        folder = tmp / f"images-{n}"
        if not folder.exists():
            folder.mkdir(parents=True)
            images.cache[n] = _synthetic(n, folder)
        return images.cache[n]
    images.cache = {}

    try:
        for name, spec in EMBED_ROWS:
            row(name, lambda spec=spec: embed_row(images(sizes["images"]), spec, args.device, "bf16", sizes["batch"]))
        row("cfr_waterbirds_shaped", lambda: cfr_row("waterbirds-shaped", args.device, sizes["cfr_epochs"], env))
        if reason and args.quick:
            small = SIZES["cpu_code_path"]
            row("embed_cpu_code_path",
                lambda: embed_row(images(small["images"]), args.cpu_spec, "cpu", "fp32", small["batch"]))
            row("cfr_cpu_code_path", lambda: cfr_row("lite-shaped", "cpu", small["cfr_epochs"], env))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = {"script": "bench/gpu_check.py", "quick": args.quick,
              "recipe": "default" if not sizes["cfr_epochs"] else f"{sizes['cfr_epochs']} + {sizes['cfr_epochs']} "
              "epochs (not the default recipe)", "machine": machine(args.device), "rows": rows,
              "seconds": round(time.perf_counter() - t_all, 1)}
    text = json.dumps(report, indent=1)
    print(text, flush=True)
    if args.json_out:
        args.json_out.write_text(text + "\n", encoding="utf-8")
    return 1 if any(r["status"] == "error" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
