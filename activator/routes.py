"""The activator's one route table: every path it answers, who may call it, and what answers it.

The front door works out what a request's path means once (:func:`target`, kept per path): its
guard, and whether it is a model's route, relayed byte for byte to a replica; the activator's
own answers (:meth:`activator.app.Activator.answer`) take that :class:`Target` and look the
method up in the same table (:meth:`Target.resolve`), so the two can never disagree about what a
path means.

=============================================================  ======  =====  ===================
path                                                           method  guard  answered by
=============================================================  ======  =====  ===================
``/v2/health/live``, ``/v2/health/ready``                      GET     open   the activator
``/v2``                                                        GET     API    the activator
``/v2/repository/index``                                       POST    API    the activator
``/v2/repository/models/{m}/load|unload``                      POST    API    the activator
``/v2/models/stats``                                           GET     API    the activator
``/v2/models/{m}[/versions/{v}]/stats``                        GET     API    the activator
``/v2/models/{m}[/versions/{v}][/infer|ready|config]``         any     API    a replica (relayed)
``/v2/models/{m}[/versions/{v}]/generate[_stream]``            any     API    a replica (relayed)
``[/openai]/v1/completions|chat/completions|embeddings``       POST    API    a replica of the
                                                                              body's ``model``
``[/openai]/v1/models``                                        GET     API    the activator
``/metrics``                                                   GET     API    the activator
``/admin/models``                                              GET     admin  the activator
``/admin/models/{m}/warm|sleep``                               POST    admin  the activator
=============================================================  ======  =====  ===================

The guard goes by the path's first segments (:func:`guard`), the rest by the table. While no
replica of a model is ready, its ``ready`` and its metadata (``/v2/models/{m}[/versions/{v}]``,
once the activator knows it: :mod:`activator.metadata`) are answered by the activator, so
neither wakes it (``FrontDoor.relayed``). The OpenAI-compatible routes name their model in
the JSON body, not the path: the front door reads it there (:mod:`activator.openai`), and the
activator answers their errors, and ``/v1/models``, in OpenAI's shape. ``/openai/v1`` is where
KServe serves the same routes, so a KServe user's base URL works unchanged.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import unquote

import httptools

from activator.errors import MethodNotAllowed, NotFound


class Action(enum.StrEnum):
    """A model route's last segment (none: its metadata), or an OpenAI route's path under
    ``/v1``, and what the event log and the metrics call it (:attr:`label`)."""

    METADATA = ""
    INFER = "infer"
    READY = "ready"
    CONFIG = "config"
    STATS = "stats"
    GENERATE = "generate"
    GENERATE_STREAM = "generate_stream"
    COMPLETIONS = "completions"
    CHAT_COMPLETIONS = "chat/completions"
    EMBEDDINGS = "embeddings"

    @property
    def label(self) -> str:
        return self.value or "metadata"

    @property
    def openai(self) -> bool:
        """An OpenAI route: its model is in its body, its errors are in OpenAI's shape."""
        return self in OPENAI_ACTIONS

    @property
    def work(self) -> bool:
        """A request for the model's work (not its metadata or readiness): it wakes the model,
        and is relayed whatever the model's state."""
        return self in WORK_ACTIONS


# the last segments of /v2/models/{m}[/versions/{v}]/...
MODEL_ACTIONS = frozenset(
    {
        Action.METADATA,
        Action.INFER,
        Action.READY,
        Action.CONFIG,
        Action.STATS,
        Action.GENERATE,
        Action.GENERATE_STREAM,
    }
)
OPENAI_ACTIONS = frozenset({Action.COMPLETIONS, Action.CHAT_COMPLETIONS, Action.EMBEDDINGS})
WORK_ACTIONS = frozenset({Action.INFER, Action.GENERATE, Action.GENERATE_STREAM, *OPENAI_ACTIONS})
# the routes whose answers may stream and say their tokens (the relay watches them)
GENERATING = frozenset({Action.GENERATE, Action.GENERATE_STREAM, *OPENAI_ACTIONS})


class Guard(enum.Enum):
    OPEN = "open"  # health: for probes, no token
    API = "api"  # the data plane: the API token when one is set
    ADMIN = "admin"  # the admin API: its own token (or loopback only)


class Endpoint(enum.Enum):
    LIVE = "live"
    READY = "ready"
    SERVER_METADATA = "server_metadata"
    REPOSITORY_INDEX = "repository_index"
    REPOSITORY_LOAD = "repository_load"
    REPOSITORY_UNLOAD = "repository_unload"
    MODELS_STATS = "models_stats"  # every model's statistics
    MODEL_STATS = "model_stats"  # one model's: the activator keeps them (a replica's would wake it)
    MODEL = "model"  # relayed to a replica (ready and metadata at zero: the activator's)
    OPENAI = "openai"  # relayed to a replica of the model its body names
    OPENAI_MODELS = "openai_models"  # every configured model, in OpenAI's list shape
    METRICS = "metrics"
    ADMIN_MODELS = "admin_models"
    ADMIN_WARM = "admin_warm"
    ADMIN_SLEEP = "admin_sleep"


@dataclass(frozen=True)
class Route:
    pattern: tuple[str, ...]  # literal segments; "{model}" matches one
    method: str
    endpoint: Endpoint


ROUTES = (
    Route(("v2", "health", "live"), "GET", Endpoint.LIVE),
    Route(("v2", "health", "ready"), "GET", Endpoint.READY),
    Route(("v2",), "GET", Endpoint.SERVER_METADATA),
    Route(("v2", "repository", "index"), "POST", Endpoint.REPOSITORY_INDEX),
    Route(("v2", "models", "stats"), "GET", Endpoint.MODELS_STATS),
    Route(("v2", "repository", "models", "{model}", "load"), "POST", Endpoint.REPOSITORY_LOAD),
    Route(("v2", "repository", "models", "{model}", "unload"), "POST", Endpoint.REPOSITORY_UNLOAD),
    Route(("metrics",), "GET", Endpoint.METRICS),
    Route(("v1", "models"), "GET", Endpoint.OPENAI_MODELS),
    Route(("openai", "v1", "models"), "GET", Endpoint.OPENAI_MODELS),
    Route(("admin", "models"), "GET", Endpoint.ADMIN_MODELS),
    Route(("admin", "models", "{model}", "warm"), "POST", Endpoint.ADMIN_WARM),
    Route(("admin", "models", "{model}", "sleep"), "POST", Endpoint.ADMIN_SLEEP),
)


@dataclass(frozen=True)
class Match:
    endpoint: Endpoint
    model: str = ""
    action: Action = Action.METADATA  # a model route's last segment
    version: str = ""  # a model route's ``/versions/{v}`` ("" when it names none)


def split(path: str) -> list[str]:
    """The path's segments; a trailing slash is an empty last one (no route has it: 404, as on
    the predictor; never a redirect)."""
    return path.removeprefix("/").split("/")


def guard(parts: list[str]) -> Guard:
    """Who may call a path: checked before the path is resolved, so an unknown path under a
    guard answers 401 to a caller without the token, never whether it exists."""
    if parts[0] == "admin":
        return Guard.ADMIN
    if parts[:2] == ["v2", "health"]:
        return Guard.OPEN
    return Guard.API


def openai_route(parts: list[str]) -> Action | None:
    """``[openai,] v1, completions | chat, completions | embeddings`` -> its action, else
    None."""
    rest = parts[2:] if parts[:2] == ["openai", "v1"] else parts[1:] if parts[0] == "v1" else None
    if not rest:
        return None
    action = "/".join(rest)
    return Action(action) if action in _OPENAI_PATHS else None


_OPENAI_PATHS = frozenset(a.value for a in OPENAI_ACTIONS)


def openai_path(parts: list[str]) -> bool:
    """A path under ``/v1`` or ``/openai/v1``: its errors are answered in OpenAI's shape."""
    return parts[0] == "v1" or parts[:2] == ["openai", "v1"]


def model_route(parts: list[str]) -> tuple[str, str, Action] | None:
    """``["v2", "models", NAME, ("versions", V,) ACTION?]`` -> (NAME, V or "", ACTION), else
    None."""
    if len(parts) < 3 or parts[0] != "v2" or parts[1] != "models" or not parts[2]:
        return None
    if parts[2:] == ["stats"]:  # every model's statistics (as the predictor reads it too)
        return None
    rest, version = parts[3:], ""
    if len(rest) >= 2 and rest[0] == "versions":
        version, rest = rest[1], rest[2:]
    action = rest[0] if rest else ""
    if len(rest) > 1 or action not in MODEL_ACTIONS:
        return None
    return parts[2], version, Action(action)


@dataclass(frozen=True, slots=True, eq=False)
class Target:
    """What a request's path means, whatever its method: its text (unquoted) and segments, who
    may call it, and a model route's match (None for any other path)."""

    path: str
    parts: list[str]
    guard: Guard
    model: Match | None
    openai: bool = False  # under /v1 or /openai/v1: errors in OpenAI's shape

    def resolve(self, method: str) -> Match:
        """What answers ``method`` on this path (see :func:`resolve`)."""
        return _resolve(method, self.path, self.parts, self.model)


def target(raw_path: bytes) -> Target:
    """The :class:`Target` of a request's raw path (its query, if any, is not looked at)."""
    try:
        raw = httptools.parse_url(raw_path).path or b"/"  # an absolute URL may have none
    except httptools.HttpParserInvalidURLError:
        raw = raw_path  # no route has it: 404, in the OIP shape
    path = unquote(raw.decode("latin-1"))
    parts = split(path)
    return Target(path, parts, guard(parts), _model_match(parts), openai_path(parts))


def resolve(method: str, path: str, parts: list[str] | None = None) -> Match:
    """What answers ``method path``; NotFound or MethodNotAllowed (by the table) if nothing."""
    if parts is None:
        parts = split(path)
    return _resolve(method, path, parts, _model_match(parts))


def _model_match(parts: list[str]) -> Match | None:
    action = openai_route(parts)
    if action is not None:  # its model is in its body: the front door reads it there
        return Match(Endpoint.OPENAI, "", action)
    found = model_route(parts)
    if found is None:
        return None
    model, version, action = found
    endpoint = Endpoint.MODEL_STATS if action is Action.STATS else Endpoint.MODEL
    return Match(endpoint, model, action, version)


def _resolve(method: str, path: str, parts: list[str], model: Match | None) -> Match:
    if model is not None:
        if model.endpoint is Endpoint.MODEL_STATS and method != "GET":
            raise MethodNotAllowed(f"method {method} not allowed here (use GET)")
        if model.endpoint is Endpoint.OPENAI and method != "POST":
            raise MethodNotAllowed(f"method {method} not allowed here (use POST)")
        return model
    allowed = []
    for route in ROUTES:
        if len(route.pattern) != len(parts):
            continue
        name = ""
        for want, got in zip(route.pattern, parts, strict=True):
            if want == "{model}":
                name = got
            elif want != got:
                break
        else:
            if route.method == method:
                return Match(route.endpoint, name)
            allowed.append(route.method)
    if allowed:
        raise MethodNotAllowed(f"method {method} not allowed here (use {' or '.join(allowed)})")
    raise NotFound(f"no route for {method} {path}")
