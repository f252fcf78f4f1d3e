"""Issue 14 — the Ray engine is an optional extra: asked for without it, the error comes first and names the install
command; the default path never imports ray; ``bash run.sh test`` (CI) installs the extra and reinstalls when
requirements-scale.txt changes. None of this needs ray itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clipcal.cli import main
from clipcal.embed import embed_benchmark
from clipcal.errors import ClipcalError, MissingDependencyError
from clipcal.store import Store
from tests.fixtures_embed import make_image_benchmark

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError; deps.is_installed → False


def test_engine_ray_without_the_extra_fails_first_with_the_install_command(no_ray, emb_tiny, tmp_path):
    bench = make_image_benchmark(tmp_path / "data", n=3)
    store = Store(tmp_path / "store")
    with pytest.raises(MissingDependencyError) as err:
        embed_benchmark(bench, emb_tiny, store=store, engine="ray")
    assert "'ray'" in str(err.value) and "pip install -r requirements-scale.txt" in str(err.value)
    assert not (store.root / ".partial").exists() and not (store.root / ".locks").exists()  # nothing started


def test_cli_says_the_extra_is_missing_before_reading_the_benchmark(no_ray, capsys, tmp_path):
    code = main(["embed", "--benchmark", "csv", "--root", str(tmp_path / "no-such-folder"), "--backbone",
                 "tiny:clip", "--device", "cpu", "--engine", "ray"])
    err = capsys.readouterr().err
    assert code == 2 and "requirements-scale.txt" in err and "no-such-folder" not in err


def test_ray_options_need_the_ray_engine(emb_tiny, tmp_path, capsys):
    bench = make_image_benchmark(tmp_path / "data", n=3)
    with pytest.raises(ClipcalError, match="engine='ray' only"):
        embed_benchmark(bench, emb_tiny, store=Store(tmp_path / "s"), address="head:6379")
    with pytest.raises(ClipcalError, match="unknown embedding engine 'spark'"):
        embed_benchmark(bench, emb_tiny, store=Store(tmp_path / "s"), engine="spark")
    code = main(["embed", "--benchmark", "csv", "--root", str(tmp_path), "--backbone", "tiny:clip", "--device", "cpu",
                 "--max-retries", "3"])
    assert code == 2 and "--engine ray only" in capsys.readouterr().err


def test_default_path_never_imports_ray(tmp_path):
    code = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from clipcal.cli import build_parser
from clipcal.embed import embed_benchmark
from clipcal.store import Store
from tests.fixtures_embed import make_image_benchmark
build_parser()
es = embed_benchmark(make_image_benchmark({str(tmp_path / 'd')!r}, n=4), "tiny:clip", device="cpu",
                     store=Store({str(tmp_path / 's')!r}), num_workers=0)
assert len(es) == 4
print(sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


BASH = shutil.which("bash")


@pytest.mark.skipif(BASH is None, reason="bash is needed to run run.sh")
def test_run_sh_test_installs_the_scale_extra_and_reinstalls_when_it_changes(tmp_path):
    work = tmp_path / "repo"
    (work / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(REPO / "run.sh", work / "run.sh")
    for req in ("requirements.txt", "requirements-dev.txt", "requirements-scale.txt"):
        shutil.copy(REPO / req, work / req)
    log = tmp_path / "python.log"
    py = work / ".venv" / "bin" / "python"  # a fake interpreter that records what it is asked to run
    py.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexit 0\n')
    py.chmod(0o755)
    # Debian packages are not this test's business: apt_install is stubbed out after run.sh is sourced
    script = f"source {work / 'run.sh'}; apt_install() {{ :; }}; main test -q"

    def run_test_mode() -> list[str]:
        log.write_text("")
        r = subprocess.run([BASH, "-c", script], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return log.read_text().splitlines()

    first = run_test_mode()
    installs = [ln for ln in first if ln.startswith("-m pip install -q -r")]
    assert installs == ["-m pip install -q -r requirements-dev.txt -r requirements-scale.txt"], first
    assert first[-1] == "-m pytest -q"
    assert not any("pip install" in ln for ln in run_test_mode())  # nothing changed: nothing reinstalled
    with open(work / "requirements-scale.txt", "a") as f:
        f.write("# changed\n")
    assert any(ln.startswith("-m pip install -q -r") for ln in run_test_mode())
