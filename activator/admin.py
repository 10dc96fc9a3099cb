"""The admin API's requests: list models, warm one for a while, put one to sleep.

    GET  /admin/models                      every model: state, replicas, queue, warm window
    POST /admin/models/{m}/warm {"seconds": 600, "replicas": 1}   hold replicas that long
    POST /admin/models/{m}/sleep            end its warm window, drain its idle replicas now

It needs ``Authorization: Bearer <token>`` when a token is set (the environment variable named by
``activator.admin_token_env``, default ``EMBER_ADMIN_TOKEN``). Without a token it is open only on
an activator bound to loopback (a one-machine stack, where only local users reach it) and off
everywhere else. The routes are in :mod:`activator.routes`; this module reads their bodies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from activator.errors import BadRequest
from contracts.oip import unload_level
from contracts.replica import SleepLevel

MAX_WARM_S = 7 * 24 * 3600


@dataclass(frozen=True)
class WarmOrder:
    seconds: float
    replicas: int
    source: str


def parse_warm(body: bytes) -> WarmOrder:
    """A warm request's body (``{"seconds": 600, "replicas": 1, "source": "..."}``, all optional).

    BadRequest naming the field for anything else.
    """
    payload = _payload(body)
    seconds, replicas = _seconds(payload), _replicas(payload)
    source = payload.get("source", "")
    if not isinstance(source, str):
        raise BadRequest("'source' must be a string")
    return WarmOrder(seconds, replicas, source or "admin")


def parse_unload_level(body: bytes) -> SleepLevel | None:
    """A repository unload's sleep level, as the runtime reads it (:func:`contracts.oip.
    unload_level`): ``host``, ``disk``, or None when the body names none. BadRequest otherwise."""
    try:
        return unload_level(body)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _payload(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: [[[[... nested past the parser
        raise BadRequest('the body must be JSON, e.g. {"seconds": 600}') from None
    if not isinstance(payload, dict):
        raise BadRequest('the body must be a JSON object, e.g. {"seconds": 600}')
    return payload


def _seconds(payload: dict[str, Any]) -> float:
    unknown = set(payload) - {"seconds", "replicas", "source"}
    if unknown:
        raise BadRequest(f"unknown field(s) {sorted(unknown)}: 'seconds', 'replicas', 'source'")
    seconds = payload.get("seconds", 600)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise BadRequest("'seconds' must be a number")
    if not 0 < seconds <= MAX_WARM_S:
        raise BadRequest(f"'seconds' must be above 0 and at most {MAX_WARM_S}")
    return float(seconds)


def _replicas(payload: dict[str, Any]) -> int:
    replicas = payload.get("replicas", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 1000:
        raise BadRequest("'replicas' must be a whole number from 1 to 1000")
    return replicas
