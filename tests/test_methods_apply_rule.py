"""One rule decides which methods can run here (clipcal.methods.applicability), and the CLI, the run and the
Calibrate page all ask it: a method needing a text tower is out on an image-only backbone; one that trains or
selects with group labels is out on a benchmark without attribute labels. (The rule used to be written three
times — commands/calibrate.py, the page and, implicitly, each method's fit — with different answers.)"""

from __future__ import annotations

import pytest

from clipcal.methods.applicability import (NotApplicable, applicable_methods, available_methods,
                                           not_applicable_reason)

ALL = ["zeroshot", "erm", "jtt", "afr", "dfr", "cfr"]


def test_text_tower_and_group_labels():
    assert not_applicable_reason("zeroshot", has_text=False, has_attributes=True) == NotApplicable("zeroshot", "text")
    assert not_applicable_reason("dfr", True, False) == NotApplicable("dfr", "group labels")
    assert not_applicable_reason("erm", True, False, selection="worst-group") == \
        NotApplicable("erm", "worst-group selection")
    # a method without a selection rule is not refused for one (zero-shot selects nothing)
    assert not_applicable_reason("zeroshot", True, False, selection="worst-group") is None
    assert not_applicable_reason("erm", True, True, selection="worst-group") is None
    # benchmark not loaded yet: only the backbone is judged
    assert not_applicable_reason("dfr", True, None) is None
    assert not_applicable_reason("zeroshot", False, None) is not None


def test_applicable_methods_in_display_order():
    assert list(available_methods()) == ALL
    assert applicable_methods(True, True) == ALL
    assert applicable_methods(False, True) == ["erm", "jtt", "afr", "dfr", "cfr"]
    assert applicable_methods(True, False) == ["zeroshot", "erm", "jtt", "afr", "cfr"]
    assert applicable_methods(False, False, methods=["cfr", "dfr", "erm"]) == ["cfr", "erm"]
    assert applicable_methods(True, False, selection="worst-group") == ["zeroshot"]  # the others select or use groups


def test_wordings():
    text, groups = NotApplicable("zeroshot", "text"), NotApplicable("dfr", "group labels")
    assert text.short() == "this backbone has no text tower"  # what a run records, as zero-shot's own error
    assert text.sentence("bundled:efficientnet-lite0") == \
        "zeroshot needs a text tower and bundled:efficientnet-lite0 is image-only"
    assert groups.sentence(benchmark="csv") == "dfr uses group labels and csv has no spurious-attribute labels"
    assert groups.short() == "this benchmark has no spurious-attribute labels (it uses group labels)"


def test_the_run_asks_the_rule_before_any_fit(syn_small_ds, tmp_store_root, monkeypatch):
    """run_calibration records what the rule refuses as "not applicable" without fitting it."""
    from clipcal.data.base import Benchmark
    from clipcal.methods import get_method
    from clipcal.runs import run_calibration
    from clipcal.store import Store

    monkeypatch.setattr(get_method("dfr"), "_fit", lambda *a, **k: pytest.fail("DFR was fitted"))
    b = syn_small_ds.benchmark()
    no_attr = Benchmark(b.name, b.root, b.table.assign(a=-1), b.class_names, [], params=b.params)
    run = run_calibration(no_attr, syn_small_ds.embedding_set(), "erm,jtt,dfr", store=Store(tmp_store_root),
                          hparams={"erm": {"epochs": 3}, "jtt": {"epochs": 3, "selection": "worst-group"}})
    assert list(run.results) == ["erm"]
    assert run.not_applicable == {
        "jtt": "not applicable: this benchmark has no spurious-attribute labels (it selects by worst-group accuracy)",
        "dfr": "not applicable: this benchmark has no spurious-attribute labels (it uses group labels)"}


def test_the_cli_asks_the_rule(monkeypatch):
    """commands/calibrate.check_applicable refuses what the rule refuses, in the rule's words."""
    import clipcal.methods.applicability as rule
    from clipcal.commands.calibrate import check_applicable
    from clipcal.errors import MethodError

    asked = []
    real = rule.not_applicable_reason
    monkeypatch.setattr(rule, "not_applicable_reason", lambda m, *a: asked.append(m) or real(m, *a))
    with pytest.raises(MethodError) as err:
        check_applicable(["erm", "zeroshot"], True, has_text=False, has_attributes=True, selection=None, hparams={},
                         backbone="bundled:efficientnet-lite0")
    assert asked[:2] == ["erm", "zeroshot"]
    assert NotApplicable("zeroshot", "text").sentence("bundled:efficientnet-lite0") in err.value.message


def test_the_page_offers_what_the_rule_allows():
    """pages/calibrate.py offers ``applicable_methods(...)`` and no rule of its own (the AppTest suite checks what
    it shows: no DFR and the reason without attribute labels)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "pages"
    page = (root / "calibrate.py").read_text() + (root / "ui" / "calibrate.py").read_text()
    assert "applicable_methods(" in page and "not_applicable_reason(" in page
    assert ".needs_text" not in page and "has_attributes or not" not in page
