"""A missing dependency fails before any work, naming the pip package (issue 10, item 2).

Kind-level rule: every path (embedding, calibration, projection, concept probes, text towers, the CLI) checks
the packages it will import before it starts, and the error (``MissingDependencyError``) names the package
as pip installs it (``scikit-learn``, not ``sklearn``) with the command. An absent module is simulated with
``sys.modules[name] = None`` (what makes ``import name`` fail), restored after each test.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from clipcal.errors import MissingDependencyError, WeightsUnavailableError

SIGLIP = "open_clip:ViT-B-16-SigLIP:random"


def _absent(monkeypatch, *modules):
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


@pytest.fixture
def synthetic():
    from clipcal.synthetic import generate

    return generate(n_train=200, n_val=80, n_test=80, dim=16, seed=0)


def test_require_names_the_pip_package_and_the_pinned_install_command(monkeypatch):
    from clipcal.deps import require

    _absent(monkeypatch, "sklearn")
    with pytest.raises(MissingDependencyError) as e:
        require("sklearn", "DFR")
    assert "'scikit-learn'" in e.value.message and "DFR" in e.value.message
    assert "scikit-learn==" in e.value.hint and "pip install" in e.value.hint
    require("numpy", "anything")  # present: no error


def test_calibration_without_sklearn_fails_before_any_method_trains(monkeypatch, synthetic, tmp_store_root):
    from clipcal.runs import list_runs, run_calibration
    from clipcal.store import Store

    _absent(monkeypatch, "sklearn")
    calls = []
    with pytest.raises(MissingDependencyError) as e:
        run_calibration(synthetic.benchmark(), synthetic.embedding_set(), ["erm", "dfr"],
                        hparams={"erm": {"epochs": 2}}, store=Store(tmp_store_root), progress=calls.append)
    assert "scikit-learn" in str(e.value) and "DFR" in str(e.value)
    assert calls == []  # no method started (it used to train all, then crash while storing)
    assert len(list_runs(Store(tmp_store_root))) == 0


def test_a_run_that_does_not_need_sklearn_is_stored_without_it(monkeypatch, synthetic, tmp_store_root):
    from clipcal.runs import run_calibration
    from clipcal.store import Store

    _absent(monkeypatch, "sklearn")
    run = run_calibration(synthetic.benchmark(), synthetic.embedding_set(), ["erm"],
                          hparams={"erm": {"epochs": 2}}, store=Store(tmp_store_root))
    assert run.key and "erm" in run.results  # storing no longer imports scikit-learn
    assert run.manifest["meta"]["versions"]["sklearn"] == metadata.version("scikit-learn")


def test_cli_calibrate_names_the_package_before_loading_the_benchmark(monkeypatch, capsys):
    import clipcal.commands.data as data_cmd
    from clipcal.cli import main

    _absent(monkeypatch, "sklearn")

    def no_benchmark(*a, **k):
        raise AssertionError("the benchmark was loaded before the dependency check")

    monkeypatch.setattr(data_cmd, "benchmark_from_args", no_benchmark)
    code = main(["calibrate", "--backbone", "tiny:clip", "--methods", "erm,dfr"])
    assert code == 2
    assert "scikit-learn" in capsys.readouterr().err


def test_siglip_without_transformers_fails_before_the_model_is_built(monkeypatch):
    import open_clip

    from clipcal.backbones import backbone_requirements, check_weights, load_backbone, load_text_encoder

    assert ("transformers" in [m for m, _ in backbone_requirements(SIGLIP)])
    _absent(monkeypatch, "transformers")

    def no_build(*a, **k):
        raise AssertionError("the model was built before the dependency check")

    monkeypatch.setattr(open_clip, "create_model", no_build)
    for call in (check_weights, lambda s: load_backbone(s, device="cpu"), load_text_encoder):
        with pytest.raises(MissingDependencyError) as e:
            call(SIGLIP)
        assert "'transformers'" in e.value.message and "text tower" in e.value.message


def test_siglip_tokenizer_not_cached_offline_fails_before_the_model_is_built(monkeypatch):
    import open_clip

    import clipcal.backbones as B

    for where in (B.sources, B.weights):  # nothing in the Hugging Face cache (resolving and the tokenizer check)
        monkeypatch.setattr(where, "_hf_cached", lambda repo, filename: None)
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("model built"))
    with pytest.raises(WeightsUnavailableError) as e:
        B.load_backbone(SIGLIP, device="cpu")
    assert "timm/ViT-B-16-SigLIP" in e.value.message and "tokenizer" in e.value.message


def test_every_pretrained_pair_with_a_hugging_face_text_tower_requires_transformers():
    import open_clip

    from clipcal.backbones import backbone_requirements

    pairs = open_clip.list_pretrained()
    needing = [p for p in pairs
               if "transformers" in [m for m, _ in backbone_requirements(f"open_clip:{p[0]}:{p[1]}")]]
    expected = [p for p in pairs if any(k in (open_clip.get_model_config(p[0]) or {}).get("text_cfg", {})
                                        for k in ("hf_tokenizer_name", "hf_model_name"))]
    assert needing == expected and len(needing) > 0


def test_transformers_is_pinned_in_requirements_and_installed():
    req = (Path(__file__).resolve().parent.parent / "requirements.txt").read_text().splitlines()
    pin = [line for line in req if line.startswith("transformers==")]
    assert len(pin) == 1
    assert metadata.version("transformers") == pin[0].split("==")[1]


def test_embedding_without_torch_fails_before_any_work(monkeypatch, emb_make_benchmark, tmp_path):
    from clipcal.embed import embed_benchmark

    bench = emb_make_benchmark(tmp_path / "b", n=6)
    _absent(monkeypatch, "torch")
    with pytest.raises(MissingDependencyError, match="'torch'"):
        embed_benchmark(bench, "tiny:clip")


def test_projection_without_umap_names_umap_learn(monkeypatch):
    from clipcal.projection import joint_umap

    _absent(monkeypatch, "umap")
    x = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    with pytest.raises(MissingDependencyError) as e:
        joint_umap(x, x + 0.1, store=None)
    assert "'umap-learn'" in e.value.message


def test_concept_probes_without_sklearn_name_scikit_learn(monkeypatch):
    from clipcal.concepts import attribute_decodability, discover_clusters

    _absent(monkeypatch, "sklearn")
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((40, 8)).astype(np.float32)
    a = np.arange(40) % 2
    split = np.array(["train", "test"] * 20)
    with pytest.raises(MissingDependencyError, match="scikit-learn"):
        attribute_decodability(emb, None, a, split)
    with pytest.raises(MissingDependencyError, match="scikit-learn"):
        discover_clusters(emb, a, np.ones(40, bool), k=2)
