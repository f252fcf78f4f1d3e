"""Fixtures and helpers of the browser tests: the real dashboard in headless Chromium (auto-loaded by conftest.py).

Debian's ``/usr/bin/chromium`` driven by Playwright; a missing chromium is a test failure (``pytest.fail``), never
a skip. Artifacts (git-ignored) go under ``artifacts/``: screenshots in ``artifacts/screenshots/``, the server's
log wherever ``log`` says.

Fixtures (module-scoped: each test module gets its own server, so a module's first request really is the
fresh server's first request):

``seeded_server`` — ``streamlit run app.py`` over the session's seeded store (``seeded_store`` in
tests/fixtures_app.py: demo_small + tiny:clip, a run with every method, the joint UMAP); yields the base URL
``http://127.0.0.1:<port>``. Log: ``artifacts/streamlit-<module>.log`` (``streamlit-test.log`` for
test_browser).

``browser_page`` — one Playwright ``Page`` (one browser session, one ``st.session_state``) for the module, over
``seeded_server``, viewport ``VIEWPORT``, default timeout 60 s.

Building blocks (for a server over another store, other timeouts; see tests/test_e2e_demo.py):

``streamlit_server(cache_dir, *, log, start_timeout_s=60, extra_args=(), env=None)`` — context manager: fails
first if chromium is missing, starts the server on a free port with ``CLIPCAL_CACHE=cache_dir`` and
``HF_HUB_OFFLINE=1`` (``env`` adds variables), waits for ``/_stcore/health``, yields the base URL, kills the
process group on exit.

``chromium_page(*, default_timeout_ms=60_000, viewport=VIEWPORT)`` — context manager yielding a fresh page.

Helpers (``page`` is a Playwright page; timeouts in seconds):

* ``goto(page, url, marker=None, settle_s=60) -> float`` — open ``url``, wait for the page's ``h1``, then for
  ``marker`` text (up to 300 s: a first visit imports the page's libraries), then ``wait_settled``; returns seconds.
* ``wait_settled(page, timeout_s=60)`` — wait until Streamlit's script run finished (status widget gone for ~1 s).
* ``images_loaded(page, timeout_s=30, settle_s=60)`` — wait until every visible image in the main area is decoded.
* ``no_exception(page, where, chars=500)`` — assert no ``st.exception`` box is on the page.
* ``box_select(page, plot, settle_s=60) -> int`` — box-select by mouse drag over the left half of ``plot``'s first
  panel, wait for the page's "Selection (n samples)" heading with n > 0 (page default timeout), return n.
* ``shot(page, name) -> Path`` — full-page screenshot ``artifacts/screenshots/<name>.png``.

Example::

    from tests.fixtures_browser import goto, no_exception, shot

    pytestmark = [pytest.mark.browser]

    def test_something(seeded_server, browser_page):
        goto(browser_page, f"{seeded_server}/representations", "What moved")
        no_exception(browser_page, "representations")
        shot(browser_page, "something")
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.request import urlopen

import pytest

ROOT = Path(__file__).resolve().parent.parent
ART = ROOT / "artifacts"
SHOTS = ART / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1500, "height": 2400}  # tall: Streamlit scrolls inside the page, full_page cannot


def require_chromium() -> None:
    """Fail (not skip) the test when Debian's chromium is missing."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (bash run.sh test does)")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (asked of the OS)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def streamlit_server(cache_dir: str | Path, *, log: Path, start_timeout_s: float = 60,
                     extra_args: Sequence[str] = (), env: dict[str, str] | None = None) -> Iterator[str]:
    """``streamlit run app.py`` on a free localhost port over the store ``cache_dir``; yields the base URL.

    Fails first if chromium is missing (every user of the server drives it with chromium), then with the log's
    path if the server exits or is not healthy within ``start_timeout_s``. The server's whole process group is
    terminated (killed after 10 s) on exit.
    """
    require_chromium()
    port = free_port()
    env = {**os.environ, "CLIPCAL_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1",
           "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false", **(env or {})}
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none", *extra_args],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    if urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() - t0 > start_timeout_s:
                    pytest.fail(f"streamlit did not start (see {log})")
                time.sleep(0.3)
            yield url
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def chromium_page(*, default_timeout_ms: float = 60_000, viewport: dict = VIEWPORT):
    """Headless Debian chromium through Playwright; yields one new page (closed with the browser on exit)."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport=viewport)
            page.set_default_timeout(default_timeout_ms)
            yield page
        finally:
            browser.close()


def wait_settled(page, timeout_s: float = 60) -> None:
    """Wait until the script run finished (Streamlit's status widget gone) and the page stayed quiet ~1 s.

    Raises AssertionError after ``timeout_s`` seconds.
    """
    page.wait_for_selector('[data-testid="stApp"]')
    t0 = time.monotonic()
    quiet = 0
    while time.monotonic() - t0 < timeout_s:
        w = page.locator('[data-testid="stStatusWidget"]')
        running = w.count() > 0 and w.first.is_visible()
        quiet = 0 if running else quiet + 1
        if quiet >= 4:
            return
        time.sleep(0.25)
    raise AssertionError("page did not settle")


def goto(page, url: str, marker: str | None = None, settle_s: float = 60) -> float:
    """Open ``url`` and wait until ``marker`` text is shown and the script run finished; return seconds."""
    t0 = time.monotonic()
    page.goto(url)
    page.wait_for_selector('[data-testid="stMain"] h1')
    if marker:
        # generous: a first visit imports the page's libraries; on a shared 2-core machine that took > 120 s
        page.get_by_text(marker).first.wait_for(timeout=300_000)
    wait_settled(page, settle_s)
    return time.monotonic() - t0


def images_loaded(page, timeout_s: float = 30, settle_s: float = 60) -> None:
    """Wait until every visible image on the page has been decoded (grids are filled), then ``wait_settled``."""
    time.sleep(0.5)
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stMain\"] img')]"
        ".filter(i => i.offsetParent !== null).every(i => i.complete && i.naturalWidth > 0)",
        timeout=timeout_s * 1000)
    wait_settled(page, settle_s)


def no_exception(page, where: str, chars: int = 500) -> None:
    """Assert that no ``st.exception`` box is on the page (message: ``where`` and the first ``chars`` of it)."""
    exc = page.locator('[data-testid="stException"]')
    assert exc.count() == 0, f"{where}: exception on the page: {exc.first.inner_text()[:chars]}"


def box_select(page, plot, settle_s: float = 60) -> int:
    """Box-select by mouse drag over the left half of ``plot``'s first panel; return n of "Selection (n samples)".

    ``plot`` is a ``.js-plotly-plot`` locator. Waits (page default timeout) for a selection heading with n > 0.
    """
    plot.wait_for()
    plot.hover()
    page.locator('.modebar-btn[data-title="Box Select"]').first.click()
    drag = plot.locator(".nsewdrag").first
    box = drag.bounding_box()
    x0, y0 = box["x"] + 3, box["y"] + 3
    x1, y1 = box["x"] + box["width"] * 0.5, box["y"] + box["height"] - 3
    page.mouse.move(x0, y0)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(x0 + (x1 - x0) * i / 10, y0 + (y1 - y0) * i / 10)
        time.sleep(0.05)
    page.mouse.up()
    page.wait_for_function(
        "() => [...document.querySelectorAll('h4')].some(h => /Selection \\((\\d+) samples\\)/.test(h.innerText)"
        " && !/Selection \\(0 samples\\)/.test(h.innerText))")
    wait_settled(page, settle_s)
    heading = page.locator("h4", has_text="Selection (").first.inner_text()
    return int(re.search(r"\((\d+) samples\)", heading).group(1))


def shot(page, name: str) -> Path:
    """Full-page screenshot to ``artifacts/screenshots/<name>.png``; returns the path."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture(scope="module")
def seeded_server(request, seeded_store):
    """``streamlit_server`` over the seeded store for this test module; yields the base URL (module docstring)."""
    mod = request.module.__name__.rsplit(".", 1)[-1]
    name = "test" if mod == "test_browser" else mod  # test_browser keeps its log's old name
    with streamlit_server(seeded_store["root"], log=ART / f"streamlit-{name}.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser_page(seeded_server):
    """One chromium page for this test module (default timeout 60 s), opened once ``seeded_server`` is up."""
    with chromium_page(default_timeout_ms=60_000) as page:
        yield page
