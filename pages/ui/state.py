"""Session-state keys — the only state shared across pages — and their defaults.

``K_BENCH`` = ``"cc.benchmark"``
    The current benchmark spec ``{"name": str, "root": str | None, "options": dict}`` (the arguments of
    :func:`clipcal.data.load_benchmark`; see :mod:`clipcal.catalog`). Default: the built-in demo.
``K_BACKBONE`` = ``"cc.backbone"``
    The current backbone spec (str), default :data:`clipcal.catalog.DEFAULT_BACKBONE`.
``K_RUN`` = ``"cc.run"``
    Key of the calibration run shown on Calibrate / Groups / Representations / Spurious attributes (``None`` =
    the newest run of the current benchmark and backbone).
``K_METHOD`` = ``"cc.method"``
    The method whose calibrated embeddings are the "after" view (``None`` = CFR if present, else the first).
``K_DEMO_JOB`` = ``"cc.demo_job"``
    Key of the "run the demo" job started from Home (or ``None``).
``K_SELECTION`` = ``"cc.selection"``
    The last box / lasso selection on Representations: ``{"run": run key, "ids": [sample_id, …]}`` (or absent);
    Spurious attributes offers it as a concept (images → concept activation vector).

Widget keys start with the page name (``data.``, ``embed.`` …) and are never read by other pages.
"""

from __future__ import annotations

import hashlib

import streamlit as st

from clipcal.catalog import DEFAULT_BACKBONE, DEFAULT_BENCH, newest_reopenable

K_BENCH = "cc.benchmark"
K_BACKBONE = "cc.backbone"
K_RUN = "cc.run"
K_METHOD = "cc.method"
K_DEMO_JOB = "cc.demo_job"
K_SELECTION = "cc.selection"

PAGE = {  # page files, for st.page_link / st.switch_page
    "home": "pages/home.py", "data": "pages/data.py", "embed": "pages/embed.py",
    "calibrate": "pages/calibrate.py", "groups": "pages/groups.py",
    "representations": "pages/representations.py", "spurious": "pages/spurious.py",
}


def init_state() -> None:
    """Fill the shared keys on a session's first run: the newest embedding set in the store that can be reopened
    (:func:`clipcal.catalog.newest_reopenable`, e.g. embedded headless), else the built-in demo and the bundled
    backbone."""
    from pages.ui import resources

    ss = st.session_state
    if K_BENCH in ss and K_BACKBONE in ss:
        return
    bench, spec = dict(DEFAULT_BENCH), DEFAULT_BACKBONE
    try:
        bench, spec = newest_reopenable(resources.store_embeddings()) or (bench, spec)
    except Exception:  # noqa: BLE001 - an unreadable store must not stop the app; pages say more
        pass
    ss.setdefault(K_BENCH, bench)
    ss.setdefault(K_BACKBONE, spec)
    ss.setdefault(K_RUN, None)
    ss.setdefault(K_METHOD, None)
    ss.setdefault(K_DEMO_JOB, None)


def bench_spec() -> dict:
    """The current benchmark spec dict (see ``K_BENCH``)."""
    return st.session_state.get(K_BENCH) or dict(DEFAULT_BENCH)


def backbone_spec() -> str:
    """The current backbone spec string."""
    return st.session_state.get(K_BACKBONE) or DEFAULT_BACKBONE


def set_benchmark(spec: dict) -> None:
    """Make ``spec`` the current benchmark (and forget the chosen run, which belonged to the old one)."""
    st.session_state[K_BENCH] = {"name": spec["name"], "root": spec.get("root") or None,
                                 "options": dict(spec.get("options") or {})}
    st.session_state[K_RUN] = None


def set_backbone(spec: str) -> None:
    """Make ``spec`` the current backbone (forgets the chosen run)."""
    st.session_state[K_BACKBONE] = spec
    st.session_state[K_RUN] = None


def preferred_method() -> str | None:
    """The method chosen as "after" on another page (``K_METHOD``), shown first where methods are picked."""
    return st.session_state.get(K_METHOD)


def choice_key(base: str, current: str) -> str:
    """Widget key that carries the current choice: ``base`` + a short hash of ``current`` (e.g. the sidebar's
    ``"sb.bench"``, the Data page's form fields), so the widget is recreated — and the browser shows its new
    default — whenever the choice changes elsewhere. With one fixed key the browser kept showing the old value
    (a deleted widget state is not sent back to the page)."""
    return f"{base}.{hashlib.sha1(current.encode()).hexdigest()[:10]}"
