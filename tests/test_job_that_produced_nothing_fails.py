"""Issue 10 item 7 — a job that produced nothing says so and exits non-zero.

Kind-level rule: a count reports what was produced (images *encoded*, not table rows walked), and a job that
ends with nothing (every image missing or unreadable) raises an error naming why — listing the skipped rows
with their reasons — stores no empty entry, and the CLI exits non-zero. An empty entry stored by an older
version is never served as a result. (Siblings checked: calibrate with no method able to run and a projection
with < 4 points already raise MethodError; report with no run exits 1.)
"""

from __future__ import annotations

import numpy as np
import pytest

from clipcal.errors import DataError

ROWS = [{"filename": f"img{i}.jpg", "split": s, "y": i % 2, "a": (i // 2) % 2}
        for i, s in enumerate(["train"] * 4 + ["val"] * 2 + ["test"] * 2)]


def _bench(root, keep=()):
    from clipcal.data import load_benchmark
    from tests.fixtures_data import make_csv_dataset

    make_csv_dataset(root, ROWS)
    for i, r in enumerate(ROWS):
        if i not in keep:
            (root / r["filename"]).unlink()
    return load_benchmark("csv", root=root)


def test_embedding_with_every_image_missing_raises_and_stores_nothing(tmp_path, tmp_store_root):
    from clipcal.embed import NothingEmbeddedError, embed_benchmark
    from clipcal.store import Store

    bench = _bench(tmp_path / "data")
    store = Store()
    with pytest.raises(NothingEmbeddedError) as ei:
        embed_benchmark(bench, "tiny:clip", store=store, num_workers=0)
    err = ei.value
    assert isinstance(err, DataError)  # the CLI prints it without a traceback; the dashboard's job shows it
    assert "no image could be embedded" in err.message and "8 of 8" in err.message
    assert "image not found" in err.message  # the reason, not just a count
    assert list(err.skipped.columns) == ["sample_id", "reason"] and len(err.skipped) == 8
    assert "data validate" in err.hint
    assert store.list("embeddings") == []  # no empty entry
    assert not any(store.partial_dir("embeddings", {"x": 1}).parent.glob("*/shard-*"))  # no shards left


def test_count_is_of_images_embedded_not_rows_walked(tmp_path, tmp_store_root):
    from clipcal.embed import embed_benchmark

    bench = _bench(tmp_path / "data", keep=(0, 1, 4, 6, 7))
    es = embed_benchmark(bench, "tiny:clip", num_workers=0)
    assert es.n_computed == 5
    assert len(es) == 5 and len(es.skipped) == 3
    assert es.summary() == "embedded 5 images in this run; 3 skipped (unreadable or missing, listed with reasons)"
    again = embed_benchmark(bench, "tiny:clip", num_workers=0)
    assert again.n_computed == 0
    assert again.summary() == "already embedded: 5 images from the store; 3 skipped (unreadable or missing, " \
                              "listed with reasons)"


def test_empty_entry_stored_by_an_older_version_is_not_served(tmp_path, tmp_store_root):
    from clipcal.backbones import load_backbone
    from clipcal.embed import KIND, NothingEmbeddedError, embed_benchmark, embedding_key, load_embeddings
    from clipcal.store import Store

    bench = _bench(tmp_path / "data")
    bb = load_backbone("tiny:clip")
    store = Store()
    key = embedding_key(bench, bb.identity())
    store.put(KIND, key, {"features": np.zeros((0, bb.feature_dim), np.float32),
                          "embeddings": np.zeros((0, bb.embed_dim), np.float32),
                          "sample_ids": np.zeros(0, "<U1"), "proj_weight": bb.proj_weight()},
              meta={"n_embedded": 0, "skipped": [{"sample_id": r["filename"], "reason": "image not found"}
                                                 for r in ROWS]})
    assert load_embeddings(bench, bb, store=store) is None
    with pytest.raises(NothingEmbeddedError):
        embed_benchmark(bench, bb, store=store, num_workers=0)
    assert store.get(KIND, key) is None  # the empty entry is gone


def test_cli_embed_with_every_image_missing_exits_non_zero(tmp_path, tmp_store_root, capsys):
    from clipcal.cli import main

    _bench(tmp_path / "data")
    rc = main(["embed", "--benchmark", "csv", "--root", str(tmp_path / "data"), "--backbone", "tiny:clip",
               "--workers", "0"])
    out, err = capsys.readouterr()
    assert rc != 0
    assert "no image could be embedded" in err
    assert "embedded 8 images" not in out + err


def test_cli_embed_counts_only_encoded_images(tmp_path, tmp_store_root, capsys):
    from clipcal.cli import main

    _bench(tmp_path / "data", keep=(0, 1, 4, 6, 7))
    rc = main(["embed", "--benchmark", "csv", "--root", str(tmp_path / "data"), "--backbone", "tiny:clip",
               "--workers", "0"])
    out, _ = capsys.readouterr()
    assert rc == 0
    assert "embedded 5 images in this run" in out
    assert "skipped:   3" in out



def test_report_notes_name_their_method_once(seeded_store, monkeypatch):
    """A note that already names its stage is not prefixed again ('erm: erm: training loss …', newcomer trial);
    another method's ERM stage keeps both names."""
    from clipcal.commands.report import run_markdown

    run = seeded_store["run"]
    note = "erm: training loss had not levelled off after 100 epochs"
    for m in ("erm", "jtt"):
        monkeypatch.setitem(run.results[m].record, "notes", [note])
    lines = run_markdown(run).splitlines()
    assert f"- {note}" in lines and f"- jtt: {note}" in lines
    assert not any(line.startswith("- erm: erm:") for line in lines)
