"""Sleep levels: how far a loaded model is put away while it is not wanted, short of unloading.

``host``: the weights leave the device for pinned host memory (on the CPU they stay where they
are); the module, its tokenizer and scheduler are kept, device memory is given back. ``disk``: the
weights read from the model's files are dropped (the local tier and the page cache keep the
files); the module's skeleton, imports and scheduler are kept, so waking re-reads the files.
A sleeping model still answers: a request wakes it first, and the wake counts as queue time.

Two ways to ask: the repository's unload with a level (:func:`unload_level`), and vLLM's sleep
mode (``POST /sleep?level=1|2``, ``POST /wake_up``, ``GET /is_sleeping``, each for every model
or ``?model=`` one: :func:`sleep_mode_call`), whose level 1 is ``host`` and level 2 ``disk``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

from contracts import oip
from contracts.replica import SleepLevel
from runtime.errors import InvalidInput

__all__ = ["SleepLevel", "SleepModeCall", "sleep_mode_call", "unload_level"]

# vLLM's sleep levels: 1 offloads the weights to host memory, 2 discards them
VLLM_LEVELS = {"1": SleepLevel.HOST, "2": SleepLevel.DISK}
# the query keys each sleep-mode route reads (vLLM's ``tags`` wake parts of an engine: Ember
# wakes a model whole, whichever part is named)
_KEYS = {"/sleep": ("level", "model"), "/wake_up": ("model", "tags"), "/is_sleeping": ("model",)}
_TAGS = ("weights", "kv_cache")


def unload_level(body: bytes) -> SleepLevel | None:
    """The sleep level an unload request asks for; None (no body, no level): a full unload.
    InvalidInput (400) saying what is wrong with the body (:func:`contracts.oip.unload_level`)."""
    try:
        level = oip.unload_level(body)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    return None if level is None else SleepLevel(level)


@dataclass(frozen=True)
class SleepModeCall:
    """A sleep-mode request: the model it names (None: every model) and, for ``/sleep``, the
    level (vLLM's default: 1, ``host``)."""

    model: str | None = None
    level: SleepLevel = SleepLevel.HOST


def sleep_mode_call(route: str, query: str) -> SleepModeCall:
    """The query of sleep-mode ``route`` read; InvalidInput (400) naming what is wrong."""
    keys = _KEYS[route]
    given: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in keys:
            known = ", ".join(keys)
            raise InvalidInput(f"{route}: unknown query parameter {key!r:.40}; it reads {known}")
        if key in given and key != "tags":
            raise InvalidInput(f"{route}: {key} is given twice")
        given[key] = value
        if key == "tags" and value not in _TAGS:
            raise InvalidInput(f"{route}: unknown tag {value!r:.40}; the tags are {_TAGS}")
    level = given.get("level", "1")
    if level not in VLLM_LEVELS:
        raise InvalidInput(
            f"{route}: level must be 1 (weights to host memory) or 2 (weights discarded), "
            f"not {level!r:.40}"
        )
    model = given.get("model")
    if model == "":
        raise InvalidInput(f"{route}: model is empty; name a model, or leave it out for all")
    return SleepModeCall(model, VLLM_LEVELS[level])
