"""Small widgets every page uses: errors as messages, teaching expanders, image grids, "nothing here yet"
notices with a link to the page that makes it."""

from __future__ import annotations

import contextlib
import importlib
import io
import traceback

import streamlit as st

from clipcal.errors import ClipcalError
from pages.ui import resources, state


# ---------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------
def show_error(err: BaseException, what: str = "") -> None:
    """Show an exception on the page: a core error as its message (+ hint), anything else as a short
    message with the traceback in an expander (never a bare traceback)."""
    if isinstance(err, ClipcalError):
        st.error(str(err))
        return
    st.error(f"{what + ': ' if what else ''}unexpected {type(err).__name__}: {err}")
    with st.expander("Details (for a bug report)"):
        st.code("".join(traceback.format_exception(type(err), err, err.__traceback__)), language="text")


@contextlib.contextmanager
def guarded(what: str = ""):
    """``with guarded("loading runs"):`` — render any exception raised inside with :func:`show_error`.

    Streamlit's own control flow (``st.rerun``, ``st.stop``) derives from ``BaseException`` and passes.
    """
    try:
        yield
    except Exception as err:  # noqa: BLE001 - every error becomes a message on the page
        show_error(err, what)


# ---------------------------------------------------------------------------------------------------------
# teaching
# ---------------------------------------------------------------------------------------------------------
#: topic → the module whose ``TEACHING = (title, markdown)`` explains it (texts live next to what they describe)
TOPICS = {"spurious": "clipcal.concepts", "worst_group": "clipcal.metrics", "cfr": "clipcal.methods.cfr",
          "umap": "clipcal.projection"}


def teach(title: str, body: str) -> None:
    """A collapsed teaching expander."""
    with st.expander(f"📘 {title}"):
        st.markdown(body)


def teach_topic(name: str) -> None:
    """The teaching expander of one of :data:`TOPICS`."""
    teach(*importlib.import_module(TOPICS[name]).TEACHING)


# ---------------------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------------------
def _thumb(path: str, size: int) -> bytes:
    """JPEG bytes of a thumbnail (encoded once per process; st.image sends bytes as they are)."""
    from clipcal.data.images import thumbnail

    def build():
        buf = io.BytesIO()
        thumbnail(path, size).save(buf, "JPEG", quality=85)
        return buf.getvalue()

    return resources.memo(("thumb", path, size), build)


def image_grid(paths: list, captions: list[str] | None = None, columns: int = 6, size: int = 128) -> None:
    """Thumbnails in a grid (via ``clipcal.data.images.thumbnail``); unreadable files show their reason."""
    if not paths:
        st.caption("No images.")
        return
    captions = captions or [""] * len(paths)
    cols = st.columns(columns)
    for i, (p, cap) in enumerate(zip(paths, captions)):
        with cols[i % columns]:
            try:
                st.image(_thumb(str(p), size), caption=cap or None, width="stretch")
            except ClipcalError as err:
                st.caption(f"⚠️ {cap}: {err.message}")


def grid_of_ids(bench, fd, ids, limit: int = 12, columns: int = 6, captions: dict | None = None) -> None:
    """Thumbnails of the samples ``ids`` of a run's rows, captioned class / attribute · split
    (:func:`clipcal.plot_selection.image_grid_items`)."""
    from clipcal.plot_selection import image_grid_items

    items = image_grid_items(resources.sample_table(bench, fd), list(ids), bench, limit=limit, captions=captions)
    image_grid([p for p, _ in items], [cap for _, cap in items], columns=columns, size=112)


# ---------------------------------------------------------------------------------------------------------
# notices
# ---------------------------------------------------------------------------------------------------------
def no_benchmark_notice() -> None:
    """Explain that the current demo is not built yet, with a link to Data."""
    st.info("The demo images are not generated yet. Build them on **Data** (or run the demo from **Home**).")
    st.page_link(state.PAGE["data"], label="Go to Data", icon="🗂️")


def no_embeddings_notice(spec: str) -> None:
    """Say why there are no embeddings for ``spec``: a checkpoint file or folder that is gone (its stored
    embeddings are keyed by the weights' fingerprint, so they are found again once it is back), or none made."""
    from clipcal.backbones import parse_spec
    from clipcal.catalog import weights_gone

    try:
        ps = parse_spec(spec)
    except ClipcalError:
        ps = None
    if ps is not None and weights_gone(spec):
        st.error(f"The weights of **{spec}** are missing: `{ps.checkpoint or ps.local_dir}` is not there any more. "
                 "Stored embeddings are matched by the weights' fingerprint, so the ones made with it are found "
                 "again when the file is back in place (moving it elsewhere is fine: give the new path). Or "
                 "choose another backbone in the sidebar.")
        return
    st.info(f"No embeddings of this benchmark with **{spec}** in the store yet.")
    st.page_link(state.PAGE["embed"], label="Go to Embed", icon="🧮")


def need_embeddings(bench):
    """The current embedding set, or render a notice (with a link to Embed) and return ``None``."""
    emb = resources.load_embeddings(bench)
    if emb is None:
        no_embeddings_notice(state.backbone_spec())
    return emb
