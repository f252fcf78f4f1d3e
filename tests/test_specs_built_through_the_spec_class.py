"""One default backbone and one grammar: ``clipcal.backbones.DEFAULT_SPEC`` is the only place the default spec is
written, and specs are built through :class:`BackboneSpec` (its constructors go through ``parse_spec``), never by
formatting spec strings or recognising a backbone by matching its text — outside ``clipcal/backbones/``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from clipcal.backbones import DEFAULT_SPEC, BackboneSpec, parse_spec
from clipcal.errors import BackboneError

ROOT = Path(__file__).resolve().parent.parent
PREFIXES = ("bundled:", "tiny:", "open_clip:")


def _code_files() -> list[Path]:
    files = [*(ROOT / "clipcal").rglob("*.py"), *(ROOT / "pages").rglob("*.py"), ROOT / "app.py"]
    return [p for p in files if "backbones" not in p.relative_to(ROOT).parts[:2] and p.is_file()]


def test_the_default_spec_is_written_once():
    """A spec literal used as a value outside the backbones package (``default="bundled:efficientnet-lite0"``,
    ``DEFAULT_BACKBONE = "…"``, ``"bundled:efficientnet-lite0" + "@224"``, ``spec == "tiny:clip"``) is a second
    default to keep in step. (A record of which backbone a measurement used — a dict value — is data, not a
    default; docstrings and help texts are prose.)"""
    found = []
    for p in _code_files():
        tree = ast.parse(p.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            values = []
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.keyword, ast.Return)):
                values = [node.value]
            elif isinstance(node, ast.BinOp):
                values = [node.left, node.right]
            elif isinstance(node, ast.Compare):
                values = [node.left, *node.comparators]
            elif isinstance(node, ast.Call):
                values = list(node.args)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                values = [*node.args.defaults, *node.args.kw_defaults]
            for v in values:
                if isinstance(v, ast.Constant) and isinstance(v.value, str) \
                        and v.value.strip() in ("bundled:efficientnet-lite0", "tiny:clip"):
                    found.append(f"{p.relative_to(ROOT)}:{v.lineno} {v.value!r}")
    assert found == []


def test_no_spec_is_formatted_or_matched_by_its_text():
    """f-strings that start a spec (``f"open_clip:{arch}:{path}"``) and ``spec.startswith("bundled:")`` tests
    bypass the grammar: build with BackboneSpec's constructors, ask ``parse_spec(s).kind``."""
    found = []
    for p in _code_files():
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant) \
                    and str(node.values[0].value).startswith(PREFIXES):
                found.append(f"{p.relative_to(ROOT)}:{node.lineno} f-string spec")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("startswith", "endswith") and node.args \
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str) \
                    and (node.args[0].value.startswith(PREFIXES) or node.args[0].value == ":random"):
                found.append(f"{p.relative_to(ROOT)}:{node.lineno} .{node.func.attr}({node.args[0].value!r})")
    assert found == []


def test_catalog_and_every_command_default_to_the_one_default_spec():
    from clipcal import catalog
    from clipcal.cli import build_parser

    assert catalog.DEFAULT_BACKBONE == str(DEFAULT_SPEC) == "bundled:efficientnet-lite0"
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    defaults = {name: p.get_default("backbone") for name, p in sub.choices.items()
                if p.get_default("backbone") is not None}
    assert set(defaults) >= {"embed", "calibrate", "report"}
    assert set(defaults.values()) == {str(DEFAULT_SPEC)}


def test_spec_constructors_give_what_the_parser_gives(tmp_path):
    ck = tmp_path / "ft.pt"
    cases = [
        (DEFAULT_SPEC.with_image_size(224), "bundled:efficientnet-lite0@224"),
        (DEFAULT_SPEC.with_image_size(160), "bundled:efficientnet-lite0"),
        (BackboneSpec.bundled(), "bundled:efficientnet-lite0"),
        (BackboneSpec.tiny(), "tiny:clip"),
        (BackboneSpec.random("ViT-B-32"), "open_clip:ViT-B-32:random"),
        (BackboneSpec.from_tag("ViT-B-32", "openai"), "open_clip:ViT-B-32:openai"),
        (BackboneSpec.from_checkpoint("ViT-B-32", ck), f"open_clip:ViT-B-32:{ck}"),
        (BackboneSpec.from_checkpoint("ViT-B-32", ck, config="openai"), f"open_clip:ViT-B-32@openai:{ck}"),
        (BackboneSpec.from_local_dir(tmp_path), f"open_clip:local-dir:{tmp_path}"),
        (BackboneSpec.from_hf_hub("laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
         "open_clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
    ]
    for built, text in cases:
        assert str(built) == text and parse_spec(text) == built
    assert [parse_spec(t).kind for _, t in cases] == ["bundled", "bundled", "bundled", "tiny", "random", "tag",
                                                     "checkpoint", "checkpoint", "local-dir", "hf-hub"]


@pytest.mark.parametrize("build, words", [
    (lambda: BackboneSpec.from_tag("ViT-B-99", "openai"), "unknown open_clip architecture"),
    (lambda: BackboneSpec.from_checkpoint("ViT-B-32", "/w.pt", config="nonsense"), "unknown pretrained configuration"),
    (lambda: BackboneSpec.from_checkpoint("ViT-B-32", " "), "no checkpoint file"),
    (lambda: DEFAULT_SPEC.with_image_size(8), "bad image size"),
    (lambda: BackboneSpec.from_tag("ViT-B-32", "openai").with_image_size(224), "fixed input size"),
])
def test_spec_constructors_validate_like_the_parser(build, words):
    with pytest.raises(BackboneError) as e:
        build()
    assert words in e.value.message
