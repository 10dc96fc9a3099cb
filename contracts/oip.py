"""Open Inference Protocol requests both servers read the same way (the predictor and the
activator answer the repository index alike)."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError


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
