"""Groups page (issue 14 item 3): the per-group table and accuracy figure are built once per (run, split) and
reused on reruns — the figure does not depend on N, yet cost 1.7 s per rerun on a loaded machine."""

from __future__ import annotations

import pytest

from clipcal import figures, views
from pages.ui import state

pytestmark = pytest.mark.slow  # the seeded store (embed + six methods + UMAP), shared with the other AppTests


def test_groups_page_builds_table_and_figure_once_per_run_and_split(app, seeded_store, monkeypatch):
    from pages.ui import resources

    resources.forget("groups_fig")  # another test of this session may have drawn this run already
    built = {"tables": [], "figures": 0}
    real_table, real_fig = views.group_tables, figures.group_accuracy_figure

    def table(run, split="test"):
        built["tables"].append(split)
        return real_table(run, split)

    def fig(*args, **kwargs):
        built["figures"] += 1
        return real_fig(*args, **kwargs)

    monkeypatch.setattr(views, "group_tables", table)
    monkeypatch.setattr(figures, "group_accuracy_figure", fig)
    at = app("groups", **{state.K_RUN: seeded_store["run_id"]})
    assert not at.exception, [e.value for e in at.exception]
    at.run()
    at.run()
    assert (built["tables"], built["figures"]) == (["test"], 1)
    at.radio(key="groups.split").set_value("val").run()
    at.run()
    at.radio(key="groups.split").set_value("test").run()
    assert not at.exception, [e.value for e in at.exception]
    assert (built["tables"], built["figures"]) == (["test", "val"], 2)
    assert len(at.get("plotly_chart")) == 1
