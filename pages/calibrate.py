"""Calibrate: choose methods and hyperparameters, run them on the stored embeddings (a background job)."""

from __future__ import annotations

import streamlit as st

from clipcal import catalog, pipeline, views
from clipcal.methods.applicability import applicable_methods
from pages.ui import calibrate as ui
from pages.ui import jobs, resources, results, state, widgets

st.title("Calibrate")
st.caption("Baselines and CFR run on the stored embeddings (no images are read again). Each method is "
           "selected on the validation split; methods marked 👥 use group labels, the others do not.")
widgets.teach_topic("cfr")

bench_spec, spec = state.bench_spec(), state.backbone_spec()
bench = emb = None
with widgets.guarded("loading"):
    bench = resources.load_bench(bench_spec)
    if bench is None:
        widgets.no_benchmark_notice()
    else:
        emb = widgets.need_embeddings(bench)

if emb is not None:
    METHODS = resources.method_classes()
    st.markdown(f"**{catalog.bench_label(bench_spec)}** · **{spec}** · {len(emb.sample_ids):,} images")
    has_attr, has_text = bench.has_attributes, bool(getattr(emb, "has_text", False))
    usable = applicable_methods(has_text, has_attr, methods=METHODS)
    missing = [n for n in METHODS if n not in usable]
    # one remembered choice per set of offered methods: Streamlit drops a kept value that is not an option,
    # so one shared key would lose zero-shot for good after a visit to an image-only backbone
    chosen = st.multiselect(
        "Methods", usable, default=usable, key="calib.methods" + "".join(f".no-{n}" for n in missing),
        persist_state="session",
        format_func=lambda n: f"{catalog.method_short(n)}{' 👥' if METHODS[n].uses_group_labels else ''}",
        help="👥 = uses group labels (DFR: for training the last layer on the validation split)")
    ui.not_offered_caption(METHODS, missing, has_text, has_attr, spec)
    rules = ui.selection_rules()
    a, b = st.columns([3, 1])
    if has_attr:
        rule = a.radio("Model selection on the validation split", list(rules), format_func=lambda r: rules[r],
                       key="calib.rule", persist_state="session", horizontal=True,
                       help="worst-class needs no group labels (the paper's annotation-free setting); "
                            "worst-group reads the validation split's group labels")
    else:
        rule = "worst-class"
        a.caption(f"Model selection on the validation split: {rules[rule]} — worst-group selection needs "
                  "spurious-attribute labels, which this benchmark does not have.")
    seed = b.number_input("Seed", 0, 10**6, 0, key="calib.seed", persist_state="session",
                          help="same seed, same inputs → same results")
    hparams: dict[str, dict] = {}
    for name in chosen:
        m = METHODS[name]
        marked = m.uses_group_labels and "group labels" not in m.label  # DFR's label already says so
        advanced = views.advanced_hparams(name)  # CFR's loss-term switches and weights
        with st.expander(f"{m.label} — hyperparameters{' (uses group labels)' if marked else ''}"):
            if m.description:
                st.caption(m.description)
            hparams[name] = ui.hparam_widgets(name, m.HPARAMS, seed=seed, selection=rule, choices=m.CHOICES,
                                              constraints=m.PARAM_CONSTRAINTS, skip=advanced)
        if advanced:  # expanders cannot nest: "Advanced" follows the method's own
            with st.expander(f"{m.label} — Advanced: loss terms and their weights"):
                hparams[name].update(ui.advanced_widgets(name, m, advanced, base=hparams[name]))

    key = pipeline.calib_job_key(bench_spec, spec)
    job = resources.get_jobs().get(key)
    running = job is not None and job.is_running
    if st.button("Run calibration", type="primary", disabled=running or not chosen, key="calib.start"):
        with widgets.guarded("starting the calibration"):  # a bad value is shown here; no job, no run stored
            jobs.start_calibration(bench_spec, spec, chosen, hparams, seed=seed, selection=rule)
            st.rerun()

    def _done(job) -> None:
        st.success(f"Calibration finished in {views.fmt_eta(job.elapsed_s)}: {job.result[1]}.")
        seen = st.session_state.setdefault("cc.seen_jobs", set())
        if id(job) not in seen:  # the new run becomes the current one (once per job); rerun to show it
            seen.add(id(job))
            st.session_state[state.K_RUN] = job.result[0]
            st.rerun()

    jobs.job_status(key, show_done=_done, live="curves")

    st.divider()
    st.subheader("Results")
    with widgets.guarded("loading runs"):
        runs = resources.runs_for(bench, spec)
        if not runs:
            st.info("No calibration run of this benchmark and backbone yet.")
        else:
            run = results.shown_run(runs)
            results.results_table(run, key="calib.table")
            for note in views.failed_notes(run):  # applied but failed (e.g. a NaN loss): what to change
                st.error(note)
            for note in views.fallback_notes(run):  # e.g. CFR = ERM when the calibration set is empty
                st.warning(note)
            for note in views.outcome_notes(run):  # CFR: which calibration-set rule ran, which model it returned
                st.info(note)
            results.curves_section(run)
            st.page_link(state.PAGE["groups"], label="Next: per-group accuracy", icon="📊")
