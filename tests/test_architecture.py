"""Architecture guards (docs/design.md, "Direction"): the library never loads Streamlit, pages never import torch,
pages hold only Streamlit code and thin glue, teaching texts live next to what they explain, no module grows past
~800 lines. Each guard names the offending file and line."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE_FILES = sorted((ROOT / "pages").rglob("*.py"))
#: what pages must not import, directly or inside a function (the heavy lifting is clipcal's)
NOT_IN_PAGES = ("torch", "torchvision", "open_clip", "umap", "sklearn")
#: the longest a page-side function without a Streamlit call may be: glue (memo, job submission, a cached model)
THIN_GLUE_LINES = 16
#: modules being split by other work this round; drop when done (backbones.py became a package: issue 11 item 2;
#: methods/cfr.py split into its stages and cfr_calibration / cfr_sampling / cfr_losses: issue 11 item 3)
OVER_LIMIT_FOR_NOW: set[str] = set()
MAX_LINES = 800


def _clipcal_modules() -> list[str]:
    """Dotted names of every module and package of clipcal (``__main__`` left out: it runs the CLI)."""
    out = []
    for p in (ROOT / "clipcal").rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(out)


def test_importing_every_clipcal_module_never_loads_streamlit():
    """In a fresh interpreter (so nothing else loaded it), import each module of the library."""
    mods = _clipcal_modules()
    assert "clipcal.views" in mods and "clipcal.methods.cfr" in mods and "clipcal.commands.calibrate" in mods
    code = ("import importlib, json, sys\n"
            f"mods = {mods!r}\n"
            "failed = {}\n"
            "for m in mods:\n"
            "    try:\n"
            "        importlib.import_module(m)\n"
            "    except Exception as e:\n"
            "        failed[m] = repr(e)\n"
            "print(json.dumps({'streamlit': sorted(k for k in sys.modules if k.split('.')[0] == 'streamlit'),"
            " 'failed': failed}))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["failed"] == {}, result["failed"]
    assert result["streamlit"] == [], f"clipcal loaded streamlit: {result['streamlit'][:5]}"


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.lineno, node.module


def test_pages_never_import_torch_or_other_compute_libraries():
    assert PAGE_FILES and any(p.parent.name == "ui" for p in PAGE_FILES)
    bad = [f"{p.relative_to(ROOT)}:{line}: import {name}" for p in PAGE_FILES
           for line, name in _imports(ast.parse(p.read_text())) if name.split(".")[0] in NOT_IN_PAGES]
    assert bad == []


def test_page_functions_are_streamlit_code_or_thin_glue():
    """A function under pages/ that makes no Streamlit call is glue (memo, a job submission, the shared model) of a
    few lines; anything longer is logic and belongs in clipcal (where it gets plain unit tests)."""
    long_logic = []
    for p in PAGE_FILES:
        for node in ast.walk(ast.parse(p.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if any(isinstance(n, ast.Name) and n.id == "st" for n in ast.walk(node)):
                continue
            body = node.body[1:] if isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value,
                                                                                        ast.Constant) else node.body
            lines = body[-1].end_lineno - body[0].lineno + 1 if body else 0
            if lines > THIN_GLUE_LINES:
                long_logic.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines, no st.)")
    assert long_logic == []


def test_pages_are_scripts_and_the_ui_package_is_not_a_page():
    """Streamlit lists only pages/*.py as pages (v1 folder scan, st.navigation in app.py); helpers live in
    pages/ui/ and no page file defines more than a tiny callback."""
    app = (ROOT / "app.py").read_text()
    listed = {line.split('"')[1] for line in app.splitlines() if "st.Page(" in line}
    assert listed == {f"pages/{p.name}" for p in (ROOT / "pages").glob("*.py")}
    for p in (ROOT / "pages").glob("*.py"):
        defs = [n for n in ast.parse(p.read_text()).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert all(isinstance(d, ast.FunctionDef) and d.end_lineno - d.lineno < 10 for d in defs), p.name
    assert not (ROOT / "pages" / "_common.py").exists()


def test_teaching_texts_live_next_to_what_they_explain():
    from pages.ui.widgets import TOPICS

    assert TOPICS["cfr"] == "clipcal.methods.cfr"
    for topic, module in TOPICS.items():
        title, body = importlib.import_module(module).TEACHING
        assert title and len(body) > 200, topic
        for p in PAGE_FILES:  # the pages read them, never hold a copy
            assert body[:60] not in p.read_text(), f"{p.relative_to(ROOT)} holds the text of {topic!r}"
    _, cfr = importlib.import_module("clipcal.methods.cfr").TEACHING
    # the method as methods/cfr.py implements it (docs/cfr-method.md): ERM's training errors are the calibration
    # set; positives of the own class, hard negatives of the others; CE on the set + SupCon on the batch
    for words in ("ERM", "wrong", "calibration set", "own class", "positives", "hard negatives",
                  "cross-entropy", "supervised contrastive"):
        assert words in cfr, words
    assert "centroid" not in cfr  # the old text: "samples far from their class centroid", pulled toward it


@pytest.mark.parametrize("folder", ["clipcal", "pages", "tests", "bench"])
def test_no_module_over_about_800_lines(folder):
    over = {p.relative_to(ROOT).as_posix(): n for p in (ROOT / folder).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert set(over) <= OVER_LIMIT_FOR_NOW, over
    assert "pages/_common.py" not in over
