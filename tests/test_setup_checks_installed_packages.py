"""Issue 10 item 11 — set-up checks what is really installed.

Kind-level rule: ``run.sh`` counts a Debian package as installed only when dpkg's status letters say so
(``ii `` / ``hi ``: ``dpkg -s`` exits 0 for a package left "reinstreq half-installed" by an interrupted install)
*and* the file clipcal uses from it exists; anything else is repaired (``dpkg --configure -a``, then
``apt-get install --reinstall``) and checked again. Run against fake ``dpkg-query`` / ``dpkg`` / ``apt-get`` on
``PATH``; nothing is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="bash is needed to run run.sh")

FAKE_DPKG_QUERY = """#!/bin/sh
# dpkg-query -W -f=FORMAT PKG: the status letters from $FAKE_DB/PKG, or "no packages found" (exit 1)
for last; do :; done
if [ -f "$FAKE_DB/$last" ]; then printf '%s' "$(cat "$FAKE_DB/$last")"; exit 0; fi
echo "dpkg-query: no packages found matching $last" >&2; exit 1
"""
FAKE_DPKG = """#!/bin/sh
# like the real dpkg: -s exits 0 for a half-installed package, so it must not decide
echo "dpkg $*" >> "$FAKE_LOG"; exit 0
"""
FAKE_APT_GET = """#!/bin/sh
echo "apt-get $*" >> "$FAKE_LOG"
if [ -n "$FAKE_REPAIRS" ]; then for p; do [ -f "$FAKE_DB/$p" ] && printf 'ii ' > "$FAKE_DB/$p"; done; fi
exit 0
"""


@pytest.fixture
def fake(tmp_path):
    """Fake dpkg tools on PATH; ``fake.status(pkg, letters)`` sets a package's state; ``fake.log()``."""
    bin_ = tmp_path / "bin"
    db = tmp_path / "db"
    bin_.mkdir()
    db.mkdir()
    for name, text in (("dpkg-query", FAKE_DPKG_QUERY), ("dpkg", FAKE_DPKG), ("apt-get", FAKE_APT_GET),
                       ("sudo", '#!/bin/sh\nexec "$@"\n')):
        (bin_ / name).write_text(text)
        (bin_ / name).chmod(0o755)
    log_file = tmp_path / "log"
    log_file.write_text("")

    class Fake:
        env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "FAKE_DB": str(db), "FAKE_LOG": str(log_file)}

        def status(self, pkg, letters):
            (db / pkg).write_text(letters)

        def log(self):
            return log_file.read_text()

        def bash(self, script, **env):
            return subprocess.run([BASH, "-c", f"source {REPO / 'run.sh'}\n{script}"], env={**self.env, **env},
                                  capture_output=True, text=True, timeout=60)

    return Fake()


def test_status_reads_dpkg_letters_and_key_files(fake, tmp_path):
    present = tmp_path / "chromium"
    present.write_text("#!/bin/sh\n")
    keys = f"DEB_KEY_FILES[chromium]={present}; DEB_KEY_FILES[gone]={tmp_path / 'nothing-here'}"
    cases = {"ii ": "ok", "hi ": "ok", "iHR": "broken (dpkg status 'iHR')", "iU ": "broken (dpkg status 'iU ')",
             "iF ": "broken (dpkg status 'iF ')", "rc ": "absent", "un ": "absent"}
    for letters, want in cases.items():
        fake.status("chromium", letters)
        r = fake.bash(f"{keys}; deb_status chromium")
        assert (r.returncode, r.stdout.strip()) == (0, want), (letters, r.stderr)
    r = fake.bash(f"{keys}; deb_status not-a-package")  # dpkg-query exits 1: not installed
    assert r.stdout.strip() == "absent"
    fake.status("gone", "ii ")  # status fine, but the file clipcal needs is not there
    r = fake.bash(f"{keys}; deb_status gone")
    assert r.stdout.strip() == f"files missing ({tmp_path / 'nothing-here'})"


def test_half_installed_package_is_reinstalled_by_setup(fake, tmp_path):
    """The reported case, through `bash run.sh setup`: chromium-style 'reinstreq half-installed' (dpkg -s exits 0)."""
    work = tmp_path / "repo"
    work.mkdir()
    shutil.copy(REPO / "run.sh", work / "run.sh")
    for req in ("requirements.txt", "requirements-dev.txt"):
        shutil.copy(REPO / req, work / req)
    venv_py = work / ".venv" / "bin" / "python"  # a fake interpreter: pip and streamlit are not run
    venv_py.parent.mkdir(parents=True)
    venv_py.write_text("#!/bin/sh\nexit 0\n")
    venv_py.chmod(0o755)
    demo_debs = ["fonts-noto-color-emoji", "plasma-workspace-wallpapers", "mate-backgrounds",
                 "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04"]
    for p in demo_debs:
        fake.status(p, "ii ")
    fake.status("mate-backgrounds", "iHR")
    r = subprocess.run([BASH, str(work / "run.sh"), "setup"], env={**fake.env, "FAKE_REPAIRS": "1"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    log = fake.log()
    assert "dpkg --configure -a" in log
    reinstall = [ln for ln in log.splitlines() if ln.startswith("apt-get install") and "--reinstall" in ln]
    assert len(reinstall) == 1 and "mate-backgrounds" in reinstall[0].split()
    assert "not properly installed" in r.stdout and "mate-backgrounds" in r.stdout


def test_repair_that_does_not_take_is_reported(fake, tmp_path):
    fake.status("chromium", "iHR")  # apt-get "succeeds" but the package stays broken
    r = fake.bash(f"DEB_KEY_FILES[chromium]={tmp_path}; apt_install chromium")
    assert r.returncode == 0  # set-up goes on, as before; the message says what is wrong
    assert "could not install Debian packages: chromium: broken (dpkg status 'iHR')" in r.stderr


def test_installed_packages_cause_no_apt_run(fake, tmp_path):
    fake.status("chromium", "ii ")
    r = fake.bash(f"DEB_KEY_FILES[chromium]={tmp_path}; apt_install chromium")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""
    assert fake.log() == ""
