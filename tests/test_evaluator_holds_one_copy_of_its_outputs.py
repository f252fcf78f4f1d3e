"""Evaluator.predict fills preallocated outputs: it must not hold a list of [n, e] blocks and their
concatenation at once (two copies of the largest output; 0.8 GB at CelebA size, most of ERM's extra memory)."""

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, resource
    import numpy as np, torch
    from clipcal.synthetic import generate
    from clipcal.methods._train import Evaluator, LastLayer

    ds = generate(n_train=150_000, n_val=2_000, n_test=2_000, dim=8, embed_dim=512, seed=0)
    data = ds.data
    rng = np.random.default_rng(0)
    model = LastLayer(rng.normal(size=(8, 512)), rng.normal(size=(data.n_classes, 512)), dropout=0.0)
    ev = Evaluator(data, torch.device("cpu"), batch_size=8192)
    ev.predict(model, np.arange(1000))  # warm-up: torch's first-call allocations are not the output's
    import gc; gc.collect()

    def status(field):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(field + ":"))

    with open("/proc/self/clear_refs", "w") as f:  # Linux: reset the peak (VmHWM) to the current RSS
        f.write("5")
    before = status("VmRSS")
    probs, z = ev.predict(model)
    out_kb = z.nbytes // 1024
    print(json.dumps({"extra_kb": status("VmHWM") - before, "out_kb": out_kb, "n": int(z.shape[0])}))
""")


def test_predict_peak_is_about_one_output():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    # one [n, e] float32 output plus blocks; the list-then-concatenate version needs ~2 outputs
    assert m["extra_kb"] < 1.5 * m["out_kb"], m


def test_validation_scoring_keeps_no_embeddings():
    import numpy as np
    import torch

    from clipcal.methods._train import Evaluator, LastLayer
    from clipcal.synthetic import generate

    data = generate(n_train=300, n_val=200, n_test=200, dim=8, embed_dim=16, seed=0).data
    rng = np.random.default_rng(0)
    model = LastLayer(rng.normal(size=(8, 16)), rng.normal(size=(data.n_classes, 16)), dropout=0.0)
    ev = Evaluator(data, torch.device("cpu"))
    probs, z = ev.predict(model, data.indices("val"), with_z=False)
    assert z is None and probs.shape == (int((data.split == "val").sum()), data.n_classes)
    full_p, full_z = ev.predict(model)
    np.testing.assert_array_equal(full_p[data.indices("val")], probs)
    assert full_z.shape == (data.n, 16) and full_z.dtype == np.float32
