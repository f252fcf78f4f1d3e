"""clipcal.figures: a panel with nothing to show says why (concept scores), and rows of small multiples leave
room for their axis and panel titles (training curves)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clipcal import figures as F


def _concept_rows(ok_land: bool, ok_water: bool) -> pd.DataFrame:
    rows = []
    for c, ok in (("landbird", ok_land), ("waterbird", ok_water)):
        for k in range(4):
            rows.append({"class": c, "class_index": int(c == "waterbird"), "concept": f"c{k}",
                         "score": 0.1 * k if ok else np.nan, "effect_size": 0.5 * k if ok else np.nan,
                         "mean_sim_wrong": 0.2, "mean_sim_correct": 0.1, "n_wrong": 5 if ok else 0,
                         "n_correct": 9})
    return pd.DataFrame(rows)


def test_concept_panel_without_scores_says_why():
    fig = F.concept_scores_figure(_concept_rows(True, False), top=3)
    notes = [a for a in fig.layout.annotations if "nothing to score" in (a.text or "")]
    assert len(notes) == 1 and notes[0].xref == "x2 domain"
    assert fig.layout.xaxis2.visible is False and fig.layout.yaxis2.visible is False
    assert fig.layout.xaxis.visible is not False and len(fig.data[0].y) == 3
    assert fig.layout.height == 360
    # no class has scores (e.g. a method right on every landbird, wrong on every waterbird): a short chart of notes
    none = F.concept_scores_figure(_concept_rows(False, False), top=10)
    assert sum("nothing to score" in (a.text or "") for a in none.layout.annotations) == 2
    assert none.layout.height == 220


@pytest.mark.parametrize("n_metrics", [4, 6, 9])
def test_training_curve_rows_leave_room_for_axis_and_panel_titles(n_metrics):
    rows = [(e, "cfr", "train", f"m{k}", 1.0 / (e + 1)) for e in range(3) for k in range(n_metrics)]
    fig = F.training_curves_figure(pd.DataFrame(rows, columns=["epoch", "stage", "split", "metric", "value"]))
    nrows = int(np.ceil(n_metrics / 3))
    plot_px = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b
    gap = fig.layout.yaxis.domain[0] - fig.layout.yaxis4.domain[1]  # row 1 bottom − row 2 top
    assert gap * plot_px >= 90, f"{nrows} rows: only {gap * plot_px:.0f} px between rows"
