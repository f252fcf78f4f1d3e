"""Calibrate: choose methods and hyperparameters, run them on the stored embeddings (a background job)."""

from __future__ import annotations

import streamlit as st

from pages import _common as c

st.title("Calibrate")
st.caption("Baselines and CFR run on the stored embeddings (no images are read again). Each method is "
           "selected on the validation split; methods marked 👥 use group labels, the others do not.")
c.teach_topic("cfr")

bench_spec, spec = c.bench_spec(), c.backbone_spec()
bench = emb = None
with c.guarded("loading"):
    bench = c.load_bench(bench_spec)
    if bench is None:
        c.no_benchmark_notice()
    else:
        emb = c.need_embeddings(bench)

if emb is not None:
    METHODS = c.method_classes()
    st.markdown(f"**{c.bench_label(bench_spec)}** · **{spec}** · {len(emb.sample_ids):,} images")
    has_attr = bench.has_attributes
    usable = c.applicable_methods(emb, has_attr)
    missing = [n for n in METHODS if n not in usable]
    # one remembered choice per set of offered methods: Streamlit drops a kept value that is not an option,
    # so one shared key would lose zero-shot for good after a visit to an image-only backbone
    chosen = st.multiselect(
        "Methods", usable, default=usable, key="calib.methods" + "".join(f".no-{n}" for n in missing),
        persist_state="session",
        format_func=lambda n: f"{c.method_short(n)}{' 👥' if METHODS[n].uses_group_labels else ''}",
        help="👥 = uses group labels (DFR: for training the last layer on the validation split)")
    why = {n: (f"{spec} has no text tower (needed)" if METHODS[n].needs_text and not getattr(emb, "has_text", False)
               else "this benchmark has no spurious-attribute labels (it uses group labels)") for n in missing}
    if missing:
        st.caption("Not offered: " + "; ".join(f"{METHODS[n].label} — {why[n]}" for n in missing) + ".")
    rules = c.selection_rules()
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
        with st.expander(f"{m.label} — hyperparameters{' (uses group labels)' if marked else ''}"):
            if m.description:
                st.caption(m.description)
            hparams[name] = c.hparam_widgets(name, m.HPARAMS, seed=seed, selection=rule, choices=m.CHOICES)

    key = c.calib_job_key(bench_spec, spec)
    job = c.get_jobs().get(key)
    running = job is not None and job.is_running
    if st.button("Run calibration", type="primary", disabled=running or not chosen, key="calib.start"):
        with c.guarded("starting the calibration"):  # a bad value is shown here; no job, no run stored
            c.start_calibration(bench_spec, spec, chosen, hparams, seed=seed, selection=rule)
            st.rerun()

    def _done(job) -> None:
        st.success(f"Calibration finished in {c.fmt_eta(job.elapsed_s)}: {job.result[1]}.")
        c.show_new_run_once(job)

    c.job_status(key, show_done=_done, live="curves")

    st.divider()
    st.subheader("Results")
    with c.guarded("loading runs"):
        runs = c.runs_for(bench, spec)
        if not runs:
            st.info("No calibration run of this benchmark and backbone yet.")
        else:
            run = c.shown_run(runs)
            c.results_table(run, bench, key="calib.table")
            for note in c.fallback_notes(run):  # e.g. CFR = ERM when the calibration set is empty
                st.warning(note)
            c.curves_section(run)
            st.page_link(c.PAGE["groups"], label="Next: per-group accuracy", icon="📊")
