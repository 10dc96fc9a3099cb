"""The tokens an answer says it used, read off its bytes as they pass through the relay.

An OpenAI-compatible server says what a request used in a ``usage`` object: the whole answer's
(``{"usage": {"prompt_tokens": P, "completion_tokens": C, ...}}``), or a stream's last event
before ``data: [DONE]`` when the client asked for it (``stream_options.include_usage``; the
events before it carry ``"usage": null`` or none). :class:`UsageScanner` is fed the answer's
bytes in the pieces they arrive in and keeps the last ``usage`` object it could read whole: it
looks for the bytes ``"usage"`` followed by ``:`` and ``{`` (inside a JSON string a quote is
escaped, so a text that holds the word is never followed so), and reads the balanced object
after them, with no JSON parse of the rest. An object split
across pieces is carried (at most ``CARRY_BYTES``) until the next piece completes it; one that
HTTP chunk framing cuts in two is not read (servers write each event as one chunk).

A stream whose client did not ask for its usage says none; the activator then asks an Ember
replica for it (:data:`contracts.replica.USAGE_HEADER`), which ends the stream with a comment
holding it, and :class:`CommentDropper` takes that comment out before the client sees it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from contracts.replica import USAGE_COMMENT

KEY = b'"usage"'
CARRY_BYTES = 4096  # a usage object is ~100 bytes; past this a split one is given up


@dataclass(frozen=True, slots=True)
class Usage:
    """A request's tokens, as its answer said them."""

    prompt_tokens: int
    completion_tokens: int


class UsageScanner:
    """The last ``usage`` object in bytes fed piece by piece (:attr:`usage`, None until one)."""

    __slots__ = ("_carry", "usage")

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self._carry = b""  # from a "usage" key whose object has not ended yet

    def feed(self, data: bytes) -> None:
        if self._carry:
            data = self._carry + data
            self._carry = b""
        at = data.find(KEY)
        while at >= 0:
            end = self._read(data, at + len(KEY))
            if end < 0:  # the object goes on in the next piece
                rest = data[at:]
                self._carry = rest if len(rest) <= CARRY_BYTES else b""
                return
            at = data.find(KEY, end)
        # a key may itself be split: keep the tail that could begin one
        tail = data[-(len(KEY) - 1) :]
        cut = tail.rfind(b'"')
        if cut >= 0 and KEY.startswith(tail[cut:]):
            self._carry = tail[cut:]

    def _read(self, data: bytes, at: int) -> int:
        """Read the value after a ``"usage"`` key at ``at``: the index past it, or -1 when it
        has not all arrived yet."""
        n = len(data)
        while at < n and data[at] in b" \t\r\n":
            at += 1
        if at >= n:
            return -1
        if data[at] != ord(":"):
            return at  # the word as a value, not a key
        at += 1
        while at < n and data[at] in b" \t\r\n":
            at += 1
        if at >= n:
            return -1
        if data[at] != ord("{"):
            return at  # null (a stream's events before the last)
        depth, i = 0, at
        while i < n:
            c = data[i]
            if c == ord("{"):
                depth += 1
            elif c == ord("}"):
                depth -= 1
                if depth == 0:
                    self._take(data[at : i + 1])
                    return i + 1
            elif c == ord('"'):  # a key or a string value: skip it whole
                i = _string_end(data, i + 1)
                if i < 0:
                    return -1
            i += 1
        return -1

    def _take(self, raw: bytes) -> None:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        prompt = value.get("prompt_tokens")
        completion = value.get("completion_tokens", 0)
        if _count(prompt) and _count(completion):
            self.usage = Usage(prompt, completion)


def _string_end(data: bytes, i: int) -> int:
    """The index of the quote that ends a JSON string whose text begins at ``i``; -1 if it
    has not arrived."""
    n = len(data)
    while i < n:
        c = data[i]
        if c == ord("\\"):
            i += 2
            continue
        if c == ord('"'):
            return i
        i += 1
    return -1


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


_SIZE = re.compile(rb"[0-9A-Fa-f]{1,8}")
COMMENT_BYTES = 4096  # a usage comment is ~80 bytes: a bigger chunk is passed, never held


class CommentDropper:
    """Takes Ember's usage comment (:data:`contracts.replica.USAGE_COMMENT`, which the
    activator asked its replica for) out of a chunked stream's body, fed piece by piece.

    A chunk whose data begins with the comment's prefix, is at most ``COMMENT_BYTES`` and is
    exactly one event is held until whole and dropped; any other chunk is passed on as its bytes
    come (its size line, then its data), never held. Bytes that are not chunk framing (a size
    that is not 1 to 8 hex digits) are passed as they are, unfiltered, from there on.
    """

    __slots__ = ("_buf", "_done", "_skip")

    def __init__(self) -> None:
        self._buf = b""  # a size line, or a chunk that may be the comment, not whole yet
        self._done = False
        self._skip = 0  # bytes of a chunk being passed (its data and CRLF) still to come

    def feed(self, data: bytes) -> bytes:
        if self._done:
            return data
        out = []
        buf = self._buf + data if self._buf else data
        self._buf = b""
        while buf:
            if self._skip:
                take = buf[: self._skip]
                self._skip -= len(take)
                out.append(take)
                buf = buf[len(take) :]
                continue
            line = buf.find(b"\r\n")
            if line < 0:
                if len(buf) > 64:  # no size line is this long: not chunk framing
                    return self._give_up(out, buf)
                self._buf = buf
                break
            field = buf[:line].split(b";", 1)[0].strip()
            if not _SIZE.fullmatch(field):
                return self._give_up(out, buf)
            size = int(field, 16)
            if size == 0:  # the last chunk and what follows it: passed whole
                return self._give_up(out, buf)
            start = line + 2
            head = buf[start : start + len(USAGE_COMMENT)]
            maybe = size <= COMMENT_BYTES and USAGE_COMMENT.startswith(head[: len(USAGE_COMMENT)])
            if maybe and len(head) < min(size, len(USAGE_COMMENT)):
                self._buf = buf  # too little of its data to tell yet
                break
            if maybe and head == USAGE_COMMENT[: len(head)] and len(head) == len(USAGE_COMMENT):
                whole = start + size + 2
                if len(buf) < whole:
                    self._buf = buf  # the comment, not whole yet (at most COMMENT_BYTES)
                    break
                text = buf[start : start + size]
                if not (text.endswith(b"\n\n") and text.count(b"\n\n") == 1):
                    out.append(buf[:whole])  # not one comment event alone: the client's
                buf = buf[whole:]
                continue
            out.append(buf[:start])  # any other chunk: passed as it comes
            self._skip = size + 2
            buf = buf[start:]
        return b"".join(out)

    def _give_up(self, out: list[bytes], rest: bytes) -> bytes:
        self._done = True
        out.append(rest)
        return b"".join(out)
