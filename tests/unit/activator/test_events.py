"""The event log: the request event's route, rotation under a bound, reading rotated files
oldest first, skipping (and counting) what is not a well-typed event, a torn last line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from activator import events as events_module
from activator.events import (
    EventLog,
    Skipped,
    arrivals,
    iter_events,
    log_files,
    read_events,
)
from contracts.events import Request, State, decode, encode, from_record
from contracts.stack import ActivatorSettings
from tests.fixtures.frontdoor import BODY, Replica, serving


def request(log: EventLog, arrival: float, **kw: object) -> None:
    fields: dict[str, object] = {
        "endpoint": "infer",
        "version": "",
        "arrival": arrival,
        "start": arrival + 0.1,
        "end": arrival + 0.2,
        "status": 200,
        "cold": False,
        "queue_s": 0.0,
        "replica": 1,
    }
    fields.update(kw)
    log.request("m", **fields)  # type: ignore[arg-type]


def test_a_request_event_names_its_route_and_reads_back_typed(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    request(log, 10.0, endpoint="ready", version="2", start=None, replica=None, status=504)
    log.close()
    (e,) = read_events(tmp_path / "events.jsonl")
    assert isinstance(e, Request) and e.model == "m"
    assert (e.endpoint, e.version, e.status, e.start, e.replica) == (
        "ready",
        "2",
        504,
        None,
        None,
    )
    assert not hasattr(e, "path")


def test_the_log_rotates_past_its_bound_and_is_read_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path, max_bytes=2000, keep=2)
    for i in range(100):  # no event loop: each line is written at once
        request(log, float(i))
    log.close()
    files = log_files(path)
    assert [f.name for f in files] == ["events.jsonl.2", "events.jsonl.1", "events.jsonl"]
    assert all(f.stat().st_size <= 2000 for f in files)
    read = [e.arrival for e in read_events(path) if isinstance(e, Request)]
    assert read == sorted(read) and read[-1] == 99.0  # the newest kept, oldest removed
    assert 0.0 not in read
    # a smaller keep later: the rotated files past it go at the next rotation
    log = EventLog(path, max_bytes=2000, keep=0)
    for i in range(100, 120):
        request(log, float(i))
    log.close()
    assert [f.name for f in log_files(path)] == ["events.jsonl"]
    assert [e.arrival for e in read_events(path) if isinstance(e, Request)][-1] == 119.0


def test_a_torn_last_line_gets_its_newline_before_the_next_event(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    whole = json.dumps({"event": "state", "model": "m", "ts": 1.0})
    path.write_text(whole + "\n" + '{"event":"request","model":"m","ts":2.')  # a crash
    log = EventLog(path)
    log.emit(State(model="m", to="zero"))
    log.close()
    skipped = Skipped()
    read = list(iter_events(path, skipped))
    assert read[0].ts == 1.0 and read[1] == State(
        model="m", to="zero", ts=read[1].ts, mono=read[1].mono
    )
    assert skipped.lines == 1


@pytest.mark.parametrize(
    "line",
    [
        '{"event":"request","model":"m","ts":"soon"}',  # a timestamp that is not a number
        '{"event":"request","model":"m","ts":NaN}',
        '{"event":"request","model":"m","ts":true}',
        '{"event":"request","model":7,"ts":1}',  # a model that is not a string
        '{"event":["request"],"model":"m","ts":1}',
        '{"model":"m","ts":1}',  # no kind
        '{"event":"request","model":"m","ts":1,"status":"200"}',
        '{"event":"request","model":"m","ts":1,"cold":"yes"}',
        '{"event":"request","model":"m","ts":1,"arrival":"0"}',
        '{"event":"request","model":"m","ts":1,"start":0}',  # busy from when to when?
        '{"event":"request","model":"m","ts":1,"endpoint":3}',
        '{"event":"sleep","model":"m","ts":1,"replica":[1],"level":"host","group":"g"}',
        '{"event":"replica_starting","model":"m","ts":1}',  # which replica?
        '{"event":"replica_starting","model":"m","ts":1,"replica":1,"cpus":"four"}',
        '{"event":"prewarm","model":"m","ts":1,"until":"later"}',
        "[1, 2, 3]",
        '"a string"',
        "[" * 100_000 + "]" * 100_000,  # nested past the parser's recursion limit
        "not json at all",
    ],
)
def test_ill_typed_or_unparsable_lines_are_skipped_and_counted(tmp_path: Path, line: str) -> None:
    path = tmp_path / "events.jsonl"
    good = json.dumps({"event": "state", "model": "m", "ts": 1.0})
    path.write_text(f"{good}\n{line}\n{good}\n")
    skipped = Skipped()
    assert len(list(iter_events(path, skipped))) == 2 and skipped.lines == 1
    assert decode(line) is None


def test_an_overlong_line_or_bytes_that_are_not_utf8_are_skipped_unheld(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_module, "MAX_LINE_BYTES", 1024)
    path = tmp_path / "events.jsonl"
    good = json.dumps({"event": "state", "model": "m", "ts": 1.0}).encode()
    long = b'{"event":"state","model":"' + b"x" * 5000 + b'","ts":1}'
    path.write_bytes(good + b"\n" + long + b"\n" + b"\xff\xfe\x00garbage\n" + good + b"\n")
    skipped = Skipped()
    assert len(list(iter_events(path, skipped))) == 2 and skipped.lines == 2


def test_arrivals_come_sorted_in_bounded_batches_per_model() -> None:
    # ends in order, arrivals a little out of it (a long request ends after shorter ones)
    log = [
        {"event": "request", "model": m, "ts": t + 0.5, "arrival": t - (3 if t % 10 == 0 else 0)}
        for t in range(1, 200)
        for m in ("a", "b")
    ]
    log.append({"event": "request", "model": "other", "ts": 1.0, "arrival": 1.0})
    log.append({"event": "state", "model": "a", "ts": 1.0})
    typed = [e for r in log if (e := from_record(r)) is not None]
    batches = list(arrivals(typed, {"a", "b"}, window=16))
    assert {m for m, _ in batches} == {"a", "b"}
    assert all(len(b) <= 32 for _, b in batches)
    for model in ("a", "b"):
        seen = [t for m, b in batches if m == model for t in b]
        assert seen == sorted(seen) and len(seen) == 199


def test_a_write_that_fails_loses_its_lines_says_so_once_and_never_crashes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    full = Path("/dev/full")  # every Linux has it: a write fails with ENOSPC
    log = EventLog(full)
    with caplog.at_level(logging.WARNING, "ember.activator"):
        for _ in range(3):
            log.emit(State(model="m"))
    log.close()
    assert sum("cannot write" in r.getMessage() for r in caplog.records) == 1


def test_a_rotation_that_fails_half_way_is_tried_again_by_the_next_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path, max_bytes=200, keep=2)
    log.emit(State(model="m", reason="x" * 150))
    real, calls = events_module.rotate, []

    def rotate(at: Path, keep: int) -> None:
        calls.append(at)
        if len(calls) == 1:
            raise OSError(24, "Too many open files")  # the log's file is closed by then
        real(at, keep)

    monkeypatch.setattr(events_module, "rotate", rotate)
    with caplog.at_level(logging.WARNING, "ember.activator"):
        log.emit(State(model="m", reason="lost"))  # its rotation fails: this line is lost
        log.emit(State(model="m", reason="kept"))  # the file is opened again, rotated, written
    log.close()
    assert [e.reason for e in read_events(path) if isinstance(e, State)] == ["x" * 150, "kept"]
    assert len(calls) == 2 and (tmp_path / "events.jsonl.1").exists()
    assert sum("cannot write" in r.getMessage() for r in caplog.records) == 1


def test_a_file_of_the_log_that_cannot_be_read_is_skipped_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.emit(State(model="m", reason="now"))
    log.close()
    (tmp_path / "events.jsonl.1").mkdir()  # not a file: opening it fails
    skipped = Skipped()
    with caplog.at_level(logging.WARNING, "ember.activator"):
        assert [e.reason for e in iter_events(path, skipped) if isinstance(e, State)] == ["now"]
    (unreadable,) = skipped.unreadable
    assert unreadable.startswith(f"{tmp_path / 'events.jsonl.1'}: Is a directory")
    assert any("cannot read it" in r.getMessage() for r in caplog.records)


def test_the_bound_is_set_in_ember_yaml_with_units_and_checked() -> None:
    default = ActivatorSettings()
    assert (default.event_log_max_bytes, default.event_log_keep) == (64 * 1024 * 1024, 4)
    settings = ActivatorSettings.model_validate(
        {"event_log_max_bytes": "1MiB", "event_log_keep": 0}
    )
    assert (settings.event_log_max_bytes, settings.event_log_keep) == (1024 * 1024, 0)
    for bad in (
        {"event_log_max_bytes": 1000},  # under 64 KiB: rotating all the time
        {"event_log_max_bytes": "lots"},
        {"event_log_keep": -1},
        {"event_log_keep": 1000},
        {"event_log_keep": 1.5},
        {"event_log_max": 10},  # a typo is an error, not a default
    ):
        with pytest.raises(ValidationError):
            ActivatorSettings(**bad)


async def test_the_activator_rotates_its_log_at_the_configured_bound(tmp_path: Path) -> None:
    settings = {"event_log_max_bytes": 64 * 1024, "event_log_keep": 1}
    async with serving(tmp_path, [Replica()], settings=settings) as h:
        for _ in range(600):  # about 150 KB of request events
            assert (await h.client.post("/v2/models/m/infer", content=BODY)).status_code == 200
        h.activator.events.flush()
        files = log_files(h.events_path)
        assert [f.name for f in files] == ["events.jsonl.1", "events.jsonl"]
        assert all(f.stat().st_size <= 64 * 1024 for f in files)
        kept = h.events()
        assert 0 < len(kept) < 600 and all(e["status"] == 200 for e in kept)


def test_the_request_fast_path_writes_the_codecs_line(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    request(log, 10.0)
    log.close()
    line = (tmp_path / "events.jsonl").read_text()
    e = decode(line)
    assert isinstance(e, Request) and e.mono is not None
    assert json.loads(line) == json.loads(encode(e))  # the same keys and values
