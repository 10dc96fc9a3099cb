"""Payload models of the Open Inference Protocol (KServe v2) REST API.

Requests are validated with the models of :mod:`contracts.inference` (the activator checks a
request for a model at zero with them too); the tensor ``data`` itself is decoded by
:mod:`runtime.tensors`, which is much cheaper than letting pydantic walk every element.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from contracts import inference
from contracts.inference import (  # the request's models, shared with the activator
    InferenceRequest,
    InvalidRequest,
    RequestInput,
    RequestOutput,
    validation_message,
)
from runtime.errors import InvalidInput

__all__ = [
    "InferenceRequest",
    "RequestInput",
    "RequestOutput",
    "caller_mistakes",
    "parse_inference_request",
    "parse_json_object",
    "validation_message",
]


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


@contextlib.contextmanager
def caller_mistakes() -> Iterator[None]:
    """The shared request checks' :class:`~contracts.inference.InvalidRequest` as this
    server's :class:`InvalidInput` (400)."""
    try:
        yield
    except InvalidRequest as exc:
        raise InvalidInput(str(exc)) from None


def parse_json_object(raw: bytes | memoryview, what: str) -> dict[str, Any]:
    """:func:`contracts.inference.parse_json_object`, its failure a 400 (InvalidInput)."""
    with caller_mistakes():
        return inference.parse_json_object(raw, what)


def parse_inference_request(payload: dict[str, Any]) -> InferenceRequest:
    with caller_mistakes():
        return inference.parse_inference_request(payload)
