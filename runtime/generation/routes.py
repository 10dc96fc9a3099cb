"""The text-generation routes, on the predictor's server beside v2: the Open Inference
Protocol's generate extension (``/v2/models/{m}/generate``, ``/generate_stream``) and the
OpenAI-compatible API (``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``, also
under ``/openai/v1``, where KServe serves them).

Everything they ask of the models goes through the facade (``text_generator``). Streams are
server-sent events; a client that leaves mid-stream cancels the response, which aborts its
sequence (:class:`~runtime.generation.streams.GenerationStream`). The OpenAI routes answer
errors in OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Send

from contracts.http11 import MODEL_NOT_FOUND, openai_error_body
from contracts.replica import USAGE_HEADER, usage_comment
from runtime.errors import ModelNotFound, ModelNotReady, RuntimeServerError
from runtime.facade import RuntimeFacade
from runtime.generation.params import InvalidParameter, flag, sampling_params
from runtime.generation.streams import Delta, Finished, GenerationStream, TextGenerator
from runtime.protocol import parse_json_object

ReadBody = Callable[[Request], Awaitable[bytes]]
Endpoint = Callable[[Request], Awaitable[Response]]

MAX_PROMPT_CHARS = 1_000_000  # refused before tokenizing: the tokenizer reads a text whole
_JSON = "application/json"
_SSE = "text/event-stream"


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status, media_type=_JSON)


def _sse(chunk: Any) -> bytes:
    return b"data: " + (chunk if isinstance(chunk, bytes) else orjson.dumps(chunk)) + b"\n\n"


class _Last(bytes):
    """A stream's last event: :class:`_EventStream` sends it with the body's end."""


class _EventStream(StreamingResponse):
    """Server-sent events, each sent as it comes; the last (a :class:`_Last`) goes with the
    end of the body, in one write. A client stops at the last event (an OpenAI client closes
    the connection at ``data: [DONE]``): a proxy relaying the stream (the activator) then has
    the end of the answer in the same read as that event, not after the client has left."""

    media_type = _SSE

    async def stream_response(self, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        ended = False
        async for chunk in self.body_iterator:
            ended = isinstance(chunk, _Last)
            await send({"type": "http.response.body", "body": chunk, "more_body": not ended})
        if not ended:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise InvalidParameter(param, "must be a string")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidParameter(param, f"is longer than {MAX_PROMPT_CHARS} characters")
    return value


async def _start(
    awake: Callable[[], Awaitable[TextGenerator]], text: str, values: dict[str, Any]
) -> GenerationStream:
    """The sequence of ``text``, submitted to the model ``awake`` returns (woken if need be).

    The model is taken awake again after the prompt is tokenized and submitted to with no
    await between: a sleep that began meanwhile (a switch under the device memory budget) has
    put it away, and is woken from; one that begins after waits for the sequence."""
    model = await awake()
    params = sampling_params(values, max_tokens_limit=model.max_model_len)
    prompt = await asyncio.to_thread(model.encode_prompt, text)
    model = await awake()
    return GenerationStream(model.generator(), prompt, params)


class GenerationEndpoints:
    def __init__(self, models: RuntimeFacade, read_body: ReadBody) -> None:
        self.models = models
        self.read_body = read_body

    async def _object(self, request: Request) -> dict[str, Any]:
        body: dict[str, Any] = parse_json_object(await self.read_body(request), "request body")
        return body

    # ----------------------------------------------------------------------------- OIP generate
    async def _oip(self, request: Request) -> tuple[str, GenerationStream]:
        name = request.path_params["model_name"]
        awake = partial(self.models.text_generator, name, request.path_params.get("model_version"))
        await awake()  # an unknown model is a 404 before its body is read
        body = await self._object(request)
        parameters = body.get("parameters", {})
        if not isinstance(parameters, dict):
            raise InvalidParameter("parameters", "must be an object")
        values = {k: body.get(k, parameters.get(k)) for k in _PARAMS}
        stream = await _start(awake, _text(body.get("text_input"), "text_input"), values)
        return name, stream

    async def generate(self, request: Request) -> Response:
        name, stream = await self._oip(request)
        text, end = await stream.collect()
        _raise_failed(end)
        return _json({"model_name": name, "text_output": text, "finish_reason": end.reason})

    async def generate_stream(self, request: Request) -> Response:
        name, stream = await self._oip(request)

        async def chunks() -> AsyncIterator[bytes]:
            async for event in stream.events():
                if isinstance(event, Delta):
                    yield _sse({"model_name": name, "text_output": event.text})
                elif event.reason in ("error", "abort"):
                    yield _Last(_sse({"error": _failure(event)}))
                else:
                    end = {"model_name": name, "text_output": "", "finish_reason": event.reason}
                    yield _Last(_sse(end))

        return _EventStream(chunks())

    # ----------------------------------------------------------------------------- OpenAI
    async def models_list(self, request: Request) -> Response:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "ember"}
            for name in self.models.openai_models()
        ]
        return _json({"object": "list", "data": data})

    async def completions(self, request: Request) -> Response:
        return await self._openai(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._openai(request, chat=True)

    async def _openai(self, request: Request, *, chat: bool) -> Response:
        try:
            return await self._openai_answer(request, chat=chat)
        except RuntimeServerError as exc:
            return openai_error(exc)

    async def _openai_answer(self, request: Request, *, chat: bool) -> Response:
        body = await self._object(request)
        name = body.get("model")
        if not isinstance(name, str):
            raise InvalidParameter("model", "is required: a model's name (see /v1/models)")
        n = body.get("n")
        if n is not None and (isinstance(n, bool) or n != 1):
            raise InvalidParameter("n", "only n=1 is supported: one choice per request")
        streaming, usage = _stream_flags(body)
        # every parameter is checked before the model is woken or the prompt tokenized
        messages = _messages(body.get("messages")) if chat else []
        text = "" if chat else _text(body.get("prompt"), "prompt")
        values = {k: body.get(k) for k in _PARAMS}
        values["max_completion_tokens"] = body.get("max_completion_tokens")
        sampling_params(values, max_tokens_limit=2**31)
        awake = partial(self.models.text_generator, name)
        if chat:
            text = await asyncio.to_thread((await awake()).chat_prompt, messages)
        stream = await _start(awake, text, values)
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        shape = _Shape(ident=ident, model=name, chat=chat)
        if streaming:
            # the activator asks for the tokens of a stream whose client did not (its books)
            tell = not usage and USAGE_HEADER.decode() in request.headers
            chunks = shape.stream(stream, usage=usage, tell=tell)
            return _EventStream(chunks)
        text, end = await stream.collect()
        _raise_failed(end)
        return _json(shape.whole(text, end))


_PARAMS = ("max_tokens", "temperature", "top_p", "seed", "stop")


def _raise_failed(end: Finished) -> None:
    """A generation that failed is a 500; one cut short (its model put to sleep or unloaded
    while it ran) a 503 to retry, never a success with truncated text."""
    if end.reason == "error":
        raise RuntimeServerError(f"generation failed: {end.error}")
    if end.reason == "abort":
        raise ModelNotReady(_CUT_SHORT)


_CUT_SHORT = "generation cut short: the model was put to sleep or unloaded; retry"


def _stream_flags(body: dict[str, Any]) -> tuple[bool, bool]:
    """``stream`` and ``stream_options.include_usage``, each a boolean or absent."""
    streaming = flag("stream", body.get("stream"))
    options = body.get("stream_options")
    if options is None:
        return streaming, False
    if not isinstance(options, dict):
        raise InvalidParameter("stream_options", "must be an object")
    usage = flag("stream_options", options.get("include_usage"))
    return streaming, usage


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise InvalidParameter("messages", "must be a non-empty list of messages")
    out, total = [], 0
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InvalidParameter("messages", "each message needs a role and content")
        content = m.get("content")
        if isinstance(content, list):  # content parts: the text ones
            content = "".join(
                _text(p.get("text", ""), "messages") for p in content if isinstance(p, dict)
            )
        text = _text(content or "", "messages")
        total += len(text) + len(m["role"])
        if total > MAX_PROMPT_CHARS:  # the template renders them whole, then the tokenizer
            raise InvalidParameter("messages", f"hold more than {MAX_PROMPT_CHARS} characters")
        out.append({"role": m["role"], "content": text})
    return out


class _Shape:
    """A completion's or chat completion's objects, whole or as chunks."""

    def __init__(self, *, ident: str, model: str, chat: bool) -> None:
        self.ident, self.model, self.chat = ident, model, chat
        self.created = int(time.time())
        self.kind = "chat.completion" if chat else "text_completion"

    def _base(self, kind: str) -> dict[str, Any]:
        return {"id": self.ident, "object": kind, "created": self.created, "model": self.model}

    def _choice(self, text: str | None, reason: str | None, *, chunk: bool) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": reason}
        if not self.chat:
            choice.update(text=text or "", logprobs=None)
        elif chunk:
            choice["delta"] = {} if text is None else {"role": "assistant", "content": text}
        else:
            choice["message"] = {"role": "assistant", "content": text}
        return choice

    @staticmethod
    def _usage(end: Finished) -> dict[str, int]:
        return {
            "prompt_tokens": end.prompt_tokens,
            "completion_tokens": end.completion_tokens,
            "total_tokens": end.prompt_tokens + end.completion_tokens,
        }

    def whole(self, text: str, end: Finished) -> dict[str, Any]:
        return {
            **self._base(self.kind),
            "choices": [self._choice(text, _reason(end), chunk=False)],
            "usage": self._usage(end),
        }

    async def stream(
        self, stream: GenerationStream, *, usage: bool, tell: bool = False
    ) -> AsyncIterator[bytes]:
        """The chunks of a streamed answer; ``usage``: its client asked for the tokens in a
        last chunk; ``tell``: the activator did, in a comment it takes out
        (:func:`contracts.replica.usage_comment`)."""
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        async for event in stream.events():
            if isinstance(event, Delta):
                chunk = {
                    **self._base(kind),
                    "choices": [self._choice(event.text, None, chunk=True)],
                }
            elif event.reason in ("error", "abort"):
                err = {"message": _failure(event), "type": "server_error"}
                yield _Last(_sse({"error": {**err, "param": None, "code": None}}))
                return
            else:
                last = self._choice(None if self.chat else "", _reason(event), chunk=True)
                chunk = {**self._base(kind), "choices": [last]}
            if usage:
                chunk["usage"] = None
            yield _sse(chunk)
            if isinstance(event, Finished) and usage:
                yield _sse({**self._base(kind), "choices": [], "usage": self._usage(event)})
            elif isinstance(event, Finished) and tell:
                yield usage_comment(event.prompt_tokens, event.completion_tokens)
        yield _Last(_sse(b"[DONE]"))


def _failure(end: Finished) -> str:
    """What a stream says when its generation failed or was cut short."""
    return _CUT_SHORT if end.reason == "abort" else f"generation failed: {end.error}"


def _reason(end: Finished) -> str:
    return "length" if end.reason == "length" else "stop"


def openai_error(exc: RuntimeServerError) -> Response:
    """An error in OpenAI's shape, with its status and headers (Retry-After)."""
    param = exc.param if isinstance(exc, InvalidParameter) else None
    code = MODEL_NOT_FOUND if isinstance(exc, ModelNotFound) else None
    body = openai_error_body(exc.status_code, exc.message, param, code)
    return Response(body, exc.status_code, exc.headers, _JSON)


def register_generation_endpoints(app: FastAPI, endpoints: GenerationEndpoints) -> None:
    """The generate extension under /v2/models, the OpenAI API under /v1 and /openai/v1."""
    e = endpoints
    routes: list[tuple[str, Endpoint, str]] = []
    for model in ("/v2/models/{model_name}", "/v2/models/{model_name}/versions/{model_version}"):
        routes += [(model + "/generate", e.generate, "POST")]
        routes += [(model + "/generate_stream", e.generate_stream, "POST")]
    for prefix in ("/v1", "/openai/v1"):
        routes += [
            (prefix + "/models", e.models_list, "GET"),
            (prefix + "/completions", e.completions, "POST"),
            (prefix + "/chat/completions", e.chat_completions, "POST"),
        ]
    for path, endpoint, method in routes:
        app.add_route(path, endpoint, methods=[method], include_in_schema=False)
