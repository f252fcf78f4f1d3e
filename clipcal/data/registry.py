"""The benchmark registry: one name → one loader, and :func:`load_benchmark`, the one factory.

Loaders are imported lazily (by dotted path) so that a missing optional module of one benchmark never
breaks the others, and importing :mod:`clipcal.data` stays cheap.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from clipcal.data.base import Benchmark
from clipcal.errors import DataError

#: name → (loader "module:function", one-line description, needs a root folder)
BENCHMARKS: dict[str, tuple[str, str, bool]] = {
    "demo": ("clipcal.data.demo:load_demo",
             "built-in Waterbirds-lite: emoji birds on real land/water photos, generated offline", False),
    "waterbirds": ("clipcal.data.waterbirds:load_waterbirds",
                   "Waterbirds (group_DRO / WILDS folder with metadata.csv): landbird/waterbird × land/water",
                   True),
    "celeba": ("clipcal.data.celeba:load_celeba",
               "CelebA (img_align_celeba/ + list_attr_celeba.csv + list_eval_partition.csv): "
               "Blond_Hair × Male by default", True),
    "metashift": ("clipcal.data.metashift:load_metashift",
                  "MetaShift cat/dog × indoor/outdoor (SubpopBench folder layout)", True),
    "csv": ("clipcal.data.csvdata:load_csv",
            "your own images + a metadata CSV (columns id, filename, split, y, a; names mappable)", True),
}


def benchmark_names() -> list[str]:
    """Registered benchmark names, in display order."""
    return list(BENCHMARKS)


def loader_options(name: str, loader=None) -> set[str]:
    """Names of the options benchmark ``name``'s loader accepts (its keyword arguments except ``root``;
    for the demo, its build parameters and ``progress``)."""
    if loader is None:
        mod, fn = BENCHMARKS[name][0].split(":")
        loader = getattr(importlib.import_module(mod), fn)
    params = inspect.signature(loader).parameters
    names = {k for k, p in params.items() if p.kind is not p.VAR_KEYWORD and k != "root"}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        names |= set(getattr(importlib.import_module(loader.__module__), "DEFAULTS", {}))
    return names


def load_benchmark(name: str, root: str | Path | None = None, **options) -> Benchmark:
    """Load a benchmark by registry name.

    Args:
        name: one of :data:`BENCHMARKS` (``demo, waterbirds, celeba, metashift, csv``), case-insensitive.
        root: the benchmark's folder (required for all but ``demo``).
        **options: passed to the loader (e.g. ``target``/``attribute`` for CelebA, column names for ``csv``,
            sizes and seed for ``demo``); ``None`` values are dropped so CLI defaults pass through.

    Returns:
        :class:`~clipcal.data.base.Benchmark`.

    Raises:
        DataError: unknown name (the message lists the valid ones), an option the benchmark does not take
            (naming the benchmarks it belongs to), missing root, or any loader error.
    """
    key = str(name).strip().lower()
    if key not in BENCHMARKS:
        import difflib

        close = difflib.get_close_matches(key, BENCHMARKS, n=1)
        raise DataError(
            f"unknown benchmark {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
            hint="available benchmarks: " + ", ".join(BENCHMARKS),
        )
    target, _, needs_root = BENCHMARKS[key]
    if needs_root and root is None:
        raise DataError(f"benchmark {key!r} needs a root folder",
                        hint=f"pass root=<folder> (CLI: --root PATH); `python -m clipcal data download "
                        f"--benchmark {key} --root PATH` explains the expected layout")
    mod, fn = target.split(":")
    loader = getattr(importlib.import_module(mod), fn)
    opts = {k: v for k, v in options.items() if v is not None}
    accepted = loader_options(key, loader)
    wrong = sorted(set(opts) - accepted)
    if wrong:
        owners = {w: [n for n in BENCHMARKS if n != key and w in loader_options(n)] for w in wrong}
        said = "; ".join(f"{w!r}" + (f" (an option of {', '.join(o)})" if o else "") for w, o in owners.items())
        raise DataError(f"option(s) {said} do not apply to benchmark {key!r}",
                        hint=f"{key} takes: {', '.join(sorted(accepted)) or 'no options'}")
    return loader(root=root, **opts) if root is not None else loader(**opts)
