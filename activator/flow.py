"""Flow control: reading and writing on one connection, paused and resumed, and passed along.

One :class:`FlowControl` per connection, the client's (:class:`~activator.connection.
FrontConnection`) and each replica's (:class:`~activator.upstream.Upstream`). Reading is
paused and resumed by whoever owns the connection (the client's: while it reads too far ahead of
its answers, or takes nothing of them; a replica's: while its client takes nothing), and only
when that changes anything. Writing is paused by the transport (``pause_writing``: the peer is
not taking what it is sent); a relayed answer makes its replica's connection the *follower* of
its client's (:meth:`FlowControl.follow`), so the replica is read only while the client takes
what it is sent, and the answer waits in the replica, not in the activator.
"""

from __future__ import annotations

import asyncio


class FlowControl:
    """A connection's reading (paused or not) and writing (the peer taking it or not)."""

    __slots__ = ("follower", "reading", "transport", "write_paused")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None  # set once the connection is made
        self.reading = True
        self.write_paused = False  # the peer is not taking what it is sent
        self.follower: FlowControl | None = None  # read only while this side's peer takes

    def read(self, on: bool) -> bool:
        """Resume (``on``) or pause reading; whether that changed anything (a closing
        connection is left as it is)."""
        transport = self.transport
        if on is self.reading or transport is None or transport.is_closing():
            return False
        self.reading = on
        if on:
            transport.resume_reading()
        else:
            transport.pause_reading()
        return True

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.follower is not None:
            self.follower.read(False)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.follower is not None:
            self.follower.read(True)

    def follow(self, follower: FlowControl | None) -> None:
        """Make ``follower`` read only while this connection's peer takes what it is sent
        (paused at once if it does not); None: no follower any more."""
        self.follower = follower
        if follower is not None and self.write_paused:
            follower.read(False)
