"""The one image reader: odd formats become correct 8-bit RGB; bad files raise DataError with the reason."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from clipcal.data.images import check_image, load_image, thumbnail
from clipcal.errors import DataError


def test_rgb_jpeg_roundtrip(tmp_path):
    p = tmp_path / "a.jpg"
    Image.new("RGB", (40, 30), (200, 100, 50)).save(p, quality=95)
    im = load_image(p)
    assert im.mode == "RGB" and im.size == (40, 30)
    assert np.allclose(np.asarray(im)[15, 20], (200, 100, 50), atol=3)


def test_cmyk_jpeg_converted_to_correct_colour(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p, quality=95)  # pure red in CMYK
    assert Image.open(p).mode == "CMYK"
    im = load_image(p)
    assert im.mode == "RGB"
    r, g, b = np.asarray(im)[8, 8]
    assert r > 240 and g < 15 and b < 15


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    p = tmp_path / "g16.png"
    arr = np.array([[0, 257 * 100, 65535, 32768]], dtype=np.uint16)
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode.startswith("I")
    out = np.asarray(load_image(p))
    assert out.shape == (1, 4, 3)
    # 65535 → 255, 25700 → 100, 32768 → 128 (clipping would give 255 for all non-zero values)
    assert out[0, :, 0].tolist() == [0, 100, 255, 128]


def test_rgba_composited_on_white(tmp_path):
    p = tmp_path / "rgba.png"
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., 0] = 255          # red …
    arr[:, :2, 3] = 0          # … fully transparent on the left half
    arr[:, 2:, 3] = 255        # opaque on the right half
    Image.fromarray(arr, "RGBA").save(p)
    out = np.asarray(load_image(p))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 3].tolist() == [255, 0, 0]


def test_palette_with_transparency_composited_on_white(tmp_path):
    p = tmp_path / "pal.png"
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 0, 255] + [0, 255, 0] + [0] * 762)  # 0 blue, 1 green
    im.putpixel((3, 3), 1)
    im.info["transparency"] = 0
    im.save(p, transparency=0)
    out = np.asarray(load_image(p))
    assert out[0, 0].tolist() == [255, 255, 255]  # transparent blue → white
    assert out[3, 3].tolist() == [0, 255, 0]


def test_palette_without_transparency(tmp_path):
    p = tmp_path / "pal.gif"
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0] + [10, 20, 30] + [0] * 762)
    im.save(p)
    assert np.asarray(load_image(p))[1, 1].tolist() == [10, 20, 30]


def test_grayscale_replicated(tmp_path):
    p = tmp_path / "g.png"
    Image.new("L", (5, 5), 77).save(p)
    out = np.asarray(load_image(p))
    assert out.shape == (5, 5, 3) and (out == 77).all()


def test_exif_orientation_applied(tmp_path):
    p = tmp_path / "rot.jpg"
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° CW on display
    im.save(p, exif=exif)
    assert load_image(p).size == (20, 40)


def test_truncated_jpeg_raises_with_reason(tmp_path):
    p = tmp_path / "cut.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p, quality=95)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated") as e:
        load_image(p)
    assert "cut.jpg" in str(e.value)
    assert "truncated" in check_image(p)  # cheap header check catches it too (no end marker)
    assert "truncated" in check_image(p, full=True)


def _bomb_png(path, w=100_000, h=100_000):
    """A tiny PNG whose header claims w×h pixels (10 GP): must be refused before any allocation."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10))
                     + chunk(b"IEND", b""))


def test_decompression_bomb_refused_without_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    _bomb_png(p)
    with pytest.raises(DataError, match="too large") as e:
        load_image(p)
    assert "10000000000 pixels" in str(e.value) and "bomb.png" in str(e.value)
    assert "too large" in check_image(p)
    with pytest.raises(DataError, match="too large"):
        thumbnail(p)


def test_max_pixels_configurable(tmp_path):
    p = tmp_path / "m.png"
    Image.new("RGB", (100, 100)).save(p)
    with pytest.raises(DataError, match="too large") as e:
        load_image(p, max_pixels=5_000)
    assert "100×100" in str(e.value)
    assert load_image(p, max_pixels=10_000).size == (100, 100)


def test_missing_and_non_image(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "nope.jpg")
    p = tmp_path / "text.jpg"
    p.write_text("hello")
    with pytest.raises(DataError, match="not an image"):
        load_image(p)
    assert "not an image" in check_image(p)


def test_thumbnail_size_and_mode(tmp_path):
    p = tmp_path / "big.jpg"
    Image.new("RGB", (800, 400), (10, 200, 10)).save(p)
    t = thumbnail(p, 128)
    assert t.mode == "RGB" and t.size == (128, 64)
    q = tmp_path / "a.png"
    Image.new("LA", (50, 100), (0, 0)).save(q)
    t = thumbnail(q, 32)
    assert t.size == (16, 32) and np.asarray(t)[0, 0].tolist() == [255, 255, 255]


def test_check_image_ok(tmp_path):
    p = tmp_path / "ok.png"
    Image.new("RGB", (8, 8)).save(p)
    assert check_image(p) is None and check_image(p, full=True) is None
