"""Which connections the front door keeps open, and that it says so: an HTTP/1.0 client that
asked for keep-alive is told ``connection: keep-alive`` (its protocol's default is to close),
one that did not is answered ``connection: close`` and closed; on the activator's own answers
and on relayed ones alike."""

from __future__ import annotations

import re
from pathlib import Path

from activator.http import says_close
from tests.fixtures.frontdoor import BODY, Harness, Raw, Replica, serving, until


def answers(data: bytes) -> list[bytes]:
    """The whole answers (heads) in ``data``, each with its body."""
    heads, rest = [], data
    while (end := rest.find(b"\r\n\r\n")) >= 0:
        head = rest[:end]
        length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
        if len(rest) < end + 4 + length:
            break
        heads.append(head)
        rest = rest[end + 4 + length :]
    return heads


def http10(method: str, path: str, body: str = "", *extra: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.0", f"content-length: {len(body)}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


async def ready(h: Harness) -> None:
    await until(lambda: h.activator.pools["m"].state == "ready", "the replica", timeout_s=10)


async def test_an_http10_keep_alive_connection_is_told_so_and_stays_open(tmp_path: Path) -> None:
    async with serving(tmp_path, [Replica()], min_replicas=1) as h:
        await ready(h)
        async with Raw.open(h) as raw:
            keep = "connection: keep-alive"
            raw.writer.write(http10("GET", "/v2/health/live", "", keep))  # the activator's own
            await raw.read_until(lambda got: len(answers(got)) == 1, "the first answer")
            raw.writer.write(http10("POST", "/v2/models/m/infer", BODY, keep))  # relayed
            await raw.read_until(lambda got: len(answers(got)) == 2, "the second answer")
            raw.writer.write(http10("GET", "/v2/models/m/ready", "", keep))
            got = await raw.read_until(lambda got: len(answers(got)) == 3, "the third answer")
        for head in answers(got):
            assert head.startswith(b"HTTP/1.1 200 ")
            assert head.lower().count(b"connection: keep-alive") == 1, head
            assert b"close" not in head.lower()


async def test_an_http10_connection_without_keep_alive_is_answered_close_and_closed(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, [Replica()], min_replicas=1) as h:
        await ready(h)
        for request in (
            http10("GET", "/v2/health/live"),
            http10("POST", "/v2/models/m/infer", BODY),
        ):
            async with Raw.open(h) as raw:
                raw.writer.write(request)
                got = await raw.read_to_eof()  # the connection closes after the answer
            (head,) = answers(got)
            assert b"connection: close" in head.lower() and b"keep-alive" not in head.lower()


async def test_http11_answers_say_close_only_when_the_connection_ends(tmp_path: Path) -> None:
    async with serving(tmp_path, [Replica()], min_replicas=1) as h:
        await ready(h)
        r = await h.client.post("/v2/models/m/infer", content=BODY)
        assert r.status_code == 200 and "connection" not in r.headers  # kept: nothing to say
        r = await h.client.post("/v2/models/m/infer", content=BODY, headers={"connection": "close"})
        assert r.status_code == 200 and r.headers["connection"] == "close"


def test_a_response_head_that_says_close() -> None:
    assert says_close(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nConnection: Close")
    assert says_close(b"HTTP/1.1 200 OK\r\nconnection: upgrade, close")
    assert not says_close(b"HTTP/1.1 200 OK\r\nconnection: keep-alive")
    assert not says_close(b"HTTP/1.1 200 OK\r\nx-connection: close\r\nx: connection: close")
