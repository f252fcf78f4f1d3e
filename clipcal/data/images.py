"""The one image reader of clipcal: every image (embedding, grids, thumbnails) goes through :func:`load_image`.

It turns whatever is on disk into an 8-bit RGB ``PIL.Image``, or raises :class:`~clipcal.errors.DataError`
with the reason, so that a bad file is reported (never silently skipped or mis-decoded):

==========================  =================================================================================
input                       handling
==========================  =================================================================================
CMYK / YCCK JPEG            converted by Pillow (Adobe inverted CMYK handled by the decoder)
16-bit PNG / TIFF (``I;16``, ``I``)   scaled to 8 bit (value / 257), not clipped at 255
float (``F``)               [0, 1] data × 255, otherwise min–max scaled
RGBA, LA, PA, palette + transparency   composited on white
grayscale (``L``, ``1``)    replicated to RGB
EXIF orientation            applied (``ImageOps.exif_transpose``)
truncated file              ``DataError`` "truncated …" (Pillow's ``LOAD_TRUNCATED_IMAGES`` stays off)
huge image (> max_pixels)   ``DataError`` "too large …", raised from the header before any pixel is allocated
thin image (> MAX_ASPECT)   ``DataError`` "too thin …", raised from the header (see below)
a text file (HTML page,     ``DataError`` naming what the file is and what to do (:mod:`clipcal.filekind`),
LFS / annex pointer, empty) e.g. "… is a Git LFS pointer file" → ``git lfs pull``
==========================  =================================================================================

Memory is bounded by what a model sees, not only by the file's pixel count: backbones resize the *shortest*
side to S pixels (S = 160 … 448) before the centre crop, so a 20000 × 1 PNG of 143 bytes — far below the
pixel limit — becomes a 3,200,000 × 160 image (+1.96 GB with the bundled backbone). Images whose long side
is more than :data:`MAX_ASPECT` times the short side are therefore refused from the header, which bounds that
resize by ``MAX_ASPECT · S²`` pixels (15 MB of RGB at 224 px) whatever the file; embedding, thumbnails and
``data validate`` share the rule because they share this reader.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clipcal import filekind
from clipcal.errors import DataError

#: Largest image (width × height) that is decoded; Pillow's own decompression-bomb limit (≈ 89.5 MP,
#: i.e. 1/4 GiB of 24-bit pixels) is the default.
MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)

#: Largest ratio of long side to short side that is decoded (module docstring). Wide panoramas (≈ 10:1) and
#: long screenshots (≈ 20:1) pass; a centre crop of a 100:1 strip would show the model 1 % of it anyway.
MAX_ASPECT = 100

_HINT = "re-export the image as an 8-bit RGB JPEG or PNG, or remove its row from the metadata"


def missing_reason(path: str | os.PathLike) -> str:
    """Why ``path`` is not a readable file, in one line: ``"file not found"``, ``"not a file"``, or what a
    dangling link is (a git-annex link whose content was never fetched says so, with the command to fetch it).
    Used by :func:`load_image` and by ``data validate`` for missing files."""
    p = Path(path)
    if p.is_symlink() and not p.exists():
        k = filekind.sniff(p)
        return f"{k.describe()} — {k.remedy}" if k.remedy else f"file not found ({k.detail})"
    if p.exists() and not p.is_file():
        return "not a file"
    return "file not found"


def _too_thin(w: int, h: int, max_aspect: float) -> str | None:
    lo, hi = min(w, h), max(w, h)
    if hi <= max_aspect * lo:
        return None
    side = 224  # a typical CLIP input; the bundled backbone uses 160
    long_side = hi * side // lo
    return (f"aspect ratio {hi / lo:,.0f}:1 is beyond the limit of {max_aspect:,.0f}:1; a shortest-side resize to "
            f"{side} px (a typical CLIP input) would make it {long_side:,} × {side} pixels ({long_side * side * 3 / 1e9:,.2f} GB)")


def _open(path: str | os.PathLike, max_pixels: int, max_aspect: float | None = None) -> Image.Image:
    """Open the header only (no pixel data) and refuse missing, unknown, too large or too thin images."""
    p = Path(path)
    if not p.is_file():
        reason = missing_reason(p)
        if reason in ("file not found", "not a file"):
            raise DataError(f"image not found: {p}" + ("" if reason == "file not found" else " (not a file)"),
                            hint="check the benchmark root and the path column")
        k = filekind.sniff(p)
        raise DataError(f"image not present: {p} is {k.describe()}",
                        hint=k.remedy or "check the benchmark root and the path column")
    try:
        with warnings.catch_warnings():
            # Pillow warns (or raises) for huge images only when the header is parsed; we check ourselves.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(p)
    except Image.DecompressionBombError as err:
        # Pillow itself refuses > 2 × Image.MAX_IMAGE_PIXELS while parsing the header
        raise DataError(f"image too large: {p}: {err}; not decoded (possible decompression bomb)",
                        hint="downscale the image, or remove its row from the metadata") from None
    except UnidentifiedImageError:
        k = filekind.sniff(p)
        if k.kind in ("binary", "missing"):
            raise DataError(f"not an image file (unknown format): {p}", hint=_HINT) from None
        raise DataError(f"not an image file: {p} is {k.describe()}", hint=k.remedy or _HINT) from None
    except OSError as err:
        raise DataError(f"cannot read image {p}: {err}", hint=_HINT) from None
    w, h = im.size
    if w <= 0 or h <= 0:
        im.close()
        raise DataError(f"image has an empty size {w}×{h}: {p}", hint=_HINT)
    if w * h > max_pixels:
        im.close()
        raise DataError(
            f"image too large: {p} is {w}×{h} = {w * h / 1e6:.0f} MP (limit {max_pixels / 1e6:.0f} MP); "
            "not decoded (possible decompression bomb)",
            hint="downscale the image, or pass a larger max_pixels if the image is genuine",
        )
    thin = _too_thin(w, h, MAX_ASPECT if max_aspect is None else max_aspect)
    if thin:
        im.close()
        raise DataError(f"image too thin: {p} is {w}×{h}; {thin}; not decoded",
                        hint="crop it (or cut a long strip into tiles) to a less extreme shape, or remove its row "
                        "from the metadata")
    return im


def _decode_reason(err: Exception) -> str:
    msg = str(err)
    if "truncated" in msg.lower() or isinstance(err, EOFError):
        return f"truncated image file ({msg or 'unexpected end of file'})"
    return f"corrupt image data ({type(err).__name__}: {msg})"


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert a decoded image of any Pillow mode to 8-bit RGB (see the module table).

    Args:
        im: a loaded ``PIL.Image`` (any mode).

    Returns:
        A new ``PIL.Image`` in mode ``"RGB"``, same size.
    """
    mode = im.mode
    if mode == "RGB":
        return im.copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im)
        if mode == "F":
            arr = arr.astype(np.float64)
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            arr = arr * 255.0 if lo >= 0 and hi <= 1 else (arr - lo) / max(hi - lo, 1e-12) * 255.0
        elif mode == "I" and arr.max(initial=0) > 65535:  # 32-bit data: min–max scale
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr.astype(np.float64) - lo) / max(hi - lo, 1.0) * 255.0
        else:  # 16-bit range: 65535 → 255 (dividing by 257 maps the full range exactly)
            arr = arr.astype(np.float64) / 257.0
        g = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
        return g.convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS, max_aspect: float | None = None) -> Image.Image:
    """Read an image file as an 8-bit RGB ``PIL.Image`` with EXIF orientation applied.

    Args:
        path: image file (any format Pillow reads: JPEG, PNG, WebP, TIFF, BMP, GIF (first frame), …).
        max_pixels: refuse images with more than this many pixels (width × height), checked on the header
            before any pixel is decoded.
        max_aspect: refuse images whose long side exceeds this multiple of the short side, checked on the
            header (``None``: :data:`MAX_ASPECT`, read at call time).

    Returns:
        ``PIL.Image`` in mode ``"RGB"`` (uint8), size (width, height) of the oriented image.

    Raises:
        DataError: file missing, not an image (a text file is named: HTML page, LFS pointer, …), truncated,
            corrupt, larger than ``max_pixels`` or thinner than ``max_aspect``; the message names the file and
            the reason.
    """
    with _open(path, max_pixels, max_aspect) as im:
        try:
            im.load()
            if im.getexif().get(0x0112, 1) != 1:  # EXIF orientation tag; most files have none
                im = ImageOps.exif_transpose(im)
            # the decoded pixels outlive the file handle, so an RGB image needs no copy
            return im if im.mode == "RGB" else to_rgb(im)
        except (OSError, EOFError, SyntaxError, ValueError) as err:
            raise DataError(f"cannot decode image {path}: {_decode_reason(err)}", hint=_HINT) from None


def thumbnail(path: str | os.PathLike, size: int = 128, max_pixels: int = MAX_PIXELS,
              max_aspect: float | None = None) -> Image.Image:
    """A small RGB copy of an image for grids and hover cards, fitting in ``size × size`` (aspect kept).

    JPEGs are decoded at reduced scale (``Image.draft``), so a thumbnail of a large photo is cheap.

    Args:
        path: image file.
        size: longest side in pixels of the result.
        max_pixels, max_aspect: as :func:`load_image` (a thumbnail of a refused image is refused too, so a
            grid shows the same reason the embedding skipped it for).

    Returns:
        ``PIL.Image`` RGB, longest side ≤ ``size``.

    Raises:
        DataError: as :func:`load_image`.
    """
    with _open(path, max_pixels, max_aspect) as im:
        try:
            if im.format == "JPEG":
                im.draft("RGB", (size, size))  # decode at 1/2, 1/4 or 1/8 scale when possible
            im.load()
            if im.getexif().get(0x0112, 1) != 1:
                im = ImageOps.exif_transpose(im)
            out = im if im.mode == "RGB" else to_rgb(im)
        except (OSError, EOFError, SyntaxError, ValueError) as err:
            raise DataError(f"cannot decode image {path}: {_decode_reason(err)}", hint=_HINT) from None
    out.thumbnail((size, size), Image.Resampling.BICUBIC)
    return out


def check_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS, full: bool = False,
                max_aspect: float | None = None) -> str | None:
    """Cheaply check that an image file is readable; return ``None`` if fine, else the reason (str).

    Without ``full`` only the header is parsed plus a structural check that does not decode pixels:
    ``PIL.Image.verify()`` (chunk CRCs for PNG) and, for JPEG, that the file ends with the EOI marker
    (a cut-off download does not). ``full=True`` decodes the image with :func:`load_image`.

    Args:
        path: image file.
        max_pixels, max_aspect: as :func:`load_image`.
        full: decode all pixels (slow, certain) instead of the header check.

    Returns:
        ``None`` or a one-line reason such as ``"truncated image file (no JPEG end marker)"``.
    """
    if full:
        try:
            load_image(path, max_pixels, max_aspect)
        except DataError as err:
            return err.message
        return None
    try:
        im = _open(path, max_pixels, max_aspect)
    except DataError as err:
        return err.message
    try:
        fmt = im.format
        im.verify()
    except Exception as err:  # noqa: BLE001 - verify raises many types; all mean "unreadable"
        return _decode_reason(err)
    finally:
        im.close()
    if fmt == "JPEG":
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - 64, 0))
            tail = f.read()
        if b"\xff\xd9" not in tail:
            return "truncated image file (no JPEG end marker)"
    return None
