"""Embed: choose a backbone and embed the current benchmark once (a background job; cached in the store)."""

from __future__ import annotations

import functools

import streamlit as st

from clipcal import catalog, pipeline
from clipcal.errors import ClipcalError
from pages.ui import jobs, resources, state, widgets
from pages.ui.embed import embedding_summary

st.title("Embed")
st.caption("Every image of the benchmark is passed once through the backbone; the features and the "
           "L2-normalised embeddings are kept in the store, so every method and plot reuses them.")
with st.expander("📘 What is a backbone, and which one to pick?"):
    st.markdown(
        "The **backbone** is the frozen image model (CLIP's image tower, or another network) whose "
        "**embeddings** every method works on. open_clip models need their weights: cached ones work "
        "offline, others are downloaded on first use. A **local checkpoint** (`.pt`/`.safetensors`) needs "
        "the matching architecture. The **bundled** EfficientNet-Lite0 (ImageNet) ships with clipcal and "
        "works offline, but has **no text tower**, so zero-shot and text concept probing are not offered "
        "with it. `tiny:clip` is a tiny random model for tests only."
    )

bench_spec, current = state.bench_spec(), state.backbone_spec()
# the form opens on the current backbone, also after a switch in the sidebar (new keys → new widgets)
fk = functools.partial(state.choice_key, current=current)
from clipcal.backbones import LITE0_DEFAULT_PX, BackboneSpec, model_settings, parse_spec, spec_forms  # noqa: E402
from clipcal.backbones.devices import PRECISION_HELP, PRECISIONS  # noqa: E402
from clipcal.embed import NothingEmbeddedError  # noqa: E402

NOT_NAMED = "not named"
try:
    cur_ps = parse_spec(current)
except ClipcalError:
    cur_ps = None
cur_local = cur_ps.checkpoint or cur_ps.local_dir if cur_ps is not None else None
cur_kind = cur_ps.kind if cur_ps is not None else None  # tag / checkpoint / bundled / tiny / … (sources.SOURCES)

# --- backbone choice ------------------------------------------------------------------------------------
SOURCES = ["open_clip list", "local checkpoint", "bundled (offline)", "type a spec"]
source = st.radio("Backbone source", SOURCES, horizontal=True, key=fk("embed.source"),
                  index=1 if cur_local else 2 if cur_kind == "bundled" else 3 if cur_kind in ("tiny", "random") else 0)
spec = None
if source == "open_clip list":
    with widgets.guarded("listing backbones"), st.spinner("Checking which weights are cached (first time only)…"):
        table = resources.list_backbones()
        st.dataframe(table, hide_index=True, height=240, key="embed.table")
        specs = list(table["spec"])
        labels = {r.spec: f"{r.spec}  ({r.status}{', text' if r.has_text else ''})" for r in table.itertuples()}
        idx = specs.index(current) if current in specs else 0
        spec = st.selectbox("Backbone", specs, index=idx, format_func=labels.get, key=fk("embed.pick"))
        if labels and "unavailable" in labels.get(spec, ""):
            st.warning("These weights are not cached and this machine is offline (HF_HUB_OFFLINE=1 or no "
                       "network). Put the checkpoint file somewhere and use *local checkpoint*, or go online.")
elif source == "local checkpoint":
    arch = st.text_input("Architecture (open_clip name, e.g. ViT-B-32-quickgelu for OpenAI weights)",
                         value=cur_ps.arch if cur_ps is not None and cur_ps.checkpoint else "ViT-B-32-quickgelu",
                         key=fk("embed.arch"))
    path = st.text_input("Checkpoint file or folder", value=cur_local or "", key=fk("embed.ckpt"),
                         placeholder="/path/to/open_clip_model.safetensors")
    kind = st.radio("It is", ["a checkpoint file", "a local hf-hub folder (open_clip_config.json + weights)"],
                    index=1 if cur_ps is not None and cur_ps.local_dir else 0, key=fk("embed.ckpt_kind"))
    if path and kind.startswith("a local"):
        spec = str(BackboneSpec.from_local_dir(path))
    elif path:
        # which published configuration (activation, preprocessing) the file's weights were trained with
        tags = None
        with widgets.guarded("reading the architecture's pretrained configurations"):
            tags = list(model_settings(catalog.checkpoint_spec(arch, path)).choices_table()["tag"])
        if tags is not None:
            named = cur_ps.pretrained_cfg if cur_ps is not None and cur_ps.checkpoint else None
            opts = [NOT_NAMED] + tags
            cfg = st.selectbox("Pretrained configuration", opts, index=opts.index(named) if named in opts else 0,
                               key=fk("embed.ckpt_cfg"),
                               help="The published weights of this architecture whose settings (QuickGELU or "
                                    "GELU, mean/std, resize) the file was trained with; 'default' = the "
                                    "architecture's own settings. Not named: guessed from the file, with a warning "
                                    "when the choices differ.")
            spec = catalog.checkpoint_spec(arch, path, None if cfg == NOT_NAMED else cfg)
elif source == "bundled (offline)":
    px = st.select_slider("Input resolution (px)", [128, 160, 192, 224], key=fk("embed.px"),
                          value=cur_ps.image_size if cur_ps is not None and cur_ps.image_size in (128, 160, 192, 224)
                          else LITE0_DEFAULT_PX,
                          help="Lite0 at 160 px: ≈ 68 images/s through the whole pipeline on an idle 2-core CPU "
                               "(bench/embed_throughput.py, load 0.9); 224 px has twice the pixels, so expect about half "
                               "that (not measured)")
    spec = str(BackboneSpec.bundled(px))
else:
    spec = st.text_input("Backbone spec", value=current, key=fk("embed.spec"),
                         help=", ".join(spec_forms())).strip()

# the settings the weights will run with — known from the spec alone (no model load, no network)
if spec:
    with widgets.guarded("reading the model settings"):
        settings = model_settings(spec)
        st.caption(f"Model settings: {settings.summary()}")
        if settings.warning:
            st.warning(settings.warning)
            with st.expander("The published configurations of this architecture"):
                st.dataframe(settings.choices_table(), hide_index=True, key="embed.choices")

if spec and spec != current:
    st.info(f"Selected **{spec}** — the current backbone is **{current}**.")
    if st.button("Use this backbone", type="primary", key="embed.use"):
        state.set_backbone(spec)
        st.rerun()

# --- settings and the job -----------------------------------------------------------------------------
st.divider()
st.subheader(f"Embed {catalog.bench_label(bench_spec)} with {current}")
a, b, d = st.columns(3)
device = a.selectbox("Device", ["auto", "cpu", "cuda", "mps"], key="embed.device",
                     help="auto = the first GPU if there is one, else CPU")
precision = b.selectbox("Precision", list(PRECISIONS), key="embed.precision", help=PRECISION_HELP)
batch = d.number_input("Batch size", 0, 4096, 0, step=16, key="embed.batch",
                       help="Images per forward pass; 0 = automatic: 16 on the CPU (Lite0's activations stay in the "
                            "CPU cache), 64 on a GPU. The embeddings do not depend on it.")

bench = None
with widgets.guarded("loading the benchmark"):
    bench = resources.load_bench(bench_spec)
    if bench is None:
        widgets.no_benchmark_notice()

if bench is not None:
    key = pipeline.embed_job_key(bench_spec, current)
    job = resources.get_jobs().get(key)
    running = job is not None and job.is_running
    emb = None
    with widgets.guarded("reading the store"):
        emb = resources.load_embeddings(bench, current) if not running else None
    label = "Embed again (resume / refresh)" if emb is not None else "Start embedding"
    if st.button(label, type="primary" if emb is None else "secondary", disabled=running, key="embed.start"):
        with widgets.guarded("starting the embedding"):  # e.g. a read-only store: said now, before any image
            jobs.start_embedding(bench_spec, current, device=device, precision=precision, batch_size=int(batch) or None)
            st.rerun()
    job = jobs.job_status(key, show_done=lambda job: st.success(f"Embedding finished: {job.result.summary()}."))
    if job is not None and isinstance(job.error, NothingEmbeddedError):  # every row's reason, not only three
        st.dataframe(job.error.skipped, hide_index=True, key="embed.nothing")

    if emb is not None:
        embedding_summary(emb)
        st.page_link(state.PAGE["calibrate"], label="Next: Calibrate", icon="🎯")
