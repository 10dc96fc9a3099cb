"""The v2 REST surface: one route table over the models' facade (:mod:`runtime.facade`), and
the error handlers.

Request bodies are read as bytes and parsed with orjson whatever the Content-Type (tritonclient
sends none), with the binary tensor data extension's ``Inference-Header-Content-Length`` honoured.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from contracts.http11 import error_body
from contracts.oip import load_request, no_query, repository_index_request
from runtime.errors import ClientGone, InvalidInput, PayloadTooLarge, RuntimeServerError
from runtime.facade import InferResult, RuntimeFacade
from runtime.protocol import (
    parse_inference_request,
    parse_json_object,
)
from runtime.sleep import sleep_mode_call, unload_level
from runtime.tensors import to_binary, to_json_data

log = logging.getLogger("ember.runtime")

HEADER_LENGTH = "inference-header-content-length"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_JSON = "application/json"


def json_response(
    payload: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(payload, option=_NUMPY), status_code, headers, _JSON)


def error_response(
    message: str, status_code: int, headers: dict[str, str] | None = None
) -> Response:
    return Response(error_body(message), status_code, headers, _JSON)


class V2Endpoints:
    """Handlers of the Open Inference Protocol routes, bound to one server's models (and of
    vLLM's sleep-mode routes, onto the repository's sleep)."""

    def __init__(self, models: RuntimeFacade, *, max_request_bytes: int) -> None:
        self.models = models
        self.max_request_bytes = max_request_bytes

    # -------------------------------------------------------------------------- health, metadata
    async def server_metadata(self, request: Request) -> Response:
        return json_response(self.models.server_metadata())

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        reason = self.models.not_ready()
        if reason is None:
            return json_response({"ready": True})
        return error_response(f"server is not ready: {reason}", 503, {"Retry-After": "1"})

    async def model_ready(self, request: Request) -> Response:
        name, version = _model(request)
        self.models.model_ready(name, version)  # 404, or 503 saying its state and why
        return json_response({"name": name, "ready": True})

    async def model_metadata(self, request: Request) -> Response:
        return json_response(await self.models.model_metadata(*_model(request)))

    async def model_config(self, request: Request) -> Response:
        return json_response(await self.models.model_config(*_model(request)))

    async def statistics(self, request: Request) -> Response:
        name = request.path_params.get("model_name")
        return json_response(self.models.statistics(name, request.path_params.get("model_version")))

    # -------------------------------------------------------------------------- repository
    async def repository_index(self, request: Request) -> Response:
        body = await self._body(request)
        try:  # read as the activator reads it
            no_query(request.url.query, "repository index request")
            ready = repository_index_request(body).ready
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        return json_response(self.models.index(ready))

    async def repository_load(self, request: Request) -> Response:
        name = request.path_params["model_name"]
        self.models.known(name)  # 404 before reading the body
        try:  # read as the activator reads it
            no_query(request.url.query, "load request")
            load_request(await self._body(request))
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        await self.models.load(name)
        return json_response({"name": name, "loaded": True})

    async def repository_unload(self, request: Request) -> Response:
        """Unload, or with ``{"parameters": {"level": ...}}`` put to sleep (runtime.sleep)."""
        name = request.path_params["model_name"]
        self.models.known(name)  # 404 before reading the body
        try:
            no_query(request.url.query, "unload request")
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        level = unload_level(await self._body(request))
        await self.models.unload(name, level)
        if level is None:
            return json_response({"name": name, "unloaded": True})
        return json_response({"name": name, "unloaded": True, "level": level.value})

    # -------------------------------------------------------------------------- vLLM's sleep mode
    async def sleep(self, request: Request) -> Response:
        """``POST /sleep?level=1|2[&model=M]``: level 1 is ``host``, 2 ``disk``."""
        call = sleep_mode_call("/sleep", request.url.query)
        names = await self.models.sleep(call.model, call.level)
        return json_response({"level": call.level.value, "models": names})

    async def wake_up(self, request: Request) -> Response:
        call = sleep_mode_call("/wake_up", request.url.query)
        return json_response({"models": await self.models.wake(call.model)})

    async def is_sleeping(self, request: Request) -> Response:
        call = sleep_mode_call("/is_sleeping", request.url.query)
        return json_response({"is_sleeping": self.models.is_sleeping(call.model)})

    # -------------------------------------------------------------------------- inference
    async def infer(self, request: Request) -> Response:
        name, version = _model(request)
        self.models.can_infer(name, version)  # 404 / 503 before parsing anything
        body = await self._body(request)
        header_length = request.headers.get(HEADER_LENGTH)
        binary: memoryview | None = None
        if header_length is None:
            infer_request = parse_inference_request(parse_json_object(body, "request body"))
        else:
            length = _header_length(header_length, len(body))
            if length == 0:  # the model's one input says the shape: load it first if need be
                infer_request = await self.models.raw_request(name, version, body)
                binary = memoryview(body)
            else:
                view = memoryview(body)
                infer_request = parse_inference_request(
                    parse_json_object(view[:length], "inference header")
                )
                binary = view[length:]
        result = await self.models.infer(name, version, infer_request, binary)
        return encode_result(result)

    async def read_body(self, request: Request) -> bytes:
        """The request's body, within the size limit, decompressed (what every route reads)."""
        return await self._body(request)

    async def _body(self, request: Request) -> bytes:
        limit = self.max_request_bytes
        declared = request.headers.get("content-length")
        try:
            if declared is not None:
                if not (declared.isascii() and declared.isdigit()):  # "²".isdigit() too
                    raise InvalidInput(f"Content-Length {declared!r} is not a number")
                if int(declared) > limit:
                    raise PayloadTooLarge(
                        f"request body of {declared} bytes exceeds the limit of {limit}"
                    )
                body = await request.body()
            else:
                parts, total = [], 0
                async for chunk in request.stream():
                    total += len(chunk)
                    if total > limit:
                        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
                    parts.append(chunk)
                body = b"".join(parts)
        except ClientDisconnect:
            # nobody is left to read an answer; a traceback per vanished client is only noise
            log.debug("client left during the body of %s %s", request.method, request.url.path)
            raise ClientGone("the client closed the connection before its body arrived") from None
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            body = _decompress(body, encoding, limit)
        return body


def _model(request: Request) -> tuple[str, str | None]:
    return request.path_params["model_name"], request.path_params.get("model_version")


def _header_length(value: str, body_length: int) -> int:
    if not (value.isascii() and value.isdigit()):  # "²".isdigit() too, and int() refuses it
        raise InvalidInput(
            f"Inference-Header-Content-Length {value!r} is not a non-negative integer"
        )
    length = int(value)
    if length > body_length:
        raise InvalidInput(
            f"Inference-Header-Content-Length {length} exceeds the body ({body_length} bytes)"
        )
    return length


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding not in ("gzip", "deflate"):
        raise InvalidInput(f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"request body is not valid {encoding}: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed request body exceeds the limit of {limit} bytes")
    return out


def encode_result(result: InferResult) -> Response:
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor, binary in result.outputs:
        out: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.array.shape),
        }
        if binary:
            raw = to_binary(tensor.datatype, tensor.array)
            out["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            out["data"] = to_json_data(tensor.name, tensor.datatype, tensor.array)
        outputs.append(out)
    payload: dict[str, Any] = {
        "model_name": result.model_name,
        "model_version": result.model_version,
        "outputs": outputs,
    }
    if result.id is not None:
        payload["id"] = result.id
    header = orjson.dumps(payload, option=_NUMPY)
    if not blobs:
        return Response(header, 200, media_type=_JSON)
    return Response(
        b"".join([header, *blobs]),
        200,
        headers={"Inference-Header-Content-Length": str(len(header))},
        media_type="application/octet-stream",
    )


Endpoint = Callable[[Request], Awaitable[Response]]


def register_v2_endpoints(app: FastAPI, endpoints: V2Endpoints) -> None:
    """The route table. Order matters: ``/v2/models/stats`` before ``/v2/models/{model_name}``."""
    e = endpoints
    model = "/v2/models/{model_name}"
    version = "/v2/models/{model_name}/versions/{model_version}"
    # the hot path first: the router tries routes in order
    routes: list[tuple[str, Endpoint, str]] = [
        (model + "/infer", e.infer, "POST"),
        (version + "/infer", e.infer, "POST"),
        ("/v2", e.server_metadata, "GET"),
        ("/v2/", e.server_metadata, "GET"),
        ("/v2/health/live", e.live, "GET"),
        ("/v2/health/ready", e.ready, "GET"),
        ("/v2/models/stats", e.statistics, "GET"),
        ("/v2/repository/index", e.repository_index, "POST"),
        ("/v2/repository/models/{model_name}/load", e.repository_load, "POST"),
        ("/v2/repository/models/{model_name}/unload", e.repository_unload, "POST"),
        # vLLM's sleep mode, so a group of Ember's server as a command engine sleeps through it
        ("/sleep", e.sleep, "POST"),
        ("/wake_up", e.wake_up, "POST"),
        ("/is_sleeping", e.is_sleeping, "GET"),
    ]
    for prefix in (model, version):
        routes += [
            (prefix, e.model_metadata, "GET"),
            (prefix + "/ready", e.model_ready, "GET"),
            (prefix + "/config", e.model_config, "GET"),
            (prefix + "/stats", e.statistics, "GET"),
        ]
    for path, endpoint, method in routes:
        app.add_route(path, endpoint, methods=[method], include_in_schema=False)


def register_metrics_endpoint(app: FastAPI, models: RuntimeFacade) -> None:
    async def metrics(request: Request) -> Response:
        return Response(models.metrics(), media_type=CONTENT_TYPE_LATEST)

    app.add_route("/metrics", metrics, methods=["GET"], include_in_schema=False)


def register_error_handlers(app: FastAPI) -> None:
    """Every failure leaves as ``{"error": ...}``: no FastAPI 422s, no HTML 500s."""

    async def ours(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RuntimeServerError)
        # a model's failure was logged with its traceback where its batch failed
        log.debug("%s %s: %d %s", request.method, request.url.path, exc.status_code, exc.message)
        return error_response(exc.message, exc.status_code, exc.headers)

    async def http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers or {})
        message = str(exc.detail) if exc.status_code != 404 else f"no route for {request.url.path}"
        return error_response(message, exc.status_code, headers)

    async def validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(f"invalid request: {exc.errors()}", 400)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(f"internal error: {type(exc).__name__}: {exc}", 500)

    app.add_exception_handler(RuntimeServerError, ours)
    app.add_exception_handler(StarletteHTTPException, http)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(Exception, unexpected)
