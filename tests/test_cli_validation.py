"""The CLI checks what the user typed before any expensive work (demo build, model load, embedding).

Each bad argument exits with status 2 and a message + hint, no traceback, and leaves the store untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import clipcal.commands.data as data_cmd
from clipcal.cli import main
from clipcal.commands.calibrate import check_applicable, parse_methods
from clipcal.errors import MethodError
from tests.fixtures_data import make_csv_dataset

REPO = Path(__file__).resolve().parent.parent
VALID = "zeroshot, erm, jtt, afr, dfr, cfr"


def _store_entries(root: Path) -> list[str]:
    """Names of stored entries and datasets under a store root (what an embedding or demo build writes)."""
    return sorted(str(p.relative_to(root)) for kind in ("embeddings", "datasets", "runs", ".partial")
                  for p in (root / kind).glob("*") if (root / kind).is_dir())


@pytest.fixture
def no_benchmark(monkeypatch):
    """Fail the test if a command gets as far as loading the benchmark."""
    monkeypatch.setattr(data_cmd, "benchmark_from_args",
                        lambda *a, **k: pytest.fail("benchmark loaded before the arguments were checked"))


def test_unknown_method_fails_fast_in_process(tmp_store_root, capsys):
    t0 = time.monotonic()
    rc = main(["calibrate", "--benchmark", "demo", "--backbone", "bundled:efficientnet-lite0", "--methods", "foo"])
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 2
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert "unknown method in --methods: foo" in err and f"valid methods: {VALID}" in err
    assert "Traceback" not in err
    assert _store_entries(tmp_store_root) == []


def test_unknown_method_subprocess_exit_2_no_store_entry(tmp_path):
    store = tmp_path / "store"
    env = {**os.environ, "CLIPCAL_CACHE": str(store), "HF_HUB_OFFLINE": "1"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "clipcal", "calibrate", "--benchmark", "demo", "--backbone",
                           "bundled:efficientnet-lite0", "--methods", "foo"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: unknown method in --methods: foo\n")
    assert f"valid methods: {VALID}" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert not store.exists() or _store_entries(store) == []
    # An interpreter start plus the imports of the parser; no model, no images (generous on a loaded CPU).
    assert elapsed < 30, f"took {elapsed:.1f} s"


def test_method_close_match_and_dedup():
    with pytest.raises(MethodError) as info:
        parse_methods("erm,cfrr,dfx")
    assert info.value.message == "unknown methods in --methods: cfrr, dfx"
    assert "did you mean cfr for cfrr?" in info.value.hint and "did you mean dfr for dfx?" in info.value.hint
    assert parse_methods(" ERM, cfr,erm ") == ["erm", "cfr"]
    with pytest.raises(MethodError, match="names no method"):
        parse_methods(" , ")


def test_zeroshot_without_text_tower_before_benchmark(no_benchmark, tmp_store_root, capsys):
    rc = main(["calibrate", "--backbone", "bundled:efficientnet-lite0", "--methods", "zeroshot,erm"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "zeroshot needs a text tower and bundled:efficientnet-lite0 is image-only" in err
    assert "methods that apply here: erm,jtt,afr,dfr,cfr" in err
    assert _store_entries(tmp_store_root) == []


def test_default_methods_keep_not_applicable_ones():
    """The default list is not an error: zero-shot / DFR are recorded 'not applicable' by the run."""
    methods = parse_methods("zeroshot,erm,jtt,afr,dfr,cfr")
    check_applicable(methods, explicit=False, has_text=False, has_attributes=False, selection=None, hparams={})
    with pytest.raises(MethodError, match="--selection worst-group needs spurious-attribute labels"):
        check_applicable(methods, explicit=False, has_text=True, has_attributes=False, selection="worst-group",
                         hparams={})


@pytest.mark.parametrize("extra, message", [
    (["--methods", "dfr,erm"], "dfr uses group labels and csv has no spurious-attribute labels"),
    (["--methods", "erm", "--set", "erm.selection=worst-group"],
     "erm selects by worst-group accuracy and csv has no spurious-attribute labels"),
    (["--methods", "erm", "--selection", "worst-group"], "--selection worst-group needs spurious-attribute labels"),
])
def test_group_labels_needed_but_absent(tmp_path, tmp_store_root, monkeypatch, capsys, extra, message):
    rows = [{"filename": f"{i}.jpg", "split": ["train", "val", "test"][i % 3], "y": i % 2} for i in range(12)]
    make_csv_dataset(tmp_path / "data", rows)
    import clipcal.embed

    monkeypatch.setattr(clipcal.embed, "embed_benchmark", lambda *a, **k: pytest.fail("embedding started"))
    monkeypatch.setattr(clipcal.embed, "load_embeddings", lambda *a, **k: pytest.fail("store read"))
    rc = main(["calibrate", "--benchmark", "csv", "--root", str(tmp_path / "data"), "--backbone", "tiny:clip",
               *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err and "Traceback" not in err
    if "--methods" in extra and "dfr" in extra[1]:
        assert "methods that apply here: zeroshot,erm,jtt,afr,cfr" in err and "--a-col" in err
    assert _store_entries(tmp_store_root) == []


@pytest.mark.parametrize("sets, message, hint", [
    (["erm.epochz=3"], "--set erm.epochz: erm has no hyperparameter 'epochz'", "did you mean erm.epochs?"),
    (["erm.epochs=abc"], '--set erm.epochs="abc": expected a whole number (default 100)', "--set erm.epochs=100"),
    (["erm.epochs=2.5"], "--set erm.epochs=2.5: expected a whole number", "--set erm.epochs=100"),
    (["erm.lr=true"], "--set erm.lr=true: expected a number (default 0.01)", "--set erm.lr=0.01"),
    (["erm.learn_scale=1"], "--set erm.learn_scale=1: expected true or false", "learn_scale=false"),
    (["cfr.lr=1e-3"], "--set given for method(s) not in --methods: ['cfr']", "add them to --methods"),
    (["lr=1"], "--set 'lr=1': expected METHOD.NAME=VALUE", "--set cfr.lr=1e-3"),
])
def test_bad_set_before_benchmark(no_benchmark, capsys, sets, message, hint):
    argv = ["calibrate", "--backbone", "tiny:clip", "--methods", "erm"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and hint in err and "Traceback" not in err


def test_good_set_values_pass(no_benchmark):
    from clipcal.commands.calibrate import check_hparams, parse_sets

    sets = parse_sets(["erm.lr=1", "afr.gammas=[1,2]", "cfr.negatives=random-other-class", "erm.learn_scale=true",
                       "cfr.epochs=3"])
    assert sets == {"erm": {"lr": 1, "learn_scale": True}, "afr": {"gammas": [1, 2]},
                    "cfr": {"negatives": "random-other-class", "epochs": 3}}
    check_hparams(["erm", "afr", "cfr"], sets)  # valid values of every type: no error


@pytest.mark.parametrize("command", ["calibrate", "embed", "report"])
def test_bad_backbone_spec_before_benchmark(no_benchmark, capsys, command):
    assert main([command, "--backbone", "open_clip:ViT-B-33:openai"]) == 2
    err = capsys.readouterr().err
    assert "unknown open_clip architecture 'ViT-B-33'" in err and "ViT-B-32" in err and "Traceback" not in err


def test_embed_missing_checkpoint_before_benchmark(no_benchmark, tmp_path, capsys):
    assert main(["embed", "--backbone", f"open_clip:ViT-B-32:{tmp_path / 'nope.pt'}"]) == 2
    err = capsys.readouterr().err
    assert "not found: file or folder does not exist" in err and "nope.pt" in err


def test_unknown_device_before_benchmark(no_benchmark, capsys):
    assert main(["calibrate", "--backbone", "tiny:clip", "--methods", "erm", "--device", "gpu0"]) == 2
    assert "unknown device 'gpu0'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["calibrate", "embed", "report", "data"])
def test_benchmark_name_typo_suggests(capsys, command):
    argv = [command, "validate"] if command == "data" else [command]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--benchmark", "waterbird"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'waterbird' — did you mean waterbirds?" in err
    assert "choose from demo, waterbirds, celeba, metashift, csv" in err


def test_benchmark_name_case_insensitive():
    import argparse

    p = argparse.ArgumentParser()
    data_cmd.add_benchmark_args(p)
    assert p.parse_args(["-b", "WaterBirds"]).benchmark == "waterbirds"


def test_report_by_key_needs_no_benchmark(no_benchmark, tmp_store_root, capsys):
    """``report --key`` reads the run alone: an unknown key fails at once, without loading (building) a benchmark."""
    assert main(["report", "--key", "0123456789abcdef"]) == 2
    err = capsys.readouterr().err
    assert "no calibration run with key '0123456789abcdef'" in err and "Traceback" not in err


@pytest.mark.parametrize("item, words", [
    ("cfr.calibration_errors=foo", ["calibration_errors", "'train'", "'cross-fit'"]),
    ("erm.epochs=-5", ["epochs", "≥ 1"]),
    ("cfr.cross_fit_folds=1", ["cross_fit_folds", "≥ 2"]),
])
def test_bad_set_values_fail_before_any_work(item, words):
    """Regression (newcomer trial): these exited 0 and stored a run whose only row was 'not applicable'."""
    from clipcal.commands.calibrate import check_hparams, parse_sets
    from clipcal.errors import MethodError

    sets = parse_sets([item, "cfr.calibration_errors=cross-fit"] if "folds" in item else [item])
    with pytest.raises(MethodError) as err:
        check_hparams(sorted(sets), sets)
    text = str(err.value)
    assert all(w in text for w in words), text
