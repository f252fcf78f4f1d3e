"""Waterbirds-lite: the built-in demo benchmark, generated offline from real photos and colour emoji.

Each image is an emoji bird (random size, horizontal flip and small rotation) pasted on a random crop of a
real landscape photo (Debian wallpaper packages, see :data:`WALLPAPERS`):

* ``y`` — bird type: 0 ``landbird`` (🐦🦅🦜🐓🦃🦉🐤🕊🐔🦚), 1 ``waterbird`` (🦆🦢🐧🦩🪿);
* ``a`` — background: 0 ``land``, 1 ``water``; ``group = 2 y + a``.

Like Waterbirds (Sagawa et al., ICLR 2020), the training split is spuriously correlated: a fraction
``aligned`` (default 95 %) of training images are *aligned* (landbird on land, waterbird on water), the
rest split evenly between the two minority groups; val and test are balanced over the four groups. Classes
are balanced within each alignment type.

**Difficulty** (:data:`DIFFICULTY_PRESETS`, :func:`difficulty_presets`): how strongly the bird itself shows.
The bird's longest side is drawn from ``uniform(bird_scale_min, bird_scale_max)`` × the image side, and the
bird is pasted with opacity ``bird_opacity``. Smaller or fainter birds weaken the class signal, so a model
leans on the background instead — the spurious correlation takes over. The default preset
``"waterbirds-like"`` (birds 25–40 % of the image) gives, with the bundled Lite0 backbone, an ERM test
worst-group accuracy near Waterbirds' (≈ 0.6) and a clear gap to DFR; ``"easy"`` is the builder-1 demo
(32–55 %, opaque), on which ERM is already robust. Explicit ``bird_scale_min`` / ``bird_scale_max`` /
``bird_opacity`` override the preset (recorded as ``difficulty="custom"`` unless they equal a preset).

The images (``image_size`` px JPEG, quality 90) are written once into
``cache_dir()/datasets/demo-<hash of params>/`` and reused: the folder is built under a temporary name,
``COMPLETE`` is written last, and the folder is moved into place atomically (a file lock stops two
processes from building the same one). Every sample draws its randomness from
``numpy.random.SeedSequence([seed, index])``, so the same parameters give the same table and the same
image bytes (for the same Pillow/libjpeg), and a different seed gives different images.

Layout of a built folder::

    demo-<hash>/
      images/{train,val,test}/<sample_id>.jpg
      samples.csv        sample_id, path, split, y, a, group, bird, wallpaper
      params.json        builder parameters + version
      COMPLETE           completion marker (written last)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from clipcal.data.base import Benchmark
from clipcal.errors import DataError
from clipcal.paths import cache_dir, writable_dir

#: Bump when the generator changes its output, so old cached folders are not reused. 2: difficulty
#: parameters (bird size range, opacity) and a harder default ("waterbirds-like"); version 1 = "easy".
BUILDER_VERSION = 2

CLASS_NAMES = ["landbird", "waterbird"]
ATTR_NAMES = ["land", "water"]
LANDBIRDS = "🐦🦅🦜🐓🦃🦉🐤🕊🐔🦚"
WATERBIRDS = "🦆🦢🐧🦩🪿"

EMOJI_FONT = {"package": "fonts-noto-color-emoji", "path": "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"}
_EMOJI_PX = 109  # the one bitmap strike size of Noto Color Emoji (CBDT)


@dataclass(frozen=True)
class Wallpaper:
    """One background photo: Debian package, absolute path, label (0 land, 1 water), licence."""

    package: str
    path: str
    background: int
    licence: str

    @property
    def name(self) -> str:
        """Short name: the KDE wallpaper folder, or the file stem."""
        parts = Path(self.path).parts
        return parts[parts.index("wallpapers") + 1] if "wallpapers" in parts else Path(self.path).stem


_KDE = "/usr/share/wallpapers/{}/contents/images/{}"
_KDE_LIC = "GPL-2+ (Debian copyright); LGPL-3.0 per metadata.json"
_MATE = "/usr/share/backgrounds/mate/nature/{}.jpg"
_LOMIRI = "/usr/share/backgrounds/{}.jpg"

#: Background photos, checked against ``dpkg -L`` on Debian 12. KDE wallpapers come in many sizes; the
#: 1280×800 copy is used (Volna ships only 5120×2880, decoded at 1/4 scale). MATE ``nature/Dune`` is left
#: out on purpose: its top strip shows sea. Licences from each package's ``/usr/share/doc/<pkg>/copyright``
#: (and, for KDE, each wallpaper's ``metadata.json``).
WALLPAPERS: tuple[Wallpaper, ...] = (
    # water
    Wallpaper("plasma-workspace-wallpapers", _KDE.format("BytheWater", "1280x800.jpg"), 1, _KDE_LIC),
    Wallpaper("plasma-workspace-wallpapers", _KDE.format("ColdRipple", "1280x800.jpg"), 1, _KDE_LIC),
    Wallpaper("plasma-workspace-wallpapers", _KDE.format("EveningGlow", "1280x800.jpg"), 1, _KDE_LIC),
    Wallpaper("plasma-workspace-wallpapers", _KDE.format("summer_1am", "1280x800.jpg"), 1, _KDE_LIC),
    Wallpaper("plasma-workspace-wallpapers", _KDE.format("DarkestHour", "1280x800.jpg"), 1, _KDE_LIC),
    Wallpaper("plasma-workspace-wallpapers", _KDE.format("Volna", "5120x2880.jpg"), 1,
              "GPL-2+ (Debian copyright); CC-BY-SA-4.0 per metadata.json (Nikita Babin)"),
    Wallpaper("mate-backgrounds", _MATE.format("Aqua"), 1, "GPL-2+ (Charles Barbin, 2008)"),
    Wallpaper("mate-backgrounds", _MATE.format("Storm"), 1, "GPL-2+ (Sergey Nazarov, 2008)"),
    # land
    Wallpaper("plasma-workspace-wallpapers", _KDE.format("Path", "1280x800.jpg"), 0, _KDE_LIC),
    Wallpaper("plasma-workspace-wallpapers", _KDE.format("OneStandsOut", "1280x800.jpg"), 0, _KDE_LIC),
    Wallpaper("plasma-workspace-wallpapers", _KDE.format("FallenLeaf", "1280x800.jpg"), 0, _KDE_LIC),
    Wallpaper("mate-backgrounds", _MATE.format("GreenMeadow"), 0, "GPL-2+ (Timothy Schellhase, 2005)"),
    Wallpaper("mate-backgrounds", _MATE.format("Blinds"), 0, "GPL-2+ (Lennart Poettering, 2008)"),
    Wallpaper("lomiri-wallpapers-16.04", _LOMIRI.format("aitzgorri_by_Aitzol_Berasategi"), 0,
              "CC-BY-4.0 (Aitzol Berasategi, 2018)"),
    Wallpaper("lomiri-wallpapers-16.04", _LOMIRI.format("picosdeeuropa_by_Aitzol_Berasategi"), 0,
              "CC-BY-4.0 (Aitzol Berasategi, 2018)"),
    Wallpaper("lomiri-wallpapers-16.04", _LOMIRI.format("sunset_by_Aitzol_Berasategi"), 0,
              "CC-BY-4.0 (Aitzol Berasategi, 2018)"),
    Wallpaper("lomiri-wallpapers-16.04", _LOMIRI.format("seeding_by_Clements_Engelhardt"), 0,
              "CC0-1.0 (Clemens Engelhardt, 2018)"),
    Wallpaper("lomiri-wallpapers-20.04", _LOMIRI.format("Kleiber_by_Lukas_Baubkus"), 0,
              "CC-BY-SA-3.0 (Lukas Baubkus, 2021)"),
)

#: Licences of everything the demo images are made of (shown by the UI and the README).
LICENCES = {
    "photos": {w.path: w.licence for w in WALLPAPERS},
    "emoji": {EMOJI_FONT["path"]: "OFL-1.1 (font) / Apache-2.0 (Noto emoji images), fonts-noto-color-emoji"},
    "note": "Generated images are derived works of these photos (GPL-2+ / LGPL-3.0 / CC-BY(-SA) / CC0 per "
            "file): they are built on the user's machine into the cache and never committed or shipped.",
}

REQUIRED_PACKAGES = tuple(sorted({w.package for w in WALLPAPERS} | {EMOJI_FONT["package"]}))

#: Named difficulty presets: bird size range (fraction of the image side, longest side of the emoji) and
#: opacity. ``teaching`` is the one-line explanation shown beside the control; the measured effect of each
#: preset (bench/demo_story.py) is in :data:`DIFFICULTY_MEASURED`.
DIFFICULTY_PRESETS: dict[str, dict] = {
    "easy": {"bird_scale_min": 0.32, "bird_scale_max": 0.55, "bird_opacity": 1.0,
             "teaching": "large, opaque birds: the class signal is strong, so even plain ERM barely needs the "
                         "background (the demo of builder version 1)"},
    "moderate": {"bird_scale_min": 0.28, "bird_scale_max": 0.45, "bird_opacity": 1.0,
                 "teaching": "smaller birds: the class signal weakens and the background starts to take over"},
    "waterbirds-like": {"bird_scale_min": 0.25, "bird_scale_max": 0.40, "bird_opacity": 1.0,
                        "teaching": "smaller birds still: the background takes over for the minority groups — "
                                    "a worst-group gap like Waterbirds' (the default)"},
    "faint": {"bird_scale_min": 0.32, "bird_scale_max": 0.55, "bird_opacity": 0.6,
              "teaching": "birds of the easy size but see-through: the background shows through the bird, so "
                          "the model reads the background even where the bird is"},
}
DEFAULT_DIFFICULTY = "waterbirds-like"
DIFFICULTY_KEYS = ("bird_scale_min", "bird_scale_max", "bird_opacity")

#: Measured effect of each preset: test worst-group accuracy of ERM (last layer, no group labels) and DFR
#: (uses validation group labels), bundled Lite0 at 160 px, default sizes (1,200 / 400 / 800), mean over the
#: data seeds listed; ``bench/demo_story.py --difficulty <name> --seeds …`` reproduces them.
DIFFICULTY_MEASURED: dict[str, dict] = {
    "easy": {"erm_worst_group": 0.875, "dfr_worst_group": 0.895, "seeds": [0],
             "backbone": "bundled:efficientnet-lite0", "source": "bench/demo_story.py, 2026-11-30 (under load)"},
    "moderate": {"erm_worst_group": 0.725, "dfr_worst_group": 0.850, "seeds": [0],
                 "backbone": "bundled:efficientnet-lite0", "source": "bench/demo_story.py, 2026-11-30 (under load)"},
    "waterbirds-like": {"erm_worst_group": 0.572, "dfr_worst_group": 0.837, "seeds": [0, 1, 2],
                        "backbone": "bundled:efficientnet-lite0",
                        "source": "bench/demo_story.py --seeds 0 1 2, 2026-11-30 (under load); per seed ERM "
                                  "0.640 / 0.455 / 0.620, DFR 0.800 / 0.840 / 0.870"},
    "faint": {"erm_worst_group": 0.560, "dfr_worst_group": 0.800, "seeds": [0],
              "backbone": "bundled:efficientnet-lite0", "source": "bench/demo_story.py, 2026-11-30 (under load)"},
}


def difficulty_presets() -> list[dict]:
    """The demo's difficulty presets with their teaching text and measured effect (for the Data page).

    Returns:
        One dict per preset, in order from easiest: ``name``, ``default`` (bool), ``bird_scale_min`` /
        ``bird_scale_max`` (fractions of the image side), ``bird_opacity`` (0–1), ``teaching`` (one sentence),
        ``measured`` (``{"erm_worst_group", "dfr_worst_group", "seeds", "backbone", "source"}`` or ``None`` when
        not measured).
    """
    return [{"name": name, "default": name == DEFAULT_DIFFICULTY,
             **{k: float(p[k]) for k in DIFFICULTY_KEYS}, "teaching": p["teaching"],
             "measured": dict(DIFFICULTY_MEASURED[name]) if name in DIFFICULTY_MEASURED else None}
            for name, p in DIFFICULTY_PRESETS.items()]

DEFAULTS = {"n_train": 1200, "n_val": 400, "n_test": 800, "seed": 0, "image_size": 224, "aligned": 0.95,
            "difficulty": DEFAULT_DIFFICULTY,
            **{k: DIFFICULTY_PRESETS[DEFAULT_DIFFICULTY][k] for k in DIFFICULTY_KEYS}}


def demo_assets_status() -> dict:
    """Which of the demo's Debian packages and files are present on this machine.

    Returns:
        dict with ``ok`` (bool), ``present`` / ``missing_packages`` (sorted lists of package names),
        ``missing_files`` (paths), ``install_command`` (str, empty when nothing is missing) and
        ``licences`` (:data:`LICENCES`).
    """
    files = {w.path: w.package for w in WALLPAPERS}
    files[EMOJI_FONT["path"]] = EMOJI_FONT["package"]
    missing_files = sorted(p for p in files if not os.path.isfile(p))
    missing_pkgs = sorted({files[p] for p in missing_files})
    cmd = f"sudo apt-get install -y {' '.join(missing_pkgs)}" if missing_pkgs else ""
    return {
        "ok": not missing_files,
        "present": sorted(set(REQUIRED_PACKAGES) - set(missing_pkgs)),
        "missing_packages": missing_pkgs,
        "missing_files": missing_files,
        "install_command": cmd,
        "licences": LICENCES,
    }


def _require_assets() -> None:
    st = demo_assets_status()
    if not st["ok"]:
        raise DataError(
            "the built-in demo needs Debian packages that are missing: " + ", ".join(st["missing_packages"])
            + f" ({len(st['missing_files'])} file(s) not found, e.g. {st['missing_files'][0]})",
            hint=f"install them with:  {st['install_command']}   (about 170 MB; or use another benchmark)",
        )


def _resolve_difficulty(options: dict) -> dict:
    """``difficulty`` (preset name or ``"custom"``) + explicit overrides → the three floats and the name.

    The name recorded is the preset whose values the result equals, else ``"custom"`` — so the same images
    always get the same parameters (and the same cache folder), however they were asked for.
    """
    name = options.get("difficulty")
    name = DEFAULT_DIFFICULTY if name is None else str(name).strip().lower()
    if name != "custom" and name not in DIFFICULTY_PRESETS:
        raise DataError(f"unknown demo difficulty {options.get('difficulty')!r}",
                        hint=f"use one of {list(DIFFICULTY_PRESETS)} (or give bird_scale_min, bird_scale_max, "
                             "bird_opacity)")
    base = DIFFICULTY_PRESETS[DEFAULT_DIFFICULTY if name == "custom" else name]
    out = {}
    for k in DIFFICULTY_KEYS:
        v = options.get(k)
        try:
            out[k] = float(base[k] if v is None else v)
        except (TypeError, ValueError):
            raise DataError(f"demo option {k} must be a number, got {v!r}") from None
    lo, hi, op = out["bird_scale_min"], out["bird_scale_max"], out["bird_opacity"]
    if not (0.05 <= lo <= hi <= 1.0):
        raise DataError(f"bird size range [{lo}, {hi}] must satisfy 0.05 ≤ bird_scale_min ≤ bird_scale_max ≤ 1",
                        hint="fractions of the image side, e.g. bird_scale_min=0.25, bird_scale_max=0.4")
    if not 0.1 <= op <= 1.0:
        raise DataError(f"bird_opacity {op} out of range [0.1, 1]", hint="1 = opaque (easy), e.g. 0.6 = faint")
    out["difficulty"] = next((n for n, pr in DIFFICULTY_PRESETS.items()
                              if all(float(pr[k]) == out[k] for k in DIFFICULTY_KEYS)), "custom")
    return out


def demo_params(**options) -> dict:
    """Full, validated parameter dict of a demo build (defaults filled in).

    ``difficulty`` names a preset of :data:`DIFFICULTY_PRESETS` (default ``"waterbirds-like"``); explicit
    ``bird_scale_min`` / ``bird_scale_max`` / ``bird_opacity`` override it. The returned dict always holds the
    three resolved floats and ``difficulty`` = the preset they equal, else ``"custom"``.

    Raises:
        DataError: unknown option or difficulty, or sizes/fractions out of range.
    """
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise DataError(f"unknown demo option(s) {unknown}", hint=f"valid options: {sorted(DEFAULTS)}")
    given = {k: v for k, v in options.items() if v is not None}
    p = {**{k: v for k, v in DEFAULTS.items() if k not in DIFFICULTY_KEYS and k != "difficulty"},
         **{k: v for k, v in given.items() if k not in DIFFICULTY_KEYS and k != "difficulty"}}
    p.update(_resolve_difficulty(given))
    for k in ("n_train", "n_val", "n_test", "seed", "image_size"):
        p[k] = int(p[k])
    p["aligned"] = float(p["aligned"])
    if min(p["n_train"], p["n_val"], p["n_test"]) < 4:
        raise DataError("demo split sizes must be ≥ 4 (one image per group)", hint="e.g. n_train=1200")
    if not 32 <= p["image_size"] <= 1024:
        raise DataError(f"image_size {p['image_size']} out of range [32, 1024]")
    if not 0.5 <= p["aligned"] <= 1.0:
        raise DataError(f"aligned fraction {p['aligned']} out of range [0.5, 1]")
    return p


def demo_dir(**options) -> Path:
    """Folder the demo with these parameters is (or will be) built in."""
    p = demo_params(**options)
    h = hashlib.sha256(json.dumps({**p, "version": BUILDER_VERSION}, sort_keys=True).encode()).hexdigest()
    return cache_dir() / "datasets" / f"demo-{h[:12]}"


def _group_plan(n: int, aligned: float | None) -> list[tuple[int, int]]:
    """(y, a) for each of n samples. ``aligned=None`` → balanced over the 4 groups."""
    if aligned is None:
        counts = {g: n // 4 + (1 if g < n % 4 else 0) for g in range(4)}
    else:
        n_min = int(round(n * (1 - aligned)))
        n_maj = n - n_min
        # groups: 0 landbird/land, 3 waterbird/water (aligned); 1 landbird/water, 2 waterbird/land
        counts = {0: n_maj - n_maj // 2, 3: n_maj // 2, 1: n_min - n_min // 2, 2: n_min // 2}
    plan = []
    for g in range(4):
        plan += [(g // 2, g % 2)] * counts[g]
    return plan


class _Assets:
    """Decoded backgrounds (downscaled once) and rendered emoji, shared by all samples of a build."""

    def __init__(self, target: int, map_fn: Callable = map):
        """``map_fn``: ``map`` or a thread pool's ``map`` (decoding and resizing release the GIL)."""
        self.backgrounds: list[list[tuple[Wallpaper, Image.Image]]] = [[], []]
        for w, im in zip(WALLPAPERS, map_fn(partial(_decode_photo, target=target), WALLPAPERS)):
            self.backgrounds[w.background].append((w, im))
        font = ImageFont.truetype(EMOJI_FONT["path"], _EMOJI_PX)
        self.birds: list[list[tuple[str, Image.Image]]] = []
        for chars in (LANDBIRDS, WATERBIRDS):
            rendered = []
            for ch in chars:
                canvas = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
                ImageDraw.Draw(canvas).text((0, 0), ch, font=font, embedded_color=True)
                rendered.append((ch, canvas.crop(canvas.getbbox())))
            self.birds.append(rendered)


def _decode_photo(w: Wallpaper, target: int) -> Image.Image:
    """``w``'s photo in RGB, its short side scaled down to ``target`` px (LANCZOS; never up)."""
    im = Image.open(w.path)
    if im.format == "JPEG":
        im.draft("RGB", (target, target))
    im = im.convert("RGB")
    scale = target / min(im.size)
    if scale < 1:
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
    return im


_ASSETS_CACHE: dict[tuple, _Assets] = {}


def _assets(image_size: int, map_fn: Callable = map) -> _Assets:
    """Decoded assets, kept per process (decoding the 18 photos costs about 1.2 s of CPU; ``map_fn`` as
    :class:`_Assets`)."""
    target = max(2 * image_size, 512)  # short side of the decoded photos: crops stay sharp after resizing
    key = (target, WALLPAPERS)
    if key not in _ASSETS_CACHE:
        if len(_ASSETS_CACHE) >= 2:  # about 25 MB each
            _ASSETS_CACHE.clear()
        _ASSETS_CACHE[key] = _Assets(target, map_fn)
    return _ASSETS_CACHE[key]


def _render(assets: _Assets, y: int, a: int, rng: np.random.Generator, size: int, scale_range=(0.32, 0.55),
            opacity: float = 1.0) -> tuple[Image.Image, str, str]:
    """One image: a random crop of a class-``a`` photo with a class-``y`` bird of random size pasted on it.

    ``scale_range``: the bird's longest side as a fraction of ``size`` (uniform); ``opacity`` multiplies the
    emoji's alpha. The random draws are the same for every difficulty (same images up to the bird's look).
    """
    wp, bg = assets.backgrounds[a][rng.integers(len(assets.backgrounds[a]))]
    side = int(min(bg.size) * rng.uniform(0.45, 0.9))
    x0 = int(rng.integers(0, bg.width - side + 1))
    y0 = int(rng.integers(0, bg.height - side + 1))
    img = bg.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.Resampling.BILINEAR)
    ch, bird = assets.birds[y][rng.integers(len(assets.birds[y]))]
    scale = rng.uniform(*scale_range) * size / max(bird.size)
    bird = bird.resize((max(1, round(bird.width * scale)), max(1, round(bird.height * scale))),
                       Image.Resampling.LANCZOS)
    if rng.random() < 0.5:
        bird = bird.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    bird = bird.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BICUBIC, expand=True)
    if opacity < 1.0:
        bird.putalpha(bird.getchannel("A").point(lambda v: round(v * opacity)))
    px = int(rng.integers(0, max(size - bird.width, 0) + 1))
    py = int(rng.integers(0, max(size - bird.height, 0) + 1))
    img.paste(bird, (px, py), bird)
    return img, ch, wp.name


#: Images per task of a build in threads (and between two progress reports).
_CHUNK = 50


def default_build_workers() -> int:
    """Threads generating the demo images: one per CPU this process may use (``os.sched_getaffinity``), at most 8.

    Threads, not processes: Pillow releases the GIL in the heavy steps (resampling, rotation, JPEG encoding:
    ≈ 80 % of an image's ≈ 3 ms of CPU, ``cProfile`` of :func:`_render`), and a thread needs neither a process
    start nor its own copy of the decoded photos — nor, as ``spawn`` would, the caller's ``__main__`` run again.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores))


def _render_chunk(dest: Path, assets: _Assets, p: dict, tasks: list[tuple[int, str, int, int, int]]) -> list[tuple]:
    """Render and write the images of ``tasks`` (``(split index, split, j, y, a)`` each) into ``dest``; return
    their ``samples.csv`` rows. Each image's randomness is ``SeedSequence([seed, split index, j])`` alone, so
    any split of the tasks between threads writes the same bytes."""
    rows = []
    for s_idx, split, j, y, a in tasks:
        rng = np.random.default_rng(np.random.SeedSequence([p["seed"], s_idx, j]))
        img, ch, wall = _render(assets, y, a, rng, p["image_size"],
                                (p["bird_scale_min"], p["bird_scale_max"]), p["bird_opacity"])
        sid = f"{split}_{j:05d}"
        rel = f"images/{split}/{sid}.jpg"
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        (dest / rel).write_bytes(buf.getvalue())
        rows.append((sid, rel, split, y, a, 2 * y + a, f"U+{ord(ch):X}", wall))
    return rows


def _build(dest: Path, p: dict, progress: Callable | None, workers: int | None = None) -> None:
    """Generate the images and ``samples.csv`` of parameters ``p`` into ``dest`` in ``workers`` threads
    (``None``: :func:`default_build_workers`; 1: this thread only) — the same bytes for any number."""
    splits = (("train", p["n_train"], p["aligned"]), ("val", p["n_val"], None), ("test", p["n_test"], None))
    tasks = []
    for s_idx, (split, n, aligned) in enumerate(splits):
        plan = _group_plan(n, aligned)
        # Shuffle within the split so that file order does not reveal the group.
        order = np.random.default_rng(np.random.SeedSequence([p["seed"], s_idx, 10**6])).permutation(n)
        (dest / "images" / split).mkdir(parents=True, exist_ok=True)
        tasks += [(s_idx, split, j, *plan[k]) for j, k in enumerate(order)]
    total = len(tasks)
    workers = default_build_workers() if workers is None else max(1, int(workers))
    chunks = [tasks[i:i + _CHUNK] for i in range(0, total, _CHUNK)]
    rows: list[tuple] = []
    if progress is not None:
        progress(0, total, "building demo images")
    pool = ThreadPoolExecutor(workers, thread_name_prefix="clipcal-demo-build")
    try:
        map_fn = pool.map if workers > 1 else map  # map() yields in order: the rows of a one-thread build
        job = partial(_render_chunk, dest, _assets(p["image_size"], map_fn), p)
        t0 = time.perf_counter()
        for chunk_rows in map_fn(job, chunks):
            rows += chunk_rows
            if progress is not None:
                el = time.perf_counter() - t0
                progress(len(rows), total, f"building demo images ({len(rows) / max(el, 1e-9):.0f} images/s)")
    finally:
        pool.shutdown(cancel_futures=True)  # on an error, the chunks not started yet are dropped
    t = pd.DataFrame(rows, columns=["sample_id", "path", "split", "y", "a", "group", "bird", "wallpaper"])
    t.to_csv(dest / "samples.csv", index=False)
    (dest / "params.json").write_text(json.dumps({**p, "version": BUILDER_VERSION}, indent=1, sort_keys=True))
    (dest / "COMPLETE").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def build_demo(progress: Callable | None = None, **options) -> Path:
    """Build the demo images into the cache if not there yet; return the folder.

    Args:
        progress: optional ``progress(done, total, message)`` called while images are generated.
        **options: ``n_train, n_val, n_test, seed, image_size, aligned, difficulty, bird_scale_min,
            bird_scale_max, bird_opacity`` (see :data:`DEFAULTS`, :func:`demo_params`).

    Returns:
        ``Path`` of the complete folder (``COMPLETE`` present).

    Raises:
        DataError: demo packages missing (message gives the ``apt-get install`` command), bad options.
    """
    p = demo_params(**options)
    return _build_once(demo_dir(**p), lambda tmp: _build(tmp, p, progress))


def _build_once(dest: Path, build: Callable[[Path], None]) -> Path:
    """Build a cache folder once: ``build(tmp)`` fills a temporary sibling and writes ``COMPLETE`` last, then the
    folder is moved into place (``os.replace``) under its file lock — a second process waits and reuses it; a
    killed build's leftovers are removed. Returns ``dest``.

    Raises:
        DataError: the demo's Debian packages are missing. StoreError: the datasets folder is not writable.
    """
    from filelock import FileLock

    if (dest / "COMPLETE").is_file():
        return dest
    _require_assets()
    writable_dir(dest.parent, "datasets folder")  # a read-only cache: StoreError naming it, not OSError
    with FileLock(str(dest) + ".lock"):
        if (dest / "COMPLETE").is_file():  # another process built it while we waited
            return dest
        for stale in dest.parent.glob(f".{dest.name}.tmp-*"):  # left by a killed build (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            build(tmp)
            if dest.exists():  # an incomplete leftover (no COMPLETE): move it aside, never read it
                shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return dest


def load_demo(root: str | Path | None = None, progress: Callable | None = None, **options) -> Benchmark:
    """Load Waterbirds-lite, building it into the cache on first use.

    Args:
        root: ignored unless given; then a folder holding a built demo (``samples.csv`` + ``COMPLETE``),
            e.g. a copy moved elsewhere.
        progress: as :func:`build_demo`.
        **options: as :func:`build_demo`; defaults ``n_train=1200, n_val=400, n_test=800, seed=0,
            image_size=224, aligned=0.95, difficulty="waterbirds-like"`` (birds 25–40 % of the side, opaque).

    Returns:
        ``Benchmark`` named ``demo``: classes ``landbird, waterbird`` (target "bird type"), attributes
        ``land, water`` (attribute "background"); ``root`` is the datasets folder and ``path`` values read
        ``demo-<hash>/images/<split>/<sample_id>.jpg`` (so the fingerprint tells builds apart).

    Raises:
        DataError: as :func:`build_demo`, or ``root`` is not a complete demo folder.
    """
    if root is not None:
        folder = Path(root).expanduser().resolve()
        if not (folder / "COMPLETE").is_file() or not (folder / "samples.csv").is_file():
            raise DataError(f"{folder} is not a complete demo folder (samples.csv and COMPLETE expected)",
                            hint="leave root empty to build the demo into the cache")
        p = json.loads((folder / "params.json").read_text()) if (folder / "params.json").is_file() else {}
        p.pop("version", None)
    else:
        p = demo_params(**options)
        folder = build_demo(progress=progress, **p)
    t = pd.read_csv(folder / "samples.csv", dtype={"sample_id": str, "path": str})
    # Paths are given relative to the datasets folder, "demo-<hash>/images/…": the hash covers every build
    # parameter (image_size too, which the table does not show), so Benchmark.fingerprint() differs
    # between builds with different images yet stays independent of where the cache lives.
    t["path"] = folder.name + "/" + t["path"]
    return Benchmark(
        name="demo", root=folder.parent, table=t[["sample_id", "path", "split", "y", "a"]],
        class_names=list(CLASS_NAMES), attr_names=list(ATTR_NAMES), params=p,
        target_name="bird type", attr_name="background",
    )


#: Version of :func:`build_background_crops`' output (bump when the crops change).
BACKGROUNDS_VERSION = 1


def build_background_crops(kind: str, n: int = 50, image_size: int = 224, seed: int = 0) -> Path:
    """Bird-free crops of the demo's background photos of one kind — a concept set for concept activation
    vectors (:mod:`clipcal.cav`): the demo's own backgrounds, without the birds.

    Each crop is drawn like a demo image's background (:func:`_render`: a random square of 45–90 % of the
    photo's short side, resized to ``image_size``), from ``numpy.random.SeedSequence([seed, kind, index])``;
    written once as JPEG (quality 90) into ``cache_dir()/datasets/demo-backgrounds-<hash>/`` (``COMPLETE`` last,
    moved into place atomically), so the same arguments give the same files.

    Args:
        kind: ``"land"`` or ``"water"`` (:data:`ATTR_NAMES`).
        n: number of crops (≥ 1).
        image_size: side in pixels (32–1024).
        seed: random seed.

    Returns:
        The folder (``<kind>_<index>.jpg`` files and ``COMPLETE``).

    Raises:
        DataError: unknown kind, bad size, or the demo's Debian packages are missing (install command given).
    """
    if kind not in ATTR_NAMES:
        raise DataError(f"unknown background kind {kind!r}", hint=f"use one of {ATTR_NAMES}")
    if int(n) < 1 or not 32 <= int(image_size) <= 1024:
        raise DataError(f"need n ≥ 1 crops of 32–1024 px, got n={n}, image_size={image_size}")
    p = {"kind": kind, "n": int(n), "image_size": int(image_size), "seed": int(seed),
         "version": BACKGROUNDS_VERSION, "photos": [w.path for w in WALLPAPERS if w.background == ATTR_NAMES.index(kind)]}
    h = hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest()
    dest = cache_dir() / "datasets" / f"demo-backgrounds-{h[:12]}"

    def build(tmp: Path) -> None:
        photos = _assets(p["image_size"]).backgrounds[ATTR_NAMES.index(kind)]
        size = p["image_size"]
        for j in range(p["n"]):
            rng = np.random.default_rng(np.random.SeedSequence([p["seed"], ATTR_NAMES.index(kind), 7, j]))
            _, bg = photos[rng.integers(len(photos))]
            side = int(min(bg.size) * rng.uniform(0.45, 0.9))  # the crop of _render, without a bird
            x0 = int(rng.integers(0, bg.width - side + 1))
            y0 = int(rng.integers(0, bg.height - side + 1))
            img = bg.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.Resampling.BILINEAR)
            img.save(tmp / f"{kind}_{j:04d}.jpg", "JPEG", quality=90)
        (tmp / "params.json").write_text(json.dumps(p, indent=1, sort_keys=True))
        (tmp / "COMPLETE").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    return _build_once(dest, build)
