"""What a calibration run did, in numbers and sentences: the story the demo path ends on (issue 12.5).

ERM's worst group (name and accuracy) → what each method recovered (worst-group change vs ERM, the ones that
read group labels marked) → which test images crossed the decision boundary between ERM and the method whose
representation changed (counts by group, a few to show) → which way that representation moved (the class
purity of each group's neighbourhoods before vs after, :mod:`clipcal.separation`). Where the method changed
little, or its model selection kept the stage-1 ERM model, the story says so plainly instead of implying a gain.

Pure functions of a run's metrics, per-group tables, method records and a points frame; no Streamlit. The
Home page (where "Run the demo path" ends) and the Representations page show :func:`run_story`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from clipcal.catalog import method_short

#: a worst-group change (accuracy, 0–1) below this is "little" (2 points: under one image in 50)
LITTLE_ACCURACY = 0.02
#: a change of neighbourhood class purity (0–1) below this in every group is "little"
LITTLE_PURITY = 0.02
#: the baseline every method is compared with, in order of preference (ERM: the last layer on frozen embeddings)
BASELINES = ("erm", "zeroshot")


@dataclass(frozen=True)
class MethodChange:
    """One method's result against the baseline.

    Attributes:
        method / label: name and short display name (:func:`clipcal.catalog.method_short`).
        value: its test worst-group (or worst-class) accuracy, 0–1.
        worst: the name of its worst group (class). change: ``value`` − the baseline's (None for the baseline).
        uses_group_labels: whether it read group labels (DFR; any method selected by worst-group accuracy).
    """

    method: str
    label: str
    value: float
    worst: str
    change: float | None
    uses_group_labels: bool


@dataclass(frozen=True)
class Story:
    """What :func:`build_story` returns: sentences for the page and the numbers behind them.

    Attributes:
        headline: one sentence. sentences: the story, in order (baseline, each method, crossings, direction,
            and plain notes where little changed or the selection kept ERM).
        metric: ``"worst-group"`` or ``"worst-class"`` (no attribute labels). baseline: ``"erm"`` / ``"zeroshot"``
            / None. worst: the baseline's worst group (class) name. worst_value: its accuracy (0–1).
        changes: one :class:`MethodChange` per method that ran, baseline first.
        method: the method whose representation changed (the "after" of the map), or None.
        crossings: DataFrame ``group, fixed, broken`` (test images per group that crossed the boundary from the
            baseline to ``method``; groups with neither left out), ``None`` without a points frame.
        examples: sample ids of a few fixed images, the baseline's worst group first.
        purity: :func:`clipcal.separation.neighbourhood_purity` of ``method`` (or None).
        changed_little: the method moved neither its worst-group accuracy (< :data:`LITTLE_ACCURACY`) nor any
            group's neighbourhood purity (< :data:`LITTLE_PURITY`).
        kept_erm: the method's model selection returned the stage-1 ERM model (record ``fallback == "erm"``).
    """

    headline: str
    sentences: tuple[str, ...]
    metric: str
    baseline: str | None
    worst: str | None
    worst_value: float | None
    changes: tuple[MethodChange, ...]
    method: str | None
    crossings: pd.DataFrame | None = field(default=None, compare=False)
    examples: tuple[str, ...] = ()
    purity: pd.DataFrame | None = field(default=None, compare=False)
    changed_little: bool = False
    kept_erm: bool = False


def _acc(v: float) -> str:
    return f"{v:.3f}"


def _points(d: float) -> str:
    return f"{d * 100:+.1f} points"


def worst_of(group_tables: pd.DataFrame, method: str, split: str = "test") -> tuple[str, float] | None:
    """``(name, accuracy)`` of the method's worst group on ``split`` from a run's per-group tables (columns
    ``method, split, group, class, attribute, n, accuracy``); groups with an attribute label only when there are
    any (else per class, named by the class). None when the method has no rows. Ties: the first group."""
    r = _worst_row(group_tables, method, split)
    if r is None:
        return None
    name = f"{r['class']} / {r['attribute']}" if int(r["group"]) >= 0 else str(r["class"])
    return name, float(r["accuracy"])


def _worst_row(group_tables: pd.DataFrame, method: str, split: str):
    t = group_tables[(group_tables["method"] == method) & (group_tables["split"] == split)
                     & (group_tables["n"] > 0)]
    t = t[t["accuracy"].notna()]
    if not len(t):
        return None
    known = t[t["group"] >= 0]
    t = known if len(known) else t
    return t.loc[t["accuracy"].astype(float).idxmin()]


def worst_interval(group_tables: pd.DataFrame, method: str, split: str = "test") -> tuple[float, float, int] | None:
    """``(low, high, n)``: the 95 % Wilson interval of the accuracy of the method's worst group (:func:`worst_of`)
    — the table's own ``ci_low`` / ``ci_high`` (:func:`clipcal.metrics.group_table`) — and its number of images;
    None when the method has no rows."""
    r = _worst_row(group_tables, method, split)
    if r is None:
        return None
    return float(r["ci_low"]), float(r["ci_high"]), int(r["n"])


def _within_noise(group_tables: pd.DataFrame, a: str, b: str, split: str) -> str:
    """A clause saying the two methods' worst-group accuracies lie inside each other's 95 % intervals, or ""."""
    ia, ib = worst_interval(group_tables, a, split), worst_interval(group_tables, b, split)
    if ia is None or ib is None or ia[1] < ib[0] or ib[1] < ia[0]:
        return ""
    return (f"; the 95 % intervals of the two worst groups overlap (n = {ia[2]:,} and {ib[2]:,} {split} images), "
            "so this is not a clear change")


def crossing_counts(points: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Test images per group that crossed the decision boundary: DataFrame ``group, fixed, broken`` from a
    points frame (:func:`clipcal.views.run_points` or :func:`story_points`: ``split``, ``crossed`` and
    ``group`` — or ``class`` without attribute labels); groups with neither left out, most fixed first."""
    col = "group" if "group" in points else "class"
    p = points[(points["split"].astype(str) == split) & points["crossed"].astype(str).isin(["fixed", "broken"])]
    if not len(p):
        return pd.DataFrame({"group": pd.Series(dtype=str), "fixed": pd.Series(dtype=np.int64),
                             "broken": pd.Series(dtype=np.int64)})
    t = pd.crosstab(p[col].astype(str), p["crossed"].astype(str))
    t = t.reindex(columns=["fixed", "broken"], fill_value=0).astype(np.int64)
    t = t.reset_index().rename(columns={col: "group"})
    t.columns.name = None
    return t.sort_values(["fixed", "broken", "group"], ascending=[False, True, True]).reset_index(drop=True)


def _by_group(t: pd.DataFrame, col: str) -> str:
    return ", ".join(f"{r.group} {getattr(r, col)}" for r in t[t[col] > 0].sort_values(col, ascending=False)
                     .itertuples())


def build_story(metrics: pd.DataFrame, group_tables: pd.DataFrame, records: Mapping[str, Mapping],
                points: pd.DataFrame | None = None, purity: pd.DataFrame | None = None, method: str | None = None,
                split: str = "test", n_examples: int = 6) -> Story:
    """The story of one run: who is worst under ERM, what each method recovered, what crossed, what moved.

    Args:
        metrics: the run's metric rows (:func:`clipcal.metrics.method_table`: ``method, split, worst_group,
            worst_class, uses_group_labels, status``); methods are named by :func:`clipcal.catalog.method_short`.
        group_tables: the run's per-group tables (``Run.group_tables``).
        records: ``{method: MethodResult.record}`` (CFR's ``fallback``, ``fallback_reason``).
        points: rows with ``sample_id, split, crossed`` and ``group`` (or ``class``) — crossings of ``method``
            against the baseline (:func:`story_points`, :func:`clipcal.views.run_points`); None = not told.
        purity: :func:`clipcal.separation.neighbourhood_purity` of ``method`` (None = not measured).
        method: the method whose representation changed (e.g. ``"cfr"``); None = no representation story.
        split: the split the numbers come from (``"test"``: the honest one).
        n_examples: how many fixed images to name in ``examples``.

    Returns:
        :class:`Story`.
    """
    m = metrics[(metrics["split"] == split) & (metrics.get("status", "ok") == "ok")]
    ran = list(dict.fromkeys(m["method"]))
    base = next((b for b in BASELINES if b in ran), None)
    finite = lambda col, name: bool(np.isfinite(float(m.loc[m["method"] == name, col].iloc[0])))  # noqa: E731
    col = "worst_group" if base is not None and finite("worst_group", base) else "worst_class"
    metric = "worst-group" if col == "worst_group" else "worst-class"
    unit = "group" if col == "worst_group" else "class"
    label = {n: method_short(n) for n in ran}  # short names: the long labels repeat "(uses group labels)"
    value = {n: float(m.loc[m["method"] == n, col].iloc[0]) for n in ran}

    def worst_name(name: str) -> str:
        w = worst_of(group_tables, name, split)  # per class when there are no attribute labels
        return w[0] if w else ""

    sentences: list[str] = []
    changes: list[MethodChange] = []
    bw = worst_name(base) if base else ""
    if base is not None:
        base_uses = bool(m.loc[m["method"] == base, "uses_group_labels"].iloc[0])
        sentences.append(f"{label[base]} ({'uses group labels' if base_uses else 'no group labels'}) is worst on "
                         f"**{bw or 'one ' + unit}**: {_acc(value[base])} {split} accuracy.")
    order = ([base] if base else []) + [n for n in ran if n != base]
    for name in order:
        uses = bool(m.loc[m["method"] == name, "uses_group_labels"].iloc[0])
        change = None if base is None or name == base else value[name] - value[base]
        changes.append(MethodChange(name, str(label[name]), value[name], worst_name(name), change, uses))
        if change is None:
            continue
        flag = " — **uses group labels**" if uses else " (no group labels)"
        sentences.append(f"{label[name]}{flag}: {metric} {_acc(value[name])}, {_points(change)} vs {label[base]}"
                         + (f"; its worst {unit} is now {worst_name(name)}" if worst_name(name)
                            and worst_name(name) != bw else "") + ".")

    rec = dict(records.get(method) or {}) if method else {}
    kept_erm = rec.get("fallback") == "erm"
    mlabel = str(label.get(method, method)) if method else ""
    crossings, examples = None, ()
    if method and points is not None and base is not None and base != method and "crossed" in points:
        crossings = crossing_counts(points, split)
        fixed, broken = int(crossings["fixed"].sum()), int(crossings["broken"].sum())
        n_split = int((points["split"].astype(str) == split).sum())
        if fixed + broken == 0:
            sentences.append(f"No {split} image crossed the decision boundary between {label[base]} and {mlabel}: "
                             "they are right and wrong on the same images.")
        else:
            sentences.append(
                f"{fixed + broken} of {n_split} {split} images crossed the decision boundary from {label[base]} to "
                f"{mlabel}: {fixed} fixed" + (f" ({_by_group(crossings, 'fixed')})" if fixed else "")
                + f", {broken} broken" + (f" ({_by_group(crossings, 'broken')})" if broken else "") + ".")
        gcol = "group" if "group" in points else "class"
        p = points[(points["split"].astype(str) == split) & (points["crossed"].astype(str) == "fixed")]
        p = pd.concat([p[p[gcol].astype(str) == bw], p[p[gcol].astype(str) != bw]])
        examples = tuple(p["sample_id"].astype(str).head(n_examples))

    moved = 0.0
    if method and purity is not None and len(purity):
        t = purity.assign(abs_change=purity["change"].abs())
        moved = float(t["abs_change"].max())
        top = t.sort_values("abs_change", ascending=False, kind="stable").iloc[0]
        focus = t[t["name"] == bw].iloc[0] if bw and (t["name"] == bw).any() else top
        k = purity.attrs.get("k")
        k_txt = f"{k} nearest neighbours" if k else "nearest neighbours"
        for r in ([focus] if focus["name"] == top["name"] else [focus, top]):
            way = ("barely moved" if abs(r["change"]) < LITTLE_PURITY else
                   "moved toward their own class" if r["change"] > 0 else "moved away from their own class")
            whose = (f"the representation {mlabel} returned (the stage-1 ERM model's last layer)" if kept_erm
                     else f"{mlabel}'s representation")
            sentences.append(
                f"In {whose} the {k_txt} of **{r['name']}** {split} images are "
                f"{r['purity_after']:.0%} their own class, against {r['purity_before']:.0%} before "
                f"({_points(r['change'])}): they {way}.")
    mchange = next((c.change for c in changes if c.method == method), None)
    changed_little = bool(method) and (mchange is None or abs(mchange) < LITTLE_ACCURACY) and moved < LITTLE_PURITY
    if kept_erm:
        why = rec.get("fallback_reason") or "empty calibration set"  # runs before the reason was recorded
        why = "its model selection scored no later model above it on validation" if why == "selection" else why
        sentences.append(f"{mlabel} returned the stage-1 ERM model ({why}), so its numbers are ERM's: on this "
                         "data it did not improve on ERM.")
    elif changed_little and method:
        sentences.append(f"{mlabel} changed little here: its {metric} moved {_points(mchange or 0.0)} and no "
                         f"group's neighbourhood class purity moved by {LITTLE_PURITY:.0%} or more.")
    elif method and purity is not None and len(purity) and moved < LITTLE_PURITY:
        sentences.append(f"{mlabel}'s neighbourhoods barely changed (no group's class purity moved by "
                         f"{LITTLE_PURITY:.0%} or more), so its 'after' map looks like the 'before' one: its change is "
                         "in where the decision boundary lies, not in which images sit together.")

    if base is None:
        headline = "No baseline (ERM or zero-shot) in this run: the methods' numbers are shown without a comparison."
    elif method and mchange is not None:
        did = ("kept the stage-1 ERM model" if kept_erm else "changed little" if changed_little
               else f"brings its {metric} to {_acc(value[method])}")
        noise = "" if kept_erm or changed_little else _within_noise(group_tables, base, method, split)
        headline = (f"{label[base]} is worst on {bw or 'one ' + unit} ({_acc(value[base])}); {mlabel} {did} "
                    f"({_points(mchange)}){noise}.")
    else:
        best = max(changes, key=lambda c: c.value)
        headline = (f"{label[base]} is worst on {bw or 'one ' + unit} ({_acc(value[base])}); best {metric}: "
                    f"{best.label} {_acc(best.value)}" + (" (uses group labels)" if best.uses_group_labels else "")
                    + ".")
    return Story(headline=headline, sentences=tuple(sentences), metric=metric, baseline=base, worst=bw or None,
                 worst_value=value.get(base) if base else None, changes=tuple(changes), method=method,
                 crossings=crossings, examples=examples, purity=purity, changed_little=changed_little,
                 kept_erm=kept_erm)


# ---------------------------------------------------------------------------------------------------------
# from a stored run
# ---------------------------------------------------------------------------------------------------------
def story_method(run) -> str | None:
    """The method whose representation the story follows: CFR if it changed the embeddings, else the first
    method with an ``embeddings_after``, else None."""
    after = [m for m, r in run.results.items() if getattr(r, "embeddings_after", None) is not None
             and m not in BASELINES]
    return "cfr" if "cfr" in after else (after[0] if after else None)


def story_points(run, class_names: Sequence[str], group_names: Sequence[str] | None, method: str | None
                 ) -> pd.DataFrame:
    """The points frame :func:`build_story` needs, without a map: ``sample_id, split, group, crossed`` from the
    run's labels and predictions (``group``: the group's name, or the class name where the attribute is unknown;
    ``crossed``: :func:`clipcal.projection.crossed_boundary` from the baseline to ``method``, else "unknown")."""
    from clipcal.projection import crossed_boundary

    lab = run.labels
    y, g = lab["y"].to_numpy(np.int64), lab["group"].to_numpy(np.int64)
    names = [group_names[int(gi)] if group_names and gi >= 0 else class_names[int(yi)] for gi, yi in zip(g, y)]
    base = next((b for b in BASELINES if b in run.results), None)
    if method in run.results and base is not None and base != method:
        crossed = np.asarray(crossed_boundary(run.results[base].pred, run.results[method].pred, y, detailed=True)
                             ).astype(str)
    else:
        crossed = np.full(len(y), "unknown", dtype=object)
    return pd.DataFrame({"sample_id": lab["sample_id"].astype(str), "split": lab["split"].astype(str),
                         "group": names, "crossed": crossed})


def run_purity(run, fd, method: str | None, group_names: Sequence[str] | None, split: str = "test",
               k: int | None = None) -> pd.DataFrame | None:
    """:func:`clipcal.separation.neighbourhood_purity` of ``method``'s "after" against the frozen embeddings,
    on ``split`` (neighbours among that split's images); per group, or per class when the benchmark has no
    attribute labels. None when the method changed no embedding or the split has fewer than 2 images.

    Args:
        run: the run; fd: its FeatureData (same rows); method: e.g. ``"cfr"``; group_names: the benchmark's
            group names (None without attribute labels); k: neighbours (default
            :data:`clipcal.separation.DEFAULT_K`).
    """
    from clipcal.separation import DEFAULT_K, neighbourhood_purity

    res = run.results.get(method) if method else None
    after = getattr(res, "embeddings_after", None)
    rows = np.flatnonzero(np.asarray(fd.split).astype(str) == split)
    if after is None or len(rows) < 2:
        return None
    by_group = bool(group_names) and bool((np.asarray(fd.group)[rows] >= 0).any())
    groups, names = (fd.group, group_names) if by_group else (fd.y, list(fd.class_names))
    return neighbourhood_purity(fd.embeddings, np.asarray(after), fd.y, groups, names, k=k or DEFAULT_K, rows=rows)


def run_story(run, points: pd.DataFrame | None = None, purity: pd.DataFrame | None = None,
              method: str | None = None) -> Story:
    """:func:`build_story` of a stored :class:`clipcal.runs.Run` (``method`` default :func:`story_method`)."""
    method = method if method is not None else story_method(run)
    records = {m: (r.record or {}) for m, r in run.results.items()}
    return build_story(run.metrics, run.group_tables, records, points=points, purity=purity, method=method)
