"""Validate responses against the upstream OIP REST spec (../shared/specs/oip)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.servers import ROOT


def shared_dir() -> Path:
    return Path(os.environ.get("EMBER_SHARED", ROOT.parent / "shared"))


@functools.cache
def _spec() -> dict[str, Any] | None:
    path = shared_dir() / "specs" / "oip" / "open_inference_rest.yaml"
    if not path.is_file():
        return None
    spec: dict[str, Any] = yaml.safe_load(path.read_text())
    return spec


def check_response(schema_name: str, payload: Any) -> None:
    spec = _spec()
    if spec is None:
        pytest.skip(f"OIP spec not found under {shared_dir()} (set EMBER_SHARED)")
    schemas = spec["components"]["schemas"]
    # resolve "#/components/schemas/x" against the spec document itself
    schema = {**schemas[schema_name], "components": spec["components"]}
    jsonschema.validate(payload, schema)
