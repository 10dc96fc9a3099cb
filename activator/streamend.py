"""Ending a relayed token stream whose replica died mid-stream, in a way the client can read.

Once part of a stream has gone out, the client cannot be given an error answer instead: its
``200`` head is gone. Cutting its connection would leave it with a chunked body that never
ends and no word of why; an OpenAI client cannot tell that from a network fault. So the relay
ends such a stream the way Ember's replica ends one its engine cut short
(``runtime/generation/routes.py``): a last server-sent event ``data: {"error": {...}}`` in
OpenAI's error shape, then the end of the chunked body (no ``data: [DONE]``, which says the
answer is whole). The ``openai`` client raises an ``APIError`` with the message on that event.

That is only possible where the client's body stands between whole events: every chunk it was
sent is whole and the last one ended an event (a blank line). :class:`StreamCursor` is fed the
bytes written to the client (its answer's head first) and knows whether it does. Ember's replica
writes each event as one chunk in one write, so a replica killed between writes leaves the
client there; anything else (a chunk cut in its middle, an answer not chunked) is cut as before.
"""

from __future__ import annotations

import re

from contracts.http11 import openai_error_body

_SIZE = re.compile(rb"[0-9A-Fa-f]{1,8}")
_HEAD_END = b"\r\n\r\n"


class StreamCursor:
    """Where a chunked stream written to its client stands: :attr:`between_events` when an
    event, then the end of the body, may follow what it was sent."""

    __slots__ = ("_ended", "_failed", "_head", "_line", "_skip", "_tail")

    def __init__(self) -> None:
        self._head: bytes | None = b""  # the head's last bytes, until its end was written
        self._failed = False  # bytes that are not chunk framing, or the body already ended
        self._ended = True  # the last whole chunk's data ended an event (none yet: so it did)
        self._line = b""  # a chunk's size line, not whole yet
        self._skip = 0  # a chunk's data and CRLF still to come
        self._tail = b""  # the last bytes of the chunk being written

    @property
    def between_events(self) -> bool:
        return (
            self._head is None
            and not self._failed
            and not self._line
            and not self._skip
            and self._ended
        )

    def feed(self, data: bytes) -> None:
        """Bytes as they were written to the client."""
        if self._head is not None:
            head = self._head + data
            end = head.find(_HEAD_END)
            if end < 0:
                self._head = head[-(len(_HEAD_END) - 1) :]
                return
            self._head = None
            data = head[end + len(_HEAD_END) :]
        while data and not self._failed:
            if self._skip:
                take = data[: self._skip]
                self._skip -= len(take)
                self._tail = (self._tail + take)[-6:]
                data = data[len(take) :]
                if not self._skip:  # the chunk is whole: its data, then CRLF
                    events = self._tail[:-2]
                    self._ended = events.endswith((b"\n\n", b"\r\r", b"\r\n\r\n"))
                continue
            line = self._line + data
            at = line.find(b"\r\n")
            if at < 0:
                self._line = line
                self._failed = len(line) > 64  # no size line is this long
                return
            self._line = b""
            field = line[:at].split(b";", 1)[0].strip()
            if not _SIZE.fullmatch(field) or int(field, 16) == 0:
                self._failed = True  # not chunks, or the last chunk: nothing may follow
                return
            self._skip = int(field, 16) + 2
            self._tail = b""
            data = line[at + 2 :]


def error_ending(status: int, message: str) -> bytes:
    """The last chunk of a stream the activator ends: one ``data: {"error": ...}`` event in
    OpenAI's shape, then the chunk that ends the body."""
    event = b"data: " + openai_error_body(status, message) + b"\n\n"
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event)
