"""A command engine's sleep and wake calls: read from a model config, typed, refused with a
message naming the key and the form expected."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from contracts.configfile import explain
from contracts.engine_calls import EngineCall, EngineCalls
from contracts.replica import SleepLevel

POST = "POST"


def calls(sleep: Any, wake: Any) -> EngineCalls:
    return EngineCalls.model_validate({"sleep": sleep, "wake": wake})


def test_vllms_calls_per_level_and_one_wake_for_every_level() -> None:
    read = calls({"host": "POST /sleep?level=1", "disk": "post  /sleep?level=2"}, "POST /wake_up")
    assert read.levels == {SleepLevel.HOST, SleepLevel.DISK}
    assert read.sleep_calls(SleepLevel.DISK) == (EngineCall(method=POST, path="/sleep?level=2"),)
    wake_up = (EngineCall(method=POST, path="/wake_up"),)
    assert read.wake_calls(SleepLevel.HOST) == read.wake_calls(SleepLevel.DISK) == wake_up
    assert str(read.sleep_calls(SleepLevel.HOST)[0]) == "POST /sleep?level=1"


def test_a_wake_of_several_calls_with_a_body_and_one_per_level() -> None:
    reload = {"call": "POST /collective_rpc", "body": {"method": "reload_weights"}}
    read = calls(
        {"host": "POST /sleep?level=1", "disk": ["POST /sleep?level=2"]},
        {"host": "POST /wake_up", "disk": ["POST /wake_up?tags=weights", reload]},
    )
    assert read.wake_calls(SleepLevel.HOST) == (EngineCall(method=POST, path="/wake_up"),)
    first, second = read.wake_calls(SleepLevel.DISK)
    assert (first.path, second.path) == ("/wake_up?tags=weights", "/collective_rpc")
    assert second.body == {"method": "reload_weights"} and first.body is None
    only_disk = calls({"disk": "PUT /sleep"}, ["POST /a", "GET /b"])
    assert only_disk.levels == {SleepLevel.DISK}
    assert [str(c) for c in only_disk.wake_calls(SleepLevel.DISK)] == ["POST /a", "GET /b"]


@pytest.mark.parametrize(
    ("sleep", "wake", "message"),
    [
        ({"gpu": "POST /s"}, "POST /w", "sleep: gpu: unknown level 'gpu': the levels are host"),
        ({"1": "POST /s"}, "POST /w", "unknown level '1'"),
        ({"host": "POST sleep"}, "POST /w", "sleep: host: 'POST sleep' is not a call: write"),
        ({"host": "/sleep"}, "POST /w", "'/sleep' is not a call: write METHOD /PATH"),
        ({"host": "FETCH /s"}, "POST /w", "unknown method 'FETCH'"),
        ({"host": "POST //evil/x"}, "POST /w", "a path on the engine's server, not another host"),
        ({"host": []}, "POST /w", "sleep: host: an empty list of calls"),
        ({"host": 3}, "POST /w", "a call is a string METHOD /PATH"),
        ({}, "POST /w", "sleep: a mapping of levels to calls"),
        ("POST /sleep", "POST /w", "sleep: a mapping of levels to calls"),
        ({"host": "POST /s"}, [], "wake: an empty list of calls"),
        ({"host": "POST /s"}, {"call": "POST /w", "json": {}}, "wake: unknown key 'json'"),
        ({"host": "POST /s"}, {"body": {}}, "wake: body: unknown level 'body'"),
        ({"host": "POST /s", "disk": "POST /t"}, {"host": "POST /w"}, "no call for level disk"),
        ({"host": "POST /s"}, {"host": "POST /w", "disk": "POST /w"}, "level disk has no 'sleep'"),
    ],
)
def test_bad_calls_are_refused_naming_the_key(sleep: Any, wake: Any, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        calls(sleep, wake)
    (line,) = explain(caught.value, EngineCalls, file="m.yaml")
    assert message in line, line
