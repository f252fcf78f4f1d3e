"""Every page that shows CFR says what it did (issue 12.1: which calibration-set rule ran, which model the
selection returned, and — when that is the stage-1 ERM model although the calibration set was NOT empty — says so
instead of "the calibration set was empty"); the demo path ends on the story of its run and Representations leads
with it (issue 12.5); the Data page's demo difficulty is a teaching control with its measured effect (12.2)."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from clipcal import pipeline, story, views
from pages.ui import resources, state
from tests.test_app_setup_pages import _no_exception, _wait_job, frame_with


# ---- plain: the notes --------------------------------------------------------------------------------------
def test_selection_fallback_is_not_called_an_empty_calibration_set():
    """fallback == "erm" covers two causes; the note names the one the record gives."""
    rec = {"fallback": "erm", "fallback_reason": "selection", "calibration_set": {"size": 47, "source": "cross-fit…"},
           "selection": {"rule": "worst-class", "why": "highest validation worst-class accuracy: stage-1 ERM 0.795"}}
    (note,) = views.fallback_notes(NS(results={"cfr": NS(record=rec)}))
    assert "empty" not in note and "calibration set of 47 images" in note
    assert note.startswith(views.method_label("cfr") + " returned the stage-1 ERM model")
    assert "validation worst-class accuracy" in note and "stage-1 ERM 0.795" in note


def test_empty_set_under_auto_names_both_rules_and_does_not_advise_what_already_ran():
    rec = {"fallback": "erm", "fallback_reason": "empty calibration set",
           "calibration_rule": {"requested": "auto", "used": None}, "calibration_set": {"size": 0, "source": "…"}}
    (note,) = views.fallback_notes(NS(results={"cfr": NS(record=rec)}))
    assert "calibration set was empty (under both rules" in note
    assert "set CFR's calibration_errors" not in note  # auto already tried the cross-fit rule


def test_outcome_notes_are_the_records_outcome_lines_with_the_method_named():
    from clipcal.methods.cfr import outcome_lines

    rec = {"calibration_rule": {"used": "cross-fit", "why": "auto: the paper's rule gave a set that is not usable"},
           "calibration_set": {"size": 47, "by_class": {"landbird": 30, "waterbird": 17}},
           "selection": {"chosen": "cfr", "why": "highest validation worst-class accuracy",
                         "candidates": [{"model": "cfr", "label": "CFR epoch 12 (best of 1–100)"}]}}
    run = NS(results={"erm": NS(record={}), "cfr": NS(record=rec)})
    notes = views.outcome_notes(run)
    assert notes == [f"{views.method_label('cfr')} — {line}" for line in outcome_lines(rec)] and len(notes) == 2
    assert "47 images (landbird 30, waterbird 17)" in notes[0] and "CFR epoch 12" in notes[1]
    assert views.outcome_notes(run, only="erm") == []


def test_difficulty_label_and_note_carry_the_teaching_text_and_measured_effect():
    preset = {"name": "moderate", "default": False, "bird_scale_min": 0.28, "bird_scale_max": 0.45,
              "bird_opacity": 1.0, "teaching": "smaller birds: the class signal weakens",
              "measured": {"erm_worst_group": 0.725, "dfr_worst_group": 0.85, "seeds": [0, 1, 2],
                           "backbone": "bundled:efficientnet-lite0"}}
    assert views.difficulty_label(preset) == "moderate — ERM 0.72 · DFR 0.85 worst-group"
    note = views.difficulty_note(preset)
    assert note.startswith("Smaller birds: the class signal weakens. Birds 28%–45% of the image side, opaque.")
    assert "mean over seeds 0–2" in note and "ERM worst-group 0.725 (no group labels), DFR 0.850 (uses group " \
                                            "labels) — a 12-point gap" in note
    assert views.difficulty_label({**preset, "measured": None, "default": True}) == "moderate (default)"


# ---- AppTest on the seeded tiny store ----------------------------------------------------------------------
pytestmark_slow = pytest.mark.slow


def _texts(at) -> list[str]:
    return [el.value for kind in ("info", "caption", "markdown", "warning") for el in getattr(at, kind)]


@pytestmark_slow
@pytest.mark.parametrize("page", ["calibrate", "groups", "representations"])
def test_pages_that_show_cfr_show_its_outcome_lines(app, seeded_store, page):
    rec = seeded_store["run"].results["cfr"].record
    want = views.outcome_notes(seeded_store["run"], only="cfr")
    assert rec.get("calibration_rule") and len(want) == 2  # the seeded run was made by this CFR
    at = app(page, **{state.K_RUN: seeded_store["run_id"]})
    _no_exception(at)
    shown = _texts(at)
    for line in want:
        assert line in shown, (page, line)


@pytestmark_slow
def test_representations_leads_with_the_story_and_the_neighbourhood_purity(app, seeded_store):
    run, bench = seeded_store["run"], seeded_store["bench"]
    at = app("representations", **{state.K_RUN: seeded_store["run_id"]})
    _no_exception(at)
    fd = resources.run_feature_data(run, bench, seeded_store["backbone"])
    names = bench.group_names()
    expect = story.run_story(run, story.story_points(run, fd.class_names, names, "cfr"),
                             story.run_purity(run, fd, "cfr", names), "cfr")
    md = [m.value for m in at.markdown]
    assert f"**{expect.headline}**" in md
    assert any(expect.sentences[0] in m for m in md)
    purity = frame_with(at, "name", "purity_before", "purity_after", "change")
    assert list(purity["name"]) == list(expect.purity["name"])
    assert purity["change"].tolist() == pytest.approx(expect.purity["change"].tolist())
    # it leads: the story comes before the map's first control would put anything else on the page
    assert md.index(f"**{expect.headline}**") < min(i for i, m in enumerate(md) if m.startswith("#### "))


@pytestmark_slow
def test_demo_path_ends_on_the_story_of_its_run(app, seeded_store, monkeypatch):
    monkeypatch.setattr(pipeline, "demo_path", lambda *a, **k: "240 images embedded, 0 methods calibrated")
    at = app()
    at.button(key="home.run_demo").click().run()
    job = _wait_job(pipeline.demo_job_key(seeded_store["bench_spec"], seeded_store["backbone"]))
    assert job.status == "done", job.error_message
    at.run()
    _no_exception(at)
    newest = resources.runs_for(seeded_store["bench"], seeded_store["backbone"])[0]["id"]
    assert at.session_state[state.K_RUN] == newest  # the result pages now show the demo's run
    assert any(h.value == "What happened" for h in at.subheader)
    run, bench = resources.get_run(newest), seeded_store["bench"]
    fd, names = resources.run_feature_data(run, bench, seeded_store["backbone"]), bench.group_names()
    method = story.story_method(run)
    expect = story.run_story(run, story.story_points(run, fd.class_names, names, method),
                             story.run_purity(run, fd, method, names), method)
    md = [m.value for m in at.markdown]
    assert f"**{expect.headline}**" in md, [m[:200] for m in md]
    assert "\n".join(f"- {line}" for line in expect.sentences) in md


@pytestmark_slow
def test_data_page_difficulty_is_a_teaching_control_passed_as_the_demo_option(app):
    from clipcal.data.demo import DEFAULTS, difficulty_presets

    presets = difficulty_presets()
    at = app("data", **{state.K_BENCH: {"name": "demo", "root": None, "options": {"n_train": 8, "n_val": 4,
                                                                                    "n_test": 4, "seed": 11}}})
    _no_exception(at)
    sel = next(s for s in at.selectbox if s.label == "Difficulty")
    assert list(sel.options) == [views.difficulty_label(p) for p in presets]
    assert sel.value == DEFAULTS["difficulty"]
    assert views.difficulty_note(next(p for p in presets if p["default"])) in [c.value for c in at.caption]
    sel.set_value("easy").run()
    _no_exception(at)
    assert views.difficulty_note(presets[0]) in [c.value for c in at.caption]
    at.button(key="data.use").click().run()
    _no_exception(at)
    assert at.session_state[state.K_BENCH]["options"] == {"n_train": 8, "n_val": 4, "n_test": 4, "seed": 11,
                                                         "difficulty": "easy"}


@pytestmark_slow
def test_the_cli_report_says_what_cfr_did(seeded_store):
    """Sibling of the pages: `python -m clipcal report` prints CFR's outcome lines under their own heading."""
    from clipcal.commands.report import run_markdown

    run = seeded_store["run"]
    text = run_markdown(run)
    assert "## What CFR did" in text
    for line in run.results["cfr"].record["outcome"]:
        assert f"- cfr: {line}" in text
