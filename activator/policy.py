"""Keep-alive / pre-warm policies: after each invocation, how long to wait before loading the
model again (pre-warm window) and how long to keep it loaded then (keep-alive window).

* ``fixed:DURATION`` (``fixed:10m``, ``fixed:90s``): keep the model loaded that long after each
  request; the default, like Lambda's ~10 min or Baseten's 15.
* ``knative``: Knative's defaults, a 60 s stable window plus a 30 s scale-to-zero grace period.
* ``hybrid``: Shahrad et al., "Serverless in the Wild" (USENIX ATC 2020). Per model, a histogram
  of idle times (the gaps between invocations) over a 4-hour range in 1-minute bins. When it is
  representative (at least ``min_samples`` idle times, and the bins' coefficient of variation at
  least 2: the idle times are concentrated, not spread), unload after each invocation and load
  again at the 5th percentile minus 10%, keeping the model until the 99th percentile plus 10%.
  When most idle times fall beyond the range, the next one is predicted from the recent ones (the
  paper uses ARIMA; this uses their median, a simpler stand-in) and pre-warmed for. Otherwise it
  falls back to a conservative fixed keep-alive. One sample never counts as a pattern.
  Two guards of ours on top of the paper's rule (``hybrid-paper`` runs it without them): when the
  head is immediate (p5 under two minutes) the model stays loaded, but no longer than the fixed
  window; and a pre-warmed keep-alive over an hour means the idle times are spread, not a
  pattern, so the fixed window applies. On a one-day trace the paper's rule alone held models
  for hours after bursts and lost to fixed 10-minute keep-alive on warm-idle time
  (``scripts/bench_policy.py`` shows both).

Times are in seconds. Policies are pure functions of the model's past, so the simulator and the
activator can share them.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from contracts.stack import parse_policy_spec


@dataclass(frozen=True)
class Decision:
    prewarm_s: float  # unload after the invocation, load again this long after it (0: stay)
    keep_alive_s: float  # then keep it loaded this long
    why: str


class Policy(Protocol):
    @property
    def name(self) -> str: ...

    def decide(self, history: History) -> Decision: ...


@dataclass
class History:
    """What a policy may look at: a model's idle times so far (seconds, most recent last)."""

    idle_times: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    last: float | None = None
    observed: int = 0  # idle times seen so far, ever: what changes when the past does

    def observe(self, t: float) -> None:
        if self.last is not None and t > self.last:
            self.idle_times.append(t - self.last)
            self.observed += 1
        self.last = t if self.last is None else max(self.last, t)

    def arrived(self, t: float) -> None:
        """A request arrived at ``t`` (wall clock); a burst within a second counts once."""
        if self.last is None or t - self.last >= 1.0:
            self.observe(t)

    def learn(self, arrivals: list[float]) -> None:
        """Past arrival times (wall clock, in any order), e.g. from an event log."""
        for t in sorted(arrivals):
            self.arrived(t)


@dataclass(frozen=True)
class Fixed:
    keep_alive_s: float
    name: str = "fixed"

    def decide(self, history: History) -> Decision:
        return Decision(0.0, self.keep_alive_s, f"fixed {self.keep_alive_s:g}s")


@dataclass(frozen=True)
class Hybrid:
    name: str = "hybrid"
    range_s: float = 4 * 3600
    bin_s: float = 60
    min_samples: int = 5
    cv_threshold: float = 2.0
    fallback_s: float = 600  # the conservative fixed keep-alive
    margin: float = 0.10
    guards: bool = True
    max_window_s: float = 3600

    def decide(self, history: History) -> Decision:
        its = list(history.idle_times)
        if len(its) < self.min_samples:
            return Decision(0.0, self.fallback_s, f"{len(its)} idle times: too few, fixed")
        inside = [t for t in its if t < self.range_s]
        outside = [t for t in its if t >= self.range_s]
        if len(outside) > len(inside):
            predicted = statistics.median(outside[-5:])
            prewarm = predicted * (1 - 2 * self.margin)
            return Decision(
                prewarm, predicted * 4 * self.margin, f"idle times beyond range: ~{predicted:.0f}s"
            )
        bins = [0] * int(self.range_s // self.bin_s)
        for t in inside:
            bins[min(len(bins) - 1, int(t // self.bin_s))] += 1
        mean = sum(bins) / len(bins)
        cv = statistics.pstdev(bins) / mean if mean else 0.0
        if cv < self.cv_threshold:
            return Decision(0.0, self.fallback_s, f"histogram CV {cv:.2f} < 2: fixed")
        head = _percentile(inside, 5) * (1 - self.margin)
        tail = _percentile(inside, 99) * (1 + self.margin)
        # whole bins: load at the start of the head's bin, keep to the end of the tail's
        prewarm = math.floor(head / self.bin_s) * self.bin_s
        keep = math.ceil(tail / self.bin_s) * self.bin_s + self.bin_s - prewarm
        why = f"histogram CV {cv:.2f}: p5 {head:.0f}s, p99 {tail:.0f}s"
        if prewarm < 2 * self.bin_s:  # too soon to be worth unloading: stay loaded
            prewarm = 0.0
            keep = math.ceil(tail / self.bin_s) * self.bin_s + self.bin_s
            if self.guards and keep > self.fallback_s:
                return Decision(0.0, self.fallback_s, why + ", capped at the fixed window")
        elif self.guards and keep > self.max_window_s:
            return Decision(0.0, self.fallback_s, why + ": spread, fixed")
        return Decision(prewarm, keep, why)

    def head_tail(self, history: History) -> tuple[float, float] | None:
        """The histogram's prediction, when it is representative: the 5th percentile idle time
        minus the margin and the 99th plus it (seconds, not rounded to bins); None when there
        are too few idle times, most fall beyond the range, or they are spread (CV under 2)."""
        its = list(history.idle_times)
        inside = [t for t in its if t < self.range_s]
        if len(its) < self.min_samples or len(inside) * 2 < len(its):
            return None
        bins = [0] * int(self.range_s // self.bin_s)
        for t in inside:
            bins[min(len(bins) - 1, int(t // self.bin_s))] += 1
        mean = sum(bins) / len(bins)
        if not mean or statistics.pstdev(bins) / mean < self.cv_threshold:
            return None
        return (
            _percentile(inside, 5) * (1 - self.margin),
            _percentile(inside, 99) * (1 + self.margin),
        )


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


def parse_policy(text: str) -> Policy:
    """``fixed:10m`` | ``fixed:90s`` | ``knative`` | ``hybrid`` | ``hybrid-paper``."""
    spec = parse_policy_spec(text)
    if spec.kind == "knative":
        return Fixed(90.0, name="knative")
    if spec.kind == "hybrid":
        return Hybrid()
    if spec.kind == "hybrid-paper":
        return Hybrid(name="hybrid-paper", guards=False)
    assert spec.keep_alive_s is not None
    return Fixed(spec.keep_alive_s, name=text)
