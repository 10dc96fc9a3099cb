"""What one client connection may make the activator hold of request bodies.

A body is at most ``max_request_bytes`` (413; refused before it is read when its length is
declared), and the bodies held over all connections at most ``max_buffered_bytes`` (503): each
connection counts what it holds (:attr:`Bounds.holding`) into the front door's count
(``buffered``) as the bytes arrive, and lets it go with the answer, or with the connection,
without waiting for a garbage collection.
"""

from __future__ import annotations

from typing import Protocol

from activator.errors import Overloaded, PayloadTooLarge
from contracts.stack import ActivatorSettings


class Counted(Protocol):
    """Where the bodies held over all connections are counted (the front door)."""

    buffered: int


class Bounds:
    """The request body bytes one connection holds, within the limits."""

    __slots__ = ("door", "holding", "settings")

    def __init__(self, door: Counted, settings: ActivatorSettings) -> None:
        self.door = door
        self.settings = settings
        self.holding = 0  # counted in door.buffered too

    def room_for(self, so_far: int, size: int) -> None:
        """Refuse ``size`` more bytes of a body that has ``so_far``, if there is no room."""
        limit = self.settings.max_request_bytes
        if so_far + size > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
        budget = self.settings.max_buffered_bytes
        if self.door.buffered + size > budget:
            raise Overloaded(
                f"the activator holds {self.door.buffered} bytes of request bodies and may hold "
                f"{budget}: try again shortly"
            )

    def hold(self, size: int) -> None:
        self.holding += size
        self.door.buffered += size

    def let_go(self, size: int) -> None:
        size = min(size, self.holding)
        self.holding -= size
        self.door.buffered -= size
