"""Embedding on a Ray cluster (``python -m clipcal embed --engine ray``, issue 14; docs/scale.md).

The driver (the process that calls :func:`clipcal.embed.embed_benchmark`) does everything the local engine does
except encoding: it plans the shards (``_plan``, the same bounds), holds the key's store lock, verifies
shards (``_read_shard``) and is the only writer of the manifest (``store.put``). This module only replaces the
local shard runner (:func:`clipcal.embed._run_shards`) with :func:`ray_runner`: Ray actors
(:class:`_ShardWorker`, one model each; ``num_gpus=1`` per actor where the cluster has GPUs, one CPU each
otherwise) load the backbone by spec at the driver's precision and embed whole shards with clipcal's own reader
(``_ImageDataset`` / ``_collate``: unreadable images are listed with their reasons, never dropped), the same
batches (never crossing a shard), out-of-memory halving (``_Encoder``) and shard writer (``_write_shard``:
arrays and json under unique temporary names renamed into place, each shard with its own checksums). So the
entry is the local engine's: same key, and on the same device and thread count the same bytes.

Failures. Ray's own retries are off (``max_restarts=0``, ``max_task_retries=0``): every failure of a shard —
an exception, or its worker process dying (killed, out of memory, a lost node) — is counted here against that
shard, the dead actor is replaced, and the shard is submitted again, at most ``max_retries`` times; then the
job fails with the shard's last error (:class:`ShardFailedError`). Finished shards stay on disk, so the next run
embeds only the others. Cancel (``threading.Event``) stops submitting and cancels what runs. Whatever happens,
the actors are killed and a cluster started here is shut down (no Ray process left behind).

Only the driver needs :mod:`ray` before :func:`ray_runner` is called; nothing imports this module on the
dashboard or local path. Requires the extra ``requirements-scale.txt`` (:func:`require_ray`).
"""

from __future__ import annotations

import collections
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable

from clipcal.errors import BackboneError, Cancelled, ClipcalError, MissingDependencyError, StoreError

DEFAULT_MAX_RETRIES = 2
#: Fault injection for tests and drills, read by the workers: comma-separated ``<action>@<shard index>``, action
#: ``raise`` (the shard raises every time), ``exit`` (its worker process dies every time) or ``sleep<s>``.
FAULT_ENV = "CLIPCAL_RAY_FAULT"
#: Environment passed from the driver to the workers (offline mode, caches), when set.
PASS_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "TORCH_HOME", "CLIPCAL_CACHE", "NUMBA_CACHE_DIR",
            "OMP_WAIT_POLICY", "TOKENIZERS_PARALLELISM", FAULT_ENV)
INSTALL = "pip install -r requirements-scale.txt"
_POLL_S = 0.5


class ShardFailedError(ClipcalError):
    """A shard failed more often than the retry cap allows; finished shards are kept for the next run."""


def require_ray() -> None:
    """Raise :class:`~clipcal.errors.MissingDependencyError` unless :mod:`ray` can be imported (not importing it).

    Raises:
        MissingDependencyError: naming the extra and the command that installs it.
    """
    from clipcal.deps import is_installed

    if not is_installed("ray"):
        raise MissingDependencyError(
            f"the Python package 'ray' is needed for --engine ray, but it is not installed in this environment "
            f"({sys.executable}); nothing was started",
            hint=f"install the optional extra with: {sys.executable} -m {INSTALL} (from the clipcal folder), "
                 "or use the default local engine")


# ---------------------------------------------------------------------------------------------------------
# worker side
# ---------------------------------------------------------------------------------------------------------
def _fault(index: int) -> None:
    """The fault injected into shard ``index`` by :data:`FAULT_ENV`, if any (tests and drills only)."""
    for item in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        action, _, at = item.strip().partition("@")
        if at.strip() != str(index):
            continue
        if action == "raise":
            raise RuntimeError(f"fault injected into shard {index} ({FAULT_ENV})")
        if action == "exit":
            os._exit(17)
        if action.startswith("sleep"):
            time.sleep(float(action[5:] or 1))


class _ShardWorker:
    """Ray actor: one backbone, embeds whole shards into the store's partial folder.

    Args:
        spec: canonical backbone spec; precision: the driver's resolved precision (part of the store key).
        identity: the driver's :meth:`Backbone.identity`; a node whose weights differ refuses to work.
        use_gpu: the actor was given a GPU (``num_gpus=1``); num_workers: DataLoader decoding processes.
    """

    def __init__(self, spec: str, precision: str, identity: dict, use_gpu: bool, num_workers: int):
        from clipcal.backbones import load_backbone

        self.node = socket.gethostname()
        self.backbone = load_backbone(spec, device="cuda" if use_gpu else "cpu", precision=precision)
        if self.backbone.identity() != identity:
            raise BackboneError(f"node {self.node}: backbone {spec} resolves to other weights or settings than on "
                                f"the driver ({self.backbone.identity()} vs {identity})",
                                hint="install the same weights (same files, same cache) on every node")
        self.num_workers = num_workers

    def embed(self, index: int, start: int, stop: int, paths: list[str], ids: list[str], folder: str,
              batch_size: int) -> dict:
        """Embed rows ``[start, stop)`` (their ``paths`` / ``ids``) and write shard ``index`` into ``folder``.

        Returns:
            ``{"index", "n_encoded", "skipped": [(row, sample_id, reason)], "messages", "node", "pid"}``.

        Raises:
            StoreError: ``folder`` is not visible on this node (the store is not on a shared filesystem).
        """
        import numpy as np
        from torch.utils.data import DataLoader

        from clipcal.embed import _collate, _Encoder, _ImageDataset, _write_shard

        out = Path(folder)
        if not (out / "plan.json").is_file():
            raise StoreError(f"node {self.node} cannot see the store's shard folder {out}",
                             hint="put the store (CLIPCAL_CACHE) on a filesystem shared by all nodes, mounted at "
                                  "the same path")
        _fault(index)
        n = stop - start
        batches = [list(range(s, min(n, s + batch_size))) for s in range(0, n, batch_size)]
        loader = DataLoader(_ImageDataset(list(paths), self.backbone.transform), batch_sampler=batches,
                            num_workers=self.num_workers, collate_fn=_collate,
                            pin_memory=self.backbone.device.startswith("cuda"))
        messages: list[str] = []
        encoder = _Encoder(self.backbone, batch_size, messages.append)
        rows, hs, zs, skipped = [], [], [], []
        for local, x, bad in loader:
            if x is not None:
                h, z = encoder(x)
                hs.append(h)
                zs.append(z)
                rows += [start + r for r in local]
            skipped += [(start + r, str(ids[r]), reason) for r, reason in bad]
        d, e = self.backbone.feature_dim, self.backbone.embed_dim
        fh = np.concatenate(hs) if hs else np.zeros((0, d), np.float32)
        fz = np.concatenate(zs) if zs else np.zeros((0, e), np.float32)
        _write_shard(out, index, start, stop, rows, fh.astype(np.float32), fz.astype(np.float32), sorted(skipped))
        return {"index": index, "n_encoded": len(rows), "skipped": sorted(skipped), "messages": messages,
                "node": self.node, "pid": os.getpid()}


# ---------------------------------------------------------------------------------------------------------
# driver side
# ---------------------------------------------------------------------------------------------------------
class _Cluster:
    """Connect to Ray for one job: reuse this process's connection, join ``address``, or start a local cluster
    with this machine's CPUs. :meth:`close` disconnects (and so stops a local cluster) only what it opened."""

    def __init__(self, address: str | None):
        import ray

        self.ray = ray
        self.opened = False
        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from offline machines
        os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")  # keep builtins.print (see shutdown)
        kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        try:
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=os.cpu_count() or 1, object_store_memory=512 * 2**20, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
            raise ClipcalError(f"could not connect to {where}: {err}",
                               hint="start one with `ray start --head` and pass --address HOST:6379, or leave "
                                    "--address out to start a local cluster") from None
        self.opened = True

    def resources(self) -> dict:
        return self.ray.cluster_resources()

    def close(self) -> None:
        if self.opened:
            shutdown(self.ray)
            self.opened = False


def shutdown(ray) -> None:
    """``ray.shutdown()``, with Python's own ``print`` in place afterwards: Ray 2.60 replaces ``builtins.print`` by
    ``ray.experimental.tqdm_ray.safe_print`` whenever its progress-bar manager starts in this process (at the
    latest at shutdown), after which numba cannot compile anything that prints — UMAP / pynndescent then fail in
    the same process with "Untyped global name 'print'". :class:`_Cluster` also sets ``RAY_TQDM_PATCH_PRINT=0``."""
    import builtins

    try:
        ray.shutdown()
    finally:
        tqdm_ray = sys.modules.get("ray.experimental.tqdm_ray")
        if tqdm_ray is not None and builtins.print is getattr(tqdm_ray, "safe_print", None):
            builtins.print = tqdm_ray._print  # the print it saved on import


def _error_text(err: BaseException) -> str:
    """One line for a Ray failure: the worker's own exception where Ray carries it."""
    cause = getattr(err, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    text = str(err)
    if "worker process has died" in text:  # Ray's paragraph on a killed / crashed worker
        return "its worker process died (killed, out of memory or crashed)"
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else type(err).__name__


def shard_runner(engine: str, address: str | None, max_retries: int | None, device: str) -> Callable:
    """The shard runner :func:`clipcal.embed.embed_benchmark` passes to ``_embed_locked`` for ``engine``, checked
    before any work.

    Raises:
        ClipcalError: an unknown engine, or ``address`` / ``max_retries`` with the local engine.
        MissingDependencyError: ``engine="ray"`` without ray installed.
    """
    from clipcal.embed import _run_shards

    if engine == "local":
        if address is not None or max_retries is not None:
            raise ClipcalError("address and max_retries apply to engine='ray' only", hint="use --engine ray")
        return _run_shards
    if engine != "ray":
        raise ClipcalError(f"unknown embedding engine {engine!r}", hint="use 'local' or 'ray'")
    require_ray()
    return ray_runner(address, DEFAULT_MAX_RETRIES if max_retries is None else max_retries, device)


def ray_runner(address: str | None = None, max_retries: int = DEFAULT_MAX_RETRIES, device: str = "auto",
               num_actors: int | None = None) -> Callable:
    """A shard runner for :func:`clipcal.embed._embed_locked` that embeds on a Ray cluster.

    Args:
        address: ``HOST:PORT`` of a running cluster (``ray start --head``); ``None`` uses this process's Ray
            connection if there is one, else starts a local cluster with this machine's CPUs for the job.
        max_retries: how often one shard may be submitted again after a failure (≥ 0).
        device: ``"cpu"`` → CPU actors; otherwise one GPU per actor where the cluster has GPUs (``"cuda…"``
            on a cluster without GPUs is an error).
        num_actors: actors to start (default: one per GPU, or per CPU, capped by the shards to do).

    Returns:
        ``run(backbone, paths, ids, todo, folder, batch_size, num_workers, report, cancel, done0, torch) -> int``
        (images encoded), the signature of :func:`clipcal.embed._run_shards`.

    Raises:
        ClipcalError: ``max_retries`` < 0.
    """
    if int(max_retries) < 0:
        raise ClipcalError(f"max_retries must be ≥ 0, not {max_retries}")

    def run(backbone, paths, ids, todo, folder, batch_size, num_workers, report, cancel, done0, torch) -> int:
        require_ray()
        cluster = _Cluster(address)
        try:
            return _Job(cluster, backbone, paths, ids, folder, batch_size, num_workers, report, cancel,
                        int(max_retries), device, num_actors).run(todo, done0)
        finally:
            cluster.close()

    return run


class _Job:
    """One embedding job on a cluster: a pool of actors pulling shards; failures counted per shard."""

    def __init__(self, cluster, backbone, paths, ids, folder, batch_size, num_workers, report, cancel,
                 max_retries, device, num_actors):
        self.ray = cluster.ray
        self.paths, self.ids, self.folder = paths, ids, Path(folder)
        self.batch_size, self.report, self.cancel = batch_size, report, cancel
        self.max_retries = max_retries
        res = cluster.resources()
        gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
        want_gpu = str(device).lower() != "cpu"
        if str(device).lower().startswith("cuda") and not gpus:
            raise BackboneError(f"device {device!r} asked for, but the Ray cluster has no GPU "
                                f"(resources: {dict(res)})", hint="use --device cpu, or add GPU nodes")
        self.use_gpu = want_gpu and gpus > 0
        per_actor_cpus = max(1, min(8, cpus // gpus)) if self.use_gpu else 1
        if num_workers is None:  # decoding processes inside each actor: its other CPUs
            num_workers = per_actor_cpus - 1
        self.pool_size = num_actors or (gpus if self.use_gpu else cpus)
        self.options = dict(num_cpus=per_actor_cpus, num_gpus=1 if self.use_gpu else 0, max_restarts=0,
                            max_task_retries=0,
                            runtime_env={"env_vars": {k: os.environ[k] for k in PASS_ENV if k in os.environ}})
        self.args = (backbone.spec, backbone.precision, backbone.identity(), self.use_gpu, int(num_workers))
        self.remote_cls = self.ray.remote(_ShardWorker)

    def _actor(self):
        return self.remote_cls.options(**self.options).remote(*self.args)

    def _submit(self, actor, shard):
        i, start, stop = shard
        return actor.embed.remote(i, start, stop, list(self.paths[start:stop]), [str(s) for s in self.ids[start:stop]],
                                  str(self.folder), self.batch_size)

    def run(self, todo, done0) -> int:
        from ray.exceptions import RayActorError, RayError

        ray = self.ray
        pending = collections.deque(todo)
        attempts = collections.Counter()
        total_todo = sum(stop - start for _, start, stop in todo)
        actors = [self._actor() for _ in range(min(self.pool_size, len(todo)))]
        self.report(done0, message=f"Ray: {len(actors)} worker(s) on {'GPU' if self.use_gpu else 'CPU'} loading "
                                   f"{self.args[0]} for {len(todo)} shard(s)")
        idle = list(range(len(actors)))
        inflight: dict = {}  # object ref → (actor slot, shard)
        done, new, n_encoded, t_start = done0, 0, 0, time.monotonic()

        def fill() -> None:  # give every idle actor a shard
            while idle and pending:
                slot, shard = idle.pop(), pending.popleft()
                inflight[self._submit(actors[slot], shard)] = (slot, shard)

        try:
            while pending or inflight:
                self._check_cancel(done, done0, inflight)
                fill()
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=_POLL_S)
                for ref in ready:
                    slot, shard = inflight.pop(ref)
                    try:
                        res = ray.get(ref)
                    except RayError as err:
                        attempts[shard] += 1
                        if attempts[shard] > self.max_retries:
                            raise ShardFailedError(
                                f"embedding shard {shard[0]} (rows {shard[1]:,}–{shard[2] - 1:,}) failed "
                                f"{attempts[shard]} time(s), more than --max-retries {self.max_retries} allows: "
                                f"{_error_text(err)}",
                                hint="finished shards are kept: fix the cause and run again to embed the rest") \
                                from None
                        if isinstance(err, RayActorError):  # its process died: a new one
                            ray.kill(actors[slot], no_restart=True)
                            actors[slot] = self._actor()
                        self.report(done, message=f"shard {shard[0]} failed ({_error_text(err)}); retry "
                                                  f"{attempts[shard]} of {self.max_retries}")
                        pending.appendleft(shard)
                        idle.append(slot)
                        continue
                    idle.append(slot)
                    self._check_shard(shard, res)
                    self._check_cancel(done, done0, inflight)
                    fill()  # before reporting: the actors work while the progress callback runs
                    done += shard[2] - shard[1]
                    new += shard[2] - shard[1]
                    n_encoded += res["n_encoded"]
                    for m in res["messages"]:
                        self.report(done, message=f"node {res['node']}: {m}")
                    rate = new / max(time.monotonic() - t_start, 1e-9)  # actors' start-up included
                    self.report(done, rate, (total_todo - new) / rate, "embedding")
        finally:
            for ref in inflight:
                try:
                    ray.cancel(ref, force=False)
                except Exception:  # noqa: BLE001 - the actor is killed next anyway
                    pass
            for a in actors:
                ray.kill(a, no_restart=True)
        return n_encoded

    def _check_cancel(self, done, done0, inflight) -> None:
        if self.cancel is None or not self.cancel.is_set():
            return
        raise Cancelled(f"embedding cancelled after {done:,} of {len(self.paths):,} images; finished shards are "
                        f"stored ({done - done0:,} images in this run) and {len(inflight)} running shard(s) were "
                        "stopped", hint="run again to embed the rest")

    def _check_shard(self, shard, res) -> None:
        """The driver sees the shard the worker wrote, and every image the worker could not find is missing here
        too (otherwise the images or the store are not shared at the same path, and the entry would be wrong)."""
        i = shard[0]
        from clipcal.embed import _shard_name

        try:
            info = json.loads((self.folder / f"{_shard_name(i)}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = None
        if not info or info.get("index") != i:
            raise StoreError(f"node {res['node']} wrote shard {i} but this driver does not see it in {self.folder}",
                             hint="put the store (CLIPCAL_CACHE) on a filesystem shared by all nodes, mounted at the "
                                  "same path")
        for row, _sid, reason in res["skipped"]:
            if str(reason).startswith("image not found") and os.path.exists(self.paths[row]):
                (self.folder / f"{_shard_name(i)}.json").unlink(missing_ok=True)  # never assembled
                raise StoreError(f"node {res['node']} cannot find image {self.paths[row]}, which this driver can "
                                 "read; its shard was not used",
                                 hint="put the images on a filesystem shared by all nodes, mounted at the same path")


__all__ = ["DEFAULT_MAX_RETRIES", "FAULT_ENV", "ShardFailedError", "ray_runner", "require_ray", "shard_runner"]
