"""The tables, labels and notes the dashboard pages show, built from a stored run and its embeddings.

Plain functions of a :class:`clipcal.runs.Run` (or any object with ``results``, ``not_applicable``,
``headline(split)``, ``group_tables``), a ``FeatureData`` and DataFrames; no Streamlit, no torch. The pages
memoise and draw them; tests call them directly. Sections: methods of a run · metrics (Groups) · the joint map
(Representations) · inspections (Spurious attributes) · job progress lines.
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from clipcal.catalog import method_short
from clipcal.errors import MethodError

# ---------------------------------------------------------------------------------------------------------
# methods of a run
# ---------------------------------------------------------------------------------------------------------


def method_label(name: str) -> str:
    """Display label of a method name (``cfr`` → the class's ``label``); the name itself when unknown."""
    from clipcal.methods import get_method

    try:
        return getattr(get_method(name), "label", name)
    except MethodError:
        return name


def run_methods(run) -> list[str]:
    """Method names of a run that have a result, in the order they ran."""
    return list(run.results)


def method_result(run, method: str):
    """The :class:`~clipcal.methods.base.MethodResult` of ``method`` in ``run``."""
    return run.results[method]


def methods_with_after(run) -> list[str]:
    """Methods of the run that changed the embeddings (``embeddings_after`` not None), e.g. CFR."""
    return [m for m in run_methods(run) if getattr(method_result(run, m), "embeddings_after", None) is not None]


def methods_with_calibration_set(run) -> list[str]:
    """Methods of the run that selected training samples (CFR's calibration set, JTT's error set)."""
    return [m for m in run_methods(run) if getattr(method_result(run, m), "calibration_set", None) is not None]


def preferred_index(methods: Sequence[str], preferred: str | None = None) -> int:
    """Index of the method shown first: ``preferred`` (e.g. the one chosen on another page), else CFR, else 0."""
    for want in (preferred, "cfr"):
        if want in methods:
            return list(methods).index(want)
    return 0


def baseline_method(run) -> str | None:
    """The "before" classifier for boundary crossings: ERM (linear probe on the frozen embeddings), else
    zero-shot, if the run has one."""
    methods = run_methods(run)
    return next((m for m in ("erm", "zeroshot") if m in methods), None)


def no_after_note(methods: Sequence[str]) -> str:
    """Why some methods have no "after" representation: they retrain only the classifier."""
    names = ", ".join(method_label(m) for m in methods)
    return (f"No \"after\" for {names}: these change only the classifier on top of the frozen embeddings "
            "(e.g. DFR retrains the last layer), not the representation, so their embeddings are the "
            "\"before\" ones.")


def fallback_notes(run, only: str | None = None) -> list[str]:
    """One warning per method of the run (or only ``only``) whose result is in fact another method's, saying why
    (from the record), what that means for its numbers and plots, and what to do:

    - CFR with ``fallback == "erm"`` and ``fallback_reason == "selection"``: stage 2 ran on a non-empty calibration
      set but the model selection scored no CFR epoch (nor the stage-2 start) above the stage-1 ERM model — the
      guard against a collapse, not an empty set;
    - CFR with ``fallback_reason == "empty calibration set"`` (or no reason: runs stored before it was recorded):
      the rule(s) that ran found no image ERM gets wrong; the cross-fit rule is suggested only when it was not
      already tried (``calibration_errors`` "train");
    - JTT with an empty error set retrains exactly like ERM.
    """
    out = []
    for name in run_methods(run):
        if only is not None and name != only:
            continue
        rec = method_result(run, name).record or {}
        label = method_label(name)
        if rec.get("fallback") and rec.get("fallback_reason") == "selection":
            cs, sel = rec.get("calibration_set") or {}, rec.get("selection") or {}
            out.append(
                f"{label} returned the stage-1 ERM model: stage 2 ran on a calibration set of {cs.get('size', '?')} "
                f"images, but its model selection (validation {sel.get('rule') or 'worst-class'} accuracy) scored "
                "no later model above the stage-1 ERM model, so its numbers and its 'after' representation are "
                "ERM's. This is the guard that keeps CFR from returning a model worse than where it started, not "
                "an error" + (f" ({sel['why']})." if sel.get("why") else "."))
        elif rec.get("fallback"):
            rule = rec.get("calibration_rule") or {}
            requested = rule.get("requested")
            cross = str((rec.get("calibration_set") or {}).get("source", "")).startswith("cross-fit")
            if requested == "auto" and rule.get("used") is None:
                why = ("under both rules: the ERM model classified every training image correctly, and so did the "
                       "ERM models trained on the other folds for the images they had not seen")
            elif cross:
                why = ("the ERM models trained on the other folds also classified every held-out training image "
                       "correctly")
            else:
                why = "the ERM model classified every training image correctly"
            advise = not cross and requested in (None, "train")
            out.append(
                f"{label} fell back to {str(rec['fallback']).upper()}: its calibration set was empty "
                f"({why}), so its numbers and its 'after' representation are ERM's. "
                + ("On Calibrate, set CFR's calibration_errors to 'cross-fit' (or 'auto') to take the images ERM "
                   "gets wrong when it has not trained on them (still no group labels)." if advise else ""))
        elif name == "jtt" and rec.get("error_set_size") == 0:
            out.append(f"{label} equals ERM here: its error set was empty (the ERM model classified "
                       "every training image correctly), so nothing was up-weighted.")
    return out


def outcome_notes(run, only: str | None = None) -> list[str]:
    """What each CFR-like method of the run (or only ``only``) did, for every page that shows it: which
    calibration-set rule ran and why, which model the selection returned and why —
    :func:`clipcal.methods.cfr.outcome_lines` of its record, each line prefixed with the method's label
    (``"CFR — Calibration set: …"``). ``[]`` for methods without those record fields (other methods, runs stored
    before them)."""
    from clipcal.methods.cfr import outcome_lines

    out = []
    for name in run_methods(run):
        if only is not None and name != only:
            continue
        rec = method_result(run, name).record or {}
        out += [f"{method_label(name)} — {line}" for line in outcome_lines(rec)]
    return out


#: how :func:`clipcal.runs.run_calibration` marks a method that applied but failed (e.g. a NaN loss)
FAILED_PREFIX = "failed:"


def failed_methods(run) -> dict[str, str]:
    """``{method: message}`` of the methods of the run that applied but failed while training (their status
    starts with ``"failed:"``: a non-finite loss, a bug) — the message says what to change, e.g. a smaller lr."""
    return {m: str(why)[len(FAILED_PREFIX):].strip() for m, why in (getattr(run, "not_applicable", {}) or {}).items()
            if str(why).startswith(FAILED_PREFIX)}


def failed_notes(run) -> list[str]:
    """``["CFR failed: <message and what to change>", …]`` — one per method of :func:`failed_methods` (pages show
    them as errors: such a method has no numbers, and none may be shown for it)."""
    return [f"{method_label(m)} failed: {msg}" for m, msg in failed_methods(run).items()]


def not_applicable_notes(run) -> list[str]:
    """``["Zero-shot — not applicable: <reason>", …]`` for the methods of the run that could not run because they
    do not apply here (the ones that applied and failed are :func:`failed_notes`)."""
    out = []
    for m, why in (getattr(run, "not_applicable", {}) or {}).items():
        why = str(why)
        if why.startswith(FAILED_PREFIX):
            continue
        out.append(f"{method_label(m)} — {why if why.startswith('not applicable') else 'not applicable: ' + why}")
    return out


def _seeds(seeds) -> str:
    seeds = [int(x) for x in seeds or []]
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"mean over seeds {seeds[0]}–{seeds[-1]}"
    return ("seed " if len(seeds) == 1 else "mean over seeds ") + ", ".join(map(str, seeds))


def difficulty_label(preset: Mapping) -> str:
    """The demo difficulty select's option text: ``"waterbirds-like (default) — ERM 0.57 · DFR 0.84
    worst-group"`` from one entry of :func:`clipcal.data.demo.difficulty_presets` (name only when not measured)."""
    name = str(preset["name"]) + (" (default)" if preset.get("default") else "")
    m = preset.get("measured")
    if not m:
        return name
    return f"{name} — ERM {m['erm_worst_group']:.2f} · DFR {m['dfr_worst_group']:.2f} worst-group"


def difficulty_note(preset: Mapping) -> str:
    """What a demo difficulty preset does and what it was measured to do, for the Data page: its teaching
    sentence, the bird size and opacity, and ERM's / DFR's test worst-group accuracy with where they come from
    (:func:`clipcal.data.demo.difficulty_presets`)."""
    teaching = str(preset.get("teaching", ""))
    text = (teaching[:1].upper() + teaching[1:] + ". " if teaching else "") + (
        f"Birds {preset['bird_scale_min']:.0%}–{preset['bird_scale_max']:.0%} of the image side, "
        + ("opaque." if float(preset["bird_opacity"]) >= 1 else f"opacity {preset['bird_opacity']:.0%}."))
    m = preset.get("measured")
    if not m:
        return text + " Effect not measured yet."
    return (text + f" Measured ({m.get('backbone', '')}, test split, {_seeds(m.get('seeds'))}): ERM worst-group "
            f"{m['erm_worst_group']:.3f} (no group labels), DFR {m['dfr_worst_group']:.3f} (uses group labels) — "
            f"a {100 * (m['dfr_worst_group'] - m['erm_worst_group']):.0f}-point gap that group labels close.")


# ---------------------------------------------------------------------------------------------------------
# metrics (Groups, Calibrate)
# ---------------------------------------------------------------------------------------------------------
#: metric column → its short display name (definitions: clipcal.metrics.METRIC_DEFINITIONS)
METRIC_COLUMNS = {"worst_group": "worst-group", "overall": "overall", "mean_group": "mean of groups",
                  "train_weighted": "train-weighted", "worst_class": "worst-class"}


def metrics_table(run, split: str = "test", numbers_only: bool = False) -> pd.DataFrame:
    """The run's :func:`clipcal.metrics.method_table` rows of ``split`` (stored with the run): ``method, label,
    split, n, worst_group, overall, mean_group, train_weighted, worst_class, uses_group_labels, selection_rule,
    chosen_epoch, status``. Methods that could not run keep a row whose ``status`` says why — unless
    ``numbers_only``: then those rows are left out (all their cells would be empty; :func:`not_applicable_notes`
    lists them with the reason)."""
    t = run.headline(split)
    if numbers_only and "method" in t:
        t = t[~t["method"].isin(list(getattr(run, "not_applicable", {}) or {}))].reset_index(drop=True)
    return t


def group_tables(run, split: str = "test") -> pd.DataFrame:
    """Per-group accuracy with 95 % intervals of every method that ran, on ``split`` (stored with the run):
    the columns of :func:`clipcal.metrics.group_table` plus ``method`` (display label)."""
    g = run.group_tables
    g = g[g["split"] == split].drop(columns=["split"]).copy()
    g = g[~g["method"].isin(list(getattr(run, "not_applicable", {}) or {}))]  # no numbers, listed apart
    g["method"] = g["method"].map(method_label)
    return g.reset_index(drop=True)


def loss_formula(record: Mapping | None) -> str:
    """The loss a method trained with, as its record says (CFR: ``record["loss_terms"]["formula"]``, e.g.
    ``"1.5·CE(calibration set) + 1·SupCon(train batch, t=0.07)"``); ``""`` when not recorded (other methods, runs
    of older versions)."""
    terms = (record or {}).get("loss_terms")
    return str(terms.get("formula") or "") if isinstance(terms, Mapping) else ""


def records_table(run) -> pd.DataFrame:
    """How each method was trained and selected: ``method, status`` (``ran`` / ``failed: …``), ``uses group
    labels, selection rule, seed, chosen epoch, loss terms`` (:func:`loss_formula`), ``last layer`` (how W
    started: ``record["last_layer"]``, :data:`clipcal.methods._train.WEIGHT_SOURCES`), ``hyperparameters``
    (JSON), ``notes``. Methods that failed get a row with their message and no numbers."""
    rows = []
    for name in run_methods(run):
        rec = method_result(run, name).record or {}
        rows.append({"method": method_label(name), "status": "ran",
                     "uses group labels": "yes" if rec.get("uses_group_labels") else "no",
                     "selection rule": rec.get("selection_rule", ""), "seed": rec.get("seed"),
                     "chosen epoch": rec.get("chosen_epoch"), "loss terms": loss_formula(rec),
                     "last layer": str(rec.get("last_layer") or ""),
                     "hyperparameters": json.dumps(rec.get("hparams", {}), default=str),
                     "notes": "; ".join(map(str, rec.get("notes") or []))})
    for name, msg in failed_methods(run).items():
        rows.append({"method": method_label(name), "status": f"failed: {msg}", "uses group labels": "",
                     "selection rule": "", "seed": None, "chosen epoch": None, "loss terms": "", "last layer": "",
                     "hyperparameters": "", "notes": ""})
    return pd.DataFrame(rows, columns=RECORD_COLUMNS)


#: the columns of :func:`records_table`
RECORD_COLUMNS = ["method", "status", "uses group labels", "selection rule", "seed", "chosen epoch", "loss terms",
                  "last layer", "hyperparameters", "notes"]


def model_settings_line(settings: Mapping | None) -> str:
    """One line on the settings (activation, preprocessing) an embedding set was made with, from its manifest's
    ``meta["model_settings"]`` (:meth:`clipcal.backbones.ModelSettings.as_dict`) — the same words as
    :meth:`~clipcal.backbones.ModelSettings.summary`, plus "a guess" when they were not confirmed; for sets
    embedded before the settings were recorded (``None``) it says so."""
    if not isinstance(settings, Mapping) or "preprocess" not in settings:
        return "Model settings: not recorded (embedded by an older version of clipcal)"
    from clipcal.backbones import ModelSettings

    s = ModelSettings(quick_gelu=bool(settings.get("quick_gelu")), preprocess=dict(settings["preprocess"] or {}),
                      tag=settings.get("tag"), source=str(settings.get("source", "")),
                      reason=str(settings.get("reason", "")), confirmed=bool(settings.get("confirmed", True)),
                      warning=settings.get("warning"))
    return f"Model settings: {s.summary()}" + ("" if s.confirmed else " (a guess: the configuration was not named)")


def advanced_hparams(method: str) -> list[str]:
    """Hyperparameters of ``method`` the Calibrate page keeps under "Advanced": CFR's loss-term switches and their
    weights, switch then weight per term in :data:`clipcal.methods.cfr.LOSS_TERMS` order; ``[]`` for others."""
    if method != "cfr":
        return []
    from clipcal.methods.cfr import LOSS_TERMS

    return [n for t in LOSS_TERMS for n in (t, f"w_{t}")]


def number_bounds(constraints: Mapping, name: str, default) -> tuple:
    """``(min_value, max_value)`` for a number input of hyperparameter ``name`` from its declared domain
    (:func:`clipcal.methods.params.bounds_of`), typed like ``default`` (Streamlit wants one type): ints rounded
    inwards; ``None`` for an open end, and for a bound the default itself lies outside of."""
    import math

    from clipcal.methods.params import bounds_of

    lo, hi = bounds_of(dict(constraints or {}), name)
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        return None, None
    if isinstance(default, int):
        lo = None if lo is None or not math.isfinite(lo) else int(math.ceil(lo))
        hi = None if hi is None or not math.isfinite(hi) else int(math.floor(hi))
    else:
        lo = None if lo is None else float(lo)
        hi = None if hi is None else float(hi)
    return (lo if lo is not None and lo <= default else None), (hi if hi is not None and default <= hi else None)


def param_help(help_: str, constraints: Mapping, name: str) -> str:
    """A hyperparameter's one-line help plus its allowed values in words
    (:func:`clipcal.methods.params.describe`), when declared."""
    from clipcal.methods.params import describe

    cs = (constraints or {}).get(name)
    return f"{help_} — allowed: {describe(cs)}" if cs else help_


def parse_value(raw: str):
    """A typed hyperparameter value from a text field: JSON if it parses (numbers, lists), else the string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw.strip()


# ---------------------------------------------------------------------------------------------------------
# the joint map (Representations)
# ---------------------------------------------------------------------------------------------------------
def sample_table(table: pd.DataFrame, sample_ids: Sequence[str]) -> pd.DataFrame:
    """The benchmark's sample table in the order of ``sample_ids`` (a FeatureData's rows: the table minus skipped
    images), ``split`` as plain strings: ``sample_id, path, split, y, a, group``."""
    t = table.set_index("sample_id", drop=False).loc[list(sample_ids)].reset_index(drop=True)
    t["split"] = t["split"].astype(str)
    return t


def umap_points(table: pd.DataFrame, xy_before: np.ndarray, xy_after: np.ndarray | None = None,
                class_names: Sequence[str] | None = None, attr_names: Sequence[str] | None = None,
                extra: Mapping | None = None) -> pd.DataFrame:
    """The ``points`` frame :func:`clipcal.figures.umap_figure` draws, from the sample table and joint-UMAP
    coordinates.

    Args:
        table: sample table rows in the same order as the coordinates (``sample_id, split, y[, a]``); without an
            ``a`` column there are no ``attribute`` / ``group`` columns.
        xy_before / xy_after: [N, 2] from :func:`clipcal.projection.joint_umap` (``xy_after`` may be None).
        class_names / attr_names: names for the ``class``, ``attribute`` and ``group`` columns
            (``group`` = "class / attribute", "unknown" where ``a`` = -1).
        extra: more columns ``{name: [N] values}`` (e.g. ``{"correct: ERM": …, "crossed": …}``).

    Returns:
        DataFrame ``sample_id, x_before, y_before[, x_after, y_after], split, class[, attribute, group]`` plus
        the extra columns, one row per table row (RangeIndex).

    Raises:
        ValueError: the table and the coordinates differ in length.
    """
    t = table.reset_index(drop=True)
    xb = np.asarray(xy_before)
    if len(t) != len(xb) or (xy_after is not None and len(np.asarray(xy_after)) != len(xb)):
        raise ValueError(f"table has {len(t)} rows but coordinates have {len(xb)}")
    out = pd.DataFrame({"sample_id": t["sample_id"].astype(str), "x_before": xb[:, 0], "y_before": xb[:, 1]})
    if xy_after is not None:
        xa = np.asarray(xy_after)
        out["x_after"], out["y_after"] = xa[:, 0], xa[:, 1]
    if "split" in t:
        out["split"] = t["split"].astype(str)
    if "y" in t:
        cls = [class_names[int(v)] if class_names is not None else str(int(v)) for v in t["y"]]
        out["class"] = cls
        if "a" in t:
            att = [attr_names[int(v)] if attr_names is not None and 0 <= int(v) < len(attr_names)
                   else ("unknown" if int(v) < 0 else str(int(v))) for v in t["a"]]
            out["attribute"] = att
            out["group"] = [f"{c} / {a}" if a != "unknown" else "unknown" for c, a in zip(cls, att)]
    for name, vals in (extra or {}).items():
        out[name] = np.asarray(vals)
    return out


def run_points(run, fd, table: pd.DataFrame, has_attributes: bool, method: str | None, xy) -> pd.DataFrame:
    """:func:`umap_points` of a run: one row per FeatureData row with ``path``, one ``correct: <method>`` column
    per method, ``calibration set: <method>`` where it has one, ``crossed`` (baseline → ``method``, see
    :func:`clipcal.projection.crossed_boundary`; ``"unknown"`` without a baseline) and, with an "after",
    ``move_2d, cos_change`` (:func:`clipcal.projection.displacement`).

    Args:
        run: the run; fd: its FeatureData (rows = the run's rows); table: :func:`sample_table` of ``fd``.
        has_attributes: the benchmark has attribute labels (else no ``attribute`` / ``group`` columns).
        method: the method whose embeddings are the "after" (or None); xy: ``(xy_before, xy_after | None)``.
    """
    from clipcal.projection import crossed_boundary

    extra: dict = {"path": table["path"].to_numpy()}
    for m in run_methods(run):
        res = method_result(run, m)
        extra[f"correct: {method_label(m)}"] = np.where(np.asarray(res.pred) == fd.y, "correct", "wrong")
        cs = getattr(res, "calibration_set", None)
        if cs is not None:
            member = np.zeros(len(fd.y), bool)
            member[np.asarray(cs, dtype=np.int64)] = True
            extra[f"calibration set: {method_label(m)}"] = np.where(member, "in calibration set",
                                                                    "not in calibration set")
    bm = baseline_method(run)
    if method is not None and bm is not None and bm != method:
        extra["crossed"] = np.asarray(crossed_boundary(method_result(run, bm).pred, method_result(run, method).pred,
                                                       fd.y, detailed=True)).astype(str)
    else:
        extra["crossed"] = np.full(len(fd.y), "unknown", dtype=object)
    if xy[1] is not None:
        after = np.asarray(method_result(run, method).embeddings_after, dtype=np.float32)
        extra["move_2d"], extra["cos_change"] = _row_movement(xy, fd.embeddings, after)
    t = table if has_attributes else table.drop(columns=["a"])
    return umap_points(t, xy[0], xy[1], fd.class_names, fd.attr_names, extra=extra)


#: Bytes of one float64 [rows, e] block in :func:`_row_movement` (displacement works in float64: three [N, e]
#: float64 temporaries on all rows were 3.7 GB at CelebA size, 2 × 202,599 × 768).
MOVEMENT_BLOCK_BYTES = 32 * 2**20


def _row_movement(xy, before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(move_2d [N] float64, cos_change [N] float64)`` of :func:`clipcal.projection.displacement`, computed in
    row blocks of :data:`MOVEMENT_BLOCK_BYTES` (both columns are per row, so the blocks give the same numbers); the
    pages of a memory-mapped ``after`` (a stored run's) are released after each block (:func:`clipcal.store.release_pages`)."""
    from clipcal.projection import displacement
    from clipcal.rowblocks import row_blocks
    from clipcal.store import release_pages

    move, cos = np.empty(len(before)), np.empty(len(before))
    for s in row_blocks(len(before), before.shape[1], MOVEMENT_BLOCK_BYTES):
        d = displacement(xy[0][s], xy[1][s], before[s], after[s])
        move[s], cos[s] = d["move_2d"].to_numpy(), d["cos_change"].to_numpy()
        release_pages(after)
    return move, cos


def hover_cards(run, shown: pd.DataFrame, class_names: Sequence[str], method: str | None
                ) -> tuple[pd.DataFrame, list[str]]:
    """What a map point's hover card names: class, attribute, split and the predictions of the baseline
    (:func:`baseline_method`) and of ``method``, each named (``prediction (ERM)``) — the card is the same on the
    before and the after panel, so one unnamed "prediction" would pass the after-method's answer off as the
    baseline's.

    Args:
        run: the run; shown: rows of :func:`run_points` (index = FeatureData rows); class_names: the classes.
        method: the "after" method (or None).

    Returns:
        ``(a copy of shown with the prediction columns, the hover column names in card order)``.
    """
    p = shown.copy()
    hover = [c for c in ("class", "attribute", "split") if c in p]
    for pm in dict.fromkeys(m for m in (baseline_method(run), method) if m is not None):
        pred = np.asarray(method_result(run, pm).pred)[p.index.to_numpy()]
        col = f"prediction ({method_short(pm)})"
        p[col] = [class_names[int(i)] for i in pred]
        hover.append(col)
    return p, hover


def color_options(run, has_attributes: bool) -> dict[str, str]:
    """``{label: points column}`` of what the map can be coloured by (columns of :func:`run_points`)."""
    opts = {"class": "class"}
    if has_attributes:
        opts["spurious attribute"] = "attribute"
        opts["group"] = "group"
    for m in run_methods(run):
        opts[f"correct / incorrect: {method_label(m)}"] = f"correct: {method_label(m)}"
    for m in methods_with_calibration_set(run):
        opts[f"calibration set: {method_label(m)}"] = f"calibration set: {method_label(m)}"
    opts["split"] = "split"
    opts["crossed the decision boundary"] = "crossed"
    return opts


#: columns of the points frame that are coordinates (left out of the selection table)
COORDINATES = ("x_before", "y_before", "x_after", "y_after")


def selection_rows(points: pd.DataFrame, ids: Sequence[str]) -> pd.DataFrame:
    """Rows of the selected samples in selection order, without the map coordinates
    (:func:`clipcal.plot_selection.selection_table`)."""
    from clipcal.plot_selection import selection_table

    return selection_table(points[[c for c in points.columns if c not in COORDINATES]], ids)


def hover_columns(points: pd.DataFrame, color: str) -> list[str]:
    """Columns named on a map point's hover (class, attribute, split, crossed — except the colour itself)."""
    return [c for c in ("class", "attribute", "split", "crossed") if c in points and c != color]


# ---------------------------------------------------------------------------------------------------------
# inspections (Spurious attributes)
# ---------------------------------------------------------------------------------------------------------
def unscored_class_notes(scores: pd.DataFrame, method: str) -> list[str]:
    """For each class without concept scores (:func:`clipcal.concepts.concept_scores` gave NaN throughout): why —
    ``method`` classified all its val + test images correctly, or got all of them wrong."""
    out = []
    for k, sub in scores.groupby("class", sort=False):
        if sub["score"].isna().all():
            nw, nr = int(sub["n_wrong"].iloc[0]), int(sub["n_correct"].iloc[0])
            why = (f"{method_short(method)} classified all {nr} of them correctly: no errors to explain"
                   if nw == 0 else f"{method_short(method)} got all {nw} of them wrong: no correct images to "
                   "compare with — pick another method above")
            out.append(f"**{k}** ({nw + nr} val + test images): {why}.")
    return out


def decodability_table(results: Sequence[tuple[str | None, pd.DataFrame]]) -> pd.DataFrame:
    """One decodability table from :func:`clipcal.concepts.attribute_decodability` tables of several "after"
    methods: the frozen "before" row once, then one ``after (<method label>)`` row per method.

    Args:
        results: ``[(method or None, result.table), …]`` — tables with a ``before`` and / or an ``after`` row
            (the Spurious page passes the "before" probe once, then each method's "after"-only table); a
            ``before`` row after the first table is dropped.
    """
    rows = []
    for m, table in results:
        t = table.copy()
        t["representation"] = t["representation"].map(
            {"before": "before (frozen)", "after": f"after ({method_label(m)})" if m else "after"})
        rows.append(t if not rows else t[t["representation"] != "before (frozen)"])
    return pd.concat(rows, ignore_index=True)


def calibration_set_choice(run, method: str | None) -> tuple[str | None, str | None]:
    """Whose calibration set to show: ``(method, None)`` when ``method`` selects one; else the preferred method
    that does, with a note saying so; ``(None, None)`` when no method of the run selects one."""
    with_sets = methods_with_calibration_set(run)
    if not with_sets:
        return None, None
    if method in with_sets:
        return method, None
    m = with_sets[preferred_index(with_sets)]
    return m, (f"{method_label(method) if method else 'The chosen method'} selects no calibration set; showing "
               f"{method_label(m)}'s (methods with one: {', '.join(method_label(x) for x in with_sets)}).")


# ---------------------------------------------------------------------------------------------------------
# job progress lines
# ---------------------------------------------------------------------------------------------------------
def fmt_eta(seconds: float | None) -> str:
    """``"1 min 05 s"`` style; ``"—"`` when unknown."""
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def progress_line(job) -> str:
    """One line on a running :class:`clipcal.jobs.Job`: done / total (a percentage when fractional), rate, ETA,
    elapsed, message."""
    p = job.progress
    parts = []
    whole = float(p.done).is_integer()
    if p.total:  # fractional progress (methods of a calibration) as a percentage: "2 / 2" while CFR trains misled
        parts.append(f"{p.done:,.0f} / {p.total:,.0f}" if whole else f"{100 * p.done / p.total:.0f} %")
    if p.rate and (whole or p.rate >= 0.1):
        unit = p.extra.get("unit", "images" if "embed" in job.key else "items")
        parts.append(f"{p.rate:,.1f} {unit}/s")
    if p.total and p.rate:
        parts.append(f"ETA {fmt_eta(p.eta_s)}")
    parts.append(f"elapsed {fmt_eta(job.elapsed_s)}")
    if p.message:
        parts.append(p.message)
    return " · ".join(parts)


def job_short_line(job) -> str:
    """``"Run the demo — 2/3 embedding 896/2,400"``: the job's label, its current stage (the message part before
    ``:``, as :func:`clipcal.pipeline.staged` writes it) and that stage's own count. Multi-stage jobs restart their
    count at every stage, so an overall percentage would seem to go backwards."""
    import re

    p = job.progress
    msg = str(p.message or "")
    m = re.match(r"\s*(\d+/\d+ [^:]+)(:|$)", msg)  # "2/3 embedding: …"
    stage = m.group(1).strip() if m else ""
    parts = [job.label]
    if stage:
        parts.append(stage)
    if p.total:
        parts.append(f"{p.done:,.0f}/{p.total:,.0f}")
    elif not stage and msg:
        parts.append(msg)
    return " — ".join([parts[0], " ".join(parts[1:])]) if len(parts) > 1 else parts[0]


def _metric_rows(report) -> list[tuple[str, float]]:
    """``(name, value)`` of the finite numbers among one progress report's ``extra["metrics"]``."""
    return [(k, float(v)) for k, v in (report.extra.get("metrics") or {}).items()
            if isinstance(v, (int, float)) and v == v]


def live_curves_signature(history) -> tuple[int, float | None, float | None]:
    """What :func:`live_curves_table` would hold, without building it: ``(rows, epoch, time)`` — the number of
    metric rows and the ``done`` and ``time`` of the last report that added rows.

    Equal signatures mean an equal table (reports only append; the history is capped, so the row count alone
    could repeat, the report time cannot). ``history``: ``Job.history`` (objects with ``done, time, extra``).
    """
    n, last = 0, (None, None)
    for p in list(history):
        k = len(_metric_rows(p))
        if k:
            n, last = n + k, (p.done, p.time)
    return (n, *last)


def live_curves_table(job) -> pd.DataFrame:
    """Training metrics reported so far by a calibration job (``Progress.metrics`` of clipcal.methods) as a
    curves table ``epoch, stage, split, metric, value`` (``epoch`` = the report's ``done``)."""
    rows = [(p.done, p.extra.get("stage", ""), "val" if name.startswith("val") else "train", name, value)
            for p in list(job.history) for name, value in _metric_rows(p)]
    return pd.DataFrame(rows, columns=["epoch", "stage", "split", "metric", "value"])
