"""Spurious attributes: name, measure and find the spurious attribute (text concepts, decodability, clusters,
the calibration set against the true groups, the worst group's images, and concepts from example images)."""

from __future__ import annotations

import streamlit as st

from clipcal import views
from pages.ui import results, state, widgets
from pages.ui import spurious as ui

st.title("Spurious attributes")
st.caption("Six ways to see what the model leans on besides the class.")
widgets.teach_topic("spurious")

bench, run, emb = results.current_run_with_embeddings()

if run is not None and emb is not None:
    methods = views.run_methods(run)
    method = st.selectbox("Method whose predictions are inspected", methods,
                          index=views.preferred_index(methods, state.preferred_method()), key="spur.method",
                          format_func=views.method_label)
    tabs = st.tabs(["(a) Text concepts", "(b) Attribute decodability", "(c) Cluster discovery",
                    "(d) Calibration set vs groups", "(e) Worst-group gallery", "(f) Concepts from images (CAV)"])

    with tabs[0]:
        st.markdown("Candidate concepts (typed or suggested) are scored per class by how much more they "
                    "match the **misclassified** images than the correctly classified ones, with the same "
                    "CLIP model's text tower. A high score names a likely spurious attribute.")
        with widgets.guarded("scoring concepts"):
            ui.concepts_section(run, bench, emb, method)

    with tabs[1]:
        st.markdown("A linear probe is trained to predict the **spurious attribute** from the embeddings. "
                    "If it still succeeds after calibration, the information is still there (a classifier "
                    "can ignore it, but it has not been removed).")
        with widgets.guarded("probing the attribute"):
            ui.decodability_section(run, bench)

    with tabs[2]:
        st.markdown("k-means within each class on the embeddings finds sub-populations without labels; a "
                    "cluster with low accuracy is a candidate hidden group — look at its images.")
        with widgets.guarded("clustering"):
            ui.clusters_section(run, bench, method)

    with tabs[3]:
        st.markdown("Which training samples a method singled out (CFR's calibration set, JTT's error set) "
                    "against the true groups: a good selection over-represents the minority groups.")
        with widgets.guarded("comparing the calibration set"):
            ui.calibration_set_section(run, bench, method)

    with tabs[4]:
        st.markdown("Test images of the group where the method is worst, misclassified ones first.")
        with widgets.guarded("building the gallery"):
            ui.gallery_section(run, bench, method)

    with tabs[5]:
        st.markdown("A concept given by **example images** instead of words — for every backbone, text tower or "
                    "not: a linear probe finds the concept's direction (CAV); each group's embeddings are scored "
                    "along it before and after calibration, and TCAV tests whether the method's class scores rise "
                    "along it.")
        with widgets.guarded("probing concepts from images"):
            ui.cav_section(run, bench, method)
