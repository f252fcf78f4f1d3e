"""Sections of the Calibrate page: the method choice (only what applies here) and the hyperparameter widgets."""

from __future__ import annotations

import streamlit as st

from clipcal.views import number_bounds, param_help, parse_value

#: Hyperparameters the page does not offer: filled by the run (backbone) or left automatic (device).
HIDDEN_HPARAMS = ("backbone", "device")


def selection_rules() -> dict[str, str]:
    """``{rule: one-line description}`` of the model-selection rules the methods accept."""
    from clipcal.methods._train import SELECTION_RULES

    return dict(SELECTION_RULES)


def not_offered_caption(classes: dict, missing: list[str], has_text: bool, has_attributes: bool,
                        backbone: str) -> None:
    """Say which methods are not offered and why (:func:`clipcal.methods.applicability.not_applicable_reason`)."""
    from clipcal.methods.applicability import not_applicable_reason

    if missing:
        why = {n: not_applicable_reason(classes[n], has_text, has_attributes) for n in missing}
        st.caption("Not offered: " + "; ".join(f"{classes[n].label} — {why[n].short(backbone=backbone)}"
                                               for n in missing if why[n] is not None) + ".")


def hparam_widgets(method: str, hparams: dict, seed: int | None = None, selection: str | None = None,
                   choices: dict | None = None, constraints: dict | None = None, skip=()) -> dict:
    """One widget per hyperparameter (default = the method's, help = its one-line explanation and its allowed
    values); values survive a visit to another page (Streamlit's ``persist_state="session"``).

    ``seed`` and ``selection`` are set page-wide and not drawn again; names in ``choices`` (the method's
    ``CHOICES``) get a select box of their allowed values; number inputs take their min / max from
    ``constraints`` (the method's ``PARAM_CONSTRAINTS``, :func:`clipcal.views.number_bounds`); names in ``skip``
    are left out (drawn elsewhere, e.g. under "Advanced"). Returns ``{name: value}``.
    """
    out = {}
    choices, constraints = choices or {}, constraints or {}
    for name, (default, help_) in hparams.items():
        key = f"calib.hp.{method}.{name}"
        if name in HIDDEN_HPARAMS or name in skip:
            continue
        lo, hi = number_bounds(constraints, name, default)
        help_ = param_help(help_, constraints, name)
        if name == "seed" and seed is not None:
            out[name] = int(seed)
        elif name == "selection" and selection is not None:
            out[name] = selection
        elif name in choices:
            opts = list(choices[name])
            out[name] = st.selectbox(name, opts, index=opts.index(default) if default in opts else 0,
                                     help=help_, key=key, persist_state="session")
        elif isinstance(default, bool):
            out[name] = st.checkbox(name, value=default, help=help_, key=key, persist_state="session")
        elif isinstance(default, int):
            out[name] = int(st.number_input(name, value=default, step=1, min_value=lo, max_value=hi, help=help_,
                                            key=key, persist_state="session"))
        elif isinstance(default, float):
            out[name] = float(st.number_input(name, value=default, format="%g", help=help_, key=key,
                                              step=max(abs(default) / 10, 1e-6) if default else 0.01,
                                              min_value=lo, max_value=hi, persist_state="session"))
        elif default is None:
            raw = st.text_input(name, value="", help=f"{help_} (empty = automatic)", key=key,
                                persist_state="session")
            out[name] = parse_value(raw) if raw.strip() else None
        else:
            raw = st.text_input(name, value=str(default), help=help_, key=key, persist_state="session")
            out[name] = parse_value(raw) if not isinstance(default, str) else raw
    return out


def advanced_widgets(method: str, cls, names: list[str], base: dict | None = None) -> dict:
    """The "Advanced" hyperparameters of a method (:func:`clipcal.views.advanced_hparams`; CFR: one row per loss
    term — its switch and its weight) and the loss they make with the other values ``base``, as the run will
    record it. Returns ``{name: value}``."""
    hp = {n: cls.HPARAMS[n] for n in names if n in cls.HPARAMS}
    out: dict = {}
    pairs = [names[i:i + 2] for i in range(0, len(names), 2)]  # (switch, weight) per loss term
    for pair in pairs:
        cols = st.columns([1, 2])
        for col, name in zip(cols, pair):
            with col:
                out.update(hparam_widgets(method, {name: hp[name]}, choices=cls.CHOICES,
                                          constraints=cls.PARAM_CONSTRAINTS))
    if hasattr(cls, "loss_terms"):
        from clipcal.errors import ClipcalError

        try:
            formula = cls(**{**(base or {}), **out}).loss_terms()["formula"]
        except (ClipcalError, TypeError) as err:
            formula = f"— ({err})"
        st.caption(f"Stage-2 loss: {formula}" if formula else
                   "Stage-2 loss: no term is on — switch at least one on (the run refuses an empty loss).")
    return out
