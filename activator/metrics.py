"""The activator's Prometheus metrics: the event log's live mirror.

Counters and histograms are updated as things happen; the gauges (queue depth, in flight,
replicas by state, model state) are read from the pools when Prometheus scrapes, so a request
pays for none of them. ``requests`` counts what the event log logs (requests that reached a
model's data path); ``refused`` counts what it does not: requests refused before any replica
(no token, a malformed or too big request, an unknown model or path, a full queue), by model
(empty when the request named no configured model) and by a reason from :data:`REASONS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from activator import errors
from activator.states import PoolState, ReplicaState

# a refusal's reason, by the error's type (its closest class here): one bounded label vocabulary
REASONS: dict[type[errors.ActivatorError], str] = {
    errors.Unauthorized: "unauthorized",
    errors.UnknownModel: "unknown_model",
    errors.NotFound: "not_found",
    errors.MethodNotAllowed: "method_not_allowed",
    errors.PayloadTooLarge: "too_large",
    errors.HeadersTooLarge: "headers_too_large",
    errors.RequestTimeout: "request_timeout",
    errors.BadRequest: "bad_request",
    errors.QueueFull: "queue_full",
    errors.Overloaded: "overloaded",
    errors.ShuttingDown: "shutting_down",
    errors.ModelUnavailable: "unavailable",
    errors.DeadlineExceeded: "deadline",
}


def reason_of(error: errors.ActivatorError) -> str:
    """The ``reason`` label of a refusal: its type's (or closest base's) in REASONS."""
    for cls in type(error).__mro__:
        reason = REASONS.get(cls)
        if reason is not None:
            return reason
    return "error"


REPLICA_STATES = tuple(ReplicaState)
MODEL_STATES = tuple(PoolState)


class ActivatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.cold_starts = Counter(
            "ember_activator_cold_starts",
            "Replicas started for the model",
            ["model"],
            registry=self.registry,
        )
        self.cold_start_seconds = Histogram(
            "ember_activator_cold_start_seconds",
            "From starting a replica to its /v2/health/ready",
            ["model"],
            buckets=(0.25, 0.5, 1, 2, 3, 5, 8, 13, 21, 34, 55, 90, 150, 300),
            registry=self.registry,
        )
        self.requests = Counter(
            "ember_activator_requests",
            "Requests by model and HTTP status",
            ["model", "code"],
            registry=self.registry,
        )
        # text generation, from the answers' own ``usage`` and the timing of their events
        self.prompt_tokens = Counter(
            "ember_activator_prompt_tokens",
            "Prompt tokens of the answered requests that said their usage",
            ["model"],
            registry=self.registry,
        )
        self.generation_tokens = Counter(
            "ember_activator_generation_tokens",
            "Completion tokens of the answered requests that said their usage",
            ["model"],
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "ember_activator_time_to_first_token_seconds",
            "A streamed answer's first event, from its hand-off to a replica (the queue, a cold "
            "start's included, is in ember_activator_queue_seconds)",
            ["model"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.inter_token = Histogram(
            "ember_activator_inter_token_latency_seconds",
            "The gaps between the pieces of a streamed answer as they passed through the activator "
            "(a replica writes an event a token: about the inter-token latency; pieces the network "
            "joined or split make it approximate)",
            ["model"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "ember_activator_queue_seconds",
            "Time a request waited for a replica",
            ["model"],
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.refused = Counter(
            "ember_activator_refused",
            "Requests refused before any replica (not in the event log), by model and reason",
            ["model", "reason"],
            registry=self.registry,
        )
        self.event_log_skipped = Counter(
            "ember_activator_event_log_skipped_lines",
            "Event log lines skipped at start: not JSON (a torn line) or not well-typed events",
            registry=self.registry,
        )

    def refuse(self, model: str, error: errors.ActivatorError) -> None:
        """Count a request refused before any replica (``model``: "" unless configured)."""
        self.refused.labels(model, reason_of(error)).inc()

    def watch(self, pools: Callable[[], Mapping[str, Any]]) -> None:
        """Read the gauges from ``pools()`` (name -> ModelPool) at every scrape."""
        self.registry.register(_PoolCollector(pools))

    def watch_warm_pool(self, status: Callable[[], tuple[int, int]]) -> None:
        """Read the local scaler's warm pool (processes ready, their RSS) at every scrape."""
        self.registry.register(_WarmPoolCollector(status))


class _WarmPoolCollector(Collector):
    def __init__(self, status: Callable[[], tuple[int, int]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        ready, rss = self.status()
        yield GaugeMetricFamily(
            "ember_activator_warm_pool_ready",
            "Standby interpreters ready to become a replica",
            value=ready,
        )
        yield GaugeMetricFamily(
            "ember_activator_warm_pool_rss_bytes",
            "Resident memory of the standby interpreters",
            value=rss,
        )


class _PoolCollector(Collector):
    def __init__(self, pools: Callable[[], Mapping[str, Any]]) -> None:
        self.pools = pools

    def collect(self) -> Iterator[Metric]:
        queue = GaugeMetricFamily(
            "ember_activator_queue_depth", "Requests waiting for a replica", labels=["model"]
        )
        flight = GaugeMetricFamily(
            "ember_activator_in_flight",
            "Requests handed to the model's replicas and not yet answered",
            labels=["model"],
        )
        replicas = GaugeMetricFamily(
            "ember_activator_replicas", "Replicas by state", labels=["model", "state"]
        )
        state = GaugeMetricFamily(
            "ember_activator_model_state",
            "1 for the model's current state (zero, starting, ready, draining; a group's "
            "model: unavailable when it failed on every replica)",
            labels=["model", "state"],
        )
        levels = GaugeMetricFamily(
            "ember_activator_model_replicas_at_level",
            "A group's model: the ready replicas where it is hot, or asleep at host or disk",
            labels=["model", "level"],
        )
        for name, pool in self.pools().items():
            at = getattr(pool, "levels", None)  # a group's member (activator.members)
            if at is not None:
                counted = at()
                for level in ("hot", "host", "disk"):
                    levels.add_metric([name, level], counted.get(level, 0))
            queue.add_metric([name], pool.queued)
            flight.add_metric([name], pool.in_flight)
            for rs in REPLICA_STATES:
                replicas.add_metric([name, rs], sum(1 for r in pool.replicas if r.state == rs))
            for ps in MODEL_STATES:
                state.add_metric([name, ps], 1 if pool.state == ps else 0)
        yield from (queue, flight, replicas, state, levels)
