"""The Embed page builds every spec through :class:`clipcal.backbones.BackboneSpec` (never an f-string): the
bundled backbone's resolution slider starts at the backbone's own default and gives the canonical
``bundled:efficientnet-lite0@<px>``; a local hf-hub folder gives the canonical (absolute) ``open_clip:local-dir:``
spec, so the session's backbone is the same text as the store's; the stored set's caption says where its last
layer comes from (recorded with the embeddings), not a guess from the projection kind."""

from __future__ import annotations

import os

from clipcal.backbones import LITE0_DEFAULT_PX, BackboneSpec, last_layer_info
from pages.ui import state


def _ek(at, base: str) -> str:
    return state.choice_key(base, at.session_state[state.K_BACKBONE])


def _use(at) -> None:
    at.button(key="embed.use").click().run()
    assert not at.exception, [e.value for e in at.exception]


def test_bundled_resolution_gives_the_canonical_spec(app):
    at = app("embed")
    at.radio(key=_ek(at, "embed.source")).set_value("bundled (offline)").run()
    slider = at.select_slider(key=_ek(at, "embed.px"))
    assert slider.value == LITE0_DEFAULT_PX
    slider.set_value(224).run()
    _use(at)
    assert at.session_state[state.K_BACKBONE] == str(BackboneSpec.bundled(224)) == "bundled:efficientnet-lite0@224"


def test_a_local_folder_gives_the_canonical_absolute_spec(app, tmp_path, monkeypatch):
    folder = tmp_path / "snap"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    at = app("embed")
    at.radio(key=_ek(at, "embed.source")).set_value("local checkpoint").run()
    at.text_input(key=_ek(at, "embed.ckpt")).input(os.path.join(".", "snap")).run()
    at.radio(key=_ek(at, "embed.ckpt_kind")).set_value(
        "a local hf-hub folder (open_clip_config.json + weights)").run()
    _use(at)
    assert at.session_state[state.K_BACKBONE] == f"open_clip:local-dir:{folder.resolve()}"


def test_the_stored_set_says_where_its_last_layer_comes_from(app):
    at = app("embed")  # the seeded set: tiny:clip, a ViT whose last layer is its own visual.proj
    assert not at.exception
    captions = [c.value for c in at.caption]
    assert any(c.startswith("Projection: exact — " + last_layer_info("exact")["description"]) for c in captions), \
        captions
