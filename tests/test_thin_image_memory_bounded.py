"""Issue 16 item 2 — memory is bounded by what the model sees, not by the pixel count of the file.

Kind-level rule: an image whose shape would make a backbone's shortest-side resize blow up (a 20000 × 1 PNG of
143 bytes passes the decompression-bomb limit, yet resizing its short side to 160 px makes a 3.2 M × 160 image,
+1.96 GB) is refused from its header, before any pixel is decoded, by the one image reader — so embedding,
thumbnails / hover cards / grids and ``data validate`` all skip it with the same reason. Ordinary panoramas load.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFile

from clipcal.errors import DataError


def _png(path, w, h):
    Image.fromarray(np.full((h, w, 3), 200, np.uint8)).save(path)
    return path


@pytest.fixture
def no_decoding(monkeypatch):
    """Any pixel decode fails the test: the refusal must come from the header."""
    def boom(self, *a, **k):
        raise AssertionError(f"pixels of a {self.size} image were decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", boom)


@pytest.mark.parametrize("w, h", [(20000, 1), (1, 20000), (5000, 3)])
def test_extreme_aspect_ratio_refused_before_decoding(tmp_path, no_decoding, w, h):
    from clipcal.data.images import check_image, load_image, thumbnail

    p = _png(tmp_path / "thin.png", w, h)
    assert p.stat().st_size < 2000  # tiny file: no pixel-count limit catches it
    for fn in (load_image, thumbnail):
        with pytest.raises(DataError) as ei:
            fn(p)
        assert "aspect ratio" in ei.value.message and f"{w}×{h}" in ei.value.message
    assert "aspect ratio" in check_image(p)


def test_the_shortest_side_resize_of_an_allowed_image_stays_small(tmp_path):
    """The bound the cap gives: resizing the short side to S pixels makes at most MAX_ASPECT · S² pixels."""
    from clipcal.data.images import MAX_ASPECT, load_image

    w = int(MAX_ASPECT)  # the widest shape still accepted, at 1 px high
    im = load_image(_png(tmp_path / "ok.png", w, 1))
    assert im.size == (w, 1)
    assert MAX_ASPECT * 224 ** 2 * 3 < 64e6  # < 64 MB of RGB at 224 px, however thin the file
    with pytest.raises(DataError):
        load_image(_png(tmp_path / "thin.png", w * 2, 1))


def test_panoramas_and_tall_screenshots_still_load(tmp_path):
    from clipcal.data.images import load_image

    for w, h in ((4000, 400), (300, 6000)):
        assert load_image(_png(tmp_path / f"p{w}.png", w, h)).size == (w, h)


def test_embedding_skips_thin_image_with_reason_and_validate_reports_it(tmp_path, tmp_store_root):
    from clipcal.data import load_benchmark, validate
    from clipcal.embed import embed_benchmark
    from tests.fixtures_data import make_csv_dataset

    rows = [{"filename": f"img{i}.jpg", "split": s, "y": i % 2, "a": (i // 2) % 2}
            for i, s in enumerate(["train"] * 4 + ["val"] * 2 + ["test"] * 2)]
    make_csv_dataset(tmp_path, rows)
    (tmp_path / "img7.jpg").unlink()
    _png(tmp_path / "thin.png", 20000, 1).rename(tmp_path / "img7.jpg")  # a PNG under a .jpg name, as found
    bench = load_benchmark("csv", root=tmp_path)

    rep = validate(bench)
    assert list(rep.unreadable["sample_id"]) == ["img7.jpg"]
    assert "aspect ratio" in rep.unreadable["reason"].iloc[0]
    assert not rep.ok

    es = embed_benchmark(bench, "tiny:clip", num_workers=0)
    assert len(es) == 7
    assert list(es.skipped["sample_id"]) == ["img7.jpg"]
    assert "aspect ratio" in es.skipped["reason"].iloc[0]
