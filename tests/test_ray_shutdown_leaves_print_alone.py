"""After a Ray job the process's ``print`` is Python's own again: Ray 2.60 replaces ``builtins.print`` whenever
its progress-bar manager starts in the driver (at the latest at shutdown), and numba then fails to compile
UMAP / pynndescent code in the same process ("Untyped global name 'print'") — a CLI, notebook or test session
that embeds with --engine ray and then draws a map."""

import builtins

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the Ray extra (requirements-scale.txt) is not installed")

pytestmark = pytest.mark.ray


def _numba_compiles_a_print() -> bool:
    import numba

    @numba.njit
    def noisy(x):
        if x < 0:
            print("negative")
        return numba.get_num_threads() * x

    return noisy(np.float64(2.0)) > 0


def test_closing_a_cluster_restores_print_so_numba_still_compiles():
    from clipcal.embed_ray import _Cluster

    original = builtins.print
    c = _Cluster(None)
    try:
        assert c.opened
    finally:
        c.close()
    assert builtins.print is original
    assert _numba_compiles_a_print()


def test_shutdown_puts_print_back_even_when_ray_patched_it_during_the_job(monkeypatch):
    from ray.experimental import tqdm_ray

    from clipcal import embed_ray

    original = tqdm_ray._print  # Python's print, as Ray saved it on import
    assert builtins.print is original
    monkeypatch.setenv("RAY_TQDM_PATCH_PRINT", "1")
    monkeypatch.setattr(tqdm_ray, "_manager", None)  # a manager from an earlier test would not patch again
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        tqdm_ray.instance()  # the progress-bar manager starts in the driver, as during a job with progress bars
        assert builtins.print is not original  # Ray's own behaviour, which the fix undoes
    finally:
        embed_ray.shutdown(ray)
    assert builtins.print is original
    assert _numba_compiles_a_print()
