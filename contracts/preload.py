"""What a warm-pool standby imports ahead, besides what every replica's start imports, for the
models its stack serves.

A standby (``ember serve --standby``) holds no model, so it cannot know which it will become:
the activator tells it, in its arguments (``--preload MODULE``), the modules the stack's
handlers import when they load. For a text-generation model that is transformers and, where
its config names a model family (``model_type`` in a local folder's ``config.json``), that
family's modeling module: several seconds of a cold start otherwise (a Llama's is ~2 s here),
paid again by every fresh process. Module names are the one vocabulary: the standby imports
each, skipping one that is missing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlparse

from contracts.stack import ModelSpec

_HANDLER_MODULES: dict[str, tuple[str, ...]] = {
    "text-generation": (
        "transformers",
        "transformers.models.auto.modeling_auto",
        "transformers.models.auto.tokenization_auto",
        "runtime.handlers.text_generation",
        "runtime.generation.routes",
    ),
}
_FAMILY = re.compile(r"[a-z][a-z0-9_]{0,63}")


def preload_modules(specs: Iterable[ModelSpec]) -> list[str]:
    """The modules, in a stable order and each once, that the models of ``specs`` import when
    they load, beyond a replica's own start."""
    out: dict[str, None] = {}
    for spec in specs:
        for module in _HANDLER_MODULES.get(spec.handler or "", ()):
            out[module] = None
        if spec.handler == "text-generation":
            family = _model_type(spec)
            if family is not None:
                out[f"transformers.models.{family}.modeling_{family}"] = None
    return list(out)


def _model_type(spec: ModelSpec) -> str | None:
    """A local source's (a path, or ``file://``) ``config.json`` ``model_type``, when it can
    be read and is a plain name; None otherwise (an ``s3://`` or ``hf://`` source is not read
    here)."""
    source = spec.source or ""
    if source.startswith("file://"):
        source = unquote(urlparse(source).path)
    if not source or "://" in source:
        return None
    folder = Path(source)
    if not folder.is_absolute():
        folder = spec.config_path.parent / folder
    try:
        value = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and _FAMILY.fullmatch(value) else None
