"""The OpenAI-compatible routes at the activator: the model a request's body names, and the
models it lists.

``/v1/completions``, ``/v1/chat/completions`` and ``/v1/embeddings`` (and the same under
``/openai/v1``) name their model in the JSON body: :func:`read_body` reads it there, once, from
the body the front door already holds whole (within ``max_request_bytes``). ``GET /v1/models``
is the activator's own answer, from the configs: no model is woken to list it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from activator.errors import BadRequest
from activator.routes import Action
from contracts.stack import ModelSpec

# the handlers whose models the OpenAI routes serve (text generation, and embeddings): what a
# replica's own /v1/models lists
OPENAI_HANDLERS = frozenset({"text-generation", "hf-encoder"})


def read_body(body: bytes) -> tuple[str, bool]:
    """The ``model`` a request's JSON body names, and whether it asks for a stream without its
    usage (the activator asks the replica for the tokens then: :mod:`activator.usage`);
    BadRequest (naming ``model``) if the body is not a JSON object or names no model."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest("the request body must be a JSON object")
    model = value.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", param="model")
    options = value.get("stream_options")
    asked = isinstance(options, dict) and options.get("include_usage") is True
    return model, value.get("stream") is True and not asked


# which handlers answer which route (a command engine's server answers them all)
_ANSWERS = {
    Action.COMPLETIONS: "text-generation",
    Action.CHAT_COMPLETIONS: "text-generation",
    Action.EMBEDDINGS: "hf-encoder",
}


def serves(spec: ModelSpec, action: Action) -> None:
    """BadRequest (naming ``model``) when ``spec``'s model does not answer ``action``'s route:
    refused here, before its replica is woken for an answer it cannot give."""
    if spec.engine == "command" or spec.handler == _ANSWERS.get(action):
        return
    what = "embeddings" if action is Action.EMBEDDINGS else "text"
    raise BadRequest(
        f"model '{spec.name}' does not make {what} (it is a {spec.handler or 'v2'} model: "
        "its requests go to /v2/models/" + spec.name + "/infer)",
        param="model",
    )


def renamed(body: bytes, model: str) -> bytes:
    """``body`` (a JSON object, read whole once already) naming ``model`` instead: for a server
    that answers to another name than the model's (a command engine's)."""
    value = orjson.loads(body)
    value["model"] = model
    return orjson.dumps(value)


def models_list(specs: Iterable[ModelSpec]) -> dict[str, Any]:
    """``GET /v1/models``: every configured model the OpenAI routes serve (Ember's text
    generation and embeddings, and every model another server serves: ``engine: command``), in
    OpenAI's shape."""
    data = [
        {"id": spec.name, "object": "model", "created": 0, "owned_by": "ember"}
        for spec in specs
        if spec.handler in OPENAI_HANDLERS or spec.engine == "command"
    ]
    return {"object": "list", "data": data}
