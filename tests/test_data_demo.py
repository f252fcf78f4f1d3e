"""Waterbirds-lite: deterministic, right group proportions, built once and reused, atomic, clear when assets miss."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest
from PIL import Image

import clipcal.data.demo as demo
from clipcal.data import demo_assets_status, load_benchmark
from clipcal.errors import DataError

TINY = {"n_train": 20, "n_val": 8, "n_test": 8}


def _digest(b) -> dict:
    return {sid: hashlib.sha256(b.image_path(p).read_bytes()).hexdigest()
            for sid, p in zip(b.table["sample_id"], b.table["path"])}


def _folder(b):
    return b.root / b.table["path"].iloc[0].split("/")[0]


def test_demo_small_group_proportions(demo_small):
    gc = demo_small.group_counts().pivot(index="group", columns="split", values="n")
    assert gc["train"].tolist() == [57, 3, 3, 57]  # 114 / 120 = 95 % aligned
    assert gc["val"].tolist() == [10, 10, 10, 10]
    assert gc["test"].tolist() == [20, 20, 20, 20]
    assert demo_small.class_names == ["landbird", "waterbird"] and demo_small.attr_names == ["land", "water"]
    assert demo_small.target_name == "bird type" and demo_small.attr_name == "background"


def test_default_size_plan_is_95_percent_aligned():
    plan = demo._group_plan(1200, 0.95)
    counts = pd.Series([2 * y + a for y, a in plan]).value_counts().sort_index().tolist()
    assert counts == [570, 30, 30, 570]
    assert pd.Series([2 * y + a for y, a in demo._group_plan(802, None)]).value_counts().sort_index().tolist() \
        == [201, 201, 200, 200]


def test_demo_images_are_rgb_jpegs_of_image_size(demo_small):
    t = demo_small.table
    for p in t["path"].iloc[[0, 130, 239]]:
        with Image.open(demo_small.image_path(p)) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (224, 224)
    meta = pd.read_csv(_folder(demo_small) / "samples.csv")
    assert set(meta["bird"][meta["y"] == 1]) <= {f"U+{ord(c):X}" for c in demo.WATERBIRDS}
    assert set(meta["wallpaper"][meta["a"] == 1]) <= {w.name for w in demo.WALLPAPERS if w.background == 1}
    assert set(meta["wallpaper"][meta["a"] == 0]) <= {w.name for w in demo.WALLPAPERS if w.background == 0}


def test_same_seed_same_table_and_bytes_other_seed_differs(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPCAL_CACHE", str(tmp_path / "c1"))
    a = load_benchmark("demo", seed=7, **TINY)
    monkeypatch.setenv("CLIPCAL_CACHE", str(tmp_path / "c2"))
    b = load_benchmark("demo", seed=7, **TINY)
    assert a.root != b.root  # really built twice (two caches)
    assert _folder(a).name == _folder(b).name
    pd.testing.assert_frame_equal(a.table, b.table)
    assert a.fingerprint() == b.fingerprint()
    assert _digest(a) == _digest(b)
    c = load_benchmark("demo", seed=8, **TINY)
    assert _folder(c).name != _folder(b).name
    assert c.table["group"].tolist() != b.table["group"].tolist() or _digest(c) != _digest(b)
    assert set(_digest(c).values()).isdisjoint(_digest(b).values())


def test_second_load_reuses_without_rewriting(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPCAL_CACHE", str(tmp_path))
    a = load_benchmark("demo", **TINY)
    stamps = {p: p.stat().st_mtime_ns for p in _folder(a).rglob("*")}

    def boom(*args, **kw):
        raise AssertionError("demo rebuilt")

    monkeypatch.setattr(demo, "_build", boom)
    b = load_benchmark("demo", **TINY)
    assert b.root == a.root and b.fingerprint() == a.fingerprint()
    assert {p: p.stat().st_mtime_ns for p in _folder(b).rglob("*")} == stamps
    assert (_folder(a) / "COMPLETE").is_file() and a.root.name == "datasets"
    assert _folder(a).name.startswith("demo-")


def test_image_size_changes_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPCAL_CACHE", str(tmp_path))
    a = load_benchmark("demo", **TINY)
    b = load_benchmark("demo", image_size=64, **TINY)
    assert a.table["y"].tolist() == b.table["y"].tolist()  # same seed: same labels …
    assert a.fingerprint() != b.fingerprint()  # … but other images, so another store key
    with Image.open(b.image_path(b.table["path"].iloc[0])) as im:
        assert im.size == (64, 64)
    c = load_benchmark("demo", root=_folder(b))  # a built folder can be loaded directly
    assert c.fingerprint() == b.fingerprint() and c.params["image_size"] == 64


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPCAL_CACHE", str(tmp_path))
    calls = {"n": 0}
    real = demo._render

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("disk full")
        return real(*args, **kw)

    monkeypatch.setattr(demo, "_render", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        load_benchmark("demo", **TINY)
    leftovers = [p.name for p in (tmp_path / "datasets").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []
    # a build killed outright leaves a temp folder (and maybe an unmarked final one): the next build
    # removes both and produces a complete folder
    dest = demo.demo_dir(**TINY)
    (dest.parent / f".{dest.name}.tmp-999-dead").mkdir()
    (dest / "images").mkdir(parents=True)
    monkeypatch.setattr(demo, "_render", real)
    b = load_benchmark("demo", **TINY)
    assert (dest / "COMPLETE").is_file() and len(b.table) == 36
    assert sorted(p.name for p in dest.parent.iterdir() if not p.name.endswith(".lock")) == [dest.name]


def test_missing_packages_named_with_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPCAL_CACHE", str(tmp_path))
    fake = demo.Wallpaper("fake-wallpapers", str(tmp_path / "nope.jpg"), 1, "none")
    monkeypatch.setattr(demo, "WALLPAPERS", demo.WALLPAPERS + (fake,))
    st = demo_assets_status()
    assert not st["ok"] and st["missing_packages"] == ["fake-wallpapers"]
    assert st["install_command"] == "sudo apt-get install -y fake-wallpapers"
    assert "plasma-workspace-wallpapers" in st["present"]
    with pytest.raises(DataError) as e:
        load_benchmark("demo", **TINY)
    assert "fake-wallpapers" in str(e.value) and "apt-get install -y fake-wallpapers" in str(e.value)
    assert not list(tmp_path.glob("datasets/demo-*"))


def test_assets_present_here_and_licences_recorded():
    st = demo_assets_status()
    assert st["ok"], st["missing_files"]
    assert st["install_command"] == ""
    assert len(demo.LICENCES["photos"]) == len(demo.WALLPAPERS) == 18
    assert not any("Dune" in w.path for w in demo.WALLPAPERS)
    assert {w.background for w in demo.WALLPAPERS} == {0, 1}
    assert "OFL-1.1" in next(iter(demo.LICENCES["emoji"].values()))


def test_bad_options():
    # the registry refuses an option the demo does not take, names it and lists the ones it does take
    with pytest.raises(DataError, match=r"option\(s\) 'n_trian' do not apply to benchmark 'demo'") as err:
        load_benchmark("demo", n_trian=10)
    assert "n_train" in err.value.hint and "difficulty" in err.value.hint
    with pytest.raises(DataError, match="≥ 4"):
        load_benchmark("demo", n_train=2)
