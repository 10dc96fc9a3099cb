"""The tokens an answer says it used, read off its bytes as they pass through the relay.

An OpenAI-compatible server says what a request used in a ``usage`` object: the whole answer's
(``{"usage": {"prompt_tokens": P, "completion_tokens": C, ...}}``), or a stream's last event
before ``data: [DONE]`` when the client asked for it (``stream_options.include_usage``; the
events before it carry ``"usage": null`` or none). :class:`UsageScanner` is fed the answer's
bytes in the pieces they arrive in and keeps the last ``usage`` object it could read whole: a
``"usage"`` key cannot occur inside a JSON string (its quotes would be escaped), so finding the
key and the balanced object after it is enough, with no JSON parse of the rest. An object split
across pieces is carried (at most ``CARRY_BYTES``) until the next piece completes it; one that
HTTP chunk framing cuts in two is not read (servers write each event as one chunk).

A stream whose client did not ask for its usage says none; the activator then asks an Ember
replica for it (:data:`contracts.replica.USAGE_HEADER`), which ends the stream with a comment
holding it, and :class:`CommentDropper` takes that comment out before the client sees it.
"""

from __future__ import annotations

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


class CommentDropper:
    """Takes Ember's usage comment (:data:`contracts.replica.USAGE_COMMENT`, which the
    activator asked its replica for) out of a chunked stream's body, fed piece by piece: each
    whole chunk passes unchanged unless its text is that comment; a chunk not whole yet is held
    until it is. Anything that is not chunk framing passes as it is, unfiltered, from there on.
    """

    __slots__ = ("_buf", "_done")

    def __init__(self) -> None:
        self._buf = b""
        self._done = False

    def feed(self, data: bytes) -> bytes:
        if self._done:
            return data
        buf = self._buf + data if self._buf else data
        out = []
        while True:
            line = buf.find(b"\r\n")
            if line < 0:
                break
            try:
                size = int(buf[:line].split(b";", 1)[0], 16)
            except ValueError:  # not chunk framing: pass it all, as it is
                self._done = True
                out.append(buf)
                buf = b""
                break
            if size == 0:  # the last chunk and what follows it: passed whole
                self._done = True
                out.append(buf)
                buf = b""
                break
            whole = line + 2 + size + 2
            if len(buf) < whole:
                break
            if not buf.startswith(USAGE_COMMENT, line + 2):
                out.append(buf[:whole])
            buf = buf[whole:]
        self._buf = buf
        return b"".join(out) if len(out) != 1 else out[0]
