"""Flow control: reading paused and resumed only when that changes anything, and a follower
(a replica's connection) read only while the leader's peer (the client) takes what it is sent."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from activator.flow import FlowControl


class Transport:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.closing = False

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")

    def is_closing(self) -> bool:
        return self.closing


def flow() -> tuple[FlowControl, Transport]:
    transport = Transport()
    control = FlowControl()
    control.transport = cast(asyncio.Transport, cast(Any, transport))
    return control, transport


def test_reading_changes_only_when_it_changes() -> None:
    control, transport = flow()
    assert control.read(True) is False  # already reading
    assert control.read(False) is True and control.read(False) is False
    assert control.read(True) is True
    transport.closing = True
    assert control.read(False) is False  # a closing connection is left as it is
    assert transport.calls == ["pause", "resume"]


def test_a_follower_reads_only_while_the_client_takes_what_it_is_sent() -> None:
    client, _ = flow()
    replica, replica_transport = flow()
    client.pause_writing()
    client.follow(replica)  # attached while the client takes nothing: paused at once
    assert not replica.reading
    client.resume_writing()
    assert replica.reading
    client.pause_writing()
    assert not replica.reading
    client.follow(None)  # the answer ended: the follower is no longer led
    client.resume_writing()
    assert not replica.reading
    assert replica_transport.calls == ["pause", "resume", "pause"]
