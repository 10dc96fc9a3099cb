"""Open Inference Protocol requests both servers read the same way (the predictor and the
activator answer the repository index alike)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError

from contracts.replica import SleepLevel


class RepositoryIndexRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    ready: StrictBool = False


def repository_index_request(body: bytes) -> RepositoryIndexRequest:
    """The repository index request in ``body`` (empty: the defaults); ValueError saying what is
    wrong with it otherwise."""
    if not body.strip():
        return RepositoryIndexRequest()
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"repository index request is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ValueError("repository index request must be a JSON object")
    try:
        return RepositoryIndexRequest.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ValueError(f"invalid repository index request: {problems}") from None


_UNLOAD_EXAMPLE = '{"parameters": {"level": "host" | "disk"}}'
# Ember's level, and the repository extension's (tritonclient sends unload_dependents)
_UNLOAD_PARAMETERS = ("level", "unload_dependents")


def no_query(query: str | bytes, what: str) -> None:
    """ValueError if a repository request has a query string: its parameters are read from the
    body only, and ``?level=host`` must not be taken for a full unload."""
    text = query.decode(errors="replace") if isinstance(query, bytes) else query
    if text:
        key = text.split("&", 1)[0].split("=", 1)[0]
        raise ValueError(
            f"{what}: query parameters are not read ({key!r:.40}); give them in the body, e.g. "
            '{"parameters": {"level": "host"}}'
        )


def load_request(body: bytes) -> None:
    """ValueError unless a repository load's body is empty or names no parameter: a model loads
    from its configured files (Triton's ``config`` and ``file:`` overrides are not taken)."""
    parameters = _parameters(body, "load request", "{}")
    if parameters:
        key = sorted(map(str, parameters))[0]
        raise ValueError(
            f"load request: unknown parameter {key!r:.40}; a model loads from its configured "
            "files, with no parameters"
        )


def _parameters(body: bytes, what: str, example: str) -> dict[Any, Any]:
    """The ``parameters`` object of a repository request (none: empty); ValueError naming what
    is wrong: not JSON, not an object, a key other than ``parameters``."""
    if not body.strip():
        return {}
    try:
        payload: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"{what} must be JSON, e.g. {example}: {exc}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{what} must be a JSON object, e.g. {example}")
    unknown = sorted(str(k) for k in payload if k != "parameters")
    if unknown:
        hint = ' (it goes under "parameters")' if unknown[0] in _UNLOAD_PARAMETERS else ""
        raise ValueError(f"{what}: unknown key {unknown[0]!r:.40}{hint}; the body is {example}")
    # absent or null: no parameters; anything but an object ([], 0, "", false) is refused,
    # never read as "no level", which would unload the model in full
    parameters = payload.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise ValueError(f"{what}: parameters must be an object, e.g. {example}")
    return parameters


def unload_level(body: bytes) -> SleepLevel | None:
    """The sleep level a repository unload asks for (``{"parameters": {"level": "host"}}``, the
    repository extension's parameters with Ember's ``level``); None (no body, no level): a full
    unload. ValueError saying what is wrong otherwise."""
    parameters = _parameters(body, "unload request", _UNLOAD_EXAMPLE)
    unknown = sorted(str(k) for k in parameters if k not in _UNLOAD_PARAMETERS)
    if unknown:  # a misspelt level must not unload the model in full
        raise ValueError(
            f"unload request: unknown parameter {unknown[0]!r:.40}; the parameters are "
            f"{', '.join(map(repr, _UNLOAD_PARAMETERS))}"
        )
    level = parameters.get("level")
    if level is None:
        return None
    if not isinstance(level, str) or level not in tuple(SleepLevel):
        raise ValueError(
            f"unload request: unknown sleep level {level!r:.40}; choose "
            f"{', '.join(repr(v.value) for v in SleepLevel)}, or give no level to unload the model"
        )
    return SleepLevel(level)
