"""Sleep levels: how far a loaded model is put away while it is not wanted, short of unloading.

``host``: the weights leave the device for pinned host memory (on the CPU they stay where they
are); the module, its tokenizer and scheduler are kept, device memory is given back. ``disk``: the
weights read from the model's files are dropped (the local tier and the page cache keep the
files); the module's skeleton, imports and scheduler are kept, so waking re-reads the files.
A sleeping model still answers: a request wakes it first, and the wake counts as queue time.
"""

from __future__ import annotations

from contracts import oip
from contracts.replica import SleepLevel
from runtime.errors import InvalidInput

__all__ = ["SleepLevel", "unload_level"]


def unload_level(body: bytes) -> SleepLevel | None:
    """The sleep level an unload request asks for; None (no body, no level): a full unload.
    InvalidInput (400) saying what is wrong with the body (:func:`contracts.oip.unload_level`)."""
    try:
        level = oip.unload_level(body)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    return None if level is None else SleepLevel(level)
