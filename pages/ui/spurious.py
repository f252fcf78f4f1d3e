"""Sections of the Spurious attributes page, one per tab: (a) text concepts, (b) attribute decodability,
(c) cluster discovery, (d) the calibration set against the true groups, (e) the worst group's errors, (f) concepts
from example images (CAV, TCAV). The computations are :mod:`clipcal.concepts` and :mod:`clipcal.cav`; each result is
memoised per run and method, (f) is computed in a background job."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from clipcal import views
from clipcal.pipeline import run_key
from pages.ui import jobs, resources, state, widgets


def _table(df, key: str) -> None:
    """``st.dataframe`` with the field's words as headers ("balanced accuracy", not ``balanced_accuracy``) and every
    fractional number to 3 decimals (the tabs mixed 0.99 and 0.9913); the frame's own columns are unchanged."""
    cfg = {}
    for c in df.columns:
        label = str(c).replace("_", " ")
        if pd.api.types.is_float_dtype(df[c].dtype) and not str(c).startswith("n_"):
            cfg[c] = st.column_config.NumberColumn(label, format="%.3f")
        elif label != str(c):
            cfg[c] = st.column_config.Column(label)
    st.dataframe(df, hide_index=True, key=key, column_config=cfg)


def concepts_section(run, bench, emb, method: str) -> None:
    """(a) Typed and shipped concepts scored per class (:func:`clipcal.concepts.concept_scores`) with the
    backbone's text tower; says so when it has none."""
    from clipcal.concepts import concept_prompts, concept_scores, load_concept_vocabulary
    from clipcal.figures import concept_scores_figure

    if not emb.has_text:
        st.info(f"**{emb.backbone_spec}** has no text tower, so concepts cannot be scored with it. "
                "Embed with a CLIP backbone (open_clip) to use this view; the other views work.")
        return
    vocab = load_concept_vocabulary()
    typed = st.text_input("Your candidate concepts (comma-separated)", key="spur.concepts",
                          placeholder="e.g. water, forest, bamboo, ocean, sky")
    use_vocab = st.checkbox(f"also score the shipped vocabulary ({len(vocab)} concepts)", value=True,
                            key="spur.vocab")
    concepts = list(dict.fromkeys([c.strip() for c in typed.split(",") if c.strip()] + (vocab if use_vocab else [])))
    if not concepts:
        st.caption("Type a concept or tick the vocabulary.")
        return
    fd = resources.run_feature_data(run, bench)
    res = views.method_result(run, method)
    shown = fd.mask("test") | fd.mask("val")
    backbone = state.backbone_spec()

    def text_emb():
        from clipcal.embed import text_embeddings

        # the store caches the concept embeddings; on a miss a text-only copy of the model is loaded and
        # released (keeping a whole CLIP for a few prompts cost +1.7 GB with ViT-L/14, bench/app_memory.py),
        # unless this process already holds the model (leased: a finishing job cannot close it meanwhile)
        with resources.loaded_model(backbone) as model:
            return text_embeddings(model or backbone, concept_prompts(concepts), store=resources.get_store())

    with st.spinner("Embedding the concepts with the text tower…"):
        t = resources.memo(("concept_text", backbone, tuple(concepts)), text_emb)
    key = (run_key(run), method, tuple(concepts))
    scores = resources.memo(("concepts", *key), lambda: concept_scores(
        fd.embeddings[shown], fd.y[shown], np.asarray(res.pred)[shown], t, concepts, fd.class_names))
    st.caption(f"Scored on the val + test images with {views.method_label(method)}'s predictions. "
               "score = mean cosine similarity to the misclassified − to the correctly classified images.")
    for note in views.unscored_class_notes(scores, method):
        st.info(note)
    st.plotly_chart(resources.memo(("fig_concepts", *key), lambda: concept_scores_figure(scores, top=10)),
                    key="spur.concepts_fig")
    with st.expander("All scores"):
        _table(scores.drop(columns=["class_index"]), "spur.concepts_table")


def decodability_section(run, bench) -> None:
    """(b) Attribute decodability before vs after (:func:`clipcal.concepts.attribute_decodability`); says why
    without attribute labels."""
    from clipcal.concepts import attribute_decodability
    from clipcal.figures import decodability_figure

    if not bench.has_attributes:
        st.info("This benchmark has no attribute labels, so decodability cannot be measured; "
                "cluster discovery (c) looks for hidden groups instead.")
        return
    fd = resources.run_feature_data(run, bench)
    after_methods = views.methods_with_after(run)
    results, notes = [], []
    for m in [None] + after_methods:  # the frozen "before" probe once, then one "after" probe per method
        before, after = (fd.embeddings, None) if m is None else (None, views.method_result(run, m).embeddings_after)
        r = resources.memo(("decod", run_key(run), m),
                           lambda: attribute_decodability(before, after, fd.a, fd.split))
        if not r.available:
            st.info(r.reason)
            return
        results.append((m, r.table))
        notes += [n for n in r.notes if n not in notes]
    table = views.decodability_table(results)
    st.plotly_chart(resources.memo(("fig_decod", run_key(run)), lambda: decodability_figure(table)),
                    key="spur.decod_fig")
    _table(table, "spur.decod")
    for note in notes:
        st.caption(note)
    if not after_methods:
        st.caption("No method of this run changed the embeddings, so there is no \"after\".")
    no_after = [m for m in views.run_methods(run) if m not in after_methods]
    if no_after:
        st.caption(views.no_after_note(no_after))


def clusters_section(run, bench, method: str) -> None:
    """(c) k-means within each class, per-cluster accuracy and the worst clusters' images
    (:func:`clipcal.concepts.discover_clusters`)."""
    from clipcal.concepts import discover_clusters
    from clipcal.figures import cluster_accuracy_figure

    fd = resources.run_feature_data(run, bench)
    after_methods = views.methods_with_after(run)
    a, b = st.columns(2)
    k = a.slider("clusters per class", 2, 8, 4, key="spur.k")
    rep = b.radio("on the embeddings", ["before"] + [f"after ({views.method_label(m)})" for m in after_methods],
                  horizontal=True, key="spur.rep")
    m_after = next((m for m in after_methods if rep == f"after ({views.method_label(m)})"), None)
    x = fd.embeddings if m_after is None else views.method_result(run, m_after).embeddings_after
    correct = np.asarray(views.method_result(run, method).pred) == fd.y
    key = (run_key(run), method, k, rep)
    cl = resources.memo(("clusters", *key), lambda: discover_clusters(
        x, fd.y, correct, k=k, a=fd.a if bench.has_attributes else None, sample_ids=fd.sample_ids,
        class_names=fd.class_names, attr_names=fd.attr_names or None))
    table = cl.table.drop(columns=["ids"])
    st.plotly_chart(resources.memo(("fig_clusters", *key), lambda: cluster_accuracy_figure(table)),
                    key="spur.clusters_fig")
    with st.expander("Cluster table"):
        _table(table, "spur.clusters")
    for note in cl.notes:
        st.caption(note)
    if not bench.has_attributes:
        st.caption("No attribute labels: the clusters are the only view of hidden groups here.")
    for _, r in cl.table.sort_values("accuracy").head(2 * len(fd.class_names)).iterrows():
        st.markdown(f"**{r['class']} · cluster {r['cluster']}** — {r['n']} images, accuracy {r['accuracy']:.2f}"
                    + (f", mostly {r['majority_attribute']} ({r['purity']:.0%})" if bench.has_attributes else ""))
        widgets.grid_of_ids(bench, fd, r["ids"], limit=8, columns=8)


def calibration_set_section(run, bench, method: str | None = None) -> None:
    """(d) The calibration / error set of ``method`` (the page's method picker) against the true groups
    (:func:`clipcal.concepts.calibration_set_vs_groups`); another method's when it selects none, said on the page."""
    from clipcal.concepts import calibration_set_vs_groups
    from clipcal.figures import calibration_set_figure

    m, note = views.calibration_set_choice(run, method)
    if m is None:
        st.info("No method of this run selects a calibration set (CFR does; JTT's error set too).")
        return
    if note:
        st.caption(note)
    fd = resources.run_feature_data(run, bench)
    rep = resources.memo(("calset", run_key(run), m), lambda: calibration_set_vs_groups(
        views.method_result(run, m).calibration_set, resources.sample_table(bench, fd),
        group_names=bench.group_names() if bench.has_attributes else None))
    c1, c2, c3 = st.columns(3)
    c1.metric("set size", rep.n_set)
    c2.metric("minority share (precision)", "—" if np.isnan(rep.precision) else f"{rep.precision:.0%}")
    c3.metric("minority found (recall)", "—" if np.isnan(rep.recall) else f"{rep.recall:.0%}")
    if not rep.available:
        st.info(rep.reason)
    else:
        st.plotly_chart(resources.memo(("fig_calset", run_key(run), m), lambda: calibration_set_figure(rep.table)),
                        key="spur.calset_fig")
    _table(rep.table, "spur.calset")
    st.caption(f"Pool: {', '.join(rep.pool)}. Enrichment > 1 = the group is over-represented in the set.")


def gallery_section(run, bench, method: str) -> None:
    """(e) Misclassified test images of the worst group, most confident first
    (:func:`clipcal.concepts.worst_group_gallery`)."""
    from clipcal.concepts import worst_group_gallery

    fd = resources.run_feature_data(run, bench)
    res = views.method_result(run, method)
    g = resources.memo(("gallery", run_key(run), method), lambda: worst_group_gallery(
        resources.sample_table(bench, fd), res.pred, res.probs, n=24))
    name = bench.group_name(g.group) if g.by == "group" else fd.class_names[g.group]
    st.markdown(f"Worst {g.by} for **{views.method_label(method)}**: **{name}** — accuracy {g.accuracy:.2f} "
                f"on {g.n} test images; {len(g.items)} misclassified shown.")
    if len(g.items) == 0:
        st.success("No errors in this group.")
        return
    caps = {r.sample_id: f"pred {fd.class_names[int(r.pred)]} ({r.confidence:.2f})" for r in g.items.itertuples()}
    widgets.grid_of_ids(bench, fd, list(g.items["sample_id"]), limit=24, columns=8, captions=caps)


def _cav_worker(run_id: str, bench_spec: dict, backbone: str, method: str, source: dict, counter: dict | None,
                n_random: int, progress=None, cancel=None):
    from clipcal.cav import concept_report_job
    from clipcal.store import release_pages

    bench = resources.load_bench(bench_spec)
    run = resources.get_run(run_id)
    fd = resources.run_feature_data(run, bench, backbone)
    # the shared model if this process holds it, leased for the probe (a job finishing or switching the model
    # meanwhile cannot close it: issue 15); else embed_benchmark loads the spec for this call and frees it
    try:
        with resources.loaded_model(backbone) as model:
            return concept_report_job(fd, views.method_result(run, method), source, counter,
                                      backbone=model or backbone, store=resources.get_store(), n_random=n_random,
                                      progress=progress, cancel=cancel)
    finally:
        release_pages(fd.features)  # h is the store's map (resources.feature_data): the fit read all of it


def _cav_source(run, bench):
    """The concept (and counter) source the user chose, or ``(None, None)`` with a prompt shown."""
    from clipcal.cav import MIN_CONCEPT_IMAGES, ids_from_csv

    options = (["demo backgrounds"] if bench.name == "demo" else []) + ["current selection", "folder of images"]
    src = st.radio("Concept images", options, horizontal=True, key="spur.cav_source")
    if src == "demo backgrounds":
        c1, c2 = st.columns(2)
        kind = c1.selectbox("Background photos (bird-free crops)", ["water", "land"], key="spur.cav_bg")
        vs = c2.radio("Against", ["the other backgrounds (relative CAV)", "random benchmark images"],
                      key="spur.cav_vs", help="Random benchmark images all show a bird and the bird-free concept "
                      "images do not: the probe may learn 'no bird'. The other backgrounds, also bird-free, avoid it.")
        source = {"kind": "demo", "background": kind, "n": 50, "image_size": int(bench.params.get("image_size", 224))}
        other = {**source, "background": "land" if kind == "water" else "water"}
        return source, other if vs.startswith("the other") else None
    if src == "current selection":
        sel = st.session_state.get(state.K_SELECTION) or {}
        ids = sel.get("ids") if sel.get("run") == run_key(run) else None
        up = st.file_uploader("…or a selection CSV (Representations → Download the selection as CSV)", type=["csv"],
                              key="spur.cav_csv")
        if up is not None:
            ids = ids_from_csv(up.getvalue(), up.name)
        if not ids:
            st.info(f"Select at least {MIN_CONCEPT_IMAGES} points with the box or lasso on **Representations** "
                    "(same run), or upload its selection CSV.")
            return None, None
        st.caption(f"{len(ids)} selected images of this benchmark; counterexamples: random other images of it.")
        return {"kind": "selection", "ids": list(ids)}, None
    path = st.text_input("Folder of concept images on the server", key="spur.cav_folder",
                         placeholder="/data/concepts/water")
    if not path.strip():
        st.caption(f"A folder with at least {MIN_CONCEPT_IMAGES} example images of the concept; they are embedded "
                   "with the run's backbone and kept in the store. Counterexamples: random images of the benchmark.")
        return None, None
    return {"kind": "folder", "path": path.strip()}, None


def _show_cav(rep, method: str) -> None:
    """The report of :func:`clipcal.cav.cav_report`: probe, per-group scores (table + chart), TCAV (table + chart)."""
    from clipcal.cav import MIN_PROBE_ACCURACY
    from clipcal.figures import cav_groups_figure, tcav_figure

    st.markdown(f"**{rep.concept}** — {rep.n_concept} concept images, {rep.n_random} random runs, "
                f"{views.method_label(method)}, {rep.split} split.")
    probe = rep.probe.assign(accuracy=rep.probe["accuracy"].round(3), accuracy_sd=rep.probe["accuracy_sd"].round(3))
    _table(probe, "spur.cav_probe")
    st.caption(f"Held-out accuracy of the concept probe (chance 0.5); below {MIN_PROBE_ACCURACY} the concept is not "
               "linearly separable in that space and its scores are not shown.")
    for note in rep.notes:
        st.caption(note)
    if rep.groups[["score_before", "score_after"]].notna().any().any():
        st.plotly_chart(cav_groups_figure(rep.groups, rep.concept), key="spur.cav_groups_fig")
    _table(rep.groups, "spur.cav_groups")
    st.markdown("**TCAV per class** (does the method's score for the class rise along the concept?)")
    shown = rep.tcav[rep.tcav["shown"]]
    if len(shown):
        st.plotly_chart(tcav_figure(rep.tcav, rep.concept), key="spur.cav_tcav_fig")
    else:
        st.info("No TCAV score is shown: " + "; ".join(sorted(set(rep.tcav["reason"]))))
    _table(rep.tcav.drop(columns=["class_index"]), "spur.cav_tcav")


def cav_section(run, bench, method: str) -> None:
    """(f) Concepts from example images for every backbone (:mod:`clipcal.cav`): choose the images, compute in a
    job (embedding them, probes, TCAV), then show :func:`_show_cav`."""
    from clipcal.cav import DEFAULT_N_RANDOM, TEACHING, job_key
    from clipcal.jobs import CANCELLED, FAILED

    widgets.teach(*TEACHING)
    with widgets.guarded("reading the concept images"):
        source, counter = _cav_source(run, bench)
    if source is None:
        return
    n_random = st.slider("Random runs (CAVs against different random sets; t-test over them)", DEFAULT_N_RANDOM, 40,
                         DEFAULT_N_RANDOM, key="spur.cav_runs")
    key = job_key(run_key(run), method, source, counter, n_random)
    job = resources.get_jobs().get(key)  # a finished job shows its report; a failed or cancelled one can rerun
    if (job is None or job.status in (FAILED, CANCELLED)) and st.button("Compute concept scores",
                                                                           key="spur.cav_start"):
        resources.get_jobs().submit(key, _cav_worker, run_key(run), state.bench_spec(), state.backbone_spec(),
                                    method, source, counter, n_random, label="Concept activation vectors")
    jobs.job_status(key, show_done=lambda job: _show_cav(job.result, method))
