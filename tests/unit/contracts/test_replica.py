"""The replica's status lines: every event survives a round trip, and nothing else decodes."""

from __future__ import annotations

import json

import pytest

from contracts.replica import (
    ContractViolation,
    FailureKind,
    Listening,
    ModelStatus,
    ReplicaEvent,
    Standby,
    decode,
    encode,
    model_status,
)

EVENTS: list[ReplicaEvent] = [
    Standby(preload_s=1.25, imports_s=1.0, threads=1, cuda_initialized=False),
    Listening("http://127.0.0.1:41234"),
    ModelStatus("mlp", "LOADING", "loading"),
    ModelStatus("mlp", "READY", phases={"imports": 0.5, "load": 0.25, "warmup": 0.0}),
    ModelStatus("mlp", "UNLOADING", "unloading"),
    ModelStatus("mlp", "SLEEPING", "level host", level="host"),
    ModelStatus("mlp", "SLEEPING", "level disk", level="disk"),
    ModelStatus(
        "mlp",
        "UNAVAILABLE",
        "load failed: weights file /m/model.safetensors does not exist",
        FailureKind.WEIGHTS_MISSING,
    ),
    *(
        ModelStatus("m.1", "UNAVAILABLE", "why: ünïcode\nand a newline", kind)
        for kind in FailureKind
    ),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: f"{e.kind}")
def test_an_event_is_one_line_and_decodes_to_itself(event: ReplicaEvent) -> None:
    line = encode(event)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line) == event
    assert decode(line.decode()) == event  # text as well as bytes


def test_a_failure_travels_as_its_value() -> None:
    raw = json.loads(encode(ModelStatus("m", "UNAVAILABLE", "x", FailureKind.OUT_OF_MEMORY)))
    assert raw["failure"] == "out_of_memory" and raw["kind"] == "model"


def test_a_repository_index_entry_reads_as_a_model_status() -> None:
    entry = {"name": "m", "version": "1", "state": "UNAVAILABLE", "reason": "load failed: x"}
    assert model_status({**entry, "failure": "weights_corrupt"}) == ModelStatus(
        "m", "UNAVAILABLE", "load failed: x", FailureKind.WEIGHTS_CORRUPT
    )
    assert model_status({**entry, "failure": None}).failure is None
    assert model_status(entry).failure is None  # a runtime from before the field


def test_unknown_fields_are_ignored() -> None:
    line = json.dumps({"kind": "listening", "url": "http://h:1", "since": 3})
    assert decode(line) == Listening("http://h:1")


STANDBY = {"kind": "standby", "preload_s": 1.0, "imports_s": 1.0, "threads": 1}
MODEL = {"kind": "model", "model": "m", "state": "READY"}


@pytest.mark.parametrize(
    "line",
    [
        # not JSON, or not one object
        b"",
        b"\n",
        b"ember serve: listening on http://127.0.0.1:1",
        b'{"kind": "listening", "url": "http://h:1"',
        b"\xff\xfe{}",
        b"[" * 100_000,
        b'["listening"]',
        b'"listening"',
        b"null",
        b"42",
        # no kind, or one the contract does not have
        b"{}",
        b'{"url": "http://h:1"}',
        b'{"kind": "ready"}',
        b'{"kind": null}',
        b'{"kind": ["model"]}',
        # a kind without its fields, or with fields of the wrong type
        b'{"kind": "listening"}',
        b'{"kind": "listening", "url": 8080}',
        b'{"kind": "listening", "url": null}',
        json.dumps(STANDBY).encode(),
        json.dumps({**STANDBY, "cuda_initialized": "false"}).encode(),
        json.dumps({**STANDBY, "cuda_initialized": 0}).encode(),
        json.dumps({**STANDBY, "cuda_initialized": False, "threads": 1.5}).encode(),
        json.dumps({**STANDBY, "cuda_initialized": False, "threads": True}).encode(),
        json.dumps({**STANDBY, "cuda_initialized": False, "preload_s": "1.0"}).encode(),
        json.dumps({**STANDBY, "cuda_initialized": False, "imports_s": None}).encode(),
        json.dumps({"kind": "model", "state": "READY"}).encode(),
        json.dumps({**MODEL, "model": 3}).encode(),
        json.dumps({"kind": "model", "model": "m"}).encode(),
        json.dumps({**MODEL, "state": "ready"}).encode(),
        json.dumps({**MODEL, "state": ["READY"]}).encode(),
        json.dumps({**MODEL, "reason": 5}).encode(),
        json.dumps({**MODEL, "failure": "gremlins"}).encode(),
        json.dumps({**MODEL, "failure": 1}).encode(),
        json.dumps({**MODEL, "phases": [["load", 1.0]]}).encode(),
        json.dumps({**MODEL, "phases": {"load": "1.0"}}).encode(),
        json.dumps({**MODEL, "phases": {"load": None}}).encode(),
        json.dumps({**MODEL, "phases": {"load": True}}).encode(),
        json.dumps({**MODEL, "state": "SLEEPING", "level": "gpu"}).encode(),
        json.dumps({**MODEL, "state": "SLEEPING", "level": 1}).encode(),
    ],
)
def test_anything_else_is_a_contract_violation(line: bytes) -> None:
    with pytest.raises(ContractViolation):
        decode(line)


def test_a_violation_quotes_the_line_clipped() -> None:
    with pytest.raises(ContractViolation, match=r"not JSON: x{10}") as caught:
        decode(b"x" * 10_000)
    assert len(str(caught.value)) < 300
