"""A group member as the activator sees a model: :class:`MemberPool`, the face of a pool.

The front door, the data path, the endpoints and the metrics deal with pools by model name; a
member of a group answers them as a model's own pool would, from its group's pool (the replicas,
their state, the queue) and its own name, spec and requests. Taking a slot prefers a replica
where the member is awake, and tells the group (:class:`~activator.groups.Group`), which keeps
the levels and measures the wakes. A command engine that sleeps through its server's calls is
woken by the group before its request is relayed: a slot on a replica where it sleeps is taken
on the waiting path (:meth:`MemberPool.acquire`), never the warm one.
"""

from __future__ import annotations

from typing import Any

from activator.groups import Group
from activator.pool import ModelPool, Replica, Ticket
from activator.states import PoolState, ReplicaState
from activator.tiered import Level
from contracts.stack import ModelSpec


class MemberPool:
    """One member of ``group``: a pool's face over the group's pool."""

    def __init__(self, group: Group, name: str, spec: ModelSpec) -> None:
        self.group = group
        self.name = name
        self.spec = spec
        self._pool = group.pool

    # the activator starts and stops the group; its members have nothing of their own to run
    def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def refuse_waiters(self) -> None:
        self._pool.refuse_waiters()

    @property
    def closing(self) -> bool:
        return self._pool.closing

    # ------------------------------------------------------------------ requests
    def try_acquire(self) -> Ticket | None:
        self.group.arrived(self.name)
        ticket = self._pool.try_acquire(self.group.awake_on(self.name))
        if ticket is not None and not self.group.serves_now(self.name, ticket.replica):
            self._pool.release(ticket)  # its engine must be woken first: :meth:`acquire`
            return None
        if ticket is not None:
            self.group.took(self.name, ticket)
        return ticket

    async def acquire(self, deadline_s: float | None = None) -> Ticket:
        self.group.arrived(self.name)
        timeout = self.spec.deadline_s if deadline_s is None else deadline_s
        ticket = await self._pool.acquire(timeout, self.group.awake_on(self.name))
        self.group.took(self.name, ticket)
        try:
            await self.group.wake_for(self.name, ticket, max(0.0, timeout - ticket.queued_s))
        except BaseException:  # not woken, or the client left: the slot goes back
            self.release(ticket, answered=False)
            raise
        return ticket

    def release(self, ticket: Ticket, *, answered: bool = True) -> None:
        self._pool.release(ticket)
        self.group.released(ticket, answered=answered)

    def suspect(self, replica: Replica) -> None:
        self._pool.suspect(replica)

    # ------------------------------------------------------------------ warm and sleep
    def warm(self, seconds: float, source: str, replicas: int = 1) -> None:
        self._pool.warm(seconds, source, replicas)

    def sleep(self, source: str = "the admin API") -> None:
        """Put this model to sleep (level disk) on the group's replicas; the others serve on."""
        self.group.tasks.spawn(
            self.group.sleep_member(self.name, Level.DISK, f"put to sleep by {source}"),
            name=f"sleep-{self.name}",
        )

    def learn(self, arrivals: list[float]) -> None:
        self.group.learn(self.name, arrivals)
        self._pool.learn(arrivals)

    # ------------------------------------------------------------------ state
    @property
    def pool(self) -> ModelPool:
        return self._pool

    @property
    def state(self) -> PoolState:
        """The group's pool's state, but ``unavailable`` while the group's replicas run and
        this model failed to load (or wake) on every one of them."""
        if self._pool.state is PoolState.READY and self.group.unavailable(self.name) is not None:
            return PoolState.UNAVAILABLE
        return self._pool.state

    @property
    def reason(self) -> str:
        failed = self.group.unavailable(self.name) if self._pool.state is PoolState.READY else None
        return self._pool.reason if failed is None else failed

    @property
    def start_failed(self) -> bool:
        """The group's last start failed, or this model failed on every ready replica."""
        return self._pool.start_failed or self.state is PoolState.UNAVAILABLE

    @property
    def replicas(self) -> list[Replica]:
        return self._pool.replicas

    @property
    def queued(self) -> int:
        return self._pool.queued

    @property
    def in_flight(self) -> int:
        return self.group.in_flight(self.name)

    def levels(self) -> dict[str, int]:
        """How many of the group's ready replicas hold this model at each level."""
        counted: dict[str, int] = {}
        for replica in self._pool.replicas:
            if replica.state is ReplicaState.READY:
                level = self.group.level(replica, self.name)
                counted[level] = counted.get(level, 0) + 1
        return counted

    def describe(self) -> dict[str, Any]:
        described = self._pool.describe()
        described.update(
            name=self.name, state=self.state, reason=self.reason, in_flight=self.in_flight
        )
        described.update(self.group.describe(self.name))
        return described


AnyPool = ModelPool | MemberPool  # what the activator finds under a model's name
