"""The validation report: counts per split, missing and unreadable files listed, warnings, ok flag, text."""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image

from clipcal.data import load_benchmark, validate
from tests.fixtures_data import make_csv_dataset, make_waterbirds


def test_clean_benchmark_ok(tmp_path):
    make_waterbirds(tmp_path)
    b = load_benchmark("waterbirds", tmp_path)
    seen = []
    r = validate(b, progress=lambda d, t, m: seen.append((d, t)))
    assert r.ok and r.errors == []
    assert r.images_checked == 24
    assert seen[-1] == (24, 24)
    assert r.missing.empty and r.unreadable.empty and r.duplicates.empty and r.empty_groups.empty
    assert list(r.group_counts.columns) == ["split", "group", "class", "attribute", "n"]
    assert r.group_counts.loc[(r.group_counts.split == "train") & (r.group_counts.group == 1), "n"].item() == 1
    assert any("tiny training group landbird / water: 1 images" in w for w in r.warnings)
    text = r.to_text()
    assert "Result: OK" in text and "landbird" in text and "train" in text


def test_missing_and_unreadable_files_listed(tmp_path):
    folder = make_waterbirds(tmp_path)
    b = load_benchmark("waterbirds", tmp_path)
    t = b.table
    gone, cut, junk = t.iloc[0], t.iloc[1], t.iloc[2]
    b.image_path(gone["path"]).unlink()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(b.image_path(cut["path"]), quality=95)
    data = b.image_path(cut["path"]).read_bytes()
    b.image_path(cut["path"]).write_bytes(data[: len(data) // 2])
    b.image_path(junk["path"]).write_bytes(b"not an image at all")
    r = validate(b)
    assert not r.ok
    assert r.missing[["sample_id", "path"]].values.tolist() == [[gone["sample_id"], gone["path"]]]
    assert r.missing["reason"].item() == "file not found"
    reasons = dict(zip(r.unreadable["sample_id"], r.unreadable["reason"]))
    assert set(reasons) == {cut["sample_id"], junk["sample_id"]}
    assert "truncated" in reasons[cut["sample_id"]]
    assert "not an image" in reasons[junk["sample_id"]]
    text = r.to_text()
    assert "Missing files (1)" in text and gone["path"] in text and "Unreadable files (2)" in text
    assert "NOT OK" in text
    # existence only: the unreadable ones are not opened
    r2 = validate(b, check_images=False)
    assert r2.images_checked == 0 and r2.unreadable.empty and len(r2.missing) == 1
    assert folder.is_dir()


def test_empty_groups_and_no_attribute_warnings(tmp_path):
    rows = [{"filename": f"{i}.jpg", "split": ["train", "val", "test"][i % 3], "y": i % 2, "a": 0}
            for i in range(12)]
    rows[0]["a"] = 1  # one train image in group (0, 1); no other image has a = 1
    make_csv_dataset(tmp_path / "a", rows)
    r = validate(load_benchmark("csv", tmp_path / "a"))
    empty = set(map(tuple, r.empty_groups[["split", "group"]].values.tolist()))
    assert ("val", 1) in empty and ("test", 3) in empty and ("train", 3) in empty and ("train", 1) not in empty
    assert any("empty group in test: 1 / 1" in w for w in r.warnings)
    assert r.ok  # empty groups warn, they do not fail

    rows = [{"filename": f"{i}.jpg", "split": ["train", "test"][i % 2], "y": i % 2} for i in range(20)]
    make_csv_dataset(tmp_path / "b", rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = load_benchmark("csv", tmp_path / "b")
    r = validate(b)
    assert any("no spurious-attribute labels" in w for w in r.warnings)
    assert any("a class-stratified 20% of train was carved out as val" in w for w in r.warnings)
    assert "carved out as val" in r.to_text()
    assert r.group_counts["attribute"].unique().tolist() == ["unknown"]


def test_empty_test_split_is_an_error(tmp_path):
    rows = [{"filename": f"{i}.jpg", "split": ["train", "val"][i % 2], "y": i % 2} for i in range(8)]
    make_csv_dataset(tmp_path, rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = validate(load_benchmark("csv", tmp_path))
    assert not r.ok and "the test split is empty" in r.errors


def test_demo_validates(demo_small):
    r = validate(demo_small)
    assert r.ok and r.images_checked == 240
    ct = r.counts_table()
    assert ct.iloc[-1][["train", "val", "test", "total"]].tolist() == [120, 40, 80, 240]


def _validate_rows(tmp_path, rows):
    make_csv_dataset(tmp_path, rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return validate(load_benchmark("csv", tmp_path))


def test_class_problems_are_errors(tmp_path):
    """Found by a newcomer's trial: one class only, a gap in integer labels and a class missing from train all
    said "Result: OK" (only empty-group warnings), and calibration then failed or learnt a phantom class."""
    split = ["train", "train", "val", "test"]
    one = _validate_rows(tmp_path / "one", [{"filename": f"{i}.jpg", "split": split[i % 4], "y": "cat"}
                                            for i in range(8)])
    assert not one.ok and "only 1 class(es) have images (cat): a classifier needs at least 2" in one.errors
    gap = _validate_rows(tmp_path / "gap", [{"filename": f"{i}.jpg", "split": split[i % 4], "y": 2 * (i % 2)}
                                            for i in range(16)])
    assert not gap.ok and any(e.startswith("class '1' has no images at all") for e in gap.errors)
    rows = [{"filename": f"{i}.jpg", "split": split[i % 4], "y": ["cat", "dog"][i % 2]} for i in range(16)]
    rows += [{"filename": "b.jpg", "split": "test", "y": "bird"}, {"filename": "c.jpg", "split": "val", "y": "bird"}]
    notrain = _validate_rows(tmp_path / "notrain", rows)
    assert notrain.errors == ["class 'bird' has no training images: no method can learn it"]
    fine = _validate_rows(tmp_path / "fine", rows[:16])
    assert fine.ok, fine.errors
