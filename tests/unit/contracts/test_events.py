"""The event codec: every kind round-trips through its line, old lines still read, and what is
not an event is None (skipped and counted by the readers) or, of an unknown kind, kept."""

from __future__ import annotations

import json

import pytest

from contracts.events import (
    KINDS,
    VERSION,
    ActivatorStart,
    ActivatorStop,
    Event,
    PolicyDecision,
    Prewarm,
    ReplicaFailed,
    ReplicaReady,
    ReplicaStarting,
    ReplicaStopped,
    Request,
    Sleep,
    State,
    Unknown,
    Wake,
    WarmEnd,
    decode,
    encode,
)

STAMP = {"ts": 1700000000.25, "mono": 12.5}
EVERY_KIND: list[Event] = [
    State(model="m", from_="zero", to="loading", **STAMP),
    ReplicaStarting(model="m", replica=1, gpu_type="L4", price_per_hour=0.7, cpus=4, **STAMP),
    ReplicaReady(
        model="m",
        replica=1,
        url="http://127.0.0.1:1",
        cold_start_s=2.5,
        phases={"fetch": 1.0},
        warm_pool=True,
        **STAMP,
    ),
    ReplicaFailed(model="m", replica=1, reason="oom", failure_kind="load_failed", **STAMP),
    ReplicaStopped(model="m", replica=1, reason="keep-alive expired", uptime_s=60.0, **STAMP),
    Request(
        model="m",
        endpoint="infer",
        version="",
        arrival=1.0,
        start=1.5,
        end=2.0,
        status=200,
        cold=True,
        queue_s=0.5,
        replica=1,
        **STAMP,
    ),
    Prewarm(model="m", until=1700000600.0, replicas=1, source="schedule", **STAMP),
    WarmEnd(model="m", **STAMP),
    PolicyDecision(model="m", policy="hybrid", prewarm_s=0.0, keep_alive_s=600, why="x", **STAMP),
    Sleep(model="m", group="g", replica=2, level="host", reason="idle", **STAMP),
    Wake(model="m", group="g", replica=2, level="host", wake_s=0.05, **STAMP),
    ActivatorStart(model="", run="abc", pid=42, **STAMP),
    ActivatorStop(model="", run="abc", **STAMP),
]


def test_every_kind_is_covered() -> None:
    assert {type(e) for e in EVERY_KIND} == set(KINDS.values())


@pytest.mark.parametrize("event", EVERY_KIND, ids=lambda e: e.kind)
def test_every_kind_round_trips_through_one_line(event: Event) -> None:
    line = encode(event)
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert (record["event"], record["v"], record["model"]) == (event.kind, VERSION, event.model)
    assert decode(line) == event
    assert decode(line.encode()) == event


def test_the_keys_on_the_line_are_the_ones_always_written() -> None:
    state = json.loads(encode(EVERY_KIND[0]))
    assert (state["from"], state["to"]) == ("zero", "loading") and "reason" not in state
    failed = json.loads(encode(EVERY_KIND[3]))
    assert failed["kind"] == "load_failed" and "failure" not in failed
    assert "device" not in json.loads(encode(EVERY_KIND[1]))


def test_an_old_line_without_a_version_decodes() -> None:
    line = '{"event":"request","model":"m","ts":11,"arrival":0,"start":10,"end":11}'
    assert decode(line) == Request(model="m", ts=11, arrival=0, start=10, end=11)
    old = '{"event":"replica_starting","model":"m","ts":0,"replica":1,"device":"cuda:0"}'
    assert decode(old) == ReplicaStarting(model="m", ts=0, replica=1, device="cuda:0")


def test_an_old_sleep_without_a_level_is_the_warm_end_it_was() -> None:
    assert decode('{"event":"sleep","model":"m","ts":5,"mono":1}') == WarmEnd(
        model="m", ts=5, mono=1
    )
    # a wake without one was never written: kept, as any kind the readers pass over
    assert decode('{"event":"wake","model":"m","ts":5}') == Unknown(model="m", ts=5, event="wake")


def test_an_unknown_kind_is_kept_and_round_trips() -> None:
    line = '{"event":"future","model":"m","ts":3,"mono":1,"what":[1,2]}'
    event = decode(line)
    assert event == Unknown(model="m", ts=3, mono=1, event="future", fields={"what": [1, 2]})
    assert decode(encode(event)) == event


@pytest.mark.parametrize(
    "line",
    [
        "not json",
        "[1]",
        '{"model":"m","ts":1}',
        '{"event":"request","model":"m","ts":"soon"}',
        '{"event":"request","model":"m","ts":1,"start":0}',  # busy from when to when?
        '{"event":"replica_starting","model":"m","ts":1}',  # which replica?
        '{"event":"state","model":"m","ts":1,"mono":null}',
    ],
)
def test_what_is_not_an_event_is_none(line: str) -> None:
    assert decode(line) is None


def test_a_field_nobody_reads_of_the_wrong_type_reads_as_its_default() -> None:
    line = '{"event":"replica_ready","model":"m","ts":1,"replica":1,"cold_start_s":"slow"}'
    assert decode(line) == ReplicaReady(model="m", ts=1, replica=1)
