"""The Jinja2 templates under ``templates/``: rendered strictly, read back as YAML objects."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@functools.cache
def environment() -> Any:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # YAML, not HTML: values are quoted with tojson
    )


def render_objects(template: str, **values: Any) -> list[dict[str, Any]]:
    """The objects ``template`` renders to with ``values`` (empty documents dropped)."""
    text = environment().get_template(template).render(**values)
    return [o for o in yaml.safe_load_all(text) if o]
