"""Export of the calibrated model (issue 11.4): what clipcal stored is what plain open_clip computes.

Kind-level rule: an exported model, loaded WITHOUT clipcal in the encoding path, reproduces the run's stored
calibrated embeddings (max |diff| ≤ 1e-5) and predictions — for an open_clip checkpoint (``tiny:clip``: plain
``open_clip.create_model_and_transforms(arch, pretrained=<file>)`` after ``add_model_config``) and for the
last-layer export of other backbones (plain numpy on the features).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipcal.errors import MethodError


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, emb_tiny):
    """A stored ERM + CFR run on tiny:clip embeddings of a small image benchmark."""
    from clipcal.embed import embed_benchmark
    from clipcal.runs import run_calibration
    from clipcal.store import Store
    from tests.fixtures_embed import make_image_benchmark

    root = tmp_path_factory.mktemp("export")
    store = Store(root / "store")
    bench = make_image_benchmark(root / "bench", n=30)
    es = embed_benchmark(bench, emb_tiny, store=store, num_workers=0)
    run = run_calibration(bench, es, "erm,cfr", store=store, hparams={
        "erm": {"epochs": 3}, "cfr": {"erm_epochs": 3, "epochs": 2, "lr": 1e-2, "calibration_errors": "train",
                                      "calibration_min_per_class": 1}})
    return bench, store, run


@pytest.mark.parametrize("method", ["cfr", "erm"])
def test_plain_open_clip_reproduces_the_stored_calibrated_embeddings(method, tiny_run, tmp_path):
    import open_clip
    import torch
    from PIL import Image
    from safetensors.numpy import load_file

    from clipcal.export import export_run
    from clipcal.runs import load_run

    bench, store, run = tiny_run
    ex = export_run(run.key, method, tmp_path / "out", store=store)
    assert ex.kind == "open_clip-checkpoint"
    card = json.loads((ex.folder / "classifier.json").read_text())
    assert card["classes"] == list(bench.class_names) and card["load"]["arch"] == "clipcal-tiny"
    assert (ex.folder / "README.md").read_text().count("create_model_and_transforms") == 1
    assert "open_clip checkpoint with the calibrated visual.proj" in ex.summary()

    # ---- plain open_clip from here on: no clipcal code in the encoding path -------------------------------
    open_clip.add_model_config(str(ex.folder / card["load"]["model_config_dir"]))
    model, _, preprocess = open_clip.create_model_and_transforms(
        card["load"]["arch"], pretrained=str(ex.folder / card["load"]["pretrained"]))
    model.eval()
    c = load_file(str(ex.folder / "classifier.safetensors"))
    stored = load_run(run.key, store)
    ids = stored.labels["sample_id"].tolist()
    table = bench.table.set_index("sample_id")
    x = torch.stack([preprocess(Image.open(bench.root / table.loc[i, "path"]).convert("RGB")) for i in ids])
    with torch.no_grad():
        z = model.encode_image(x, normalize=True).numpy()
    logits = float(c["logit_scale"][0]) * z @ c["head"].T + c["bias"]
    # -----------------------------------------------------------------------------------------------------
    r = stored.results[method]
    assert np.abs(z - r.embeddings_after).max() <= 1e-5
    np.testing.assert_array_equal(logits.argmax(1), r.pred)


def test_predict_proba_of_the_stored_model_on_new_features_equals_the_stored_predictions(tiny_run):
    from clipcal.embed import load_embeddings
    from clipcal.runs import load_run

    bench, store, run = tiny_run
    stored = load_run(run.key, store)
    es = load_embeddings(bench, "tiny:clip", store=store)
    pos = {s: i for i, s in enumerate(np.asarray(es.sample_ids).astype(str))}
    h = np.asarray(es.features)[[pos[s] for s in stored.labels["sample_id"]]]
    f = stored.fitted("cfr")
    np.testing.assert_allclose(f.predict_proba(h), stored.results["cfr"].probs, atol=1e-5)
    np.testing.assert_array_equal(f.predict(h), stored.results["cfr"].pred)


def test_other_backbones_export_the_last_layer_and_head_with_how_to_apply_them(syn_small_ds, tmp_store_root,
                                                                                tmp_path):
    from safetensors.numpy import load_file

    from clipcal.export import export_run, zip_export
    from clipcal.runs import run_calibration
    from clipcal.store import Store

    store = Store(tmp_store_root)
    run = run_calibration(syn_small_ds.benchmark(), syn_small_ds.embedding_set(), ["jtt"],
                          hparams={"jtt": {"epochs": 3}}, store=store)
    ex = export_run(run, "jtt", store=store)
    assert ex.kind == "last-layer" and ex.folder.parent.name == "exports"
    card = json.loads((ex.folder / "classifier.json").read_text())
    assert "normalize(h @ W)" in card["formula"]
    W = load_file(str(ex.folder / "last_layer.safetensors"))["W"]
    c = load_file(str(ex.folder / "classifier.safetensors"))
    h = run.data.features
    z = h @ W
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    logits = float(c["logit_scale"][0]) * z @ c["head"].T + c["bias"]
    np.testing.assert_array_equal(logits.argmax(1), run.results["jtt"].pred)
    assert np.abs(z - run.results["jtt"].embeddings_after).max() <= 1e-5
    assert zip_export(ex).stat().st_size > 0
    # the weights are as readable as the card beside them (safetensors wrote 0600: a shared server's other
    # users could read the instructions but not the weights)
    modes = {f.name: f.stat().st_mode & 0o777 for f in ex.folder.iterdir() if f.is_file()}
    assert len(set(modes.values())) == 1, modes


def test_exporting_a_method_that_did_not_run_says_why(syn_small_ds, tmp_store_root, tmp_path):
    from clipcal.export import export_run
    from clipcal.runs import run_calibration
    from clipcal.store import Store

    store = Store(tmp_store_root)
    run = run_calibration(syn_small_ds.benchmark(), syn_small_ds.embedding_set(), ["erm"],
                          hparams={"erm": {"epochs": 2}}, store=store)
    with pytest.raises(MethodError, match="no result"):
        export_run(run, "cfr", tmp_path / "x", store=store)


def test_exportable_methods_are_those_with_a_stored_fitted_model(syn_small_ds, tmp_store_root):
    from clipcal.export import exportable_methods
    from clipcal.runs import load_run, run_calibration
    from clipcal.store import Store

    store = Store(tmp_store_root)
    run = run_calibration(syn_small_ds.benchmark(), syn_small_ds.embedding_set(), ["zeroshot", "erm", "dfr"],
                          hparams={"erm": {"epochs": 2}, "dfr": {"n_retrain": 1}}, store=store)
    assert "zeroshot" in run.not_applicable                      # no text tower: nothing to export
    assert exportable_methods(load_run(run.key, store)) == ["erm", "dfr"]
    run.results["erm"].fitted = None                             # a run stored before fitted layers were kept
    assert exportable_methods(run) == ["dfr"]


def test_cli_export_writes_the_folder_and_a_clear_error_for_an_unknown_key(syn_small_ds, tmp_store_root, tmp_path,
                                                                           capsys):
    from clipcal.cli import main
    from clipcal.runs import run_calibration
    from clipcal.store import Store

    run = run_calibration(syn_small_ds.benchmark(), syn_small_ds.embedding_set(), ["erm"],
                          hparams={"erm": {"epochs": 2}}, store=Store(tmp_store_root))
    assert main(["export", "--key", run.key, "--method", "erm", "--out", str(tmp_path / "e"), "--zip"]) == 0
    out = capsys.readouterr().out
    assert "classifier.safetensors" in out and (tmp_path / "e.zip").is_file()
    assert json.loads((tmp_path / "e" / "classifier.json").read_text())["method"] == "erm"
    assert main(["export", "--key", "nope", "--method", "erm"]) == 2
    assert "no calibration run with key 'nope'" in capsys.readouterr().err
