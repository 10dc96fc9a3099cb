"""The vendored upstream data (``tests/data``) and validation against the OIP REST spec.

The files are part of the repository: a missing one is an error naming it, never a skip.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

DATA = Path(__file__).resolve().parent / "data"
OIP_SPEC = "specs/oip/open_inference_rest.yaml"
KNATIVE_SERVICE_CRD = "specs/knative/service.yaml"
TRACE_SAMPLE = "traces/azure2019_sample100"


def data_path(relative: str) -> Path:
    """``tests/data/<relative>``, which must exist: the tests own these files."""
    path = DATA / relative
    if not path.exists():
        raise FileNotFoundError(
            f"vendored test data {path} is missing (see tests/data/README.md; "
            "restore it with `git checkout -- tests/data`)"
        )
    return path


@functools.cache
def oip_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(data_path(OIP_SPEC).read_text())
    return spec


def check_response(schema_name: str, payload: Any) -> None:
    spec = oip_spec()
    schemas = spec["components"]["schemas"]
    # resolve "#/components/schemas/x" against the spec document itself
    schema = {**schemas[schema_name], "components": spec["components"]}
    jsonschema.validate(payload, schema)
