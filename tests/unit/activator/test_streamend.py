"""Where a relayed stream stands for its client, and the ending the activator gives it."""

from __future__ import annotations

import json

import httptools
import pytest

from activator.streamend import StreamCursor, error_ending

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


EVENTS = chunk(b'data: {"choices": []}\n\n') + chunk(b'data: {"choices": [1]}\r\n\r\n')


def fed(*pieces: bytes) -> StreamCursor:
    cursor = StreamCursor()
    for piece in pieces:
        cursor.feed(piece)
    return cursor


@pytest.mark.parametrize("size", [1, 2, 7, 1000])
def test_whole_events_in_whole_chunks_may_be_followed_however_they_were_written(
    size: int,
) -> None:
    data = HEAD + EVENTS
    assert fed(*(data[i : i + size] for i in range(0, len(data), size))).between_events


def test_a_head_alone_may_be_followed() -> None:
    assert fed(HEAD).between_events
    assert not fed(HEAD[:-1]).between_events  # its blank line has not gone out


@pytest.mark.parametrize("cut", [1, 3, 5, 20, len(chunk(b'data: {"choices": []}\n\n')) - 1])
def test_a_chunk_cut_anywhere_may_not(cut: int) -> None:
    assert not fed(HEAD, EVENTS[:cut]).between_events
    assert fed(HEAD, EVENTS[:cut], EVENTS[cut:]).between_events  # until it is whole


def test_a_chunk_that_ends_within_an_event_may_not() -> None:
    assert not fed(HEAD, chunk(b"data: {")).between_events
    assert fed(HEAD, chunk(b"data: {"), chunk(b"}\n\n")).between_events


@pytest.mark.parametrize(
    "body", [b"0\r\n\r\n", b"data: {}\n\n", b"zz\r\n", b"1" * 80, chunk(b"\n\n") + b"0\r\n\r\n"]
)
def test_an_ended_body_or_one_not_in_chunks_may_not(body: bytes) -> None:
    assert not fed(HEAD, body).between_events
    assert not fed(HEAD, body, EVENTS).between_events  # nor ever after


def test_the_ending_is_one_openai_error_event_then_the_end_of_the_body() -> None:
    done: list[bytes] = []
    body: list[bytes] = []

    class Parsed:
        def on_body(self, data: bytes) -> None:
            body.append(data)

        def on_message_complete(self) -> None:
            done.append(b"".join(body))

    parser = httptools.HttpResponseParser(Parsed())
    parser.feed_data(HEAD + EVENTS + error_ending(502, "the replica went away"))
    assert len(done) == 1  # the answer is whole
    last = done[0][done[0].rindex(b"data: ") :]
    assert last.endswith(b"}\n\n") and b"[DONE]" not in done[0]
    assert json.loads(last[6:]) == {
        "error": {
            "message": "the replica went away",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
