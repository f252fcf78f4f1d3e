"""The dashboard shows what the library's fault fixes (issues 10 and 16) produce: a fix a user cannot see on the
page it concerns is not done. One test per item: the Embed page names the settings a checkpoint is run with and
lets the user name its pretrained configuration (10.1), says why nothing was embedded (10.7); the Calibrate page
checks packages and the store before a job (10.2, 10.8), keeps CFR's loss terms under "Advanced" with their
domains (10.6); result pages show CFR's loss and last layer and a failed method as failed (10.6); the Data page
reads a CSV as the benchmark does (10.4, 16.1), reports paths outside the root (10.9) and remembers how the files
were read; Home says what to do about an unusable store folder (10.8); the map's segments follow the embedding
change (16.3)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from clipcal import catalog, pipeline, views
from pages.ui import jobs, resources, state
from tests.fixtures_app import map_key


def _no_exception(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _frame(el) -> pd.DataFrame:
    v = el.value
    return v.data if hasattr(v, "data") and not isinstance(v, pd.DataFrame) else v


def _frames_with(at, *columns) -> list[pd.DataFrame]:
    return [f for f in map(_frame, at.dataframe) if all(c in f.columns for c in columns)]


def _ek(at, base: str) -> str:
    return state.choice_key(base, at.session_state[state.K_BACKBONE])


def _fk(at, base: str) -> str:
    return state.choice_key(base, catalog.spec_key(at.session_state[state.K_BENCH]))


def _texts(elements) -> list[str]:
    return [e.value for e in elements]


def _png_rows(root, n: int = 12, prefix: str = "img/") -> list[dict]:
    """``n`` rows of a tiny own-CSV benchmark (columns id, filename, split, y, a) with real PNGs under ``root``."""
    from PIL import Image

    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n):
        Image.fromarray(np.full((16, 16, 3), (k * 20) % 256, dtype=np.uint8)).save(root / "img" / f"{k}.png")
        rows.append({"id": f"i{k}", "filename": f"{prefix}{k}.png", "split": ("train", "val", "test")[k % 3],
                     "y": ("cat", "dog")[k % 2], "a": ("in", "out")[(k // 2) % 2]})
    return rows


def _fail_writes(monkeypatch, tmp_path):
    """Make the store unwritable as CLIPCAL_CACHE naming a file does: ``check_writable`` raises the library's own
    StoreError for that file (the session store itself stays intact for the other tests)."""
    from clipcal.paths import writable_dir
    from clipcal.store import Store

    blocker = tmp_path / "a-file-not-a-folder"
    blocker.write_text("x")
    monkeypatch.setattr(Store, "check_writable", lambda self: writable_dir(blocker))
    return blocker


# ---------------------------------------------------------------------------------------------------------
# 1. Embed: the pretrained configuration of a checkpoint file (issue 10.1), nothing embedded (10.7)
# ---------------------------------------------------------------------------------------------------------
def test_embed_names_the_settings_a_checkpoint_runs_with_and_warns_about_a_guess(app, tmp_path):
    """A checkpoint whose configuration is not named gets the guessed settings as a caption, the warning and the
    table of published configurations — before any model is loaded."""
    from clipcal.backbones import model_settings

    ck = tmp_path / "ViT-B-32.pt"
    ck.write_bytes(b"not loaded here")
    at = app("embed")
    at.radio(key=_ek(at, "embed.source")).set_value("local checkpoint").run()
    at.text_input(key=_ek(at, "embed.arch")).input("ViT-B-32").run()
    at.text_input(key=_ek(at, "embed.ckpt")).input(str(ck)).run()
    _no_exception(at)
    expect = model_settings(f"open_clip:ViT-B-32:{ck}")
    assert expect.warning
    assert f"Model settings: {expect.summary()}" in _texts(at.caption)
    assert expect.warning in _texts(at.warning)
    table = _frames_with(at, "tag", "activation", "used", "differs")[0]
    assert table["tag"].tolist() == expect.choices_table()["tag"].tolist()
    # the configuration select: "not named" first, then every tag of the arch and "default"
    sel = at.selectbox(key=_ek(at, "embed.ckpt_cfg"))
    assert sel.options[0] == "not named" and sel.options[1:] == expect.choices_table()["tag"].tolist()
    assert {"openai", "default", "laion2b_s34b_b79k"} <= set(sel.options)


def test_embed_naming_the_configuration_builds_the_at_tag_spec_and_silences_the_guess(app, tmp_path):
    ck = tmp_path / "my-weights.pt"
    ck.write_bytes(b"not loaded here")
    at = app("embed")
    at.radio(key=_ek(at, "embed.source")).set_value("local checkpoint").run()
    at.text_input(key=_ek(at, "embed.arch")).input("ViT-B-32").run()
    at.text_input(key=_ek(at, "embed.ckpt")).input(str(ck)).run()
    at.selectbox(key=_ek(at, "embed.ckpt_cfg")).set_value("laion2b_s34b_b79k").run()
    _no_exception(at)
    assert not at.warning  # named: nothing guessed
    assert any(c.startswith("Model settings: GELU") and "named in the spec" in c for c in _texts(at.caption))
    at.button(key="embed.use").click().run()
    _no_exception(at)
    spec = at.session_state[state.K_BACKBONE]
    assert spec == f"open_clip:ViT-B-32@laion2b_s34b_b79k:{ck}"
    # the form reopens on the named configuration
    assert at.selectbox(key=_ek(at, "embed.ckpt_cfg")).value == "laion2b_s34b_b79k"


def test_embed_shows_the_stored_sets_model_settings_and_the_jobs_one_line_result(app, seeded_embeddings):
    emb = seeded_embeddings["emb"]
    recorded = emb.manifest["meta"].get("model_settings")
    assert recorded is not None  # embedded by this version
    at = app("embed")
    _no_exception(at)
    line = views.model_settings_line(recorded)
    assert line.startswith("Model settings: GELU") and line in _texts(at.caption)
    # an old set (no record) says so instead of inventing settings
    assert views.model_settings_line(None) == \
        "Model settings: not recorded (embedded by an older version of clipcal)"
    # the job's result is EmbeddingSet.summary(): what this call embedded, not table rows walked
    at.button(key="embed.start").click().run()
    job = resources.get_jobs().get(pipeline.embed_job_key(seeded_embeddings["bench_spec"], "tiny:clip"))
    assert job is not None and job.wait(120) and job.status == "done", job.error_message
    at.run()
    _no_exception(at)
    assert f"Embedding finished: {job.result.summary()}." in _texts(at.success)
    assert job.result.summary() == "already embedded: 240 images from the store"


def test_embed_job_that_embedded_nothing_lists_every_rows_reason(app, tmp_path):
    """All images missing: the job fails with NothingEmbeddedError; the page shows its message and the table of
    every skipped row (the message names only three)."""
    from clipcal.embed import NothingEmbeddedError

    root = tmp_path / "gone"
    rows = _png_rows(root, n=6)
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    for p in (root / "img").iterdir():
        p.unlink()
    spec = {"name": "csv", "root": str(root), "options": {}}
    at = app("embed", **{state.K_BENCH: spec})
    _no_exception(at)
    at.button(key="embed.start").click().run()
    job = resources.get_jobs().get(pipeline.embed_job_key(spec, "tiny:clip"))
    assert job is not None and job.wait(120)
    assert job.status == "failed" and isinstance(job.error, NothingEmbeddedError)
    at.run()
    _no_exception(at)
    assert any("no image could be embedded" in e for e in _texts(at.error))
    skipped = _frames_with(at, "sample_id", "reason")[-1]
    assert sorted(skipped["sample_id"]) == sorted(r["id"] for r in rows)
    assert skipped["reason"].str.len().min() > 0


def test_embed_job_is_refused_up_front_by_an_unwritable_store(app, seeded_embeddings, monkeypatch, tmp_path):
    blocker = _fail_writes(monkeypatch, tmp_path)
    at = app("embed")
    before = resources.get_jobs().get(pipeline.embed_job_key(seeded_embeddings["bench_spec"], "tiny:clip"))
    at.button(key="embed.start").click().run()
    _no_exception(at)
    assert any(str(blocker) in e and "CLIPCAL_CACHE" in e for e in _texts(at.error)), _texts(at.error)
    assert resources.get_jobs().get(pipeline.embed_job_key(seeded_embeddings["bench_spec"], "tiny:clip")) is before


# ---------------------------------------------------------------------------------------------------------
# 2. Calibrate: packages and store checked first (10.2, 10.8); CFR's loss terms under "Advanced" (10.6)
# ---------------------------------------------------------------------------------------------------------
def test_calibrate_names_a_missing_package_before_any_job(app, seeded_store, monkeypatch):
    """scikit-learn absent (``sys.modules[name] = None`` counts as absent): choosing DFR is refused with the pip
    package named, as a message, and no job starts."""
    import sys

    bench_spec, spec = seeded_store["bench_spec"], seeded_store["backbone"]
    before = resources.get_jobs().get(pipeline.calib_job_key(bench_spec, spec))
    at = app("calibrate")
    at.multiselect(key="calib.methods").set_value(["erm", "dfr"]).run()
    monkeypatch.setitem(sys.modules, "sklearn", None)
    at.button(key="calib.start").click().run()
    _no_exception(at)
    assert any("scikit-learn" in e for e in _texts(at.error)), _texts(at.error)
    assert resources.get_jobs().get(pipeline.calib_job_key(bench_spec, spec)) is before


def test_calibrate_is_refused_up_front_by_an_unwritable_store(app, seeded_store, monkeypatch, tmp_path):
    bench_spec, spec = seeded_store["bench_spec"], seeded_store["backbone"]
    before = resources.get_jobs().get(pipeline.calib_job_key(bench_spec, spec))
    blocker = _fail_writes(monkeypatch, tmp_path)
    at = app("calibrate")
    at.multiselect(key="calib.methods").set_value(["erm"]).run()
    at.button(key="calib.start").click().run()
    _no_exception(at)
    assert any(str(blocker) in e for e in _texts(at.error)), _texts(at.error)
    assert resources.get_jobs().get(pipeline.calib_job_key(bench_spec, spec)) is before


def test_calibrate_cfr_loss_terms_are_under_advanced_with_their_domains(app, seeded_store):
    from clipcal.methods.cfr import CFR, LOSS_TERMS
    from clipcal.methods.params import bounds_of, describe

    at = app("calibrate")
    _no_exception(at)
    labels = [e.label for e in at.expander]
    adv = [e for e in at.expander if e.label == f"{CFR.label} — Advanced: loss terms and their weights"]
    assert adv, labels
    inside = adv[0]
    # switch then weight per term, in LOSS_TERMS order, inside "Advanced" (and only there)
    assert [c.key for c in inside.checkbox] == [f"calib.hp.cfr.{t}" for t in LOSS_TERMS]
    assert [n.key for n in inside.number_input] == [f"calib.hp.cfr.w_{t}" for t in LOSS_TERMS]
    main = next(e for e in at.expander if e.label.startswith(f"{CFR.label} — hyperparameters"))
    assert not {f"calib.hp.cfr.{t}" for t in LOSS_TERMS} & {c.key for c in main.checkbox}
    for t in LOSS_TERMS:
        w = at.number_input(key=f"calib.hp.cfr.w_{t}")
        assert (w.min, w.max) == tuple(None if b is None else float(b)
                                       for b in bounds_of(CFR.PARAM_CONSTRAINTS, f"w_{t}")) == (0.0, None)
        assert describe(CFR.PARAM_CONSTRAINTS[f"w_{t}"]) in w.help
    # every number input of every method takes its bounds from the declared domain
    epochs = at.number_input(key="calib.hp.erm.epochs")
    assert epochs.min == 1 and "whole number" in epochs.help
    # the loss as the run will record it; CE off → gone from the formula
    formula = CFR().loss_terms()["formula"]
    assert f"Stage-2 loss: {formula}" in _texts(inside.caption)
    at.checkbox(key="calib.hp.cfr.ce").uncheck().run()
    _no_exception(at)
    assert f"Stage-2 loss: {CFR(ce=False).loss_terms()['formula']}" in _texts(at.caption)
    assert "CE(" not in CFR(ce=False).loss_terms()["formula"]


def test_calibrate_weight_outside_its_domain_is_refused_before_a_job(app, seeded_store):
    """w_ce = 0 passes the widget (its interval is open at 0) and is refused by the declared domain, as a message,
    with no job and no run stored."""
    bench_spec, spec = seeded_store["bench_spec"], seeded_store["backbone"]
    before = len(resources.runs_for(seeded_store["bench"], spec))
    at = app("calibrate")
    at.multiselect(key="calib.methods").set_value(["cfr"]).run()
    at.number_input(key="calib.hp.cfr.w_ce").set_value(0.0).run()
    at.button(key="calib.start").click().run()
    _no_exception(at)
    assert any("cfr.w_ce must be" in e for e in _texts(at.error)), _texts(at.error)
    job = resources.get_jobs().get(pipeline.calib_job_key(bench_spec, spec))
    assert job is None or not job.is_running
    assert len(resources.runs_for(seeded_store["bench"], spec)) == before


# ---------------------------------------------------------------------------------------------------------
# 3. Result pages: CFR's loss and last layer; a failed method shown as failed (10.6)
# ---------------------------------------------------------------------------------------------------------
def test_groups_shows_cfrs_loss_formula_and_last_layer(app, seeded_store):
    rec = seeded_store["run"].results["cfr"].record
    at = app("groups", **{state.K_RUN: seeded_store["run_id"]})
    _no_exception(at)
    table = _frames_with(at, "loss terms", "last layer", "status")[0]
    row = table[table["method"] == views.method_label("cfr")].iloc[0]
    assert row["loss terms"] == rec["loss_terms"]["formula"] and row["last layer"] == rec["last_layer"]
    assert rec["loss_terms"]["formula"] and rec["last_layer"]
    assert f"**{views.method_label('cfr')}** — loss: {rec['loss_terms']['formula']} · last layer: " \
           f"{rec['last_layer']}" in _texts(at.caption)


def test_a_failed_method_is_shown_as_failed_with_what_to_change_never_as_a_number(app, seeded_store, monkeypatch):
    run = resources.get_run(seeded_store["run_id"])
    msg = ("the training loss became nan at cfr epoch 3; training stopped and nothing was kept (the learning rate "
           "is probably too large (lr = 1e+09): try one 10× smaller)")
    # the run as run_calibration stores a method that failed: no result, its status, a metrics row without numbers
    results = {m: r for m, r in run.results.items() if m != "cfr"}
    metrics = run.metrics[run.metrics["method"] != "cfr"]
    failed_row = {"method": "cfr", "label": views.method_label("cfr"), "split": "val", "status": f"failed: {msg}"}
    metrics = pd.concat([metrics, pd.DataFrame([failed_row])], ignore_index=True)
    monkeypatch.setattr(run, "results", results)
    monkeypatch.setattr(run, "metrics", metrics)
    monkeypatch.setattr(run, "not_applicable", {**run.not_applicable, "cfr": f"failed: {msg}"})
    for page in ("groups", "calibrate"):
        at = app(page, **{state.K_RUN: seeded_store["run_id"]})
        _no_exception(at)
        assert f"{views.method_label('cfr')} failed: {msg}" in _texts(at.error), page
        assert not any("not applicable: failed" in c for c in _texts(at.caption)), page
    metrics = _frames_with(at, "worst_group")  # Calibrate's table: CFR's cells hold no number
    at = app("groups", **{state.K_RUN: seeded_store["run_id"]})
    shown = _frames_with(at, "worst_group")[0]
    assert views.method_label("cfr") not in set(shown["label"])
    records = _frames_with(at, "loss terms", "status")[0]
    failed = records[records["method"] == views.method_label("cfr")]
    assert failed["status"].tolist() == [f"failed: {msg}"]
    for table in metrics:
        cfr = table[table["label"] == views.method_label("cfr")]
        assert cfr[list(views.METRIC_COLUMNS)].isna().all().all()


def test_failed_methods_are_told_apart_from_methods_that_do_not_apply():
    from types import SimpleNamespace as NS

    run = NS(results={"erm": NS(record={})}, not_applicable={
        "zeroshot": "not applicable: the backbone has no text tower",
        "cfr": "failed: the training loss became nan (try a smaller lr)"})
    assert views.failed_methods(run) == {"cfr": "the training loss became nan (try a smaller lr)"}
    assert views.failed_notes(run) == [f"{views.method_label('cfr')} failed: the training loss became nan "
                                       "(try a smaller lr)"]
    assert views.not_applicable_notes(run) == [f"{views.method_label('zeroshot')} — not applicable: the backbone "
                                               "has no text tower"]
    assert pipeline.calibration_summary(run, ["zeroshot", "erm", "cfr"]) == (
        "1 of 3 methods ran; failed: cfr: the training loss became nan (try a smaller lr); not applicable: "
        "zeroshot: not applicable: the backbone has no text tower")
    rec = views.records_table(run)
    assert rec["status"].tolist() == ["ran", "failed: the training loss became nan (try a smaller lr)"]
    assert list(rec.columns) == views.RECORD_COLUMNS
    assert list(views.records_table(NS(results={}, not_applicable={})).columns) == views.RECORD_COLUMNS


# ---------------------------------------------------------------------------------------------------------
# 4. Data: the CSV as the benchmark reads it (10.4, 16.1); outside the root (10.9); reopening keeps both
# ---------------------------------------------------------------------------------------------------------
def test_data_preview_reads_utf16_and_semicolon_csvs_as_the_benchmark_does(app, tmp_path):
    root = tmp_path / "enc"
    rows = _png_rows(root)
    rows[0]["y"] = "None"  # a real category, never a missing value
    df = pd.DataFrame(rows)
    (root / "utf16.csv").write_bytes(df.to_csv(index=False, sep="\t").encode("utf-16"))
    (root / "semi.csv").write_text(df.to_csv(index=False, sep=";"), encoding="cp1252")
    at = app("data")
    at.selectbox(key=_fk(at, "data.name")).set_value("csv").run()
    at.text_input(key=_fk(at, "data.csv_root")).input(str(root)).run()
    for name in ("utf16.csv", "semi.csv"):
        at.text_input(key=_fk(at, "data.csv_path")).input(name).run()
        _no_exception(at)
        head = _frames_with(at, "id", "filename", "split", "y", "a")
        assert head, name
        assert head[0]["id"].tolist() == [r["id"] for r in rows[:5]] and head[0]["y"].iloc[0] == "None"
        assert at.selectbox(key=map_key(at, 'y_col')).options == ["id", "filename", "split", "y", "a"]
    # a cp1252 file with a non-ASCII cell: the guess is said under the preview
    rows[1]["a"] = "café"
    (root / "latin.csv").write_bytes(pd.DataFrame(rows).to_csv(index=False).encode("cp1252"))
    at.text_input(key=_fk(at, "data.csv_path")).input("latin.csv").run()
    _no_exception(at)
    from clipcal.data.csvdata import read_metadata

    notes = read_metadata(root / "latin.csv", "csv").attrs["notes"]
    assert notes and all(n in _texts(at.caption) for n in notes)
    assert "café" in _frames_with(at, "id", "a")[0]["a"].tolist()


def test_data_form_sets_encoding_and_outside_root_and_validation_lists_them(app, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    root = tmp_path / "own"
    rows = _png_rows(root)
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "elsewhere" / "x.png")
    rows[0]["filename"] = "../elsewhere/x.png"
    (root / "metadata.csv").write_bytes(pd.DataFrame(rows).to_csv(index=False, sep="\t").encode("utf-16"))
    at = app("data")
    at.selectbox(key=_fk(at, "data.name")).set_value("csv").run()
    at.text_input(key=_fk(at, "data.csv_root")).input(str(root)).run()
    _no_exception(at)
    assert any(c.startswith("Off by default: a dashboard may be shared by a team") for c in _texts(at.caption))
    at.text_input(key=_fk(at, "data.encoding.csv")).input("utf-16").run()
    at.checkbox(key=_fk(at, "data.outside.csv")).check().run()
    at.button(key="data.use").click().run()
    _no_exception(at)
    opts = at.session_state[state.K_BENCH]["options"]
    assert opts["encoding"] == "utf-16" and opts["allow_outside_root"] is True
    # the form reopens on them (new keys: they follow the current benchmark)
    assert at.text_input(key=_fk(at, "data.encoding.csv")).value == "utf-16"
    assert at.checkbox(key=_fk(at, "data.outside.csv")).value is True
    at.button(key="data.validate").click().run()
    _no_exception(at)
    assert any(m.startswith("**outside the root** (1)") for m in _texts(at.markdown)), _texts(at.markdown)
    out = _frames_with(at, "sample_id", "path", "resolved", "reason")[0]
    assert out["sample_id"].tolist() == ["i0"] and out["path"].tolist() == ["../elsewhere/x.png"]


def test_reopened_csv_benchmark_keeps_its_encoding_and_outside_root_permission(tmp_path):
    """The benchmark spec rebuilt from an embeddings manifest reads the files as they were read: without
    ``encoding`` a UTF-16 file is detected again (or a cp1252 one mis-guessed), without ``allow_outside_root`` the
    benchmark could not be reopened at all."""
    from clipcal.data import load_benchmark
    from PIL import Image

    (tmp_path / "elsewhere").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "elsewhere" / "x.png")
    root = tmp_path / "own"
    rows = _png_rows(root)
    rows[0]["filename"] = "../elsewhere/x.png"
    (root / "metadata.csv").write_bytes(pd.DataFrame(rows).to_csv(index=False).encode("utf-16"))
    bench = load_benchmark("csv", str(root), encoding="utf-16", allow_outside_root=True)
    spec = catalog.bench_spec_from_meta({"benchmark": bench.describe()})
    assert spec["options"]["encoding"] == "utf-16" and spec["options"]["allow_outside_root"] is True
    again = load_benchmark(spec["name"], spec["root"], **spec["options"])
    assert again.fingerprint() == bench.fingerprint()
    # not set → not written (the defaults stay implicit)
    plain = tmp_path / "plain"
    pd.DataFrame(_png_rows(plain)).to_csv(plain / "metadata.csv", index=False)
    opts = catalog.bench_spec_from_meta({"benchmark": load_benchmark("csv", str(plain)).describe()})["options"]
    assert "encoding" not in opts and "allow_outside_root" not in opts


# ---------------------------------------------------------------------------------------------------------
# 5. Home: an unusable store folder is a message with what to do (10.8)
# ---------------------------------------------------------------------------------------------------------
def test_home_store_folder_that_is_a_file_is_a_message_with_what_to_do(app, monkeypatch, tmp_path):
    bad = tmp_path / "cache-is-a-file"
    bad.write_text("x")
    at = app("home")
    monkeypatch.setenv("CLIPCAL_CACHE", str(bad))
    at.run()
    _no_exception(at)
    assert any(e.startswith(f"Store folder `{bad}` cannot be used") for e in _texts(at.error)), _texts(at.error)
    assert any("CLIPCAL_CACHE" in i and "restart" in i for i in _texts(at.info)), _texts(at.info)


# ---------------------------------------------------------------------------------------------------------
# 6. Representations: before→after segments follow the embedding change (16.3)
# ---------------------------------------------------------------------------------------------------------
def test_overlay_segments_are_ordered_by_the_embedding_change(app, seeded_store, monkeypatch, tmp_path):
    import clipcal.figures

    seen = []
    real = clipcal.figures.umap_figure

    def spy(points, **kw):
        seen.append(kw.get("line_order"))
        return real(points, **kw)

    monkeypatch.setattr(clipcal.figures, "umap_figure", spy)
    resources.forget("umap_fig")
    at = app("representations", **{state.K_RUN: seeded_store["run_id"]})
    at.radio(key="repr.layout").set_value("overlaid").run()
    _no_exception(at)
    assert seen and set(seen) == {"cos_change"}
    # the projection job, when one is needed, is refused up front by an unwritable store
    monkeypatch.setattr(pipeline, "stored_projection", lambda *a, **k: None)
    blocker = _fail_writes(monkeypatch, tmp_path)
    resources.forget("umap")
    at = app("representations", **{state.K_RUN: seeded_store["run_id"]})
    _no_exception(at)
    assert any(str(blocker) in e for e in _texts(at.error)), _texts(at.error)
    assert resources.get_jobs().get(pipeline.umap_job_key(seeded_store["run_id"], "cfr")) is None \
        or not resources.get_jobs().get(pipeline.umap_job_key(seeded_store["run_id"], "cfr")).is_running
