"""Fuzz the protocol surface from the upstream OIP REST spec (schemathesis), on a real runtime
(``ember serve``) and a real activator (``ember up``) over loopback.

Every operation of the vendored ``tests/data/specs/oip/open_inference_rest.yaml`` (and its
unversioned twin, which the protocol also defines) gets requests that fit the spec and requests
that break it. The model name is either the served model's or anything at all. Whatever comes
in: no 5xx, every error body is OIP-shaped (``{"error": "..."}``), every answer is JSON, and the
server keeps answering. The budget is bounded: ``EMBER_FUZZ_EXAMPLES`` examples per operation
and mode (25 by default; derandomised, so CI runs the same cases each time).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
import yaml

from tests.conftest import MLP_CONFIG
from tests.servers import ServerProcess
from tests.spec import OIP_SPEC, data_path

EXAMPLES = int(os.environ.get("EMBER_FUZZ_EXAMPLES", "25"))
MODEL = "mlp"


def oip_schema(served: bool = False) -> Any:
    """The spec as schemathesis takes it: ``${NAME}`` path templates as ``{NAME}``, the
    unversioned routes added, and, when ``served``, the model name and version pinned to the
    served model's (so the bodies reach the decoder instead of a 404)."""
    spec = yaml.safe_load(data_path(OIP_SPEC).read_text())
    raw = json.loads(json.dumps(spec).replace("${", "{"))
    paths = raw["paths"]
    for path in list(paths):
        if "/versions/{MODEL_VERSION}" in path:
            twin = copy.deepcopy(paths[path])
            twin["parameters"] = [
                p for p in twin.get("parameters", []) if p["name"] != "MODEL_VERSION"
            ]
            for operation in twin.values():
                if isinstance(operation, dict) and "operationId" in operation:
                    operation["operationId"] += "-unversioned"
            paths.setdefault(path.replace("/versions/{MODEL_VERSION}", ""), twin)
    for item in paths.values():
        params = list(item.get("parameters", []))
        for operation in item.values():
            if isinstance(operation, dict):
                params += operation.get("parameters", [])
        for param in params:
            if served and param["name"] == "MODEL_NAME":
                param["schema"] = {"type": "string", "enum": [MODEL]}
            if served and param["name"] == "MODEL_VERSION":
                param["schema"] = {"type": "string", "enum": ["1"]}
    return schemathesis.openapi.from_dict(raw)


@pytest.fixture(scope="module")
def runtime() -> Iterator[str]:
    server = ServerProcess(MLP_CONFIG)
    try:
        server.wait_ready()
        yield server.url
    finally:
        server.terminate()


@pytest.fixture(scope="module")
def activator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("fuzz-stack")
    config = tmp / "ember.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "activator": {"events": str(tmp / "events.jsonl"), "keep_alive_s": 600},
                "models": [{"config": str(MLP_CONFIG)}],
            }
        )
    )
    server = ServerProcess(config, command="up")
    try:
        server.wait_ready(timeout_s=60)
        yield server.url
    finally:
        server.terminate()


def check(response: Any, where: str) -> None:
    status = response.status_code
    assert status < 500, f"{where}: {status} {response.text[:500]}"
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(
            f"{where}: {status} answer is not JSON: {response.text[:200]!r}"
        ) from None
    if status >= 400:
        assert isinstance(body, dict), f"{where}: {status} {body!r}"
        assert isinstance(body.get("error"), str) and body["error"], f"{where}: {status} {body}"


def fuzz(base_url: str, generation_mode: Any, served: bool) -> None:
    schema = oip_schema(served)
    failures: list[str] = []
    statuses: dict[int, int] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8, [op.path for op in operations]
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for operation in operations:

            @hypothesis.settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(hypothesis.HealthCheck),
                phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            )
            @hypothesis.given(case=operation.as_strategy(generation_mode))
            def one(case: Any) -> None:
                kwargs = case.as_transport_kwargs(base_url=base_url)
                request = client.build_request(
                    kwargs["method"],
                    kwargs["url"],
                    params=kwargs.get("params"),
                    headers={k: str(v) for k, v in (kwargs.get("headers") or {}).items()},
                    content=_content(kwargs),
                )
                try:
                    response = client.send(request)
                except httpx.HTTPError as exc:
                    failures.append(f"{case.method} {request.url}: {type(exc).__name__}: {exc}")
                    return
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                try:
                    check(response, f"{case.method} {request.url} {_content(kwargs)[:300]!r}")
                except AssertionError as exc:
                    failures.append(str(exc))

            try:
                one()
            except hypothesis.errors.Unsatisfiable:
                # nothing in it to break (no parameters, no body): the positive run covers it
                assert generation_mode == schemathesis.GenerationMode.NEGATIVE
        assert client.get("/v2/health/live").status_code == 200  # still answering
    tally = dict(sorted(statuses.items()))
    print(f"{base_url} {generation_mode.value} served={served}: answers by status {tally}")
    assert not failures, "\n".join(failures[:10])
    assert sum(statuses.values()) >= len(operations) * 2  # it did send requests


def _content(kwargs: dict[str, Any]) -> bytes:
    if kwargs.get("json") is not None:
        return json.dumps(kwargs["json"]).encode()
    data = kwargs.get("data")
    if data is None:
        return b""
    return data if isinstance(data, bytes) else str(data).encode()


MODES = [("positive", True), ("negative", True), ("positive", False), ("negative", False)]


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "served"), MODES)
def test_fuzz_the_runtime(runtime: str, mode: str, served: bool) -> None:
    fuzz(runtime, schemathesis.GenerationMode(mode), served)


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "served"), MODES)
def test_fuzz_the_activator(activator: str, mode: str, served: bool) -> None:
    fuzz(activator, schemathesis.GenerationMode(mode), served)


def test_the_fuzzed_spec_has_every_route(tmp_path: Path) -> None:
    paths = {op.ok().path for op in oip_schema().get_all_operations()}
    assert "/v2/models/{MODEL_NAME}/infer" in paths
    assert "/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/infer" in paths
