"""The Groups page exports the calibrated model (issue 11.4): a button writes the export into the store's
``exports/`` folder and offers it as a zip download. Rule pinned: what the page offers is exactly what the
library export writes for the chosen method (the page holds no export logic)."""

from __future__ import annotations

import json
import zipfile

from pages.ui import state


def test_export_button_writes_under_the_store_and_offers_a_zip(app, seeded_store):
    from clipcal.export import exportable_methods

    at = app("groups", **{state.K_RUN: seeded_store["run_id"]})
    assert not at.exception
    pick = at.selectbox(key="groups.export_method")
    assert pick.value == "cfr" and len(pick.options) == len(exportable_methods(seeded_store["run"]))
    at.button(key="groups.export").click().run()
    assert not at.exception and not at.error
    key, method, zip_path, summary = at.session_state["groups.exported"]
    assert (key, method) == (seeded_store["run_id"], "cfr")
    folder = seeded_store["root"] / "exports" / f"{key}-cfr"
    card = json.loads((folder / "classifier.json").read_text())
    assert card["kind"] == "open_clip-checkpoint" and card["run"] == key      # tiny:clip: an open_clip ViT
    with zipfile.ZipFile(zip_path) as z:
        assert {"open_clip_model.safetensors", "classifier.safetensors", "classifier.json",
                "README.md"} <= set(z.namelist())
    assert any("open_clip checkpoint" in s.value for s in at.success)
