"""``ember cost-report``: what scale to zero cost and saved, from the activator's event log.

Per model and in total: requests, cold starts and the latency they added (their queue wait,
p50/p99), replica time split into busy (serving at least one request), warm-idle, loading
(start to ready) and pre-warmed-but-unused (replicas a warm window started that served
nothing), the cost of that time, the cost per 1,000 requests, what one always-on replica would
have cost over the same span, and the saving (a loss when scale to zero cost more, with why).
For text generation and embedding models, whose ``request`` events carry the tokens their answers
said they used: the prompt and completion tokens, the cost per million of them, and the time to
a streamed answer's first event (``ttft_s``, p50/p99). A negative token count or time is not
counted (the codec already skips a line whose token field is not an integer).
The log is read with its rotated files (``events.jsonl.N``, oldest first); lines that are not
well-typed events are skipped and the report says how many.

A model is billed as a GPU when its events name a ``gpu_type`` (or a ``cuda`` device), else as a
CPU. Its price per replica-hour, first found of: ``--price MODEL=USD`` (per replica-hour); its
config's ``price_per_hour`` (carried in its ``replica_starting`` events); for a GPU model its
``gpu_type`` in :data:`PRICES`, overridable with ``--price TYPE=USD``; for a CPU model
``--price cpu=USD`` per core-hour times its cores (``cpus`` in its events, else 1, said in a
note). A model with none costs 0 and the report warns. Billing: each replica's time is rounded up
to ``granularity_s`` with a ``minimum_s`` floor, as clouds bill instances.

A group (models sharing replicas, :mod:`analysis.cost_groups`) is billed once, in its own row:
its replicas' time at its price (found as a model's, the stack config's standing in for events
that carry none, and failing all, its members' ``--price``, the highest), against one always-on
replica for the group. Its members' rows follow it, with their requests and cold starts but no
replica time or cost of their own, and they need no price. What members saved by sleeping on the
group's replicas is :mod:`analysis.cost_sleep`; the text is :mod:`analysis.cost_markdown`, the
HTML page :mod:`analysis.report_html` (it needs the ``report`` extra).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from activator.errors import ConfigError
from activator.events import Skipped, iter_events, log_files
from analysis.cost_groups import GroupConfig, membership
from analysis.cost_sleep import Sleep, sleep_or_wake, sleep_row, sleep_total
from contracts.events import (
    ActivatorStart,
    ActivatorStop,
    Event,
    Prewarm,
    ReplicaEvent,
    ReplicaFailed,
    ReplicaReady,
    ReplicaStarting,
    ReplicaStopped,
    Request,
    Wake,
)
from contracts.events import Sleep as SleepEvent

# On-demand USD per GPU-hour (typical public cloud list prices, late 2025); override with --price.
PRICES = {"H100": 6.88, "A100-80GB": 3.43, "A100": 3.43, "L4": 0.71, "T4": 0.53}
# the --price key of the per-core-hour price of CPU models
CPU = "cpu"
PHASES = ("busy", "warm_idle", "loading", "prewarmed_unused")
# what a member row has none of: its group's row holds them
_GROUPS_OWN = (
    "cost_usd",
    "cost_per_1000_requests_usd",
    "always_on_cost_usd",
    "saving_usd",
    "saving_pct",
    "cost_per_million_tokens_usd",
)


@dataclass
class _Replica:
    id: int
    started: float
    ready: float | None = None
    stopped: float | None = None
    prewarmed: bool = False
    busy: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class _Model:
    name: str
    group: str | None = None  # a member: the group whose replicas serve it
    is_group: bool = False  # a group: its replicas serve its members
    gpu_type: str | None = None
    device: str | None = None
    cpus: float | None = None
    price: float | None = None
    # by (run, number): each run of the activator numbers its replicas from 1
    replicas: dict[tuple[int, Any], _Replica] = field(default_factory=dict)
    requests: int = 0
    errors: int = 0
    cold: list[float] = field(default_factory=list)  # queue wait of each cold request
    prompt_tokens: int = 0  # over the requests whose answers said their usage
    completion_tokens: int = 0
    with_usage: int = 0  # requests whose events carry their tokens
    ttft: list[float] = field(default_factory=list)  # a streamed answer's first event, seconds
    warm_until: float = 0.0
    arrivals: list[float] = field(default_factory=list)  # a group's: its members' too
    sleep: Sleep | None = None  # None: it never slept nor woke

    @property
    def resource(self) -> str:
        gpu = self.gpu_type or (self.device or "").startswith("cuda")
        return "GPU" if gpu else "CPU"


def read_log(path: Path) -> tuple[list[Event], int]:
    """The events of the log at ``path`` and of its rotated files (oldest first), and how many
    lines were skipped: not JSON (a torn last line after a crash) or not well-typed events."""
    if not log_files(path):
        raise ConfigError(f"cannot read the event log {path}: no such file")
    skipped = Skipped()
    events = list(iter_events(path, skipped))
    if skipped.unreadable:  # a report that leaves out a file would be wrong, not partial
        raise ConfigError(f"cannot read the event log: {'; '.join(skipped.unreadable)}")
    if not events:
        raise ConfigError(f"{path} holds no Ember events")
    return events, skipped.lines


def report(
    events: list[Event],
    *,
    prices: dict[str, float] | None = None,
    granularity_s: float = 1.0,
    minimum_s: float = 60.0,
    skipped: int = 0,
    groups: Mapping[str, GroupConfig] | None = None,
) -> dict[str, Any]:
    """The report as a JSON-able dict; ``prices`` maps GPU types, ``cpu`` and model (or group)
    names; ``groups``: the stack config's, where the report was given one."""
    table = {**PRICES, **(prices or {})}
    for key, price in table.items():
        if price < 0 or not math.isfinite(price):
            raise ConfigError(f"price for {key} must be a non-negative number, got {price}")
    if granularity_s <= 0 or minimum_s < 0:
        raise ConfigError("billing granularity must be > 0 and the minimum >= 0")
    config = dict(groups or {})
    events = sorted(events, key=lambda e: e.ts)
    start, end = events[0].ts, events[-1].ts
    models, runs = _replay(events, membership(events, config))
    _configured(models, config)
    billing = {"granularity_s": granularity_s, "minimum_s": minimum_s}
    rows: list[dict[str, Any]] = []
    for m in _ordered(models):
        if m.group is None:
            rows.append(_model_row(m, models, table, (start, end), billing))
        else:
            rows.append(_member_row(m, models[m.group], rows, table))
        rows[-1]["sleep"] = sleep_row(m.sleep, rows[-1]["sleep_price"], end)
        del rows[-1]["sleep_price"]
    billed = [r for r in rows if r["kind"] != "member"]
    warnings = [_unpriced(r) for r in billed if r["price_per_hour"] is None]
    notes = [
        f"{r['model']} is priced as 1 core: its events carry no CPU count (cpus)"
        for r in billed
        if r["price_source"] == "cpu" and r["cpus"] is None
    ]
    if runs.crashed:
        notes.append(
            f"{runs.crashed} run(s) of the activator ended without stopping (a crash or a kill): "
            f"{runs.replicas_closed} replica(s) and {runs.sleeps_closed} sleep(s) they left open "
            "are counted to that run's last event"
        )
    if skipped:
        notes.append(
            f"{skipped} unreadable line(s) skipped: not JSON (a torn last line after a crash?) "
            "or not well-typed events"
        )
    sleeps = {m.name: m.sleep for m in models.values() if m.sleep is not None}
    return {
        "start_ts": start,
        "end_ts": end,
        "span_s": end - start,
        "billing": billing,
        "runs": {
            "count": runs.count,
            "closed_at_last_event": runs.crashed,
            "replicas_closed": runs.replicas_closed,
            "sleeps_closed": runs.sleeps_closed,
        },
        "total": {**_total(billed), "sleep": sleep_total(sleeps, rows, end - start)},
        "models": rows,
        "warnings": warnings,
        "notes": notes,
        "timeline": {r["model"]: _timeline(models[r["model"]], start, end) for r in billed},
    }


def _unpriced(row: dict[str, Any]) -> str:
    """The warning for a model (or group) without a price, naming what would price it."""
    if row["resource"] == "GPU":
        flag = f"--price {row['gpu_type'] or row['model']}=USD_PER_HOUR"
    else:
        flag = f"--price {row['model']}=USD_PER_HOUR, or --price cpu=USD_PER_CORE_HOUR"
    config = "its members' model configs" if row["kind"] == "group" else "its model config"
    return (
        f"no price for {row['model']}: its cost shows as $0 "
        f"(set price_per_hour in {config}, or {flag})"
    )


@dataclass
class _Runs:
    """The activator's runs as the log marks them (``activator_start`` / ``activator_stop``)."""

    count: int = 0  # runs begun (0: a log written before runs were marked)
    crashed: int = 0  # runs that ended with no stop: closed at their last event
    replicas_closed: int = 0  # open replicas of those runs, billed to their run's last event
    sleeps_closed: int = 0  # open sleeps of those runs, ended at their run's last event


def _replay(events: list[Event], member_of: dict[str, str]) -> tuple[dict[str, _Model], _Runs]:
    """Each model's replicas, requests and sleeps, and the runs. A replica is known by its run
    and its number (each run numbers its replicas from 1)."""
    models: dict[str, _Model] = {}
    runs = _Runs()
    run_open = False  # a run began and has not stopped
    last_ts: float | None = None  # the last event of the run going on

    def model(name: str) -> _Model:
        if name not in models:
            group = member_of.get(name)
            if group is not None:
                model(group).is_group = True  # a group's row comes before its members'
            models[name] = _Model(name, group=group)
        return models[name]

    for e in events:
        if isinstance(e, ActivatorStart | ActivatorStop):
            if run_open and last_ts is not None and isinstance(e, ActivatorStart):
                runs.crashed += 1  # the run before ended without its stop
                replicas, sleeps = _close_run(models, last_ts)
                runs.replicas_closed += replicas
                runs.sleeps_closed += sleeps
            elif isinstance(e, ActivatorStop):  # its replicas stopped first: nothing left open
                _close_run(models, e.ts)
            runs.count += isinstance(e, ActivatorStart)
            run_open = isinstance(e, ActivatorStart)
            last_ts = None
            continue
        last_ts = e.ts
        rid = (runs.count, e.replica if isinstance(e, ReplicaEvent) else None)
        m = model(e.model)
        pool = models[m.group] if m.group is not None else m  # whose replicas serve m
        if isinstance(e, ReplicaStarting):
            m.gpu_type = e.gpu_type or m.gpu_type
            m.device = e.device or m.device
            if e.price_per_hour is not None:
                m.price = float(e.price_per_hour)
            if e.cpus is not None:
                m.cpus = float(e.cpus)
            m.replicas[rid] = _Replica(e.replica, e.ts, prewarmed=m.warm_until > e.ts)
        elif isinstance(e, ReplicaReady) and rid in m.replicas:
            m.replicas[rid].ready = e.ts
        elif isinstance(e, ReplicaStopped | ReplicaFailed):
            if rid in m.replicas:
                m.replicas[rid].stopped = e.ts
            # the members asleep on that replica (the group's pool is named after the group)
            for member in models.values():
                if member.sleep is not None:
                    member.sleep.end((e.model, rid), e.ts)
        elif isinstance(e, SleepEvent | Wake):
            group = models.get(str(e.group), _Model(""))
            up = group.replicas.get(rid)
            m.sleep = sleep_or_wake(
                m.sleep, e, (str(e.group), rid), stopped=None if up is None else up.stopped
            )
        elif isinstance(e, Prewarm):  # a member's warm window warms its group's replicas
            pool.warm_until = max(pool.warm_until, float(e.until or e.ts))
        elif isinstance(e, Request):
            m.requests += 1
            m.arrivals.append(float(e.arrival or e.ts))
            if pool is not m:
                pool.arrivals.append(m.arrivals[-1])
            if e.status >= 500:
                m.errors += 1
            if e.cold:
                m.cold.append(float(e.queue_s or 0.0))
            tokens = request_tokens(e)
            if tokens is not None:
                m.prompt_tokens += tokens[0]
                m.completion_tokens += tokens[1]
                m.with_usage += 1
            if e.ttft_s is not None and e.ttft_s >= 0:
                m.ttft.append(float(e.ttft_s))
            replica = pool.replicas.get(rid)
            if replica is not None and e.start is not None and e.end is not None:
                replica.busy.append((float(e.start), float(e.end)))
    return models, runs


def request_tokens(e: Request) -> tuple[int, int] | None:
    """A request's prompt and completion tokens (a field left off counts 0), or None: its event
    carries neither, or one that is not a count (negative: a hand-edited or foreign line)."""
    fields = (e.prompt_tokens, e.completion_tokens)
    if fields == (None, None) or any(t is not None and t < 0 for t in fields):
        return None
    return e.prompt_tokens or 0, e.completion_tokens or 0


def _close_run(models: dict[str, _Model], ts: float) -> tuple[int, int]:
    """End what a run left open at ``ts``: its replicas stop, its sleeps end. How many of
    each were open."""
    replicas = sleeps = 0
    for m in models.values():
        for replica in m.replicas.values():
            if replica.stopped is None:
                replica.stopped = max(ts, replica.started)
                if replica.ready is not None and replica.ready > replica.stopped:
                    replica.ready = replica.stopped
                replicas += 1
        if m.sleep is not None:
            for key in list(m.sleep.asleep):
                m.sleep.end(key, ts)
                sleeps += 1
    return replicas, sleeps


def _configured(models: dict[str, _Model], config: Mapping[str, GroupConfig]) -> None:
    """What the stack config says of a group, where its events do not say it."""
    for name, g in config.items():
        m = models.get(name)
        if m is None:
            continue
        m.is_group = True
        m.gpu_type = m.gpu_type or g.gpu_type
        m.device = m.device or g.device
        m.price = m.price if m.price is not None else g.price_per_hour
        m.cpus = m.cpus if m.cpus is not None else g.cpus


def _ordered(models: dict[str, _Model]) -> list[_Model]:
    """Models and groups in order of appearance, each group followed by its members."""
    out = []
    for m in models.values():
        if m.group is None:
            out += [m, *(x for x in models.values() if x.group == m.name)]
    return out


def _price(
    m: _Model, table: dict[str, float], members: list[str]
) -> tuple[float | None, str | None]:
    """A model's (or group's) USD per replica-hour and where it came from (None, None:
    unpriced). A group priced by none of these: its members' ``--price``, the highest (one
    replica serves them all), as the stack prices a group from its members' configs."""
    if m.name in table:
        return table[m.name], "--price"
    if m.price is not None:
        return m.price, "config"
    if m.resource == "GPU" and m.gpu_type in table:
        return table[m.gpu_type], "gpu_type"
    if m.resource == "CPU" and CPU in table:
        return table[CPU] * (m.cpus or 1.0), "cpu"
    priced = [table[x] for x in members if x in table]
    if priced:
        return max(priced), "members"
    return None, None


def _union(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Seconds covered by ``intervals`` clipped to ``[lo, hi]``."""
    total, cursor = 0.0, lo
    for a, b in sorted(intervals):
        a, b = max(a, cursor), min(b, hi)
        if b > a:
            total += b - a
            cursor = b
    return total


def _p50_p99(values: list[float]) -> tuple[float | None, float | None]:
    """The median and the 99th percentile (nearest rank) of ``values``; None, None: none."""
    if not values:
        return None, None
    ordered = sorted(values)
    p99 = ordered[min(len(ordered), math.ceil(0.99 * len(ordered))) - 1]
    return statistics.median(ordered), p99


def _requests(ms: list[_Model]) -> dict[str, Any]:
    """Requests, errors and cold starts of ``ms`` together (a group's: its members'), and the
    tokens and time to first token of those whose events carry them."""
    requests = sum(m.requests for m in ms)
    cold = [w for m in ms for w in m.cold]
    p50, p99 = _p50_p99(cold)
    ttft_p50, ttft_p99 = _p50_p99([s for m in ms for s in m.ttft])
    with_usage = sum(m.with_usage for m in ms)
    tokens = {
        "prompt": sum(m.prompt_tokens for m in ms),
        "completion": sum(m.completion_tokens for m in ms),
        "requests_with_usage": with_usage,
    }
    return {
        "requests": requests,
        "errors": sum(m.errors for m in ms),
        "cold_starts": len(cold),
        "cold_start_rate": len(cold) / requests if requests else 0.0,
        "cold_added_latency_p50_s": p50,
        "cold_added_latency_p99_s": p99,
        "tokens": tokens if with_usage else None,
        "ttft_p50_s": ttft_p50,
        "ttft_p99_s": ttft_p99,
    }


def per_million(cost: float, tokens: dict[str, int] | None) -> float | None:
    """USD per million tokens, prompt and completion together (None: no tokens)."""
    count = 0 if tokens is None else tokens["prompt"] + tokens["completion"]
    return round(cost / count * 1e6, 6) if count else None


def _model_row(
    m: _Model,
    models: dict[str, _Model],
    table: dict[str, float],
    span: tuple[float, float],
    billing: dict[str, float],
) -> dict[str, Any]:
    """A model's row, or a group's (its replicas, its members' requests)."""
    start, end = span
    members = [x for x in models.values() if x.group == m.name]
    price, source = _price(m, table, [x.name for x in members])
    step, minimum = billing["granularity_s"], billing["minimum_s"]
    busy = idle = loading = unused = billed = rounded = lived = 0.0
    for r in m.replicas.values():
        stopped = r.stopped if r.stopped is not None else end
        ready = r.ready if r.ready is not None else stopped
        loading += ready - r.started
        up = max(0.0, stopped - ready)
        served = _union(r.busy, ready, stopped)
        if r.prewarmed and not r.busy:
            unused += up
        else:
            busy += served
            idle += up - served
        life = stopped - r.started
        lived += life
        rounded += math.ceil(life / step - 1e-9) * step
        billed += max(minimum, math.ceil(life / step - 1e-9) * step)
    rate = (price or 0.0) / 3600
    counts = _requests([m, *members])
    row = {
        "model": m.name,
        "kind": "group" if m.is_group else "model",
        "group": None,
        "members": [x.name for x in members],
        "resource": m.resource,
        "gpu_type": m.gpu_type,
        "cpus": m.cpus,
        "price_per_hour": price,
        "price_source": source,
        **counts,
        "replica_starts": len(m.replicas),
        "replica_seconds": {
            "busy": busy,
            "warm_idle": idle,
            "loading": loading,
            "prewarmed_unused": unused,
            "billed": billed,
        },
        **_money(billed * rate, (end - start) * rate, counts["requests"]),
        "cost_per_million_tokens_usd": per_million(billed * rate, counts["tokens"]),
        "loss_reason": None,
        "sleep_price": price,
    }
    if row["saving_usd"] < 0:
        # the loss in replica-seconds, in three parts: name the largest
        parts = {
            f"the {minimum:g} s billing minimum per replica start": billed - rounded,
            "it ran more than one replica at a time (always-on is one)": lived - (end - start),
            f"billing in whole {step:g} s steps": rounded - lived,
        }
        row["loss_reason"] = max(parts, key=lambda why: parts[why])
    return row


def _member_row(
    m: _Model, group: _Model, rows: list[dict[str, Any]], table: dict[str, float]
) -> dict[str, Any]:
    """A group member's row: its requests; its replica time and cost are in its group's row.
    Its sleeps are priced at its own ``--price`` where given, else at its group's."""
    group_row = next(r for r in rows if r["model"] == group.name)
    return {
        "model": m.name,
        "kind": "member",
        "group": group.name,
        "members": [],
        "resource": group_row["resource"],
        "gpu_type": group_row["gpu_type"],
        "cpus": group_row["cpus"],
        "price_per_hour": table.get(m.name),
        "price_source": "--price" if m.name in table else None,
        **_requests([m]),
        "replica_starts": 0,
        "replica_seconds": None,
        **dict.fromkeys(_GROUPS_OWN),
        "loss_reason": None,
        "sleep_price": table.get(m.name, group_row["price_per_hour"]),
    }


def _money(cost: float, always_on: float, requests: int) -> dict[str, Any]:
    saving = always_on - cost
    return {
        "cost_usd": round(cost, 6),
        "cost_per_1000_requests_usd": round(cost / requests * 1000, 6) if requests else None,
        "always_on_cost_usd": round(always_on, 6),
        "saving_usd": round(saving, 6),
        "saving_pct": saving / always_on * 100 if always_on > 0 else None,
    }


def _total(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The models' and groups' rows summed (a group's row holds its members' requests)."""
    requests = sum(r["requests"] for r in rows)
    cold = [r for r in rows if r["cold_starts"]]
    seconds = {k: sum(r["replica_seconds"][k] for r in rows) for k in (*PHASES, "billed")}
    used = [r for r in rows if r["tokens"] is not None]
    tokens = {k: sum(r["tokens"][k] for r in used) for k in ("prompt", "completion")}
    tokens["requests_with_usage"] = sum(r["tokens"]["requests_with_usage"] for r in used)
    streamed = [r for r in rows if r["ttft_p50_s"] is not None]
    return {
        "requests": requests,
        "errors": sum(r["errors"] for r in rows),
        "cold_starts": sum(r["cold_starts"] for r in rows),
        "cold_start_rate": sum(r["cold_starts"] for r in rows) / requests if requests else 0.0,
        # the worst model's: percentiles of different models' waits do not add up
        "cold_added_latency_p50_s": max(
            (r["cold_added_latency_p50_s"] for r in cold), default=None
        ),
        "cold_added_latency_p99_s": max(
            (r["cold_added_latency_p99_s"] for r in cold), default=None
        ),
        "replica_starts": sum(r["replica_starts"] for r in rows),
        "replica_seconds": seconds,
        **_money(
            sum(r["cost_usd"] for r in rows), sum(r["always_on_cost_usd"] for r in rows), requests
        ),
        "tokens": tokens if used else None,
        # the cost of the models (and groups) that counted tokens, over all their tokens
        "cost_per_million_tokens_usd": per_million(sum(r["cost_usd"] for r in used), tokens),
        # the worst model's, as for cold starts
        "ttft_p50_s": max((r["ttft_p50_s"] for r in streamed), default=None),
        "ttft_p99_s": max((r["ttft_p99_s"] for r in streamed), default=None),
    }


def _timeline(m: _Model, start: float, end: float, buckets: int = 60) -> dict[str, Any]:
    """Replicas up and requests per second, in ``buckets`` steps over the log's span."""
    width = max((end - start) / buckets, 1e-9)
    replicas, rate = [], []
    for i in range(buckets):
        lo, hi = start + i * width, start + (i + 1) * width
        up = sum(
            1
            for r in m.replicas.values()
            if r.started < hi and (r.stopped if r.stopped is not None else end) > lo
        )
        replicas.append(float(up))
        rate.append(sum(1 for a in m.arrivals if lo <= a < hi) / width)
    return {"start_ts": start, "bucket_s": width, "replicas": replicas, "requests_per_s": rate}
