"""Package-level behaviour of ``import clipcal``."""

from __future__ import annotations

import os
import subprocess
import sys

from clipcal.paths import PROJECT_ROOT


def _wait_policy_after_import(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_value is not None:
        env["OMP_WAIT_POLICY"] = env_value
    code = "import clipcal, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=PROJECT_ROOT, timeout=120, check=True)
    return out.stdout.strip()


def test_import_sets_passive_openmp_waiting_unless_the_user_chose():
    # spinning OpenMP threads starve each other on a busy CPU (bench/omp_wait_policy.py)
    assert _wait_policy_after_import(None) == "PASSIVE"
    assert _wait_policy_after_import("ACTIVE") == "ACTIVE"
