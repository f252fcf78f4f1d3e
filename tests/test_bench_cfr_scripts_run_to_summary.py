"""The CFR measurement scripts run to their summary and compare against every baseline (issue 10, item 10).

``bench/cfr_sweep.py`` crashed with ``KeyError: 'calibration_errors'`` whenever it ran more than one seed, so its
summary never printed; it computed no zero-shot figure and no DFR figure. Kind-level rule: a bench script's
summary is reached on a multi-seed run, and every comparison table carries zero-shot, ERM and DFR beside CFR.
Tiny sizes (seconds); the real figures are measured by the lead on a quiet machine.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
TINY = ["--seeds", "0", "1", "--n-train", "200", "--n-val", "80", "--n-test", "80", "--dim", "16",
        "--epochs", "2", "--erm-epochs", "2", "--text-head", "leaning"]


def _script(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


def _summary(out: str) -> dict:
    last = out.strip().splitlines()[-1]
    return json.loads(last)


def test_cfr_sweep_with_two_seeds_prints_its_summary_with_zero_shot_and_dfr(capsys):
    sweep = _script("cfr_sweep")
    assert sweep.main(TINY) == 0
    out = capsys.readouterr().out
    assert "test worst-group accuracy, mean ± sd over seeds" in out
    assert "zero-shot" in out and "DFR (group labels)" in out and "CFR − ERM" in out
    summary = _summary(out)["summary"]
    assert len(summary) == 1 and summary[0]["seeds"] == [0, 1]
    s = summary[0]
    for m in ("zeroshot", "erm", "dfr", "cfr"):
        assert len(s[f"{m}_values"]) == 2 and all(0.0 <= v <= 1.0 for v in s[f"{m}_values"]), m
        assert "±" in s[m]

    # the zero-shot and DFR figures are those of the methods themselves on the same data
    from clipcal.methods import DFR, ZeroShot
    from clipcal.synthetic import generate

    data = generate(correlation=0.95, seed=1, text_head="leaning", n_train=200, n_val=80, n_test=80, dim=16).data
    assert s["zeroshot_values"][1] == pytest.approx(
        round(sweep.split_metrics(data, ZeroShot().fit(data).result_.pred, "test")["worst_group"], 4))
    assert s["dfr_values"][1] == pytest.approx(
        round(sweep.split_metrics(data, DFR(seed=1).fit(data).result_.pred, "test")["worst_group"], 4))


def test_cfr_ablation_reports_every_variant_with_the_terms_it_ran(capsys):
    ablation = _script("cfr_ablation")
    assert ablation.main([*TINY[:2], *TINY[3:], "--variants", "full", "ce-only", "no-ce"]) == 0  # seed 0 only
    out = capsys.readouterr().out
    runs = [json.loads(line) for line in out.splitlines() if line.startswith('{"data"')]
    assert [r["variant"] for r in runs] == ["full", "ce-only", "no-ce"]
    assert runs[1]["loss"] == "1.5·CE(calibration set)"
    assert "CE" not in runs[2]["loss"]
    summary = _summary(out)["summary"]
    assert [s["variant"] for s in summary] == ["full", "ce-only", "no-ce"]
    assert all(s["dfr"] != "—" and s["zeroshot"] != "—" for s in summary)
    assert "DFR (group labels)" in out


def test_mean_sd_handles_missing_values():
    sweep = _script("cfr_sweep")
    assert sweep.mean_sd([None, None]) == "—"
    assert sweep.mean_sd([0.5]) == "0.500"
    assert sweep.mean_sd([0.5, 0.7]) == "0.600 ± 0.141"
