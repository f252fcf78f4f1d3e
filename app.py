"""clipcal dashboard — entry point: `streamlit run app.py`.

Sets the page up, draws the shared sidebar (current benchmark / backbone / run, kept in st.session_state
under the keys documented in pages/ui/state.py) and routes with st.navigation. Each page is a script in pages/;
their shared Streamlit helpers are the package pages/ui/ (not a page: Streamlit lists only pages/*.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # `pages.ui` and `clipcal` import from the repository root
    sys.path.insert(0, str(HERE))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import streamlit as st  # noqa: E402

from clipcal.process import freeze_imported_objects  # noqa: E402
from pages.ui import sidebar, state  # noqa: E402

st.set_page_config(page_title="clipcal", page_icon="🐦", layout="wide")

PAGES = [
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/data.py", title="Data", icon="🗂️"),
    st.Page("pages/embed.py", title="Embed", icon="🧮"),
    st.Page("pages/calibrate.py", title="Calibrate", icon="🎯"),
    st.Page("pages/groups.py", title="Groups", icon="📊"),
    st.Page("pages/representations.py", title="Representations", icon="🗺️"),
    st.Page("pages/spurious.py", title="Spurious attributes", icon="🔎"),
]

page = st.navigation(PAGES)
state.init_state()
sidebar.sidebar()
page.run()
freeze_imported_objects()  # after new imports only: keeps Python's full collections short (see there)
