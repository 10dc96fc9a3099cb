"""OpenAI's ``POST /v1/embeddings`` (also under ``/openai/v1``) for ``hf-encoder`` models, so
one OpenAI base URL serves both text generation and embeddings.

The texts go through the facade's data plane like a v2 ``infer`` of the model's ``text`` input
(its input limits, batching and statistics apply), so the vectors are the v2 ones. ``input`` is a
string or a list of strings (token arrays are refused: the encoder takes text);
``encoding_format`` ``float`` (the default) or ``base64`` (little-endian float32, which the
``openai`` client asks for and decodes). Errors are in OpenAI's shape.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from runtime.errors import RuntimeServerError
from runtime.facade import RuntimeFacade
from runtime.generation.params import InvalidParameter
from runtime.generation.routes import openai_error
from runtime.protocol import parse_json_object

ReadBody = Callable[[Request], Awaitable[bytes]]

MAX_INPUTS = 2048  # OpenAI's own bound on texts per request


def embedding_texts(value: Any) -> list[str]:
    """``input`` as a list of texts: 400 naming ``input`` unless a string or strings."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise InvalidParameter("input", "must be a string or a list of strings")
    if not texts:
        raise InvalidParameter("input", "must not be an empty list")
    if len(texts) > MAX_INPUTS:
        raise InvalidParameter("input", f"at most {MAX_INPUTS} texts, not {len(texts)}")
    return texts


def encoding_format(value: Any) -> str:
    if value is None:
        return "float"
    if value not in ("float", "base64"):
        raise InvalidParameter("encoding_format", f"must be 'float' or 'base64', not {value!r}")
    return str(value)


def embedding_data(vectors: np.ndarray, fmt: str) -> list[dict[str, Any]]:
    """One ``embedding`` object per row, its vector a list of floats or base64 float32."""
    rows = np.ascontiguousarray(vectors, dtype="<f4")
    return [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(row.tobytes()).decode("ascii")
            if fmt == "base64"
            else row.tolist(),
        }
        for i, row in enumerate(rows)
    ]


class EmbeddingEndpoints:
    def __init__(self, models: RuntimeFacade, read_body: ReadBody) -> None:
        self.models = models
        self.read_body = read_body

    async def embeddings(self, request: Request) -> Response:
        try:
            return await self._answer(request)
        except RuntimeServerError as exc:
            return openai_error(exc)

    async def _answer(self, request: Request) -> Response:
        body = parse_json_object(await self.read_body(request), "request body")
        name = body.get("model")
        if not isinstance(name, str):
            raise InvalidParameter("model", "is required: a model's name (see /v1/models)")
        texts = embedding_texts(body.get("input"))
        fmt = encoding_format(body.get("encoding_format"))
        if body.get("dimensions") is not None:
            raise InvalidParameter("dimensions", "is not supported: the model's size is used")
        vectors, tokens = await self.models.embed(name, texts)
        answer = {
            "object": "list",
            "data": embedding_data(vectors, fmt),
            "model": name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Response(orjson.dumps(answer), media_type="application/json")


def register_embedding_endpoints(app: FastAPI, endpoints: EmbeddingEndpoints) -> None:
    """``POST /v1/embeddings`` and ``/openai/v1/embeddings``."""
    for prefix in ("/v1", "/openai/v1"):
        app.add_route(
            prefix + "/embeddings",
            endpoints.embeddings,
            methods=["POST"],
            include_in_schema=False,
        )
