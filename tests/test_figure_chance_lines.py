"""clipcal.figures: a chance line spans the whole decodability plot, one level per metric, tiling its width."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clipcal import figures as F


def _decod_table(n_reps: int, chance: float) -> pd.DataFrame:
    return pd.DataFrame({"representation": ["before"] + [f"after ({i})" for i in range(1, n_reps)],
                         "balanced_accuracy": np.linspace(0.9, 0.6, n_reps), "auroc": np.linspace(0.95, 0.7, n_reps),
                         "chance": chance})


def _paper_extent(fig, shape) -> tuple[float, float]:
    """x0, x1 of a shape in paper coordinates (0 = left edge of the plot area, 1 = right edge)."""
    if shape.xref == "paper":
        return shape.x0, shape.x1
    assert shape.xref == "x"
    r0, r1 = fig.layout.xaxis.range
    return (shape.x0 - r0) / (r1 - r0), (shape.x1 - r0) / (r1 - r0)


@pytest.mark.parametrize("n_reps", [1, 2, 5, 9])
def test_chance_line_spans_the_whole_plot_for_any_number_of_bars(n_reps):
    fig = F.decodability_figure(_decod_table(n_reps, 0.5))
    assert len(fig.data) == n_reps and all(t.type == "bar" for t in fig.data)  # chance is no longer a trace
    (line,) = fig.layout.shapes
    assert _paper_extent(fig, line) == (0, 1)
    assert line.y0 == line.y1 == 0.5 and line.line.dash == "dash"
    assert line.showlegend and line.name == "chance level (0.50)"


def test_chance_lines_per_metric_tile_the_width_when_levels_differ():
    # 3 attribute values: balanced-accuracy chance 1/3, AUROC chance 0.5
    fig = F.decodability_figure(_decod_table(6, 1 / 3))
    shapes = fig.layout.shapes
    assert [s.y0 for s in shapes] == pytest.approx([1 / 3, 0.5])
    ext = [_paper_extent(fig, s) for s in shapes]
    assert ext == [pytest.approx((0.0, 0.5)), pytest.approx((0.5, 1.0))]  # together 0 → 1, no gap
    # every category slot (where its group of bars sits) is covered by its own level
    assert list(fig.layout.xaxis.range) == [-0.5, 1.5]
    assert [s.showlegend for s in shapes] == [True, False]
    assert shapes[0].name == "chance level (bal. acc. 0.33, AUROC 0.50)"
