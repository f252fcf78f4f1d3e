"""Benchmarks: loaders, the built-in demo, validation, downloads, and the one image reader.

Public API (docs/interfaces.md, "clipcal.data")::

    load_benchmark(name, root=None, **options) -> Benchmark      # registry BENCHMARKS
    validate(benchmark, check_images=True, progress=None) -> ValidationReport
    download(name, root, progress=None) -> Path
    demo_assets_status() -> dict
    load_image(path, max_pixels=MAX_PIXELS) -> PIL.Image (RGB);  thumbnail(path, size) -> PIL.Image

Note: ``clipcal.data.validate`` and ``clipcal.data.download`` are the *functions*; to reach the modules'
other names write ``from clipcal.data.download import fetch`` (``import clipcal.data.download as m`` gives
the function).
"""

from __future__ import annotations

from clipcal.data.base import SPLITS, TABLE_COLUMNS, Benchmark, finalize_table
from clipcal.data.demo import demo_assets_status
from clipcal.data.images import MAX_PIXELS, check_image, load_image, thumbnail
from clipcal.data.registry import BENCHMARKS, benchmark_names, load_benchmark
# Imported last on purpose: the functions share their module's name and must shadow the submodules.
from clipcal.data.validate import ValidationReport, validate  # noqa: E402
from clipcal.data.download import SOURCES, download  # noqa: E402


__all__ = [
    "SPLITS", "TABLE_COLUMNS", "Benchmark", "finalize_table", "BENCHMARKS", "benchmark_names",
    "load_benchmark", "validate", "ValidationReport", "download", "SOURCES", "demo_assets_status",
    "load_image", "thumbnail", "check_image", "MAX_PIXELS",
]
