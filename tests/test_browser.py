"""The real dashboard in headless Chromium (Playwright + Debian's chromium): every page loads, a box selection
made with the mouse on the Representations map reaches the page, screenshots land in artifacts/screenshots/.

The server runs ``streamlit run app.py`` on a free localhost port with ``CLIPCAL_CACHE`` pointing at the
session's seeded store (tests/fixtures_app.py: demo_small + tiny:clip, a run with every method, the joint
UMAP), so nothing is computed in the browser run except what a page computes on its own.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import urlopen

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
#: (screenshot name, url path, text that appears once the page has fully rendered)
PAGES = [("home", "", "Calibration runs"), ("data", "data", "Samples per group"),
         ("embed", "embed", "Next: Calibrate"), ("calibrate", "calibrate", "Training curves"),
         ("groups", "groups", "How each method was trained"), ("representations", "representations", "What moved"),
         ("spurious", "spurious", "Candidate concepts")]
VIEWPORT = {"width": 1500, "height": 2400}  # tall: Streamlit scrolls inside the page, full_page cannot

pytestmark = [pytest.mark.browser]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(seeded_store):
    """``streamlit run app.py`` on a free port over the seeded store; yields the base URL."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (bash run.sh test does)")
    port = _free_port()
    env = dict(os.environ, CLIPCAL_CACHE=str(seeded_store["root"]), HF_HUB_OFFLINE="1",
               STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    SHOTS.mkdir(parents=True, exist_ok=True)
    log = open(SHOTS.parent / "streamlit-test.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            try:
                if urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() - t0 > 60:
                pytest.fail(f"streamlit did not start (see {log.name})")
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def browser_page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def _settle(page, timeout_s: float = 60) -> None:
    """Wait until the script run finished (Streamlit's status widget gone) and the page is quiet."""
    page.wait_for_selector('[data-testid="stApp"]')
    t0 = time.monotonic()
    quiet = 0
    while time.monotonic() - t0 < timeout_s:
        running = page.locator('[data-testid="stStatusWidget"]').count() > 0 and \
            page.locator('[data-testid="stStatusWidget"]').first.is_visible()
        quiet = 0 if running else quiet + 1
        if quiet >= 4:
            return
        time.sleep(0.25)
    raise AssertionError("page did not settle")


def _goto(page, url: str, marker: str | None = None) -> float:
    """Open ``url`` and wait until ``marker`` text is shown and the script run finished; return seconds."""
    t0 = time.monotonic()
    page.goto(url)
    page.wait_for_selector('[data-testid="stMain"] h1')
    if marker:
        # generous: a first visit imports the page's libraries; on a shared 2-core machine that took > 120 s
        page.get_by_text(marker).first.wait_for(timeout=300_000)
    _settle(page)
    return time.monotonic() - t0


def _images_loaded(page, timeout_s: float = 30) -> None:
    """Wait until every visible image on the page has been decoded (grids are filled)."""
    time.sleep(0.5)
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stMain\"] img')]"
        ".filter(i => i.offsetParent !== null).every(i => i.complete && i.naturalWidth > 0)",
        timeout=timeout_s * 1000)
    _settle(page)


def _no_exception(page, name: str) -> None:
    exc = page.locator('[data-testid="stException"]')
    assert exc.count() == 0, f"{name}: exception on the page: {exc.first.inner_text()[:500]}"


def test_deep_link_on_a_fresh_server_goes_through_the_app(server, browser_page):
    """The server's very first request is a deep link (a bookmark after a restart): app.py must route it.

    Runs first in this module, so nothing has visited ``/`` yet. Before the fix Streamlit ran
    ``pages/groups.py`` alone in v1 mode: no "Current selection" sidebar and a raw file list as navigation.
    """
    page = browser_page
    page.goto(f"{server}/groups")
    page.wait_for_selector('[data-testid="stMain"] h1', timeout=300_000)
    page.get_by_text("Current selection").first.wait_for(timeout=300_000)
    assert "Groups" in page.locator('[data-testid="stMain"] h1').first.inner_text()
    nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
    assert "Spurious attributes" in nav and "common" not in nav


def test_every_page_loads_and_selection_works(server, browser_page, seeded_store):
    page = browser_page
    SHOTS.mkdir(parents=True, exist_ok=True)
    times = {}
    for name, path, marker in PAGES:
        times[name] = _goto(page, f"{server}/{path}", marker)
        _no_exception(page, name)
        if name in ("representations", "groups", "spurious"):
            page.wait_for_selector(".js-plotly-plot", timeout=90_000)
        _images_loaded(page)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    # the other views of Spurious attributes are tabs: open each and keep a screenshot
    for i, tab in enumerate(["(b) Attribute decodability", "(c) Cluster discovery",
                             "(d) Calibration set vs groups", "(e) Worst-group gallery"]):
        page.get_by_role("tab", name=tab).click()
        _images_loaded(page)
        _no_exception(page, tab)
        page.screenshot(path=str(SHOTS / f"spurious-{'bcde'[i]}.png"), full_page=True)
    print("first visit (load + render) seconds:", {k: round(v, 2) for k, v in times.items()})

    # Home lists the seeded embeddings and run
    _goto(page, server, "Calibration runs")
    body = page.locator('[data-testid="stMain"]').inner_text()
    assert "tiny:clip" in body

    # Representations: box-select by mouse drag over the left half of the "before" panel
    _goto(page, f"{server}/representations", "What moved")
    plot = page.locator(".js-plotly-plot").first
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
        " && !/Selection \\(0 samples\\)/.test(h.innerText))", timeout=60_000)
    _settle(page)
    heading = page.locator("h4", has_text="Selection (").first.inner_text()
    n = int(re.search(r"\((\d+) samples\)", heading).group(1))
    n_points = seeded_store["n_samples"]
    assert 0 < n < n_points  # some, not all, of the 240 points lie in the left half
    grid_images = page.locator('[data-testid="stMain"] [data-testid="stImage"] img')
    assert grid_images.count() == min(n, 24)
    assert page.locator('[data-testid="stDownloadButton"]').count() == 1
    _no_exception(page, "representations after selection")
    page.screenshot(path=str(SHOTS / "representations-selection.png"), full_page=True)
