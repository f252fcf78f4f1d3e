"""The real dashboard in headless Chromium (Playwright + Debian's chromium): every page loads, a box selection
made with the mouse on the Representations map reaches the page, screenshots land in artifacts/screenshots/.

The server (``seeded_server``, tests/fixtures_browser.py) runs ``streamlit run app.py`` on a free localhost port
with ``CLIPCAL_CACHE`` pointing at the session's seeded store (tests/fixtures_app.py: demo_small + tiny:clip, a run
with every method, the joint UMAP), so nothing is computed in the browser run except what a page computes on its
own.
"""

from __future__ import annotations

import pytest

from tests.fixtures_browser import box_select, goto, images_loaded, no_exception, shot

#: (screenshot name, url path, text that appears once the page has fully rendered)
PAGES = [("home", "", "Calibration runs"), ("data", "data", "Samples per group"),
         ("embed", "embed", "Next: Calibrate"), ("calibrate", "calibrate", "Training curves"),
         ("groups", "groups", "How each method was trained"), ("representations", "representations", "What moved"),
         ("spurious", "spurious", "Candidate concepts")]

pytestmark = [pytest.mark.browser]


def test_deep_link_on_a_fresh_server_goes_through_the_app(seeded_server, browser_page):
    """The server's very first request is a deep link (a bookmark after a restart): app.py must route it.

    Runs first in this module, so nothing has visited ``/`` yet. Before the fix Streamlit ran
    ``pages/groups.py`` alone in v1 mode: no "Current selection" sidebar and a raw file list as navigation.
    """
    page = browser_page
    page.goto(f"{seeded_server}/groups")
    page.wait_for_selector('[data-testid="stMain"] h1', timeout=300_000)
    page.get_by_text("Current selection").first.wait_for(timeout=300_000)
    assert "Groups" in page.locator('[data-testid="stMain"] h1').first.inner_text()
    nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
    assert "Spurious attributes" in nav and "common" not in nav


def test_every_page_loads_and_selection_works(seeded_server, browser_page, seeded_store):
    page = browser_page
    times = {}
    for name, path, marker in PAGES:
        times[name] = goto(page, f"{seeded_server}/{path}", marker)
        no_exception(page, name)
        if name in ("representations", "groups", "spurious"):
            page.wait_for_selector(".js-plotly-plot", timeout=90_000)
        images_loaded(page)
        shot(page, name)
    # the other views of Spurious attributes are tabs: open each and keep a screenshot
    for i, tab in enumerate(["(b) Attribute decodability", "(c) Cluster discovery",
                             "(d) Calibration set vs groups", "(e) Worst-group gallery"]):
        page.get_by_role("tab", name=tab).click()
        images_loaded(page)
        no_exception(page, tab)
        shot(page, f"spurious-{'bcde'[i]}")
    print("first visit (load + render) seconds:", {k: round(v, 2) for k, v in times.items()})

    # Home lists the seeded embeddings and run
    goto(page, seeded_server, "Calibration runs")
    body = page.locator('[data-testid="stMain"]').inner_text()
    assert "tiny:clip" in body

    # Representations: box-select by mouse drag over the left half of the "before" panel
    goto(page, f"{seeded_server}/representations", "What moved")
    n = box_select(page, page.locator(".js-plotly-plot").first)
    n_points = seeded_store["n_samples"]
    assert 0 < n < n_points  # some, not all, of the 240 points lie in the left half
    # the selection's own grid (the story above the map shows thumbnails of images that crossed, too)
    grid_images = page.locator('[data-testid="stMain"] .st-key-repr_selection_grid [data-testid="stImage"] img')
    assert grid_images.count() == min(n, 24)
    assert page.locator('[data-testid="stDownloadButton"]').count() == 1
    no_exception(page, "representations after selection")
    shot(page, "representations-selection")
