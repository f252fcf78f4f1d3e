"""After a Ray job the process's ``print`` is Python's own again: Ray 2.60's shutdown leaves
``builtins.print`` replaced, and numba then fails to compile UMAP / pynndescent code in the same process
("Untyped global name 'print'") — a CLI or notebook that embeds with --engine ray and then draws a map."""

import builtins

import pytest

ray = pytest.importorskip("ray", reason="the Ray extra (requirements-scale.txt) is not installed")

pytestmark = pytest.mark.ray


def test_closing_a_cluster_restores_print_so_numba_still_compiles(tmp_path):
    import numba
    import numpy as np

    from clipcal.embed_ray import _Cluster

    original = builtins.print
    c = _Cluster(None)
    try:
        assert c.opened
    finally:
        c.close()
    assert builtins.print is original

    @numba.njit
    def noisy(x):
        if x < 0:
            print("negative")
        return numba.get_num_threads() * x

    assert noisy(np.float64(2.0)) > 0
