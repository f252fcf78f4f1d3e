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
==========================  =================================================================================
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clipcal.errors import DataError

#: Largest image (width × height) that is decoded; Pillow's own decompression-bomb limit (≈ 89.5 MP,
#: i.e. 1/4 GiB of 24-bit pixels) is the default.
MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)

_HINT = "re-export the image as an 8-bit RGB JPEG or PNG, or remove its row from the metadata"


def _open(path: str | os.PathLike, max_pixels: int) -> Image.Image:
    """Open the header only (no pixel data) and refuse missing, unknown or too large images."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"image not found: {p}", hint="check the benchmark root and the path column")
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
        raise DataError(f"not an image file (unknown format): {p}", hint=_HINT) from None
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


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Read an image file as an 8-bit RGB ``PIL.Image`` with EXIF orientation applied.

    Args:
        path: image file (any format Pillow reads: JPEG, PNG, WebP, TIFF, BMP, GIF (first frame), …).
        max_pixels: refuse images with more than this many pixels (width × height), checked on the header
            before any pixel is decoded.

    Returns:
        ``PIL.Image`` in mode ``"RGB"`` (uint8), size (width, height) of the oriented image.

    Raises:
        DataError: file missing, not an image, truncated, corrupt, or larger than ``max_pixels``;
            the message names the file and the reason.
    """
    with _open(path, max_pixels) as im:
        try:
            im.load()
            if im.getexif().get(0x0112, 1) != 1:  # EXIF orientation tag; most files have none
                im = ImageOps.exif_transpose(im)
            # the decoded pixels outlive the file handle, so an RGB image needs no copy
            return im if im.mode == "RGB" else to_rgb(im)
        except (OSError, EOFError, SyntaxError, ValueError) as err:
            raise DataError(f"cannot decode image {path}: {_decode_reason(err)}", hint=_HINT) from None


def thumbnail(path: str | os.PathLike, size: int = 128, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A small RGB copy of an image for grids and hover cards, fitting in ``size × size`` (aspect kept).

    JPEGs are decoded at reduced scale (``Image.draft``), so a thumbnail of a large photo is cheap.

    Args:
        path: image file.
        size: longest side in pixels of the result.
        max_pixels: as :func:`load_image`.

    Returns:
        ``PIL.Image`` RGB, longest side ≤ ``size``.

    Raises:
        DataError: as :func:`load_image`.
    """
    with _open(path, max_pixels) as im:
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


def check_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS, full: bool = False) -> str | None:
    """Cheaply check that an image file is readable; return ``None`` if fine, else the reason (str).

    Without ``full`` only the header is parsed plus a structural check that does not decode pixels:
    ``PIL.Image.verify()`` (chunk CRCs for PNG) and, for JPEG, that the file ends with the EOI marker
    (a cut-off download does not). ``full=True`` decodes the image with :func:`load_image`.

    Args:
        path: image file.
        max_pixels: as :func:`load_image`.
        full: decode all pixels (slow, certain) instead of the header check.

    Returns:
        ``None`` or a one-line reason such as ``"truncated image file (no JPEG end marker)"``.
    """
    if full:
        try:
            load_image(path, max_pixels)
        except DataError as err:
            return err.message
        return None
    try:
        im = _open(path, max_pixels)
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
