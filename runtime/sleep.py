"""Sleep levels: how far a loaded model is put away while it is not wanted, short of unloading.

``host``: the weights leave the device for pinned host memory (on the CPU they stay where they
are); the module, its tokenizer and scheduler are kept, device memory is given back. ``disk``: the
weights read from the model's files are dropped (the local tier and the page cache keep the
files); the module's skeleton, imports and scheduler are kept, so waking re-reads the files.
A sleeping model still answers: a request wakes it first, and the wake counts as queue time.
"""

from __future__ import annotations

import enum
import json

from runtime.errors import InvalidInput


class SleepLevel(enum.StrEnum):
    HOST = "host"
    DISK = "disk"


CHOICES = ", ".join(repr(level.value) for level in SleepLevel)


def unload_level(body: bytes) -> SleepLevel | None:
    """The sleep level an unload request asks for; None (no body, no level): a full unload.

    The body is the repository extension's ``{"parameters": {...}}``; ``level`` is Ember's.
    """
    if not body.strip():
        return None
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"unload request is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidInput("unload request must be a JSON object")
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("unload request: 'parameters' must be an object")
    level = parameters.get("level")
    if level is None:
        return None
    try:
        return SleepLevel(level)
    except ValueError:
        raise InvalidInput(
            f"unload request: unknown sleep level {level!r:.40}; choose {CHOICES}, "
            "or give no level to unload the model"
        ) from None
