"""The dashboard's Streamlit helpers, by concern (a package under ``pages/``: Streamlit lists only the ``*.py``
files directly in ``pages/`` as pages, so nothing here becomes a page).

Where to look (every widget key starts with its page's prefix: ``data.``, ``embed.``, ``calib.``, ``groups.``,
``repr.``, ``spur.``; the sidebar's with ``sb.``):

- ``state.py``      — the session keys shared across pages (current benchmark, backbone, run, method) and their
                      defaults; ``choice_key`` for widgets that follow the current choice.
- ``sidebar.py``    — the shared sidebar: benchmark / backbone / run pickers and the running jobs.
- ``resources.py``  — memoised, process-wide objects: the job manager, the store, loaded benchmarks, embedding
                      sets, runs, the one loaded backbone model.
- ``jobs.py``       — background jobs: starting them (one per key) and their panels (live progress, Cancel,
                      errors, live training curves).
- ``widgets.py``    — small shared widgets: errors as messages, teaching expanders, image grids, notices.
- ``results.py``    — what every result page opens with (the current run or why there is none) and the shared
                      result blocks (metric table, training curves).
- ``calibrate.py``, ``data.py``, ``embed.py``, ``representations.py``, ``spurious.py`` — the sections of those
                      pages, one function each.

The logic these draw lives in ``clipcal`` (no Streamlit there): :mod:`clipcal.catalog` (what is in the store),
:mod:`clipcal.pipeline` (the steps the jobs run), :mod:`clipcal.views` (tables and notes).
"""

from __future__ import annotations

import streamlit as st


def _route_through_app() -> None:
    """Send a v1-style run of a page file back through app.py.

    Streamlit decides process-wide whether ``pages/`` is a v1 multipage folder until ``st.navigation`` is first
    called: when a fresh server's first request is a deep link (``/groups`` bookmarked or reloaded after a
    restart), it runs ``pages/groups.py`` alone — no sidebar, a raw file list as navigation. Clearing that flag
    and rerunning makes app.py (and its ``st.navigation``) handle the same URL.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


_route_through_app()
