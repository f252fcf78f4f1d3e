"""Data: pick a benchmark, check it (validation report, group counts per split), and look at samples."""

from __future__ import annotations

import functools
from pathlib import Path

import streamlit as st

from clipcal import catalog, pipeline
from pages.ui import jobs, resources, state, widgets
from pages.ui.data import csv_head, reading_options

st.title("Data")
st.caption("Pick a benchmark and check it before any GPU work: group counts per split, unreadable files, "
           "and a few images of every group.")
widgets.teach_topic("spurious")

from clipcal import figures  # noqa: E402
from clipcal.data import BENCHMARKS  # noqa: E402

cur = state.bench_spec()
fk = functools.partial(state.choice_key, current=catalog.spec_key(cur))  # form fields follow the current benchmark
names = list(BENCHMARKS)
name = st.selectbox("Benchmark", names, index=names.index(cur["name"]) if cur["name"] in names else 0,
                    format_func=lambda n: f"{n} — {BENCHMARKS[n][1]}", key=fk("data.name"))

spec: dict | None = None
if name == "demo":
    from clipcal.data import demo_assets_status
    from clipcal.data.demo import DEFAULTS

    status = demo_assets_status()
    if not status["ok"]:
        st.error("The built-in demo needs Debian packages that are missing here: "
                 + ", ".join(status["missing_packages"]) + ". Install them with:")
        st.code(status["install_command"], language="bash")
    opts = dict(cur["options"]) if cur["name"] == "demo" else {}
    from clipcal.data.demo import difficulty_presets
    from clipcal.views import difficulty_label, difficulty_note

    presets = {p["name"]: p for p in difficulty_presets()}  # a teaching control: what each does, as measured
    now = str(opts.get("difficulty", DEFAULTS["difficulty"]))
    level = st.selectbox("Difficulty", list(presets), key=fk("data.difficulty"),
                         index=list(presets).index(now if now in presets else DEFAULTS["difficulty"]),
                         format_func=lambda n: difficulty_label(presets[n]),
                         help="How strongly the bird itself shows; the background is as spurious at every level.")
    st.caption(difficulty_note(presets[level]))
    with st.expander("Demo size and seed"):
        a, b, d, e = st.columns(4)
        vals = {
            "n_train": a.number_input("train images", 8, 20000, int(opts.get("n_train", DEFAULTS["n_train"])),
                                      step=100, key=fk("data.n_train")),
            "n_val": b.number_input("val images", 4, 20000, int(opts.get("n_val", DEFAULTS["n_val"])),
                                    step=100, key=fk("data.n_val")),
            "n_test": d.number_input("test images", 4, 20000, int(opts.get("n_test", DEFAULTS["n_test"])),
                                     step=100, key=fk("data.n_test")),
            "seed": e.number_input("seed", 0, 10**6, int(opts.get("seed", DEFAULTS["seed"])),
                                   key=fk("data.seed")),
        }
    spec = {"name": "demo", "root": None,
            "options": {**{k: int(v) for k, v in vals.items() if int(v) != DEFAULTS[k]},
                        **({"difficulty": level} if level != DEFAULTS["difficulty"] else {})}}
elif name == "csv":
    st.markdown("Your own images: a folder of images plus a metadata CSV with one row per image "
                "(an id, the file name relative to the folder, the split, the class, optionally the "
                "spurious attribute; labels may be names or integers).")
    root = st.text_input("Image folder", value=cur["root"] or "" if cur["name"] == "csv" else "",
                         key=fk("data.csv_root"), placeholder="/path/to/images")
    csv_path = st.text_input("Metadata CSV (path, or a name inside the folder)", key=fk("data.csv_path"),
                             value=str((cur["options"] or {}).get("csv", "metadata.csv"))
                             if cur["name"] == "csv" else "metadata.csv")
    spec = None
    reading = reading_options("csv", dict(cur["options"] or {}) if cur["name"] == "csv" else {}, fk)
    if root:
        path = Path(csv_path or "metadata.csv")
        path = path if path.is_absolute() else Path(root) / path
        head = None
        with widgets.guarded("reading the metadata CSV"):  # the reader the benchmark uses: encodings, `;` files
            head = csv_head(path, reading.get("encoding"))  # read once per file version, not on every rerun
        if head is not None:
            cols = list(head.columns)
            for note in head.attrs.get("notes") or []:  # e.g. the encoding it guessed
                st.caption(note)
            st.dataframe(head.head(5), hide_index=True, key="data.csv_head")
            st.markdown("**Column mapping**")
            mapping = {}
            grid = st.columns(5)
            wanted = [("id_col", "id", ["id", "sample_id", "image_id"], False),
                      ("path_col", "filename", ["filename", "img_filename", "path", "file"], False),
                      ("split_col", "split", ["split"], False),
                      ("y_col", "class (y)", ["y", "label", "class", "target"], False),
                      ("a_col", "attribute (a)", ["a", "attribute", "place", "spurious"], True)]
            # the active benchmark's own mapping when this is its CSV (else the form would offer to replace
            # it with guesses, and "Use this benchmark" would drop its attribute column and class names)
            prev = dict(cur["options"] or {}) if cur["name"] == "csv" and cur["root"] == root and \
                str((cur["options"] or {}).get("csv", "metadata.csv")) == str(csv_path or "metadata.csv") else {}
            # the mapping widgets belong to this file and its header (state.choice_key): with one key per benchmark,
            # another CSV kept the previous file's choice wherever that column name existed in it too
            file_id = f"{catalog.spec_key(cur)}|{path}|{cols}"
            for col, (opt, label, guesses, optional) in zip(grid, wanted):
                choices = (["(none)"] if optional else []) + cols
                guess = next((g for g in guesses if g in cols), choices[0])
                if prev:
                    guess = prev[opt] if prev.get(opt) in cols else ("(none)" if optional else guess)
                mapping[opt] = col.selectbox(label, choices, index=choices.index(guess),
                                             key=state.choice_key(f"data.map.{opt}", file_id))
            options = {k: v for k, v in prev.items()  # names, seed, image dir
                       if k not in mapping and k not in ("csv", "encoding", "allow_outside_root")}
            options.update({k: v for k, v in mapping.items() if v != "(none)"})
            options.update(reading)
            if csv_path and csv_path != "metadata.csv":
                options["csv"] = csv_path
            spec = {"name": "csv", "root": root, "options": options}
else:
    root = st.text_input(f"{name} folder", value=cur["root"] or "" if cur["name"] == name else "",
                         key=fk(f"data.root.{name}"))
    prev = dict(cur["options"] or {}) if cur["name"] == name else {}
    options = {k: v for k, v in prev.items() if k not in ("encoding", "allow_outside_root")}
    options.update(reading_options(name, prev, fk))
    spec = {"name": name, "root": root, "options": options} if root else None
    if not root:
        st.info(f"Give the folder that holds {name}. `python -m clipcal data download --benchmark {name} "
                "--root PATH` downloads it where a source exists and explains the layout otherwise.")

if spec is not None and catalog.spec_key(spec) != catalog.spec_key(cur):
    if st.button("Use this benchmark", type="primary", key="data.use"):
        state.set_benchmark(spec)
        st.rerun()

# --- the current benchmark ----------------------------------------------------------------------------------
cur = state.bench_spec()
st.divider()
st.subheader(catalog.bench_label(cur))
bench = None
with widgets.guarded("loading the benchmark"):
    bench = resources.load_bench(cur)
    if bench is None:  # demo not generated yet
        key = pipeline.demo_build_key(cur["options"])
        st.info("The demo images are generated on this machine the first time (about 15–20 s for the "
                "default size on 2 cores).")
        busy = jobs.demo_building_job(cur["options"])  # also "Run the demo" from Home builds it
        if st.button("Generate the demo images", type="primary", key="data.build", disabled=busy is not None):
            jobs.start_demo_build(cur["options"])
            st.rerun()
        jobs.job_status(busy.key if busy is not None else key)

if bench is not None:
    t = bench.table
    m = st.columns(4)
    m[0].metric("images", f"{len(t):,}")
    m[1].metric("classes", bench.n_classes)
    m[2].metric("attribute values", bench.n_attrs or "—")
    m[3].metric("groups", bench.n_groups or "—")
    with st.spinner("Checking image contents (first time only)…"):  # the fingerprint hashes every image once
        fingerprint = resources.fingerprint(bench)
    st.caption(f"Classes ({bench.target_name}): {', '.join(bench.class_names)}"
               + (f" · attribute ({bench.attr_name}): {', '.join(bench.attr_names)}" if bench.n_attrs else "")
               + f" · fingerprint `{fingerprint}` · root `{bench.root}`")
    if not bench.has_attributes:
        st.warning("This benchmark has no spurious-attribute labels: groups are per class only. "
                   "Worst-group accuracy, the mean of groups and the train-weighted average are undefined "
                   "(shown as —; worst-class accuracy stands in), per-group charts show classes, and cluster "
                   "discovery (Spurious attributes) looks for hidden groups instead.")

    st.markdown("#### Group counts per split")
    with widgets.guarded("counting groups"):
        counts = bench.group_counts()
        counts["name"] = counts["class"] + " / " + counts["attribute"]
        pivot = counts.pivot_table(index="name", columns="split", values="n", aggfunc="sum", observed=False)
        pivot = pivot.reindex(columns=[s for s in ("train", "val", "test") if s in pivot.columns])
        pivot = pivot.reindex(counts.drop_duplicates("name")["name"])
        pivot["total"] = pivot.sum(axis=1)
        left, right = st.columns([2, 3])
        left.dataframe(pivot, key="data.counts")
        right.plotly_chart(figures.group_counts_figure(counts, title="Images per group and split"),
                           key="data.counts_chart")
        small = counts[(counts["split"] == "train") & (counts["n"] < 20)]
        if len(small):
            st.caption("Small training groups (< 20 images): " + ", ".join(
                f"{r.name} ({r.n})" for r in small.itertuples()) + " — their accuracy has wide intervals.")

    st.markdown("#### Validation report")
    report_key = ("validation", resources.fingerprint(bench))
    rep = resources.memo_peek(report_key)
    if rep is not None:
        if rep.ok:
            st.success("All images readable; no problems found.")
        else:
            st.warning("Problems found:")
        st.code(rep.to_text(), language="text")
        for label, df in (("missing", rep.missing), ("unreadable", rep.unreadable),
                          ("outside the root", rep.outside_root)):
            if df is not None and len(df):
                st.markdown(f"**{label}** ({len(df)})")
                st.dataframe(df, hide_index=True, key=f"data.{label.replace(' ', '_')}")
    elif st.button("Check every image file", key="data.validate",
                   help="Reads each image's header (fast) and lists missing or unreadable files"):
        with widgets.guarded("validating"), st.spinner("Checking images…"):
            from clipcal.data import validate

            resources.memo(report_key, lambda: validate(bench, check_images=True))
            st.rerun()

    st.markdown("#### Samples per group")
    split = st.radio("split", ["train", "val", "test"], horizontal=True, key="data.grid_split")
    per = st.slider("images per group", 2, 12, 6, key="data.grid_n")
    s = t[t["split"] == split]
    group_col = "group" if bench.has_attributes else "y"
    for g, rows in s.groupby(group_col, sort=True):
        name_g = bench.group_name(int(g)) if bench.has_attributes else bench.class_names[int(g)]
        st.markdown(f"**{name_g}** — {len(rows)} image{'' if len(rows) == 1 else 's'} in {split}")
        pick = rows.head(per)
        widgets.image_grid([bench.image_path(p) for p in pick["path"]], list(pick["sample_id"]), columns=per)
