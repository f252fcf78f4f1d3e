"""AppTest of Spurious attributes → "(f) Concepts from images (CAV)" over the seeded tiny store: the concept images
are chosen (demo backgrounds, the Representations selection), the work runs as a job, and the tables shown are
the core's numbers (clipcal.cav on the same run, method and seed) — for a backbone with or without a text tower."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from clipcal import cav
from pages.ui import resources, state
from tests.test_app_setup_pages import _no_exception, _wait_job, frame_with

pytestmark = pytest.mark.slow  # seeding the store takes ~1 min on 2 cores


def _fd(seeded_store):
    from clipcal.methods import FeatureData

    return FeatureData.from_store(seeded_store["bench"], seeded_store["emb"])


def _run_section(at, seeded_store, source, counter, n_random=10):
    key = cav.job_key(seeded_store["run_id"], "cfr", source, counter, n_random)
    at.button(key="spur.cav_start").click().run()
    job = _wait_job(key, timeout=300)
    assert job.status == "done", job.error_message
    at.run()
    _no_exception(at)
    return job


def test_cav_section_demo_backgrounds_shows_the_core_numbers(app, seeded_store):
    at = app("spurious", **{state.K_RUN: seeded_store["run_id"]})
    _no_exception(at)
    assert at.tabs[5].label == "(f) Concepts from images (CAV)"
    assert at.radio(key="spur.cav_source").value == "demo backgrounds"
    source = {"kind": "demo", "background": "water", "n": 50,
              "image_size": int(seeded_store["bench"].params.get("image_size", 224))}
    counter = {**source, "background": "land"}
    _run_section(at, seeded_store, source, counter)
    # the same report computed by the core directly
    run = seeded_store["run"]
    want = cav.concept_report_job(_fd(seeded_store), run.results["cfr"], source, counter,
                                  backbone=seeded_store["backbone"], store=resources.get_store())
    probe = frame_with(at, "space", "accuracy", "separable")
    assert probe["space"].tolist() == want.probe["space"].tolist()
    assert probe["accuracy"].to_numpy() == pytest.approx(want.probe["accuracy"].round(3).to_numpy())
    groups = frame_with(at, "score_before", "share_before")
    pd.testing.assert_frame_equal(groups.reset_index(drop=True), want.groups, check_dtype=False)
    tcav = frame_with(at, "tcav", "p_value", "significant", "shown")
    assert tcav["class"].tolist() == ["landbird", "waterbird"]
    np.testing.assert_allclose(tcav["tcav"].to_numpy(float), want.tcav["tcav"].to_numpy(float), equal_nan=True)
    assert (tcav["n_random"] == 10).all()
    # a number not vouched for is not shown as one: no TCAV where 'shown' is False
    assert tcav.loc[~tcav["shown"], "tcav"].isna().all()
    assert any("water backgrounds" in m.value and "land backgrounds" in m.value for m in at.markdown)


def test_cav_section_uses_the_representations_selection(app, seeded_store):
    fd = _fd(seeded_store)
    ids = [str(i) for i in fd.sample_ids[fd.a == 1][:24]]
    sel = {"run": seeded_store["run_id"], "ids": ids}
    at = app("spurious", **{state.K_RUN: seeded_store["run_id"]})
    at.radio(key="spur.cav_source").set_value("current selection").run()
    assert any("Select at least" in i.value for i in at.info)  # nothing selected yet: says how
    at.session_state[state.K_SELECTION] = sel
    at.run()
    assert any("24 selected images" in c.value for c in at.caption)
    _run_section(at, seeded_store, {"kind": "selection", "ids": ids}, None)
    groups = frame_with(at, "score_before", "score_after")
    assert groups["n"].sum() == int(fd.mask("test").sum())
    want = cav.cav_report(fd, seeded_store["run"].results["cfr"], cav.selection_concept(fd, ids))
    pd.testing.assert_frame_equal(groups.reset_index(drop=True), want.groups, check_dtype=False)


def test_cav_section_works_without_a_text_tower(app, seeded_store, image_only_backbone):
    """Image concepts need no text tower: the text-concept tab says it cannot run, the CAV tab still does."""
    at = app("spurious", **{state.K_RUN: seeded_store["run_id"]})
    _no_exception(at)
    assert any("has no text tower" in i.value for i in at.info)
    at.slider(key="spur.cav_runs").set_value(11).run()  # a key of its own: computed here, not by another test
    source = {"kind": "demo", "background": "water", "n": 50,
              "image_size": int(seeded_store["bench"].params.get("image_size", 224))}
    _run_section(at, seeded_store, source, {**source, "background": "land"}, n_random=11)
    tcav = frame_with(at, "tcav", "p_value", "significant", "shown")
    assert (tcav["n_random"] == 11).all() and len(frame_with(at, "score_before", "share_before")) == 4
