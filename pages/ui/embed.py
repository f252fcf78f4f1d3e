"""Sections of the Embed page."""

from __future__ import annotations

import streamlit as st

from clipcal import views
from clipcal.backbones.devices import compute_line


def embedding_summary(emb) -> None:
    """What is stored for an embedding set: counts, dimensions, text tower, skipped samples with reasons."""
    n = len(emb.sample_ids)
    skipped = getattr(emb, "skipped", None)
    n_skip = 0 if skipped is None else len(skipped)
    st.success(f"Embedded **{n:,}** images with **{emb.backbone_spec}**"
               + (f"; **{n_skip}** skipped (reasons below)" if n_skip else "; none skipped") + ".")
    m = st.columns(4)
    m[0].metric("images", f"{n:,}")
    m[1].metric("feature dim d", emb.features.shape[1])
    m[2].metric("embedding dim e", emb.embeddings.shape[1])
    m[3].metric("text tower", "yes" if emb.has_text else "no")
    meta = (getattr(emb, "manifest", None) or {}).get("meta") or {}
    settings = meta.get("model_settings")
    st.caption(views.model_settings_line(settings))
    st.caption(compute_line(meta.get("compute")))  # precision, device, GPU, TF32: part of what the set is
    if isinstance(settings, dict) and settings.get("warning"):  # embedded with guessed settings that matter
        st.warning(settings["warning"])
    last = getattr(emb, "last_layer", None) or {}  # where the last layer comes from (recorded with the set)
    st.caption(f"Projection: {emb.projection}" + (f" — {last['description']}" if last.get("description") else "")
               + ("; CFR recalibrates it" if emb.projection == "exact" else "; CFR learns a new projection"))
    if n_skip:
        st.dataframe(skipped, hide_index=True, key="embed.skipped")
