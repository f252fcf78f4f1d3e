"""Demo difficulty (issue 12.2): named presets give their documented parameters, explicit values override
them, every parameter and the builder version are part of the cache key, and the images really change.

Kind-level rule: anything that changes the generated images changes the folder they are cached in, so an
old build is never served as a new one.
"""

from __future__ import annotations

import hashlib

import pytest

import clipcal.data.demo as demo
from clipcal.data import load_benchmark
from clipcal.errors import DataError

TINY = {"n_train": 20, "n_val": 8, "n_test": 8}


def test_presets_give_their_documented_parameters():
    assert demo.BUILDER_VERSION == 2
    assert demo.DEFAULT_DIFFICULTY == "waterbirds-like"
    expected = {"easy": (0.32, 0.55, 1.0), "moderate": (0.28, 0.45, 1.0), "waterbirds-like": (0.25, 0.40, 1.0),
                "faint": (0.32, 0.55, 0.6)}
    for name, (lo, hi, op) in expected.items():
        p = demo.demo_params(difficulty=name)
        assert (p["bird_scale_min"], p["bird_scale_max"], p["bird_opacity"]) == (lo, hi, op)
        assert p["difficulty"] == name
    # the default is the Waterbirds-like preset; "easy" is builder version 1's fixed range
    assert demo.demo_params()["difficulty"] == "waterbirds-like"
    assert demo.demo_params()["bird_scale_min"] == 0.25
    # explicit values override the preset; a combination equal to a preset is named after it
    p = demo.demo_params(difficulty="easy", bird_opacity=0.5)
    assert (p["bird_scale_min"], p["bird_opacity"], p["difficulty"]) == (0.32, 0.5, "custom")
    assert demo.demo_params(bird_scale_min=0.32, bird_scale_max=0.55)["difficulty"] == "easy"
    assert demo.demo_params(difficulty="EASY")["difficulty"] == "easy"


@pytest.mark.parametrize("opts, match", [
    ({"difficulty": "impossible"}, "unknown demo difficulty"),
    ({"bird_scale_min": 0.5, "bird_scale_max": 0.3}, "bird size range"),
    ({"bird_scale_min": 0.0}, "bird size range"),
    ({"bird_opacity": 0.0}, "bird_opacity"),
    ({"bird_opacity": "opaque"}, "must be a number"),
])
def test_bad_difficulty_is_a_clear_error(opts, match):
    with pytest.raises(DataError, match=match):
        demo.demo_params(**opts)


def test_cache_key_covers_difficulty_and_builder_version(monkeypatch):
    base = demo.demo_dir(**TINY)
    assert demo.demo_dir(**TINY, difficulty="easy") != base
    assert demo.demo_dir(**TINY, bird_opacity=0.6) != base
    assert demo.demo_dir(**TINY, difficulty="waterbirds-like") == base       # the default, asked by name
    assert demo.demo_dir(**TINY, bird_scale_min=0.25, bird_scale_max=0.40) == base
    monkeypatch.setattr(demo, "BUILDER_VERSION", 1)
    assert demo.demo_dir(**TINY) != base                                     # version bump → new folder


def test_difficulty_changes_the_images_not_the_table(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPCAL_CACHE", str(tmp_path))
    easy = load_benchmark("demo", difficulty="easy", **TINY)
    faint = load_benchmark("demo", difficulty="faint", **TINY)
    hard = load_benchmark("demo", **TINY)
    assert easy.params["difficulty"] == "easy" and hard.params["difficulty"] == "waterbirds-like"
    for other in (faint, hard):
        assert other.table[["split", "y", "a"]].equals(easy.table[["split", "y", "a"]])
        assert other.fingerprint() != easy.fingerprint()

    def digest(b, i):
        return hashlib.sha256(b.image_path(b.table["path"].iloc[i]).read_bytes()).hexdigest()

    assert all(digest(easy, i) != digest(faint, i) for i in range(5))
    assert all(digest(easy, i) != digest(hard, i) for i in range(5))


def test_difficulty_presets_for_the_data_page():
    rows = demo.difficulty_presets()
    assert [r["name"] for r in rows] == list(demo.DIFFICULTY_PRESETS)
    assert [r["name"] for r in rows if r["default"]] == ["waterbirds-like"]
    for r in rows:
        p = demo.demo_params(difficulty=r["name"])
        assert (r["bird_scale_min"], r["bird_scale_max"], r["bird_opacity"]) == \
            (p["bird_scale_min"], p["bird_scale_max"], p["bird_opacity"])
        assert r["teaching"] and isinstance(r["teaching"], str)
    assert "background" in next(r for r in rows if r["name"] == "moderate")["teaching"]
    measured = next(r for r in rows if r["default"])["measured"]
    assert measured is not None and measured["dfr_worst_group"] >= measured["erm_worst_group"] + 0.12


def test_cli_difficulty_option_reaches_the_demo_and_only_the_demo():
    import argparse

    from clipcal.commands.data import add_benchmark_args, benchmark_options

    p = argparse.ArgumentParser()
    add_benchmark_args(p)
    assert benchmark_options(p.parse_args(["--difficulty", "easy"])) == ("demo", None, {"difficulty": "easy"})
    with pytest.raises(DataError, match="--difficulty"):
        benchmark_options(p.parse_args(["--benchmark", "waterbirds", "--root", "x", "--difficulty", "easy"]))
