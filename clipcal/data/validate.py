"""The validation report shown before any GPU work: group counts, missing / unreadable files, problems.

``validate(benchmark)`` never raises for bad rows: it lists them. Images are checked cheaply by default
(header + structure, :func:`clipcal.data.images.check_image`), fast enough for CelebA's 202,599 files.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

from clipcal.data.base import SPLITS, Benchmark, paths_outside_root
from clipcal.data.images import MAX_PIXELS, check_image, missing_reason

#: A group with fewer training images than this is flagged as tiny (worst-group accuracy on it is noisy).
TINY_GROUP = 20

_ISSUE_COLUMNS = ["sample_id", "path", "reason"]
_OUTSIDE_COLUMNS = ["sample_id", "path", "resolved", "reason"]


@dataclass
class ValidationReport:
    """Result of :func:`validate`.

    Attributes:
        benchmark: ``Benchmark.describe()`` of what was checked.
        group_counts: DataFrame ``split, group, class, attribute, n`` (every group of every split).
        missing: DataFrame ``sample_id, path, reason`` of rows whose image file does not exist.
        unreadable: DataFrame ``sample_id, path, reason`` of files that exist but cannot be read.
        duplicates: DataFrame ``sample_id, count`` of ids used more than once.
        empty_groups: DataFrame ``split, group, class, attribute`` of (split, group) cells with no image.
        outside_root: DataFrame ``sample_id, path, resolved, reason`` of images that lie outside the benchmark
            root: absolute or ``..`` paths (loaded only with ``allow_outside_root``) and files reached through
            a symlink pointing outside it. Listed as a warning, not an error: whoever can open a shared
            dashboard can see these images.
        warnings: list of one-line warnings (carved val split, no attribute labels, tiny groups, …).
        errors: list of one-line problems that make ``ok`` False.
        images_checked: how many image files were opened (0 when ``check_images=False``).
        seconds: wall time of the check.
    """

    benchmark: dict
    group_counts: pd.DataFrame
    missing: pd.DataFrame
    unreadable: pd.DataFrame
    duplicates: pd.DataFrame
    empty_groups: pd.DataFrame
    outside_root: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=_OUTSIDE_COLUMNS))
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    images_checked: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no file is missing or unreadable, ids are unique, train and test are non-empty and at
        least two classes, each with training images, exist."""
        return not self.errors

    def counts_table(self) -> pd.DataFrame:
        """Group counts as a wide table: one row per group (class / attribute), one column per split + total."""
        gc = self.group_counts
        wide = gc.pivot_table(index=["group", "class", "attribute"], columns="split", values="n",
                              aggfunc="sum", observed=False).reindex(columns=list(SPLITS)).fillna(0).astype(int)
        wide["total"] = wide.sum(axis=1)
        wide = wide.reset_index()
        total = {"group": "", "class": "all", "attribute": "", **{s: int(wide[s].sum()) for s in SPLITS}}
        total["total"] = int(wide["total"].sum())
        return pd.concat([wide, pd.DataFrame([total])], ignore_index=True)

    def to_text(self, max_rows: int = 20) -> str:
        """A readable plain-text report (group count table, then problems and warnings, each listed)."""
        b = self.benchmark
        lines = [f"Benchmark {b.get('name')}  ({b.get('n_samples')} images, fingerprint {b.get('fingerprint')})"]
        t = self.counts_table()
        t["group"] = t["group"].astype(str)
        lines += ["", "Images per group and split:", t.to_string(index=False)]
        checked = f"{self.images_checked} image files checked" if self.images_checked else "image files not opened"
        lines += ["", f"Checks: {checked} in {self.seconds:.1f} s."]
        for title, df in (("Missing files", self.missing), ("Unreadable files", self.unreadable)):
            if len(df):
                lines += ["", f"{title} ({len(df)}):"]
                lines += [f"  {r.sample_id}  {r.path}  — {r.reason}" for r in df.head(max_rows).itertuples()]
                if len(df) > max_rows:
                    lines.append(f"  … and {len(df) - max_rows} more")
        if len(self.outside_root):
            lines += ["", f"Images outside the benchmark root ({len(self.outside_root)}):"]
            lines += [f"  {r.sample_id}  {r.path}  → {r.resolved}  — {r.reason}"
                      for r in self.outside_root.head(max_rows).itertuples()]
            if len(self.outside_root) > max_rows:
                lines.append(f"  … and {len(self.outside_root) - max_rows} more")
        if len(self.duplicates):
            lines += ["", f"Duplicate ids ({len(self.duplicates)}):"]
            lines += [f"  {r.sample_id} × {r.count}" for r in self.duplicates.head(max_rows).itertuples()]
        if len(self.empty_groups):
            lines += ["", "Empty groups:"]
            lines += [f"  {r['split']}: {r['class']} / {r['attribute']}" for r in self.empty_groups.to_dict("records")]
        if self.errors:
            lines += ["", "Problems:"] + [f"  ✗ {e}" for e in self.errors]
        if self.warnings:
            lines += ["", "Warnings:"] + [f"  ! {w}" for w in self.warnings]
        lines += ["", "Result: OK" if self.ok else "Result: NOT OK — fix the problems above before embedding"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def validate(benchmark: Benchmark, check_images: bool = True, progress: Callable | None = None,
             full_decode: bool = False, max_pixels: int = MAX_PIXELS) -> ValidationReport:
    """Check a benchmark before embedding it.

    Args:
        benchmark: the loaded :class:`Benchmark`.
        check_images: open every existing image (header + structure check, or a full decode with
            ``full_decode``); without it only file existence is checked.
        progress: optional ``progress(done, total, message)`` called about every 1 % of rows.
        full_decode: decode every image completely (slow; certain to catch corrupt pixel data).
        max_pixels: images larger than this are reported unreadable (decompression-bomb guard).

    Returns:
        :class:`ValidationReport`.
    """
    t0 = time.perf_counter()
    t = benchmark.table
    gc = benchmark.group_counts()
    missing, unreadable, outside = [], [], []
    total = len(t)
    step = max(total // 100, 1)
    checked = 0
    lexical = paths_outside_root(t["path"], benchmark.root)
    real_root = os.path.realpath(benchmark.root)
    real_dirs: dict[str, str] = {}  # realpath per folder: one lstat per file, not a realpath walk per file
    for i, (sid, p) in enumerate(zip(t["sample_id"].to_numpy(), t["path"].to_numpy())):
        full = benchmark.image_path(p)
        if i in lexical.index:
            outside.append((sid, p, os.path.realpath(full), lexical[i]))
        elif p:
            folder, name = os.path.split(os.fspath(full))
            real = real_dirs.get(folder) or real_dirs.setdefault(folder, os.path.realpath(folder))
            real = os.path.realpath(full) if os.path.islink(full) else os.path.join(real, name)
            if os.path.commonpath([real_root, real]) != real_root:
                outside.append((sid, p, real, "symlink to a file outside the root"))
        if not os.path.isfile(full):
            missing.append((sid, p, missing_reason(full)))  # names an unfetched git-annex link
        elif check_images:
            reason = check_image(full, max_pixels=max_pixels, full=full_decode)
            checked += 1
            if reason:
                unreadable.append((sid, p, reason))
        if progress is not None and (i % step == 0 or i == total - 1):
            progress(i + 1, total, "checking image files")
    dup_counts = t["sample_id"].value_counts()
    dups = dup_counts[dup_counts > 1]
    duplicates = pd.DataFrame({"sample_id": dups.index.astype(str), "count": dups.to_numpy()})
    empty = gc[gc["n"] == 0][["split", "group", "class", "attribute"]].reset_index(drop=True)

    errors, warns = [], list(getattr(benchmark, "notes", []) or [])
    if missing:
        errors.append(f"{len(missing)} image file(s) missing (listed above)")
    if unreadable:
        errors.append(f"{len(unreadable)} image file(s) unreadable (listed above)")
    if len(duplicates):
        errors.append(f"{len(duplicates)} duplicate sample id(s)")
    n_split = t["split"].value_counts()
    for s in ("train", "test"):
        if int(n_split.get(s, 0)) == 0:
            errors.append(f"the {s} split is empty")
    # classes: a classifier needs two, and cannot learn a class that has no training image
    names = list(benchmark.class_names)
    n_train = t.loc[t["split"] == "train", "y"].value_counts()
    n_all = t["y"].value_counts()
    present = [k for k in range(len(names)) if int(n_all.get(k, 0)) > 0]
    if len(present) < 2:
        errors.append(f"only {len(present)} class(es) have images ({', '.join(names[k] for k in present) or 'none'}): "
                      "a classifier needs at least 2")
    for k, name in enumerate(names):
        if int(n_all.get(k, 0)) == 0:
            errors.append(f"class {name!r} has no images at all (integer labels must be 0 … K-1 without gaps, "
                          "or give the classes as names)")
        elif int(n_train.get(k, 0)) == 0 and int(n_split.get("train", 0)) > 0:
            errors.append(f"class {name!r} has no training images: no method can learn it")
    if int(n_split.get("val", 0)) == 0:
        warns.append("the val split is empty: model selection will fall back to train")
    params = benchmark.params or {}
    if params.get("val_carved"):
        frac = float(params.get("val_fraction", 0.2))
        warns.append(f"no val split in the metadata: a class-stratified {frac:.0%} of train was carved out as "
                     f"val (seed {params.get('val_seed', 0)})")
    if not benchmark.has_attributes:
        warns.append("no spurious-attribute labels: group metrics are per class only; methods that need "
                      "group labels (DFR, group-balanced selection) are unavailable")
    elif (t["a"] < 0).any():
        warns.append(f"{int((t['a'] < 0).sum())} row(s) have an unknown attribute (a = -1)")
    if outside:
        warns.append(f"{len(outside)} image(s) lie outside the benchmark root {benchmark.root} (listed above): "
                     "fine if you put them there on purpose; anyone who can open this dashboard can see them")
    if benchmark.has_attributes:
        for r in empty.to_dict("records"):
            warns.append(f"empty group in {r['split']}: {r['class']} / {r['attribute']}")
        tiny = gc[(gc["split"] == "train") & (gc["n"] > 0) & (gc["n"] < TINY_GROUP)]
        for r in tiny.to_dict("records"):
            warns.append(f"tiny training group {r['class']} / {r['attribute']}: {r['n']} images (< {TINY_GROUP}); "
                         "its accuracy has a wide interval")
    return ValidationReport(
        benchmark=benchmark.describe(), group_counts=gc,
        missing=pd.DataFrame(missing, columns=_ISSUE_COLUMNS),
        unreadable=pd.DataFrame(unreadable, columns=_ISSUE_COLUMNS),
        duplicates=duplicates, empty_groups=empty, outside_root=pd.DataFrame(outside, columns=_OUTSIDE_COLUMNS),
        warnings=warns, errors=errors,
        images_checked=checked, seconds=time.perf_counter() - t0,
    )
