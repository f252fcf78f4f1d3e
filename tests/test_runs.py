"""Calibration runs: store round-trip, not-applicable methods, manifest, listing, CLI (clipcal/runs.py)."""

from __future__ import annotations

import json
import os
import shlex
import sys
import threading

import numpy as np
import pandas as pd
import pytest

from clipcal.errors import Cancelled, MethodError, StoreError
from clipcal.runs import list_runs, load_run, resolve_hparams, run_calibration
from clipcal.store import Store

FAST = {"erm": {"epochs": 3}, "jtt": {"epochs": 3}}


@pytest.fixture
def store(tmp_store_root):
    return Store(tmp_store_root)


def test_round_trip_and_manifest(syn_small_ds, store):
    bench, es = syn_small_ds.benchmark(), syn_small_ds.embedding_set()
    seen = []
    run = run_calibration(bench, es, "zeroshot,erm,jtt,dfr", hparams=FAST, store=store, progress=seen.append,
                          seed=3)
    assert list(run.results) == ["erm", "jtt", "dfr"]
    assert run.not_applicable == {"zeroshot": "not applicable: this backbone has no text tower"}
    assert seen[-1].done == 4 and seen[-1].total == 4
    assert run.results["erm"].record["seed"] == 3 and run.config["hparams"]["erm"]["epochs"] == 3
    # metrics: a row per method per split, plus the not-applicable row
    m = run.metrics
    assert len(m) == 3 * 2 + 1
    assert m[m.method == "zeroshot"]["status"].iloc[0].startswith("not applicable")
    meta = run.manifest["meta"]
    for k in ("python", "torch", "sklearn", "clipcal", "numpy"):
        assert meta["versions"][k]
    assert meta["benchmark"]["fingerprint"] == bench.fingerprint() and meta["seed"] == 3
    assert meta["started"] <= meta["finished"]
    assert meta["config"]["hparams"]["jtt"]["lambda_up"] == 20.0  # defaults resolved into the configuration
    assert meta["metric_definitions"]["train_weighted"]

    loaded = load_run(run.key, store)
    for name, res in run.results.items():
        other = loaded.results[name]
        assert np.array_equal(other.probs, res.probs) and np.array_equal(other.pred, res.pred)
        if res.embeddings_after is not None:
            assert np.array_equal(np.asarray(other.embeddings_after), res.embeddings_after)
        if res.calibration_set is not None:
            assert np.array_equal(other.calibration_set, res.calibration_set)
        assert other.record["selection_rule"] == res.record["selection_rule"]
        assert len(other.curves) == len(res.curves)
    assert loaded.results["dfr"].embeddings_after is None
    cols = ["worst_group", "overall", "mean_group", "train_weighted", "worst_class"]
    ok = run.metrics["status"] == "ok"
    assert np.allclose(loaded.metrics.loc[ok, cols].to_numpy(float), run.metrics.loc[ok, cols].to_numpy(float))
    assert loaded.not_applicable == run.not_applicable
    assert len(loaded.group_tables) == len(run.group_tables) == 3 * 3 * 4
    assert list(loaded.labels["sample_id"]) == list(syn_small_ds.data.sample_ids)
    with pytest.raises(MethodError, match="not applicable"):
        loaded.result("zeroshot")

    runs = list_runs(store, benchmark=bench)
    assert list(runs["key"]) == [run.key] and runs["test_worst_group"].iloc[0].keys() == {"erm", "jtt", "dfr"}
    assert len(list_runs(store, backbone="other")) == 0
    # the non-default settings are listed (they tell otherwise identical runs apart in the dashboard)
    changed = runs["changed"].iloc[0].split(", ")
    assert "erm.epochs=3" in changed and not any(c.startswith("jtt.lambda_up") for c in changed)


def test_missing_run_and_bad_requests(syn_small_ds, store):
    with pytest.raises(StoreError, match="no calibration run"):
        load_run("0123456789abcdef", store)
    bench, es = syn_small_ds.benchmark(), syn_small_ds.embedding_set()
    with pytest.raises(MethodError, match="unknown method"):
        run_calibration(bench, es, ["erm", "magic"], store=store)
    with pytest.raises(MethodError, match="no hyperparameter"):
        run_calibration(bench, es, ["erm"], hparams={"erm": {"bogus": 1}}, store=store)


def test_cancel_stores_nothing(syn_small_ds, store):
    ev = threading.Event()
    ev.set()
    with pytest.raises(Cancelled):
        run_calibration(syn_small_ds.benchmark(), syn_small_ds.embedding_set(), ["erm"], hparams=FAST,
                        store=store, cancel=ev)  # settings of methods not in the run (jtt) are ignored
    assert len(list_runs(store)) == 0


def test_failing_method_does_not_stop_the_others(syn_small_ds, store, monkeypatch):
    from clipcal.methods.erm import ERM

    def boom(self, data, progress, cancel):
        raise RuntimeError("kaputt")

    monkeypatch.setattr(ERM, "_fit", boom)
    run = run_calibration(syn_small_ds.benchmark(), syn_small_ds.embedding_set(), ["erm", "dfr"], store=store)
    assert run.not_applicable["erm"] == "failed: RuntimeError: kaputt"
    assert "kaputt" in run.manifest["meta"]["failures"]["erm"] and "dfr" in run.results


def test_a_run_in_which_no_method_ran_is_refused_and_not_stored(syn_small_ds, store):
    """Regression: 'Calibration finished: 0 of 1 methods ran' stored an empty run that became the current one
    and broke the result pages (Spurious attributes: KeyError None)."""
    with pytest.raises(MethodError, match="no method could run, so nothing was stored: Zero-shot.*no text tower"):
        run_calibration(syn_small_ds.benchmark(), syn_small_ds.embedding_set(), ["zeroshot"], store=store)
    assert len(list_runs(store)) == 0


def test_resolve_hparams_order(monkeypatch):
    full = resolve_hparams(["erm", "dfr"], {"erm": {"seed": 9}}, seed=1, selection="worst-group")
    assert full["erm"]["seed"] == 9 and full["erm"]["selection"] == "worst-group"
    assert full["dfr"]["seed"] == 1 and "selection" not in full["dfr"]


def test_cli_parse_sets():
    from clipcal.commands.calibrate import parse_sets

    assert parse_sets(["cfr.lr=1e-3", "afr.gammas=[1,2]", "zeroshot.templates=a {}"]) == {
        "cfr": {"lr": 0.001}, "afr": {"gammas": [1, 2]}, "zeroshot": {"templates": "a {}"}}
    with pytest.raises(MethodError):
        parse_sets(["lr=1"])


def test_report_writes_markdown_and_csv(syn_small_ds, store, tmp_path):
    from clipcal.commands.report import run_markdown, write_report

    run = run_calibration(syn_small_ds.benchmark(), syn_small_ds.embedding_set(), "zeroshot,erm,dfr",
                          hparams={"erm": {"epochs": 2}}, store=store)
    md = run_markdown(run, groups=True)
    assert "| method | split | worst-group |" in md
    assert "Zero-shot — not applicable: this backbone has no text tower" in md
    assert "Train-weighted average accuracy" in md and "### erm · test" in md
    files = write_report(load_run(run.key, store), tmp_path / "rep")
    names = {f.name for f in files}
    assert {"report.md", "metrics.csv", "group_tables.csv", "manifest.json", "curves_erm.csv"} <= names
    back = pd.read_csv(tmp_path / "rep" / "metrics.csv")
    assert set(back["method"]) == {"erm", "dfr", "zeroshot"}
    assert json.loads((tmp_path / "rep" / "manifest.json").read_text())["meta"]["seed"] == 0


@pytest.mark.slow
def test_real_pipeline_tiny_clip_with_skipped_images(tmp_path, store, emb_tiny, emb_make_benchmark):
    """Embed real (tiny) images with the tiny open_clip model, then calibrate: text head, skipped rows."""
    from clipcal.embed import embed_benchmark

    bench = emb_make_benchmark(tmp_path / "imgs", n=48, bad=2)
    es = embed_benchmark(bench, emb_tiny, store=store, num_workers=0)
    assert len(es.skipped) == 2
    run = run_calibration(bench, es, "zeroshot,erm,dfr", hparams={"erm": {"epochs": 2}}, store=store)
    assert set(run.results) == {"zeroshot", "erm", "dfr"}, run.not_applicable
    assert run.data.n == 48 and any("2 sample(s) without embeddings" in n for n in run.data.notes)
    assert run.data.text_head is not None and run.data.text_head.shape == (2, es.embeddings.shape[1])
    assert run.results["erm"].record["init"]["head"] == "text"
    zs = run.results["zeroshot"]
    assert np.array_equal(zs.pred, (run.data.embeddings @ run.data.text_head.T).argmax(1))


@pytest.mark.slow
def test_cli_calibrate_and_report(tmp_path, tmp_store_root, emb_make_benchmark, monkeypatch, capsys):
    """`python -m clipcal calibrate … --backbone tiny:clip` then `report --out`, benchmark patched in."""
    import clipcal.commands.data as data_cmd
    from clipcal.cli import main

    bench = emb_make_benchmark(tmp_path / "imgs", n=36)
    monkeypatch.setattr(data_cmd, "benchmark_from_args", lambda args, progress=None: bench)
    root = tmp_path / "my birds"
    rc = main(["calibrate", "--benchmark", "csv", "--root", str(root), "--csv", "meta.csv", "--a-col", "place",
               "--backbone", "tiny:clip", "--methods", "zeroshot,erm,dfr",
               "--set", "erm.epochs=2", "--set", "dfr.n_retrain=2", "--device", "cpu", "--seed", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| method | split | worst-group | overall | mean group | train-weighted | worst-class |" in out
    assert "DFR (uses group labels)" in out and "run " in out
    # the suggested report command names the same benchmark options and this run; pasted, it works
    suggested = next(line for line in out.splitlines() if line.startswith("report: "))[len("report: "):]
    assert f"--benchmark csv --root {shlex.quote(str(root))} --csv meta.csv --a-col place " \
           "--backbone tiny:clip --key " in suggested
    argv = shlex.split(suggested)
    assert argv[1:3] == ["-m", "clipcal"] and os.path.samefile(argv[0], sys.executable)
    monkeypatch.chdir(tmp_path)  # --out reports/<key> is relative: write it here
    assert main(argv[3:]) == 0
    assert "ERM (last layer)" in (tmp_path / argv[-1] / "report.md").read_text()
    rc = main(["report", "--benchmark", "csv", "--backbone", "tiny:clip", "--out", str(tmp_path / "rep")])
    assert rc == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "ERM (last layer)" in md and "seed 1" in md
    assert main(["calibrate", "--benchmark", "csv", "--backbone", "tiny:clip", "--methods", "erm",
                 "--set", "cfr.lr=1"]) == 2  # --set for a method not in --methods: clear error, exit 2


def test_a_bad_value_stops_run_calibration_before_any_work(syn_small_ds, store):
    """A value a method refuses is an error up front (it used to become a 'not applicable' row of a stored run)."""
    bench, es = syn_small_ds.benchmark(), syn_small_ds.embedding_set()
    with pytest.raises(MethodError, match="epochs must be a whole number ≥ 1"):
        run_calibration(bench, es, "erm,jtt", hparams={"erm": {"epochs": -5}}, store=store)
    with pytest.raises(MethodError, match="calibration_errors"):
        resolve_hparams(["cfr"], {"cfr": {"calibration_errors": "val"}}, seed=0, selection=None)
    assert len(list_runs(store)) == 0
