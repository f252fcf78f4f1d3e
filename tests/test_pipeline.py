"""clipcal.pipeline: the steps the dashboard's jobs run (load, embed, calibrate, project, the demo path), their
job keys and progress stages — called directly, without Streamlit."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pandas as pd
import pytest

from clipcal import pipeline
from clipcal.errors import ClipcalError

SPEC = {"name": "demo", "root": None, "options": {"n_train": 8}}


def test_job_keys_name_the_step_and_its_inputs():
    assert pipeline.embed_job_key(SPEC, "tiny:clip").startswith("embed:")  # the model slot looks for these
    assert pipeline.demo_job_key(SPEC, "tiny:clip").startswith("demo-path:")
    keys = {pipeline.embed_job_key(SPEC, "tiny:clip"), pipeline.calib_job_key(SPEC, "tiny:clip"),
            pipeline.demo_job_key(SPEC, "tiny:clip"), pipeline.embed_job_key(SPEC, "other"),
            pipeline.umap_job_key("run1", "cfr"), pipeline.umap_job_key("run1", None)}
    assert len(keys) == 6
    assert pipeline.demo_build_key({"seed": 1, "n_val": 4}) == pipeline.demo_build_key({"n_val": 4, "seed": 1})
    # a demo-path job of a demo builds that demo: its key starts with the demo's own prefix
    assert pipeline.demo_job_key(SPEC, "tiny:clip").startswith(pipeline.demo_job_key(SPEC, ""))


def test_staged_progress_names_the_stage_in_every_call_form():
    got = []

    def progress(*args, **kwargs):
        got.append((args, kwargs))

    report = pipeline.staged(progress, "2/3 embedding")
    report(3, 10, "12 images/s")
    report(done=4, total=10, message="x")
    report(done=5, total=10)
    report(NS(done=6, total=10, message="y", images_per_s=2.5, eta_s=None))
    assert got == [((3, 10, "2/3 embedding: 12 images/s"), {}), ((), {"done": 4, "total": 10,
                                                                      "message": "2/3 embedding: x"}),
                   ((), {"done": 5, "total": 10, "message": "2/3 embedding"}),
                   ((), {"done": 6, "total": 10, "rate": 2.5, "message": "2/3 embedding: y"})]
    assert pipeline.staged(None, "x") is None


def test_calibrate_needs_embeddings_and_a_summary_says_what_ran():
    with pytest.raises(ClipcalError, match="no embeddings"):
        pipeline.calibrate(None, None, ["erm"], {})
    run = NS(results={"erm": 1}, not_applicable={"dfr": "not applicable: no labels"})
    assert pipeline.calibration_summary(run, ["erm", "dfr"]) == \
        "1 of 2 methods ran; not applicable: dfr: not applicable: no labels"
    assert pipeline.calibration_summary(NS(results={"erm": 1}, not_applicable={}), ["erm"]) == "1 of 1 methods ran"


def test_a_run_is_checked_against_the_stored_rows():
    fd = NS(n=3, sample_ids=np.array(["a", "b", "c"]), embeddings=np.ones((3, 2), np.float64))
    run = NS(key="r", labels=pd.DataFrame({"sample_id": ["a", "b", "c"]}),
             results={"cfr": NS(embeddings_after=np.zeros((3, 2), np.float64)), "dfr": NS(embeddings_after=None)})
    pipeline.check_run_rows(run, fd)
    with pytest.raises(ClipcalError, match="other embeddings"):
        pipeline.check_run_rows(NS(key="r", labels=pd.DataFrame({"sample_id": ["a", "c", "b"]})), fd)
    before, after = pipeline.projection_inputs(run, fd, "cfr")
    assert before is fd.embeddings and after.dtype == np.float32 and after.shape == (3, 2)
    assert pipeline.projection_inputs(run, fd, None)[1] is None
    assert pipeline.projection_key_fields("fp", "tiny:clip", "r", None) == {
        "benchmark": "fp", "backbone": "tiny:clip", "run": "r", "method": "before"}
    assert pipeline.run_key(run) == "r"


@pytest.mark.slow  # the seeded store: embed + six methods + UMAP, ~1 min on 2 cores (shared with the AppTests)
def test_stored_projection_finds_the_map_a_job_stored(seeded_store):
    """The page looks a run's joint UMAP up with the same key fields and parameters the job stores it under."""
    from clipcal.methods import FeatureData
    from clipcal.projection import joint_umap
    from clipcal.store import Store

    s = seeded_store
    fd = FeatureData.from_store(s["bench"], s["emb"])
    store = Store(s["root"])
    fp = s["bench"].fingerprint()
    found = pipeline.stored_projection(s["run"], fd, "cfr", fp, s["backbone"], store)
    assert found is not None and found[0].shape == (fd.n, 2) and found[1].shape == (fd.n, 2)
    before, after = pipeline.projection_inputs(s["run"], fd, "cfr")
    again = joint_umap(before, after, store=store, key_fields=pipeline.projection_key_fields(
        fp, s["backbone"], s["run_id"], "cfr"), **pipeline.UMAP_PARAMS)  # stored: read, not refitted
    np.testing.assert_array_equal(found[0], again[0])
    assert pipeline.stored_projection(s["run"], fd, "cfr", fp, "another backbone", store) is None


@pytest.mark.slow
def test_demo_path_embeds_and_calibrates_what_applies(seeded_embeddings, tmp_path):
    """The one-click path on the (already built) small demo, ERM only, into a store of its own (the session
    store's newest run is what the browser tests open): every stage reported, the run stored."""
    from clipcal.runs import list_runs
    from clipcal.store import Store

    stages = []
    store = Store(tmp_path / "store")
    summary = pipeline.demo_path(seeded_embeddings["bench_spec"], seeded_embeddings["backbone"], methods=["erm"],
                                 store=store, progress=lambda *a, **k: stages.append(k.get("message", "")))
    assert summary == f"{seeded_embeddings['n_samples']} images embedded, 1 methods calibrated (erm)"
    assert any(m.startswith("2/3 embedding") for m in stages) and any(m.startswith("3/3 calibrating")
                                                                      for m in stages)
    runs = list_runs(store)
    assert len(runs) == 1 and runs["methods"].iloc[0] == "erm"
