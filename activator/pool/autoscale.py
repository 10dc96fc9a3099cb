"""Demand to replicas: how many a model needs now, and which idle ones to let go.

Demand (in flight + queued) over ``target`` per replica starts replicas, up to ``max_replicas``:
each missing replica is started once, however many requests arrive (single flight), because a
replica starting counts as one there. ``min_replicas`` and an open warm window hold a floor.
Every ``tick_s`` the controller lets the longest-idle replicas beyond the need go once they have
been idle (and the model unasked) for the keep-alive, which the policy (activator/policy.py)
picks per idle period; a policy that predicts the next call unloads at once and schedules a
pre-warm just before it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from activator.events import EventLog
from activator.policy import Decision, Fixed, History, Policy, parse_policy
from activator.pool.clock import Clock, Timer
from activator.pool.prewarm import WarmWindows
from activator.pool.queue import AdmissionQueue
from activator.pool.replicas import Replica, ReplicaSet
from activator.states import ReplicaState
from contracts.events import PolicyDecision
from contracts.stack import ModelSpec


class Autoscaler:
    def __init__(
        self,
        spec: ModelSpec,
        replicas: ReplicaSet,
        queue: AdmissionQueue[Replica],
        windows: WarmWindows,
        events: EventLog,
        *,
        clock: Clock,
        warm: Callable[[float, str], None],
        policy: Policy | None = None,
    ) -> None:
        self.spec, self.name = spec, spec.name
        self.replicas, self.queue, self.windows = replicas, queue, windows
        self.events, self.clock = events, clock
        self._warm = warm
        if policy is None:
            policy = (
                Fixed(spec.keep_alive_s) if spec.policy == "fixed" else parse_policy(spec.policy)
            )
        self.policy: Policy = policy
        self.history = History()  # arrival times (wall clock), bursts coalesced to 1 s
        self.keep_alive_s = spec.keep_alive_s
        self.last_request = clock.monotonic()
        self.closed = False
        self.prewarm_timer: Timer | None = None  # the policy's next pre-warm
        self._decided_at = -1  # history.observed when the policy last decided
        self._last_decision: Decision | None = None
        self._monotonic, self._wall = clock.monotonic, clock.time

    def arrived(self) -> None:
        """A request came (the pool's fast path: keep it cheap)."""
        self.last_request = self._monotonic()
        self.history.arrived(self._wall())

    def learn(self, arrivals: list[float]) -> None:
        """Seed the policy's history with past arrival times (wall clock), e.g. an event log."""
        self.history.learn(arrivals)

    def close(self) -> None:
        """Start nothing more; cancel a scheduled pre-warm."""
        self.closed = True
        if self.prewarm_timer is not None:
            self.prewarm_timer.cancel()
            self.prewarm_timer = None

    # ------------------------------------------------------------------ demand
    def desired(self) -> int:
        demand = self.replicas.in_flight() + len(self.queue)
        want = math.ceil(demand / self.spec.target) if demand else 0
        floor = max(self.spec.min_replicas, min(self.windows.floor(), self.spec.max_replicas))
        return max(floor, min(self.spec.max_replicas, want))

    def scale(self) -> None:
        """Start replicas up to the demand (each missing one once)."""
        if self.closed:
            return
        missing = self.desired() - self.replicas.active()
        if missing > 0:
            self.replicas.start(missing, self._why())

    def _why(self) -> str:
        """Why replicas are wanted now: requests, an open warm window, or ``min_replicas``."""
        demand = self.replicas.in_flight() + len(self.queue)
        if demand and math.ceil(demand / self.spec.target) > self.replicas.active():
            if demand == 1:
                return "a request"
            return f"{demand} requests, {self.spec.target:g} per replica"
        if self.windows.floor() > self.spec.min_replicas:
            return self.windows.why()
        return f"min_replicas is {self.spec.min_replicas}"

    # ------------------------------------------------------------------ keep-alive
    async def run(self, tick_s: float) -> None:
        """The controller: :meth:`tick` every ``tick_s``, until cancelled."""
        while True:
            await self.clock.sleep(tick_s)
            self.tick()

    def tick(self) -> None:
        """Start what demand needs; drain idle replicas beyond it once the keep-alive is over."""
        self.scale()
        now = self.clock.monotonic()
        members = self.replicas.members
        ready = [r for r in members if r.state is ReplicaState.READY]
        surplus = (
            len(ready) + sum(r.state is ReplicaState.STARTING for r in members) - self.desired()
        )
        if surplus <= 0 or self.queue:
            return
        # the longest idle replica goes first, once idle past keep-alive
        idle = sorted((r for r in ready if r.in_flight == 0), key=lambda r: r.idle_since)
        keep_alive = self._decide()
        for replica in idle[:surplus]:
            if now - max(replica.idle_since, self.last_request) >= keep_alive:
                self.replicas.drain(replica, "keep-alive expired", self._keep_alive_detail())

    def _keep_alive_detail(self) -> str:
        policy = self.policy.name
        if self.prewarm_timer is not None:
            return f"the {policy} policy unloads it until its pre-warm"
        return f"idle {self.keep_alive_s:g}s, {policy} policy"

    def _decide(self) -> float:
        """The policy's keep-alive for this idle period (and its pre-warm, scheduled)."""
        if self.history.observed == self._decided_at or self.history.last is None:
            return self.keep_alive_s
        self._decided_at = self.history.observed
        decision = self.policy.decide(self.history)
        if self.prewarm_timer is not None:
            self.prewarm_timer.cancel()
            self.prewarm_timer = None
        if decision.prewarm_s > 0:
            # unload now; load again just before the next call is expected
            self.keep_alive_s = 0.0
            delay = max(0.0, self.history.last + decision.prewarm_s - self.clock.time())
            self.prewarm_timer = self.clock.call_later(
                delay, self._warm, decision.keep_alive_s, "policy"
            )
        else:
            self.keep_alive_s = decision.keep_alive_s
        if decision != self._last_decision:
            self._last_decision = decision
            self.events.emit(
                PolicyDecision(
                    model=self.name,
                    policy=self.policy.name,
                    prewarm_s=decision.prewarm_s,
                    keep_alive_s=decision.keep_alive_s,
                    why=decision.why,
                )
            )
        return self.keep_alive_s
