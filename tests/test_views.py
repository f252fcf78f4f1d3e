"""clipcal.views: the tables and notes the pages show, from a run and its rows (plain unit tests on small
hand-made runs; the AppTest suites check the same numbers on the pages)."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pandas as pd
import pytest

from clipcal import views

CLASSES, ATTRS = ["landbird", "waterbird"], ["land", "water"]


def _fd(n: int = 6):
    y = np.array([0, 0, 1, 1, 0, 1])[:n]
    a = np.array([0, 1, 1, 0, 0, 1])[:n]
    emb = np.eye(n, 4, dtype=np.float32) + 0.1
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return NS(y=y, a=a, group=y * 2 + a, class_names=CLASSES, attr_names=ATTRS, embeddings=emb, n=n,
              sample_ids=np.array([f"s{i}" for i in range(n)]))


def _table(fd) -> pd.DataFrame:
    return pd.DataFrame({"sample_id": fd.sample_ids, "path": [f"{s}.jpg" for s in fd.sample_ids],
                         "split": ["train", "train", "val", "test", "test", "test"][:fd.n], "y": fd.y, "a": fd.a,
                         "group": fd.group})


def _run(fd):
    rot = np.roll(fd.embeddings, 1, axis=1)
    erm = NS(pred=np.array([0, 1, 1, 0, 0, 1]), probs=None, embeddings_after=None, calibration_set=None,
             record={"uses_group_labels": False, "selection_rule": "worst-class", "seed": 0, "hparams": {"lr": 0.1}},
             curves=None)
    cfr = NS(pred=np.array([0, 0, 1, 1, 0, 0]), probs=None, embeddings_after=rot, calibration_set=np.array([1, 3]),
             record={"uses_group_labels": False, "notes": ["a", "b"]}, curves=None)
    return NS(key="run1", results={"erm": erm, "cfr": cfr}, not_applicable={"zeroshot": "no text tower"})


def test_methods_of_a_run():
    run = _run(_fd())
    assert views.run_methods(run) == ["erm", "cfr"]
    assert views.methods_with_after(run) == ["cfr"] and views.methods_with_calibration_set(run) == ["cfr"]
    assert views.baseline_method(run) == "erm"
    assert views.baseline_method(NS(results={"cfr": None})) is None
    assert views.preferred_index(["erm", "cfr"]) == 1  # CFR first by default
    assert views.preferred_index(["erm", "cfr"], "erm") == 0 and views.preferred_index(["jtt"], "erm") == 0
    assert views.method_label("cfr") != "cfr" and views.method_label("nonesuch") == "nonesuch"
    assert views.not_applicable_notes(run) == [f"{views.method_label('zeroshot')} — not applicable: no text tower"]
    rec = views.records_table(run)
    assert rec["method"].tolist() == [views.method_label("erm"), views.method_label("cfr")]
    assert rec["hyperparameters"].iloc[0] == '{"lr": 0.1}' and rec["notes"].iloc[1] == "a; b"


def test_run_points_one_row_per_sample_with_every_colour_column():
    fd = _fd()
    table = _table(fd)
    run = _run(fd)
    xy_b = np.arange(12, dtype=np.float32).reshape(6, 2)
    pts = views.run_points(run, fd, table, True, "cfr", (xy_b, xy_b + 1))
    erm, cfr = views.method_label("erm"), views.method_label("cfr")
    assert list(pts.columns[:9]) == ["sample_id", "x_before", "y_before", "x_after", "y_after", "split", "class",
                                     "attribute", "group"]
    assert pts["group"].tolist()[:2] == ["landbird / land", "landbird / water"]
    assert pts[f"correct: {erm}"].tolist() == ["correct", "wrong", "correct", "wrong", "correct", "correct"]
    assert pts[f"calibration set: {cfr}"].tolist() == ["not in calibration set", "in calibration set",
                                                        "not in calibration set", "in calibration set",
                                                        "not in calibration set", "not in calibration set"]
    # ERM → CFR: sample 1 fixed (wrong → right), 3 fixed, 5 broken
    assert pts["crossed"].tolist() == ["still correct", "fixed", "still correct", "fixed", "still correct", "broken"]
    assert np.allclose(pts["move_2d"], np.sqrt(2)) and (pts["cos_change"] >= 0).all() and pts["cos_change"][0] > 0
    assert pts["path"].tolist() == table["path"].tolist()
    # without attribute labels: no attribute / group columns; without an "after": no movement, crossings unknown
    plain = views.run_points(run, fd, table, False, None, (xy_b, None))
    assert "attribute" not in plain and "group" not in plain and "move_2d" not in plain
    assert set(plain["crossed"]) == {"unknown"}
    opts = views.color_options(run, has_attributes=False)
    assert set(opts.values()) <= set(plain.columns) and "group" not in opts.values()
    assert set(views.color_options(run, True).values()) <= set(pts.columns)


def test_selection_and_hover_cards():
    fd = _fd()
    run = _run(fd)
    xy_b = np.zeros((6, 2), np.float32)
    xy_a = np.array([[0, 0], [3, 0], [1, 0], [0, 5], [0, 0], [2, 0]], np.float32)
    pts = views.run_points(run, fd, _table(fd), True, "cfr", (xy_b, xy_a))
    sel = views.selection_rows(pts, ["s3", "s0", "nope"])
    assert sel["sample_id"].tolist() == ["s3", "s0"] and not set(views.COORDINATES) & set(sel.columns)
    shown = pts[pts["split"] == "test"]
    cards, hover = views.hover_cards(run, shown, fd.class_names, "cfr")
    assert hover == ["class", "attribute", "split", "prediction (ERM)", "prediction (CFR)"]
    assert cards["prediction (CFR)"].tolist() == ["waterbird", "landbird", "landbird"]  # rows 3, 4, 5
    assert views.hover_columns(pts, "class") == ["attribute", "split", "crossed"]


def test_metrics_and_group_tables_leave_out_methods_that_did_not_run():
    headline = pd.DataFrame({"method": ["erm", "zeroshot"], "n": [80, 0], "status": ["ok", "not applicable: x"]})
    groups = pd.DataFrame({"method": ["erm", "erm", "zeroshot"], "split": ["test", "val", "test"],
                           "group": [0, 0, 0], "accuracy": [0.5, 0.7, np.nan]})
    run = NS(headline=lambda split: headline, group_tables=groups, not_applicable={"zeroshot": "x"})
    assert views.metrics_table(run, "test", numbers_only=True)["method"].tolist() == ["erm"]
    assert len(views.metrics_table(run, "test")) == 2
    g = views.group_tables(run, "val")
    assert g["accuracy"].tolist() == [0.7] and g["method"].tolist() == [views.method_label("erm")]
    assert "split" not in g


def test_inspection_notes_and_tables():
    scores = pd.DataFrame({"class": ["landbird", "landbird", "waterbird"], "score": [np.nan, np.nan, 0.1],
                           "n_wrong": [0, 0, 3], "n_correct": [9, 9, 4]})
    assert views.unscored_class_notes(scores, "cfr") == [
        "**landbird** (9 val + test images): CFR classified all 9 of them correctly: no errors to explain."]
    t = pd.DataFrame({"representation": ["before", "after"], "balanced_accuracy": [0.9, 0.6]})
    table = views.decodability_table([("cfr", t), ("jtt", t.assign(balanced_accuracy=[0.9, 0.8]))])
    assert table["representation"].tolist() == ["before (frozen)", f"after ({views.method_label('cfr')})",
                                                 f"after ({views.method_label('jtt')})"]
    assert table["balanced_accuracy"].tolist() == [0.9, 0.6, 0.8]
    run = _run(_fd())
    assert views.calibration_set_choice(run, "cfr") == ("cfr", None)
    m, note = views.calibration_set_choice(run, "erm")
    assert m == "cfr" and note.startswith(f"{views.method_label('erm')} selects no calibration set")
    assert views.calibration_set_choice(NS(results={}), "erm") == (None, None)
    assert "DFR" in views.no_after_note(["dfr"])


def test_live_curves_table_and_progress_lines():
    history = [NS(done=1, time=1.0, extra={"stage": "erm", "metrics": {"loss": 1.0, "val_wg": 0.5, "x": "no"}}),
               NS(done=1.5, time=2.0, extra={}),
               NS(done=2, time=3.0, extra={"stage": "erm", "metrics": {"loss": float("nan")}})]
    t = views.live_curves_table(NS(history=history))
    assert t.to_dict("list") == {"epoch": [1, 1], "stage": ["erm", "erm"], "split": ["train", "val"],
                                 "metric": ["loss", "val_wg"], "value": [1.0, 0.5]}
    assert views.live_curves_signature(history) == (2, 1, 1.0)
    assert views.fmt_eta(65) == "1 min 05 s" and views.fmt_eta(None) == "—" and views.fmt_eta(4.4) == "4 s"


@pytest.mark.parametrize("raw, value", [("1e-3", 0.001), ("[1, 2]", [1, 2]), ("true", True), (" text ", "text")])
def test_typed_values_from_text_fields(raw, value):
    assert views.parse_value(raw) == value


def test_sample_table_follows_the_given_rows():
    fd = _fd()
    t = _table(fd).assign(split=pd.Categorical(_table(fd)["split"]))
    out = views.sample_table(t, ["s4", "s0"])
    assert out["sample_id"].tolist() == ["s4", "s0"] and out["split"].tolist() == ["test", "train"]
    assert not isinstance(out["split"].dtype, pd.CategoricalDtype)  # plain strings, as the pages compare them
