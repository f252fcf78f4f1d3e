"""Shared pytest set-up.

* No test reaches a model hub: ``HF_HUB_OFFLINE=1`` before anything imports open_clip.
* Every test session gets its own store (``CLIPCAL_CACHE``) under pytest's temp folder, so tests never
  touch a user's ``cache/``; Numba's JIT cache is shared across sessions to keep UMAP warm.
* Fixtures of each area live in ``tests/fixtures_<area>.py`` and are loaded here automatically.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parent.parent / "cache" / "numba"))

pytest_plugins = sorted(f"tests.{p.stem}" for p in Path(__file__).parent.glob("fixtures_*.py"))

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _session_store(tmp_path_factory):
    """Point the default store at a fresh folder for the whole test session."""
    root = tmp_path_factory.mktemp("clipcal-cache")
    old = os.environ.get("CLIPCAL_CACHE")
    os.environ["CLIPCAL_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("CLIPCAL_CACHE", None)
    else:
        os.environ["CLIPCAL_CACHE"] = old


@pytest.fixture
def tmp_store_root(tmp_path, monkeypatch):
    """A private, empty store root for one test (sets ``CLIPCAL_CACHE``)."""
    root = tmp_path / "store"
    root.mkdir()
    monkeypatch.setenv("CLIPCAL_CACHE", str(root))
    return root
