"""Class text prompts for zero-shot heads and concept probing.

The default template set is CLIP's 80 ImageNet prompt templates (Radford et al. 2021, "Learning Transferable
Visual Models From Natural Language Supervision", the prompt-ensembling notebook), taken from open_clip's
``open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES`` rather than retyped. Templates are kept as plain
strings with ``{}`` where the class name goes, so they can be part of a store key (JSON).
"""

from __future__ import annotations

from typing import Callable, Iterable


def _as_format(t: str | Callable[[str], str]) -> str:
    return t("{}") if callable(t) else str(t)


def _imagenet_templates() -> tuple[str, ...]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(_as_format(t) for t in OPENAI_IMAGENET_TEMPLATES)


#: The 80 CLIP ImageNet templates as ``"a photo of a {}."``-style strings.
IMAGENET_TEMPLATES: tuple[str, ...] = _imagenet_templates()

#: A single plain template, for quick probes.
SIMPLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)


def normalize_templates(templates: Iterable[str | Callable[[str], str]] | None) -> list[str]:
    """Templates as ``{}`` strings (callables such as open_clip's lambdas are rendered with ``"{}"``).

    ``None`` gives :data:`IMAGENET_TEMPLATES`. A template without ``{}`` gets the class name appended.
    """
    if templates is None:
        return list(IMAGENET_TEMPLATES)
    if isinstance(templates, str):
        templates = [templates]
    out = [_as_format(t) for t in templates]
    return [t if "{}" in t else t.rstrip() + " {}" for t in out]


def fill(template: str, class_name: str) -> str:
    """Put ``class_name`` into ``template`` (replaces ``{}``; braces in the name are kept literally)."""
    return template.replace("{}", class_name)


def class_prompts(class_name: str, templates: Iterable[str] | None = None) -> list[str]:
    """All prompts of one class: each template filled with ``class_name``."""
    return [fill(t, class_name) for t in normalize_templates(templates)]
