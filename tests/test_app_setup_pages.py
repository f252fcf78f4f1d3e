"""AppTest of the set-up pages (Home, Data, Embed) over the seeded store: widgets present, tables right,
jobs complete, core errors shown as messages (st.error), never exceptions."""

from __future__ import annotations

import time

from pathlib import Path

import pandas as pd

from clipcal import catalog, pipeline, process, views
from pages.ui import jobs, resources, state
from tests.fixtures_app import map_key

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def _no_exception(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _wait_job(key: str, timeout: float = 120):
    job = resources.get_jobs().get(key)
    assert job is not None, f"no job {key}"
    assert job.wait(timeout), f"job {key} still running after {timeout} s"
    return job


def _frame(el) -> pd.DataFrame:
    v = el.value
    return v.data if hasattr(v, "data") and not isinstance(v, pd.DataFrame) else v


def frame_with(at, *columns) -> pd.DataFrame:
    """The first st.dataframe on the page holding all ``columns`` (AppTest does not expose their keys)."""
    for el in at.dataframe:
        f = _frame(el)
        if all(col in f.columns for col in columns):
            return f
    raise AssertionError(f"no dataframe with columns {columns}: {[list(_frame(e).columns) for e in at.dataframe]}")


def sb(at, label: str):
    """The sidebar selectbox labelled ``label`` (its key carries a hash of the current choice)."""
    found = [w for w in at.sidebar.selectbox if w.label == label]
    assert found, f"no sidebar selectbox {label!r}"
    return found[0]


def fk(at, base: str) -> str:
    """Key of a Data page form field: ``base`` + a hash of the current benchmark (pages/data.py)."""
    return state.choice_key(base, catalog.spec_key(at.session_state[state.K_BENCH]))


def ek(at, base: str) -> str:
    """Key of an Embed page form field: ``base`` + a hash of the current backbone (pages/embed.py)."""
    return state.choice_key(base, at.session_state[state.K_BACKBONE])


def count(at, element: str) -> int:
    """How many elements of a type (e.g. "Image") the main area holds."""
    return sum(type(e).__name__ == element for e in at.main)


def test_home_lists_store_and_offers_demo_path(app, seeded_store):
    at = app()
    _no_exception(at)
    assert at.title[0].value.startswith("clipcal")
    assert any(b.label.startswith("▶ Run the demo path") for b in at.button)
    emb = frame_with(at, "benchmark", "backbone", "images")
    row = emb[(emb["backbone"] == "tiny:clip") & (emb["benchmark"] == "demo")]
    assert len(row) >= 1 and int(row["images"].iloc[0]) == seeded_store["n_samples"] == 240
    runs = frame_with(at, "benchmark", "backbone", "methods")
    assert (runs["backbone"] == "tiny:clip").any()
    assert any(set(seeded_store["methods"]) == set(m.split(", ")) for m in runs["methods"])
    # the sidebar shares the current benchmark / backbone
    assert sb(at, "Backbone").value == "tiny:clip"


def test_new_session_opens_newest_embedding_in_store(seeded_embeddings):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120)
    at.run()  # no state set: init_state reads the store
    _no_exception(at)
    # the session store is shared with other tests: the newest reopenable entry need not be the seeded one
    emb = catalog.embeddings_table(resources.get_store())
    newest = emb[emb["bench_spec"].notna()].iloc[0]
    assert at.session_state[state.K_BACKBONE] == newest["backbone"]
    assert at.session_state[state.K_BENCH]["name"] == newest["benchmark"]
    assert resources.load_bench(at.session_state[state.K_BENCH]).fingerprint() == newest["fingerprint"]


def test_data_page_counts_grid_and_validation(app, seeded_embeddings):
    at = app("data")
    _no_exception(at)
    bench = seeded_embeddings["bench"]
    counts = frame_with(at, "train", "val", "test", "total")
    assert list(counts.columns) == ["train", "val", "test", "total"]
    expect = bench.group_counts()
    for split in ("train", "val", "test"):
        assert counts[split].tolist() == expect[expect["split"] == split]["n"].tolist()
    assert counts["train"].tolist() == [57, 3, 3, 57]
    assert counts["total"].sum() == 240
    # sample grid: up to 6 train images per group (the two minority groups hold only 3)
    assert count(at, "Image") == 6 + 3 + 3 + 6
    at.button(key="data.validate").click().run()
    _no_exception(at)
    assert any("no problems" in s.value.lower() or "readable" in s.value.lower() for s in at.success)


def test_data_page_own_csv_with_column_mapping(app, tmp_path):
    from tests.fixtures_data import make_csv_dataset

    rows = [{"image_id": f"i{k}", "file": f"img/{k}.jpg", "part": ("train", "val", "test")[k % 3],
             "label": ("cat", "dog")[k % 2], "place": ("in", "out")[(k // 2) % 2]} for k in range(24)]
    make_csv_dataset(tmp_path / "mine", rows, csv_name="meta.csv")
    at = app("data")
    at.selectbox(key=fk(at, "data.name")).set_value("csv").run()
    at.text_input(key=fk(at, "data.csv_root")).input(str(tmp_path / "mine")).run()
    at.text_input(key=fk(at, "data.csv_path")).input("meta.csv").run()
    _no_exception(at)
    # the mapping is offered over the CSV's own columns
    assert at.selectbox(key=map_key(at, 'id_col')).options == ["image_id", "file", "part", "label", "place"]
    _map_own_csv(at)
    at.button(key="data.use").click().run()
    _no_exception(at)
    assert at.session_state[state.K_BENCH]["name"] == "csv"
    counts = frame_with(at, "train", "val", "test", "total")
    assert counts["total"].sum() == 24
    assert list(counts.index) == ["cat / in", "cat / out", "dog / in", "dog / out"]


def test_data_page_core_errors_are_messages(app, tmp_path, monkeypatch):
    at = app("data")
    at.selectbox(key=fk(at, "data.name")).set_value("waterbirds").run()
    at.text_input(key=fk(at, "data.root.waterbirds")).input(str(tmp_path / "nowhere")).run()
    at.button(key="data.use").click().run()
    _no_exception(at)
    assert at.error and "waterbirds" in at.error[0].value.lower()
    # missing demo assets: the page gives the apt-get command
    import clipcal.data

    monkeypatch.setattr(clipcal.data, "demo_assets_status", lambda: {
        "ok": False, "missing_packages": ["mate-backgrounds"], "missing_files": ["/x.jpg"],
        "install_command": "sudo apt-get install -y mate-backgrounds", "present": [], "licences": {}})
    at2 = app("data")
    _no_exception(at2)
    assert any("mate-backgrounds" in e.value for e in at2.error)
    assert any("apt-get install -y mate-backgrounds" in cd.value for cd in at2.code)


def test_embed_page_summary_and_job(app, seeded_embeddings):
    at = app("embed")
    _no_exception(at)
    emb = seeded_embeddings["emb"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["images"] == "240" and metrics["text tower"] == "yes"
    assert metrics["embedding dim e"] == str(emb.embeddings.shape[1])
    assert {s.label for s in at.selectbox} >= {"Device", "Precision"}
    # re-running the job reads the finished store entry: it completes and the summary stays
    at.button(key="embed.start").click().run()
    key = pipeline.embed_job_key(seeded_embeddings["bench_spec"], "tiny:clip")
    job = _wait_job(key)
    assert job.status == "done", job.error_message
    assert len(job.result.sample_ids) == 240 and job.result.n_computed == 0
    at.run()
    _no_exception(at)
    assert any("Embedded **240** images" in s.value for s in at.success)


def test_embed_page_failed_job_shows_core_error(app, seeded_embeddings):
    at = app("embed")
    at.radio(key=ek(at, "embed.source")).set_value("type a spec").run()
    at.text_input(key=ek(at, "embed.spec")).input("open_clip:NoSuchArch:nothing").run()
    at.button(key="embed.use").click().run()
    _no_exception(at)
    assert at.session_state[state.K_BACKBONE] == "open_clip:NoSuchArch:nothing"
    at.button(key="embed.start").click().run()
    job = _wait_job(pipeline.embed_job_key(seeded_embeddings["bench_spec"], "open_clip:NoSuchArch:nothing"))
    assert job.status == "failed"
    t0 = time.monotonic()
    at.run()
    _no_exception(at)
    assert any("NoSuchArch" in e.value for e in at.error), [e.value for e in at.error]
    assert time.monotonic() - t0 < 30
    # nothing of the seeded store was lost
    from clipcal.embed import load_embeddings

    assert load_embeddings(seeded_embeddings["bench"], "tiny:clip") is not None


def test_home_demo_path_runs_as_a_job(app, seeded_embeddings, monkeypatch):
    """The "Run the demo path" button walks benchmark → embed → calibrate in one background job (here with
    ERM only, so it is quick) and then links every page."""
    real = pipeline.demo_path
    stages = []

    def quick(bench_spec, spec, methods=None, progress=None, cancel=None):
        def spy(*a, **k):
            stages.append(k.get("message") or (a[2] if len(a) > 2 else ""))
            return progress(*a, **k)

        return real(bench_spec, spec, methods=["erm"], progress=spy, cancel=cancel)

    monkeypatch.setattr(pipeline, "demo_path", quick)
    at = app()
    at.button(key="home.run_demo").click().run()
    job = _wait_job(pipeline.demo_job_key(seeded_embeddings["bench_spec"], "tiny:clip"), timeout=300)
    assert job.status == "done", job.error_message
    assert job.result.startswith("240 images embedded, 1 methods calibrated (erm)")
    assert any(s.startswith("2/3 embedding") for s in stages) and any(s.startswith("3/3 calibrating")
                                                                       for s in stages)
    at.run()
    _no_exception(at)
    assert any("Demo path finished" in s.value for s in at.success)
    assert len(at.get("page_link")) >= 6


def test_data_page_generates_a_missing_demo(app):
    spec = {"name": "demo", "root": None, "options": {"n_train": 8, "n_val": 4, "n_test": 4, "seed": 11}}
    at = app("data", **{state.K_BENCH: spec})
    _no_exception(at)
    assert any("generated on this machine" in i.value for i in at.info)
    at.button(key="data.build").click().run()
    job = _wait_job(pipeline.demo_build_key(spec["options"]))
    assert job.status == "done", job.error_message
    at.run()
    _no_exception(at)
    counts = frame_with(at, "train", "val", "test", "total")
    assert counts["total"].sum() == 16 and counts["train"].sum() == 8


def test_embed_page_open_clip_list_shows_weight_status(app):
    at = app("embed")
    at.radio(key=ek(at, "embed.source")).set_value("open_clip list").run()
    _no_exception(at)
    table = frame_with(at, "spec", "arch", "tag", "has_text", "status")
    assert {"bundled:efficientnet-lite0", "tiny:clip", "open_clip:ViT-B-32:openai"} <= set(table["spec"])
    # tests run with HF_HUB_OFFLINE=1 and an empty hub cache: hub weights are unavailable, and the page says
    # what to do when one of them is picked
    assert table.set_index("spec").loc["open_clip:ViT-B-32:openai", "status"] == "unavailable offline"
    at.selectbox(key=ek(at, "embed.pick")).set_value("open_clip:ViT-B-32:openai").run()
    assert any("local checkpoint" in w.value for w in at.warning)


def _png_csv_dataset(root, n: int = 24, csv_name: str = "meta.csv"):
    """A small own-CSV dataset of real PNGs (PIL) under ``root``; returns the CSV path."""
    import numpy as np
    from PIL import Image

    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n):
        px = np.full((16, 16, 3), (k * 10) % 256, dtype=np.uint8)
        Image.fromarray(px).save(root / "img" / f"{k}.png")
        rows.append({"image_id": f"i{k}", "file": f"img/{k}.png", "part": ("train", "val", "test")[k % 3],
                     "label": ("cat", "dog")[k % 2], "place": ("in", "out")[(k // 2) % 2]})
    pd.DataFrame(rows).to_csv(root / csv_name, index=False)
    return root / csv_name


def _map_own_csv(at) -> None:
    """Map the columns of :func:`_png_csv_dataset`'s meta.csv on the Data page (id, file, split, label, place)."""
    for key, col in (("id_col", "image_id"), ("path_col", "file"), ("split_col", "part"), ("y_col", "label"),
                     ("a_col", "place")):
        at.selectbox(key=map_key(at, key)).set_value(col)
    at.run()


def test_use_this_benchmark_sticks_after_rerun(app, tmp_path):
    """Regression: the sidebar's "sb.bench" kept the old choice and switched back to the demo on the rerun."""
    _png_csv_dataset(tmp_path / "own")
    at = app("data")
    at.selectbox(key=fk(at, "data.name")).set_value("csv").run()
    at.text_input(key=fk(at, "data.csv_root")).input(str(tmp_path / "own")).run()
    at.text_input(key=fk(at, "data.csv_path")).input("meta.csv").run()
    _map_own_csv(at)
    at.button(key="data.use").click().run()
    at.run()
    at.run()
    _no_exception(at)
    cur = at.session_state[state.K_BENCH]
    assert cur["name"] == "csv" and cur["root"] == str(tmp_path / "own")
    assert frame_with(at, "train", "val", "test", "total")["total"].sum() == 24




def test_data_page_shows_the_active_csv_benchmarks_own_mapping(app, tmp_path):
    """Regression: reopened (from Home, or after leaving the page), the mapping form showed guesses — the
    attribute column 'place' as well as '(none)' — and "Use this benchmark" then dropped the class names."""
    _png_csv_dataset(tmp_path / "own")
    root = str(tmp_path / "own")
    spec = {"name": "csv", "root": root, "options": {
        "csv": "meta.csv", "id_col": "file", "path_col": "file", "split_col": "part", "y_col": "label",
        "class_names": ["a cat", "a dog"]}}  # no attribute column, ids = file names
    at = app("data", **{state.K_BENCH: spec})
    _no_exception(at)
    got = {k: at.selectbox(key=map_key(at, k)).value
           for k in ("id_col", "path_col", "split_col", "y_col", "a_col")}
    assert got == {"id_col": "file", "path_col": "file", "split_col": "part", "y_col": "label", "a_col": "(none)"}
    assert not [b for b in at.button if b.key == "data.use"]  # nothing changed: nothing to apply
    # changing one column keeps the options the form does not show
    at.selectbox(key=map_key(at, 'a_col')).set_value("place").run()
    at.button(key="data.use").click().run()
    _no_exception(at)
    assert at.session_state[state.K_BENCH]["options"] == {**spec["options"], "a_col": "place"}


def test_own_csv_embeddings_are_told_apart_by_file_and_folder(tmp_path):
    """Regression: Home and the sidebar listed every own-CSV embedding set as plain "csv"."""
    metas = [{"benchmark": {"name": "csv", "params": {
        "csv": str(tmp_path / d / "meta.csv"), "image_dir": str(tmp_path / d),
        "columns": {"id": "image_id", "path": "file", "split": "part", "y": "label", "a": None}}}}
        for d in ("birds", "cells")]
    labels = [catalog.source_label(m) for m in metas]
    assert labels == [f"meta.csv in {tmp_path / 'birds'}", f"meta.csv in {tmp_path / 'cells'}"]
    specs = [catalog.bench_spec_from_meta(m) for m in metas]
    assert specs[0] == {"name": "csv", "root": str(tmp_path / "birds"), "options": {
        "csv": str(tmp_path / "birds" / "meta.csv"), "image_dir": str(tmp_path / "birds"), "id_col": "image_id",
        "path_col": "file", "split_col": "part", "y_col": "label"}}
    assert catalog.bench_label(specs[0]) != catalog.bench_label(specs[1])
    assert catalog.bench_label(specs[1]) == f"csv — meta.csv in {tmp_path / 'cells'}"
    assert catalog.source_label({"benchmark": {"name": "demo", "params": {"n_train": 8}}}) == ""


def test_sidebar_job_line_names_the_stage_and_its_own_count():
    """Regression: the demo path's sidebar bar went 17 % → 48 % → 8 % (each stage restarts its count)."""
    from types import SimpleNamespace as NS

    job = NS(label="Run the demo", progress=NS(done=896, total=2400, message="2/3 embedding: 12.5 images/s"))
    assert views.job_short_line(job) == "Run the demo — 2/3 embedding 896/2,400"
    job.progress = NS(done=3, total=6, message="3/3 calibrating: cfr")
    assert views.job_short_line(job) == "Run the demo — 3/3 calibrating 3/6"
    job.progress = NS(done=0, total=None, message="loading tiny:clip")
    assert views.job_short_line(job) == "Run the demo — loading tiny:clip"


def test_demo_build_counts_the_demo_path_job_as_building():
    """Regression: "Generate the demo images" stayed enabled while Home's demo-path job built that demo."""
    import threading

    opts = {"n_train": 16, "n_val": 8, "n_test": 8, "seed": 123}
    release = threading.Event()

    def worker(progress=None, cancel=None):
        release.wait(30)
        return "done"

    assert jobs.demo_building_job(opts) is None
    spec = {"name": "demo", "root": None, "options": dict(opts)}
    job = resources.get_jobs().submit(pipeline.demo_job_key(spec, "tiny:clip"), worker, label="Run the demo")
    try:
        found = jobs.demo_building_job(opts)
        assert found is not None and found.key == job.key
        assert jobs.demo_building_job({**opts, "seed": 124}) is None  # another demo is not being built
    finally:
        release.set()
        assert job.wait(30)
    assert jobs.demo_building_job(opts) is None


def test_csv_manifest_column_mapping_reopens():
    """A csv entry's column mapping, as Benchmark.describe() records it, is read back (a stringified mapping
    raised AttributeError and emptied Home's store tables)."""
    import pandas as pd

    from clipcal.data.base import Benchmark

    table = pd.DataFrame({"sample_id": ["s0", "s1"], "path": ["a.png", "b.png"], "split": ["train", "test"],
                          "y": [0, 1], "a": [0, 1]})
    bench = Benchmark("csv", "/data/own", table, ["cat", "dog"], ["in", "out"],
                      params={"csv": "/data/own/meta.csv", "columns": {"y": "label", "a": "background"}})
    meta = {"benchmark": bench.describe()}
    spec = catalog.bench_spec_from_meta(meta)
    assert spec == {"name": "csv", "root": "/data/own",
                    "options": {"csv": "/data/own/meta.csv", "y_col": "label", "a_col": "background",
                                "class_names": ["cat", "dog"], "attr_names": ["in", "out"]}}


def test_csv_benchmark_with_named_integer_labels_and_carved_val_reopens_with_its_fingerprint(tmp_path):
    """Regression (bench/app_memory.py): integer labels named at load time, and a val split carved from train,
    reopened from the manifest as another benchmark (classes '0', '1'), so the dashboard lost its embeddings."""
    import warnings

    import pandas as pd
    from PIL import Image

    from clipcal.data import load_benchmark

    rows = []
    for i in range(20):
        Image.new("RGB", (8, 8), (i * 10, 0, 0)).save(tmp_path / f"im{i}.png")
        rows.append({"filename": f"im{i}.png", "split": "train" if i < 14 else "test", "y": i % 2, "a": (i // 2) % 2})
    pd.DataFrame(rows).to_csv(tmp_path / "meta.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no val rows: carved …"
        bench = load_benchmark("csv", root=tmp_path, csv="meta.csv", class_names=["cat", "dog"],
                               attr_names=["indoor", "outdoor"], val_fraction=0.3, seed=4)
        spec = catalog.bench_spec_from_meta({"benchmark": bench.describe()})
        again = load_benchmark(spec["name"], root=spec["root"], **spec["options"])
    assert again.class_names == ["cat", "dog"] and again.attr_names == ["indoor", "outdoor"]
    assert again.fingerprint() == bench.fingerprint()


def test_progress_line_shows_fractional_progress_as_a_percentage():
    """Regression (newcomer trial): '2 / 2' and '0.0 items/s' while CFR, the second of two methods, trained."""
    from types import SimpleNamespace as NS

    def job(done, total, rate):
        return NS(progress=NS(done=done, total=total, rate=rate, eta_s=300.0, message="cfr epoch 3/100",
                              extra={}), key="calib:x", elapsed_s=60.0)

    line = views.progress_line(job(1.6, 2.0, 0.004))
    assert line.startswith("80 %") and "items/s" not in line and "ETA" in line
    assert views.progress_line(job(120.0, 2400.0, 9.5)).startswith("120 / 2,400 · 9.5 items/s")


def test_run_label_names_non_default_settings():
    """Regression (newcomer trial): a default and a cross-fit CFR run read identically in the sidebar."""
    info = {"created": "2026-11-29T12:33:00+00:00", "methods": ["erm", "cfr"],
            "test_worst_group": {"erm": 0.875, "cfr": 0.86}, "changed": "cfr.calibration_errors=cross-fit"}
    label = catalog.run_label(info)
    assert "cfr.calibration_errors=cross-fit" in label and label.endswith("best test worst-group 0.88 (ERM)")
    assert "·  ·" not in catalog.run_label({**info, "changed": ""})


def test_objects_alive_after_new_imports_are_frozen_once(monkeypatch):
    """app.py freezes what is alive after a run that imported modules, so Python's full collections skip the
    ≈ 0.5 M library objects (bench/page_rerun.py: reruns of Representations had 1 s stalls)."""
    import gc
    import sys
    import types

    monkeypatch.setattr(process, "_FROZEN_MODULES", [len(sys.modules)])
    gc.unfreeze()
    try:
        assert process.freeze_imported_objects() is False and gc.get_freeze_count() == 0  # nothing new imported
        monkeypatch.setitem(sys.modules, "clipcal_test_fake_module", types.ModuleType("clipcal_test_fake_module"))
        assert process.freeze_imported_objects() is True and gc.get_freeze_count() > 100_000
        assert process.freeze_imported_objects() is False  # once per new import, not per run
    finally:
        gc.unfreeze()


def test_data_form_fields_are_new_widgets_for_each_current_benchmark(app, tmp_path):
    """Regression: a benchmark chosen in the sidebar while on Data left the form showing the old benchmark (the
    browser keeps a widget's shown value while its key stays the same), with a "Use this benchmark" button that
    switched back. The form's keys carry the current benchmark, so a new current benchmark gets new fields."""
    _png_csv_dataset(tmp_path / "own")
    own = {"name": "csv", "root": str(tmp_path / "own"), "options": {
        "csv": "meta.csv", "id_col": "image_id", "path_col": "file", "split_col": "part", "y_col": "label",
        "a_col": "place"}}
    at = app("data", **{state.K_BENCH: own})
    _no_exception(at)
    old = fk(at, "data.name")
    assert at.selectbox(key=old).value == "csv"
    at.selectbox(key=old).set_value("demo").run()
    at.button(key="data.use").click().run()
    _no_exception(at)
    assert at.session_state[state.K_BENCH]["name"] == "demo"
    new = fk(at, "data.name")
    assert new != old and at.selectbox(key=new).value == "demo"
    assert not [w for w in at.selectbox if w.key == old]


def test_embed_form_opens_on_the_current_checkpoint(app, tmp_path):
    """Regression: with a local checkpoint as the current backbone, Embed opened on "open_clip list" with
    another backbone selected and an empty checkpoint form."""
    spec = f"open_clip:ViT-B-32:{tmp_path / 'my-clip.pt'}"
    at = app("embed", **{state.K_BACKBONE: spec})
    _no_exception(at)
    assert at.radio(key=ek(at, "embed.source")).value == "local checkpoint"
    assert at.text_input(key=ek(at, "embed.arch")).value == "ViT-B-32"
    assert at.text_input(key=ek(at, "embed.ckpt")).value == str(tmp_path / "my-clip.pt")
    assert not [b for b in at.button if b.key == "embed.use"]  # the form shows what is already current


def test_home_says_when_the_demo_path_runs_another_choice(app):
    """Regression (newcomer): "Run the demo path" ran the current selection (own CSV + checkpoint) while the
    README promised the demo; Home now says so and offers the built-in demo in one click."""
    at = app("home")  # the seeded state: demo_small with tiny:clip
    _no_exception(at)
    assert any("not the built-in demo" in x.value for x in at.caption)
    at.button(key="home.to_demo").click().run()
    _no_exception(at)
    assert at.session_state[state.K_BENCH] == catalog.DEFAULT_BENCH and at.session_state[state.K_BACKBONE] == catalog.DEFAULT_BACKBONE
    assert not [b for b in at.button if b.key == "home.to_demo"]

