"""Payload models of the Open Inference Protocol (KServe v2) REST API.

Requests are validated with these models; the tensor ``data`` itself is decoded by
:mod:`runtime.tensors`, which is much cheaper than letting pydantic walk every element.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from runtime.errors import InvalidInput

_STRICT = ConfigDict(strict=True, extra="ignore")


class RequestInput(BaseModel):
    model_config = _STRICT

    name: str
    shape: list[StrictInt]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(BaseModel):
    model_config = _STRICT

    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    model_config = _STRICT

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RepositoryModel(BaseModel):
    name: str
    version: str | None = None
    state: str
    reason: str = ""


def parse_json_object(raw: bytes | memoryview, what: str) -> dict[str, Any]:
    """Parse a JSON object, turning every failure into a 400 that says what was wrong."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if _non_finite_at(raw, exc):
            raise InvalidInput(
                f"{what} is not valid JSON: {exc}. NaN, Infinity and numbers beyond the double "
                "range are not JSON numbers (RFC 8259); send non-finite values with the binary "
                "tensor data extension"
            ) from None
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


_NUMBER = re.compile(rb"-?[0-9][0-9.eE+-]*")


def _non_finite_at(raw: bytes | memoryview, exc: orjson.JSONDecodeError) -> bool:
    """Whether orjson stopped at NaN or Infinity (which Python's json and Triton would read) or
    at a number past the double range (1e400), judged from the bytes it stopped at (never from
    its message's words)."""
    at = bytes(raw[exc.pos : exc.pos + 64])
    # orjson stops at the N of NaN, the I of Infinity, and after the sign of -Infinity
    if at[:3].lower() in (b"nan", b"inf"):
        return True
    number = _NUMBER.match(at)
    try:
        return number is not None and math.isinf(float(number.group()))
    except ValueError:
        return False


def validation_message(exc: ValidationError) -> str:
    """A one-line summary of a pydantic error: where, and what was expected."""
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def parse_inference_request(payload: dict[str, Any]) -> InferenceRequest:
    try:
        return InferenceRequest.model_validate(payload)
    except ValidationError as exc:
        raise InvalidInput(f"invalid inference request: {validation_message(exc)}") from None
