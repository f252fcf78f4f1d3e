"""AFR's reweighted last-layer fit (L-BFGS over fixed embeddings, issue 14.4) runs BLAS on one thread.

Its products are skinny ([n, e] × [e, K]); OpenBLAS splitting them over two threads on the shared 2-core machine
cost ≈ 15 × the CPU time per product, and the γ, λ grid became most of AFR's time at CelebA size. The check is
on what BLAS reports (threadpoolctl) while scipy's optimiser runs, with two BLAS threads allowed outside.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
from threadpoolctl import threadpool_info, threadpool_limits

from clipcal.methods.afr import fit_linear_head


def test_the_head_fit_limits_blas_to_one_thread_and_restores_it(monkeypatch):
    seen = []
    real = scipy.optimize.minimize

    def spy(*args, **kwargs):
        seen.extend(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
        return real(*args, **kwargs)

    monkeypatch.setattr(scipy.optimize, "minimize", spy)
    rng = np.random.default_rng(0)
    z = rng.standard_normal((200, 16))
    y = (z[:, 0] > 0).astype(int)
    w = np.full(200, 1 / 200)
    with threadpool_limits(limits=2, user_api="blas"):
        V, b = fit_linear_head(z, y, w, np.zeros((2, 16)), reg=0.1, max_iter=20)
        after = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    assert seen and set(seen) == {1}
    assert set(after) == {2}                             # the caller's setting is back
    assert ((z @ V.T + b).argmax(1) == y).mean() > 0.9   # and it still fits
