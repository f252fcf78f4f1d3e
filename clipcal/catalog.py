"""What is in the store, and how to name and reopen it: benchmark specs, labels, manifests, listings.

A *benchmark spec* is the plain dict ``{"name": str, "root": str | None, "options": dict}`` — the arguments of
:func:`clipcal.data.load_benchmark`. The dashboard keeps the current one in its session; an embedding set's
manifest records enough to rebuild it (:func:`bench_spec_from_meta`), so a new session (or another machine
with the same files) reopens what was embedded headless with ``python -m clipcal embed``.

Plain Python over :class:`clipcal.store.Store` manifests (no Streamlit, no torch): the dashboard memoises these
tables; tests call them directly.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from clipcal.backbones.spec import DEFAULT_SPEC
from clipcal.errors import ClipcalError

#: The benchmark a session opens when the store holds nothing it can reopen: the built-in demo.
DEFAULT_BENCH = {"name": "demo", "root": None, "options": {}}
#: The backbone a session opens when the store holds nothing it can reopen (works offline): the canonical text of
#: :data:`clipcal.backbones.DEFAULT_SPEC` (session state holds spec strings).
DEFAULT_BACKBONE = str(DEFAULT_SPEC)

EMBEDDINGS_COLUMNS = ["benchmark", "source", "backbone", "images", "skipped", "created", "fingerprint",
                      "bench_spec"]


def spec_key(spec: dict) -> str:
    """Stable string of a benchmark spec (sorted-key JSON), for cache and job keys."""
    return json.dumps(spec, sort_keys=True, default=str)


def bench_label(spec: dict) -> str:
    """Short human label of a benchmark spec: ``"demo — Waterbirds-lite (1200/400/800, seed 0)"``,
    ``"csv — meta.csv in /data/own"``, ``"waterbirds — /data/wb"``."""
    name = spec.get("name", "?")
    opts = spec.get("options") or {}
    if name == "demo":
        from clipcal.data.demo import demo_params

        try:
            p = demo_params(**opts)
            return f"demo — Waterbirds-lite ({p['n_train']}/{p['n_val']}/{p['n_test']}, seed {p['seed']})"
        except ClipcalError:
            return "demo — Waterbirds-lite"
    root = spec.get("root") or ""
    if name == "csv" and opts.get("csv"):  # several own CSVs: name the file and its folder
        return f"csv — {Path(str(opts['csv'])).name} in {root or Path(str(opts['csv'])).parent}"
    return f"{name} — {root}" if root else name


def fmt_time(value) -> str:
    """``"2026-11-29 08:40 UTC"`` from an ISO time (the store's ``created``) or a UNIX time; ``""`` for none."""
    if value in (None, ""):
        return ""
    try:
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return datetime.fromisoformat(str(value)).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except (ValueError, OSError):
        return str(value)


def _demo_options(params: dict) -> dict:
    """The demo options of a manifest's params that differ from the defaults, typed as the defaults."""
    from clipcal.data.demo import DEFAULTS

    opts = {}
    for k, v in params.items():
        if k in DEFAULTS:
            opts[k] = type(DEFAULTS[k])(float(v)) if isinstance(DEFAULTS[k], int) else type(DEFAULTS[k])(v)
    return {k: v for k, v in opts.items() if DEFAULTS[k] != v}


def _csv_options(b: dict, params: dict) -> dict:
    """The ``load_benchmark("csv", …)`` options recorded by ``load_csv`` in a manifest (file, folder, columns,
    names, carved val split)."""
    cols = params.get("columns") or {}
    cols = cols if isinstance(cols, dict) else {}
    opts = {"csv": str(params["csv"])}
    if params.get("image_dir"):
        opts["image_dir"] = str(params["image_dir"])
    for short, arg in (("id", "id_col"), ("path", "path_col"), ("split", "split_col"), ("y", "y_col"),
                       ("a", "a_col")):
        if cols.get(short):
            opts[arg] = cols[short]
    # the names and the carved val split are part of the fingerprint: without them integer labels named at
    # load time reopen as '0', '1' and the embeddings are not found
    if b.get("class_names"):
        opts["class_names"] = list(b["class_names"])
    if b.get("attr_names"):
        opts["attr_names"] = list(b["attr_names"])
    if params.get("val_carved"):
        opts.update(val_fraction=float(params.get("val_fraction", 0.2)), seed=int(params.get("val_seed", 0)))
    # how the files were read: without the encoding a UTF-16 / cp1252 CSV is guessed again (or refused), and
    # without the permission a benchmark whose paths leave its folder cannot be reopened at all
    if params.get("encoding"):
        opts["encoding"] = str(params["encoding"])
    if params.get("allow_outside_root"):
        opts["allow_outside_root"] = True
    return opts


def bench_spec_from_meta(meta: dict) -> dict | None:
    """Rebuild a benchmark spec from a manifest's ``meta["benchmark"]`` (``Benchmark.describe()``).

    Returns:
        The spec dict, or ``None`` when the manifest does not say where the files are (no root, no CSV).
    """
    b = meta.get("benchmark") or {}
    if not isinstance(b, dict):
        return None
    name = b.get("name")
    if not name:
        return None
    params = dict(b.get("params") or {})
    root = b.get("root") or params.pop("root", None)
    if name == "demo":
        return {"name": "demo", "root": None, "options": _demo_options(params)}
    if name == "csv" and root is None and params.get("csv"):  # load_csv records the CSV and image folder
        return {"name": "csv", "root": str(Path(params["csv"]).parent), "options": _csv_options(b, params)}
    if root is None:
        return None
    return {"name": name, "root": str(root), "options": params}


def source_label(meta: dict) -> str:
    """Where an embedded benchmark's files are, from its manifest: ``"meta.csv in /data/own"`` for an own CSV,
    the root folder for a named benchmark, ``""`` for the demo or when the manifest does not say."""
    b = meta.get("benchmark") if isinstance(meta.get("benchmark"), dict) else {}
    params = b.get("params") if isinstance(b.get("params"), dict) else {}
    if b.get("name") == "demo":
        return ""
    if params.get("csv"):
        csv = Path(str(params["csv"]))
        return f"{csv.name} in {params.get('image_dir') or csv.parent}"
    return str(b.get("root") or params.get("root") or "")


def checkpoint_spec(arch: str, path: str, pretrained_cfg: str | None = None) -> str:
    """The canonical backbone spec of a local checkpoint file (:class:`clipcal.backbones.BackboneSpec`):
    ``open_clip:<arch>:<path>``, or ``open_clip:<arch>@<tag>:<path>`` when the pretrained configuration the file
    was trained with is named (a tag of ``arch``, or ``"default"``); the path made absolute.

    Raises:
        BackboneError: unknown architecture or configuration, or a path that is not one (as
            :func:`clipcal.backbones.parse_spec`).
    """
    from clipcal.backbones import BackboneSpec

    return str(BackboneSpec.from_checkpoint(arch, path, config=pretrained_cfg))


def weights_gone(spec: str) -> bool:
    """True when backbone ``spec`` names a checkpoint file or folder that is not there (or cannot be parsed)."""
    from clipcal.backbones import weights_status

    try:
        return weights_status(spec) == "missing"
    except ClipcalError:
        return True


def embeddings_table(store) -> pd.DataFrame:
    """Embedding sets in ``store``, newest first.

    Returns:
        DataFrame ``benchmark, source`` (:func:`source_label`), ``backbone, images, skipped, created`` (UTC,
        :func:`fmt_time`), ``fingerprint, bench_spec`` (the spec dict to reopen it, ``None`` when the manifest
        does not say where the files are).
    """
    rows = []
    for m in store.list("embeddings"):  # oldest first
        meta, kf = m.get("meta") or {}, m.get("key_fields") or {}
        b = meta.get("benchmark") if isinstance(meta.get("benchmark"), dict) else {}
        rows.append({
            "benchmark": b.get("name", "?"),
            "source": source_label(meta),
            "backbone": meta.get("backbone_spec") or (kf.get("backbone") or {}).get("spec", "?"),
            "images": meta.get("n_embedded"),
            "skipped": meta.get("n_skipped", 0),
            "created": fmt_time(m.get("created")),
            "fingerprint": kf.get("benchmark") or b.get("fingerprint"),
            "bench_spec": bench_spec_from_meta(meta),
        })
    df = pd.DataFrame(rows, columns=EMBEDDINGS_COLUMNS)
    return df.iloc[::-1].reset_index(drop=True)


def newest_reopenable(embeddings: pd.DataFrame) -> tuple[dict, str] | None:
    """``(bench_spec, backbone)`` of the newest embedding set (of :func:`embeddings_table`) that can be reopened:
    its manifest says where the benchmark's files are and a checkpoint file it was made with is still there;
    ``None`` if there is none."""
    ok = embeddings[embeddings["bench_spec"].notna() & ~embeddings["backbone"].map(weights_gone)]
    return (ok.iloc[0]["bench_spec"], ok.iloc[0]["backbone"]) if len(ok) else None


def best_of(scores: dict | None) -> tuple[float, str] | None:
    """``(value, method)`` of the highest number among a run's ``{method: test worst-group accuracy}`` (NaN and
    None skipped; ties: the first method), or None."""
    return max(((v, k) for k, v in (scores or {}).items() if isinstance(v, (int, float)) and v == v),
               key=lambda t: t[0], default=None)


def best_score(scores: dict | None) -> float | None:
    """The highest number among a run's ``{method: test worst-group accuracy}`` (NaN and None skipped)."""
    best = best_of(scores)
    return None if best is None else best[0]


def runs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The store's runs for display, from :func:`clipcal.runs.list_runs`: ``created`` (UTC), ``benchmark,
    backbone, methods`` (", "-separated), ``settings changed``, ``best test worst-group`` and ``by`` (the method
    that reached it: a number without its method read as the run's result, e.g. DFR's, which uses group labels)."""
    best = [best_of(wg) for wg in runs["test_worst_group"]]
    return pd.DataFrame({"created": [fmt_time(x) for x in runs["created"]], "benchmark": runs["benchmark"],
                         "backbone": runs["backbone"], "methods": runs["methods"].str.replace(",", ", "),
                         "settings changed": runs["changed"],
                         "best test worst-group": [b[0] if b else None for b in best],
                         "by": [method_short(b[1]) if b else "" for b in best]})


def run_entries(runs: pd.DataFrame) -> list[dict]:
    """:func:`clipcal.runs.list_runs` rows as dicts ``id`` (store key), ``created``, ``methods`` (list),
    ``test_worst_group`` (dict), ``changed`` — newest first, as listed."""
    return [{"id": r["key"], "created": r["created"], "methods": [m for m in r["methods"].split(",") if m],
             "test_worst_group": r["test_worst_group"], "changed": r.get("changed", "")}
            for _, r in runs.iterrows()]


def method_short(name: str) -> str:
    """Short display name of a method (``cfr`` → ``CFR``, ``zeroshot`` → ``zero-shot``) for tight places."""
    return {"zeroshot": "zero-shot"}.get(name, name.upper())


def run_label(info: dict) -> str:
    """``"2026-11-29 08:40 UTC · ERM, CFR · cfr.lr=0.001 · best test worst-group 0.81 (CFR)"`` for a run
    entry of :func:`run_entries` (non-default settings tell otherwise identical runs apart)."""
    methods = info.get("methods") or []
    best = best_of(info.get("test_worst_group"))
    tail = f" · best test worst-group {best[0]:.2f} ({method_short(best[1])})" if best else ""
    changed = str(info.get("changed") or "")
    changed = f" · {changed[:57] + '…' if len(changed) > 58 else changed}" if changed else ""
    return f"{fmt_time(info.get('created'))} · {', '.join(method_short(m) for m in methods)}{changed}{tail}"


def demo_built(options: dict) -> bool:
    """Whether the demo with these options is already generated in the cache."""
    from clipcal.data.demo import demo_dir

    return (demo_dir(**options) / "COMPLETE").is_file()
