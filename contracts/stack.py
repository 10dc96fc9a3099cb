"""``ember.yaml``: the one-machine stack (and the activator's settings on Knative).

::

    activator:                     # all optional
      events: .ember/events.jsonl  # the event log (relative to this file; null: none)
      event_log_max_bytes: 64MiB   # past this the log is rotated (events.jsonl.1, .2, ...)
      event_log_keep: 4            # rotated files kept (0: none); the oldest go
      keep_alive_s: 60             # idle time before a model's replicas drain and stop
      queue_size: 1000             # per model; past it: 503 + Retry-After
      deadline_s: 120              # how long a request may wait for a replica; then 504
      startup_timeout_s: 300       # a replica not ready by then is stopped, its waiters 504
      grace_period_s: 30           # drain time for a stopping replica (then SIGKILL)
      request_timeout_s: 300       # a replica holding a request longer: the client gets 504
      admin_token_env: EMBER_ADMIN_TOKEN   # where the admin API's bearer token comes from
      admin_token_file: null       # or a file of tokens, one per line (rotation: list both)
      api_token_env: EMBER_API_TOKEN       # bearer token(s) for /v2 and /metrics; unset: open
      api_token_file: null
      max_header_bytes: 65536      # request line + headers; past it: 431
      max_request_bytes: 67108864
      max_buffered_bytes: 536870912  # request bodies held at once, all connections; past it: 503
      header_timeout_s: 10         # a request's head must arrive whole within this; else 408
      body_timeout_s: 30           # longest pause while a body arrives; else 408
      idle_timeout_s: 75           # a kept-alive connection with no request is closed after this
      cache_dir: /var/cache/ember  # the replicas' local weight tier
      warm_pool: 0                 # standby interpreters for faster local starts (0: none)
    models:
      - config: mlp/model.yaml     # a runtime model config (one model), relative to this file
        min_replicas: 0
        max_replicas: 2
        container_concurrency: 16  # requests one replica takes at once (default: the model
                                   # config's, else 8)
        target: 8                  # in-flight requests per replica before another starts
        keep_alive_s: 30           # overrides the model config's, which overrides the activator's
        queue_size: 100
        deadline_s: 60
    groups:                        # several models sharing replicas (each serves all of them)
      - name: shared               # a Knative Service's name too: lowercase, digits, '-'
        models:
          - config: mlp/model.yaml
          - config: minilm/model.yaml
            keep_alive_s: 120      # a member may set keep_alive_s, queue_size and deadline_s
        min_replicas: 0            # the rest is the group's: replicas, concurrency, target
        max_replicas: 1
        device_memory_budget: 2GiB # each replica's (ember serve --device-memory-budget)
        host_memory_budget: 8GiB   # past it, models put away sleep at disk, not host
        policy: tiered             # fixed: awake until the replicas go; tiered: each model
                                   # sleeps at host, then disk, as the tiered policy plans
        wake: {host: 0.05, disk: 0.15}   # tiered: wake times to assume until measured
        host_hold_s: 20m           # tiered: the longest a model sleeps at host, then disk
        disk_hold_s: 1h

The activator reads only what it needs from each model config, with a YAML parser: its ``name``
and ``version``, ``container_concurrency`` and ``keep_alive_s`` (a model entry here overrides
them; they override the activator's), ``gpu_type``, ``price_per_hour``, ``cpus``, ``device``,
``source``, ``prewarm`` windows, a command engine's ``engine``, ``health``, ``sleep`` and ``wake``
(:mod:`contracts.engine_calls`; with them it may be a group's only member), and ``handler``,
``inputs``, ``outputs`` and ``max_batch_size`` for the model's metadata
(:mod:`contracts.metadata`). The replicas it starts run ``ember serve --config`` on the file
itself. Unknown keys are errors, each told on its own line
with the closest valid key (:mod:`contracts.configfile`); every ``*_s`` duration is seconds or
takes units: ``90s``, ``10m``, ``1h30m`` (:mod:`contracts.durations`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from contracts.configfile import explain, looks_like_model_config, looks_like_stack, read_config
from contracts.durations import MissingUnit, Seconds, WholeSeconds, parse_duration
from contracts.engine_calls import EngineCalls, check_calls
from contracts.errors import ConfigError
from contracts.knative import EventsVolume, GpuNodes, WeightTier
from contracts.logs import LogLevel
from contracts.metadata import ModelMetadata, declared_metadata
from contracts.names import valid_model_name
from contracts.schedule import Window, parse_window
from contracts.sizes import parse_bytes


def _size(value: Any) -> Any:
    """A size as written (``2GiB``, ``95MB``, or a number of bytes) in bytes."""
    if isinstance(value, str):
        try:
            return parse_bytes(value)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
    return value


ByteSize = Annotated[int, BeforeValidator(_size), Field(gt=0)]


# the event log of an ember.yaml that names none, relative to it (the cost report reads it)
DEFAULT_EVENTS = Path(".ember/events.jsonl")


class ActivatorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    events: Path | None = None
    # the event log's bound: rotated past event_log_max_bytes (a size: 64MiB, or bytes), with
    # event_log_keep rotated files kept, so it holds at most (keep + 1) x max_bytes
    event_log_max_bytes: ByteSize = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    event_log_keep: int = Field(default=4, ge=0, le=100)
    # durations (every *_s key): seconds, or with units (90s, 10m, 1h30m): contracts.durations
    keep_alive_s: Seconds = Field(default=60.0, ge=0)
    queue_size: int = Field(default=1000, ge=0)
    deadline_s: Seconds = Field(default=120.0, gt=0)
    startup_timeout_s: Seconds = Field(default=300.0, gt=0)
    grace_period_s: Seconds = Field(default=30.0, ge=0)
    # how long a replica may hold a relayed request before the client gets 504
    request_timeout_s: Seconds = Field(default=300.0, gt=0)
    policy: str = "fixed"  # the keep-alive/pre-warm policy of models that name none
    admin_token_env: str = "EMBER_ADMIN_TOKEN"
    admin_token_file: Path | None = None
    api_token_env: str = "EMBER_API_TOKEN"
    api_token_file: Path | None = None
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    max_request_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    # request bodies the front door holds at once (parsed, queued, being relayed), over all
    # connections; a request that would take it past this is answered 503 before it is read
    max_buffered_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    # client reads: the head within header_timeout_s of its first byte (of the connection
    # opening, for its first request); no pause in a body longer than body_timeout_s (408);
    # a kept-alive connection idle for idle_timeout_s is closed
    header_timeout_s: Seconds = Field(default=10.0, gt=0)
    body_timeout_s: Seconds = Field(default=30.0, gt=0)
    idle_timeout_s: Seconds = Field(default=75.0, gt=0)
    cache_dir: Path | None = None
    # local scaler: `ember serve --standby` processes kept ready (imports done, no model), so a
    # start skips Python's and torch's start-up; each costs memory only. 0 disables the pool.
    warm_pool: int = Field(default=0, ge=0, le=16)
    log_level: LogLevel = "info"
    # local scaler: replicas' log lines are re-logged at DEBUG only, not at their own levels
    quiet_replicas: bool = False
    # local: replicas are `ember serve` processes here; knative: each model's Knative Service,
    # woken through min-scale (ember deploy renders them) in knative.namespace
    scaler: Literal["local", "knative"] = "local"

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        _check_policy(value)
        return value


class KnativeSettings(BaseModel):
    """How ``ember deploy`` renders the stack for Knative (ignored by ``ember up``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field(default="default", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    image: str | None = None  # the slim CPU runtime image
    gpu_image: str | None = None  # the CUDA runtime image, for models that want a GPU
    activator_image: str | None = None
    admin_secret: str | None = None  # a Secret whose key "token" is the admin API's bearer token
    api_secret: str | None = None  # a Secret whose key "token" is the data plane's bearer token
    s3_secret: str | None = None  # a Secret with AWS_* keys, given to replicas as env
    # a Secret whose key "token" is the Hugging Face token replicas read hf:// models with
    hf_secret: str | None = None
    # where models with local weights are served from in the cluster: URI/NAME (ember cache push)
    models_uri: str | None = Field(default=None, pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,62}(/.*)?$")
    cache_size_gi: float = Field(default=20, gt=0)  # the local tier's size (and budget)
    timeout_s: WholeSeconds = Field(default=300, ge=1)  # the revision's request timeout
    progress_deadline_s: WholeSeconds = Field(
        default=600, ge=1
    )  # raised from Knative's 600 s for big models
    cpu: str = "1"
    memory: str = "2Gi"
    # placement of the models that name a gpu_type: every gpu_type used must be listed here
    gpu_nodes: dict[str, GpuNodes] = Field(default_factory=dict)
    tier: WeightTier = WeightTier()  # the volume of the local weight tier (contracts.knative)
    events: EventsVolume = EventsVolume()  # the activator's event log's PersistentVolumeClaim


class ModelEntry(BaseModel):
    """One model of the stack: where its runtime config is, and how to scale it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: Path
    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    container_concurrency: int | None = Field(default=None, ge=1)
    target: float | None = Field(default=None, gt=0)
    keep_alive_s: Seconds | None = Field(default=None, ge=0)
    policy: str | None = None  # fixed (keep_alive_s) | fixed:DURATION | knative | hybrid
    queue_size: int | None = Field(default=None, ge=0)
    deadline_s: Seconds | None = Field(default=None, gt=0)
    startup_timeout_s: Seconds | None = Field(default=None, gt=0)

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str | None) -> str | None:
        _check_policy(value)
        return value

    @model_validator(mode="after")
    def _bounds(self) -> ModelEntry:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
        return self


class GroupMember(BaseModel):
    """One model of a group: its config, and what the group does not decide for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: Path
    keep_alive_s: Seconds | None = Field(default=None, ge=0)
    queue_size: int | None = Field(default=None, ge=0)
    deadline_s: Seconds | None = Field(default=None, gt=0)


class GroupEntry(BaseModel):
    """Several models sharing replicas: each replica serves all of them, under a budget."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    models: list[GroupMember] = Field(min_length=1)
    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    container_concurrency: int | None = Field(default=None, ge=1)
    target: float | None = Field(default=None, gt=0)
    keep_alive_s: Seconds | None = Field(default=None, ge=0)
    # fixed: models stay awake until the replicas go (after keep_alive_s); tiered: each model
    # sleeps at host, then disk, as the tiered policy plans from its idle times (activator.tiered)
    policy: Literal["fixed", "tiered"] = "fixed"
    device_memory_budget: ByteSize | None = None  # each replica's: ember serve's flag
    host_memory_budget: ByteSize | None = None
    # tiered: the first wake times the policy assumes per level, until it has measured its own
    wake: dict[Literal["host", "disk"], float] = Field(default_factory=dict)
    host_hold_s: Seconds = Field(default=1200.0, ge=0)  # tiered: the longest a model sleeps
    disk_hold_s: Seconds = Field(default=3600.0, ge=0)  # at host, then at disk
    startup_timeout_s: Seconds | None = Field(default=None, gt=0)

    @field_validator("wake")
    @classmethod
    def _wake_times(cls, value: dict[str, float]) -> dict[str, float]:
        for level, seconds in value.items():
            if not 0 <= seconds < float("inf"):
                raise ValueError(f"wake.{level}: seconds must be 0 or more")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> GroupEntry:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
        return self


class StackFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    activator: ActivatorSettings = ActivatorSettings()
    knative: KnativeSettings = KnativeSettings()
    models: list[ModelEntry] = Field(default_factory=list)
    groups: list[GroupEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _something(self) -> StackFile:
        if not self.models and not self.groups:
            raise ValueError("the stack serves nothing: list models: (or groups:)")
        return self


class ModelSpec(BaseModel):
    """Everything the activator knows about one model, resolved."""

    model_config = ConfigDict(frozen=True)

    name: str
    config_path: Path
    version: str = "1"  # the model config's (what the replicas serve; statistics carry it)
    min_replicas: int
    max_replicas: int
    container_concurrency: int
    target: float
    keep_alive_s: float
    queue_size: int
    deadline_s: float
    startup_timeout_s: float
    policy: str = "fixed"  # "fixed" keeps keep_alive_s; see parse_policy for the others
    # from the model config, for the cost report, the pre-warm schedule and Knative
    gpu_type: str | None = None
    price_per_hour: float | None = None
    device: str | None = None
    cpus: float | None = None  # the cores a replica is billed for (a CPU model's cost)
    source: str | None = None
    prewarm: tuple[Window, ...] = ()
    handler: str | None = None  # the model config's, for messages
    # what serves it: "ember" (its handler), or "command" (another OpenAI-compatible server,
    # whose readiness is ``health``'s 200)
    engine: str = "ember"
    health: str | None = None
    # a command engine's sleep and wake calls (contracts.engine_calls): the activator puts it
    # to sleep and wakes it through them when it is a group's only member
    engine_calls: EngineCalls | None = None
    # what GET /v2/models/{m} answers, when the model config says it all (contracts.metadata):
    # the activator answers it while no replica runs; None: it learns it from the first replica
    metadata: ModelMetadata | None = None
    # the model config's: with batching on, a request's first dimension is its batch size, at
    # most this (the activator checks a request for a model at zero against it)
    max_batch_size: int = 0
    # a group's pool (a replica serving several models) is run from a spec too: its name is the
    # group's, ``configs`` every member's config file and ``members`` their names
    group: str | None = None  # a member model: the group whose replicas serve it
    configs: tuple[Path, ...] = ()
    members: tuple[str, ...] = ()
    # a group's replicas: the memory budgets (bytes) its members share
    device_memory_budget: int | None = None
    host_memory_budget: int | None = None

    @property
    def config_paths(self) -> tuple[Path, ...]:
        """The model config files a replica of this spec serves."""
        return self.configs or (self.config_path,)


class GroupSpec(BaseModel):
    """A group, resolved: its members' specs are in :attr:`StackConfig.models`."""

    model_config = ConfigDict(frozen=True)

    name: str
    members: tuple[str, ...]
    policy: Literal["fixed", "tiered"]
    device_memory_budget: int | None
    host_memory_budget: int | None
    wake: dict[str, float]
    host_hold_s: float
    disk_hold_s: float
    pool: ModelSpec  # what the group's replicas are started from, scaled and kept alive by


class StackConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: Path
    settings: ActivatorSettings
    models: dict[str, ModelSpec]  # every model, a group's members too
    knative: KnativeSettings = KnativeSettings()
    groups: dict[str, GroupSpec] = Field(default_factory=dict)


def load_stack(path: str | Path) -> StackConfig:
    """Read and check ``ember.yaml`` and the model configs it names."""
    path = Path(path)
    stack = _read_stack_file(path)
    base = path.resolve().parent
    settings = stack.activator
    if "events" not in settings.model_fields_set:  # on unless the file turns it off (null)
        settings = settings.model_copy(update={"events": DEFAULT_EVENTS})
    if settings.events is not None and not settings.events.is_absolute():
        settings = settings.model_copy(update={"events": (base / settings.events).resolve()})
    for key in ("cache_dir", "admin_token_file", "api_token_file"):
        value = getattr(settings, key)
        if value is not None and not value.is_absolute():
            settings = settings.model_copy(update={key: (base / value).resolve()})
    models: dict[str, ModelSpec] = {}
    for i, entry in enumerate(stack.models):
        name, model, config_path = _read_model(path, f"models[{i}]", base / entry.config)
        if name in models:
            raise ConfigError(f"{path}: model '{name}' is listed twice")
        models[name] = _model_spec(name, entry, settings, model, config_path)
    groups: dict[str, GroupSpec] = {}
    for g, group in enumerate(stack.groups):
        if group.name in groups:
            raise ConfigError(f"{path}: group '{group.name}' is listed twice")
        if group.name in models:
            raise ConfigError(
                f"{path}: groups[{g}]: the name '{group.name}' is a model's; a group needs its own"
            )
        specs = []
        for i, member in enumerate(group.models):
            where = f"groups[{g}].models[{i}]"
            name, model, config_path = _read_model(path, where, base / member.config)
            if name in models:
                raise ConfigError(f"{path}: model '{name}' is listed twice")
            entry = ModelEntry(
                config=config_path,
                min_replicas=group.min_replicas,
                max_replicas=group.max_replicas,
                container_concurrency=group.container_concurrency,
                target=group.target,
                keep_alive_s=member.keep_alive_s,
                queue_size=member.queue_size,
                deadline_s=member.deadline_s,
                startup_timeout_s=group.startup_timeout_s,
            )
            spec = _model_spec(name, entry, settings, model, config_path)
            models[name] = spec = spec.model_copy(update={"group": group.name})
            specs.append(spec)
        groups[group.name] = _group_spec(path, g, group, specs, settings)
    return StackConfig(
        path=path.resolve(),
        settings=settings,
        models=models,
        knative=stack.knative,
        groups=groups,
    )


def _read_model(stack_path: Path, where: str, config_path: Path) -> tuple[str, Any, Path]:
    """A stack entry's model config: its name, its document and its path."""
    model = _read_model_config(stack_path, where, config_path)
    if isinstance(model, list):
        if len(model) != 1:
            raise ConfigError(
                f"{config_path}: holds {len(model)} models; the stack takes one per file"
            )
        model = model[0]
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise ConfigError(f"{config_path}: not a model config (no 'name')")
    name = model["name"]
    if not valid_model_name(name):
        raise ConfigError(
            f"{config_path}: model name {name!r} must be 1-63 letters, digits, '_', '.' or "
            "'-', starting and ending with a letter or digit"
        )
    return name, model, config_path


def _group_spec(
    path: Path, index: int, group: GroupEntry, specs: list[ModelSpec], settings: ActivatorSettings
) -> GroupSpec:
    """A group resolved: one pool spec for its replicas, priced and placed as its members are."""
    where = f"{path}: groups[{index}] ({group.name})"
    _check_commands(where, group, specs)
    for key in ("gpu_type", "device"):
        values = {getattr(s, key) for s in specs}
        if len(values) > 1:
            shown = ", ".join(f"{s.name}: {getattr(s, key)}" for s in specs)
            raise ConfigError(f"{where}: its models share replicas, so one {key} ({shown})")
    first = specs[0]
    keep_alive = (
        group.keep_alive_s if group.keep_alive_s is not None else max(s.keep_alive_s for s in specs)
    )
    concurrency = group.container_concurrency or max(s.container_concurrency for s in specs)
    prices = [s.price_per_hour for s in specs if s.price_per_hour is not None]
    cpus = [s.cpus for s in specs if s.cpus is not None]
    pool = ModelSpec(
        name=group.name,
        config_path=first.config_path,
        configs=tuple(s.config_path for s in specs),
        members=tuple(s.name for s in specs),
        device_memory_budget=group.device_memory_budget,
        host_memory_budget=group.host_memory_budget,
        min_replicas=group.min_replicas,
        max_replicas=group.max_replicas,
        container_concurrency=concurrency,
        target=group.target or float(concurrency),
        keep_alive_s=keep_alive,
        queue_size=sum(s.queue_size for s in specs),
        deadline_s=max(s.deadline_s for s in specs),
        startup_timeout_s=group.startup_timeout_s or settings.startup_timeout_s,
        gpu_type=first.gpu_type,
        device=first.device,
        price_per_hour=max(prices) if prices else None,
        cpus=max(cpus) if cpus else None,
        source=None,
        # the members' pre-warm windows warm the replicas that serve them all
        prewarm=tuple(window for s in specs for window in s.prewarm),
        # a command engine alone in its group: its replicas are its server, ready at its health
        engine=first.engine,
        health=first.health,
    )
    return GroupSpec(
        name=group.name,
        members=pool.members,
        policy=group.policy,
        device_memory_budget=group.device_memory_budget,
        host_memory_budget=group.host_memory_budget,
        wake={str(level): s for level, s in group.wake.items()},
        host_hold_s=group.host_hold_s,
        disk_hold_s=group.disk_hold_s,
        pool=pool,
    )


def _check_commands(where: str, group: GroupEntry, specs: list[ModelSpec]) -> None:
    """A model its own command serves runs alone: in a group only as its only member, and only
    when its config names its server's sleep and wake calls (what the group puts it to sleep
    and wakes it with); ConfigError saying which rule a group breaks."""
    commands = [s for s in specs if s.engine == "command"]
    if not commands:
        return
    names = ", ".join(s.name for s in commands)
    if len(specs) > 1:
        raise ConfigError(
            f"{where}: {names} is served by its own command, which runs alone: it cannot share "
            "a group's replicas (a group of that one model alone may, with its sleep calls)"
        )
    if commands[0].engine_calls is None:
        raise ConfigError(
            f"{where}: {names} is served by its own command, which runs alone: a group of it "
            "alone needs its server's sleep and wake calls in its config (sleep: {host: 'POST "
            "/sleep?level=1'}, wake: 'POST /wake_up'), which the group puts it to sleep with"
        )
    budgets = [k for k in ("device_memory_budget", "host_memory_budget") if getattr(group, k)]
    if budgets:
        raise ConfigError(
            f"{where}: {' and '.join(budgets)} budget Ember's own server; {names}'s server "
            "keeps its own memory (its sleep calls put it away)"
        )


def _model_spec(
    name: str,
    entry: ModelEntry,
    settings: ActivatorSettings,
    model: dict[str, Any],
    config_path: Path,
) -> ModelSpec:
    """One model's spec: each key from its ``ember.yaml`` entry, else its model config, else the
    activator's settings (or the default)."""
    windows = model.get("prewarm") or []
    if not isinstance(windows, list):
        raise ConfigError(f"{config_path}: prewarm must be a list of windows")
    prewarm = tuple(
        parse_window(window, f"{config_path}: prewarm[{w}]") for w, window in enumerate(windows)
    )
    declared = model.get("container_concurrency")
    if declared is not None and (
        isinstance(declared, bool) or not isinstance(declared, int) or declared < 0
    ):
        raise ConfigError(f"{config_path}: container_concurrency must be a whole number >= 0")
    # the runtime's 0 ("the server's default") is "not set" here too
    concurrency = entry.container_concurrency or declared or 8
    model_keep_alive = _duration(model, "keep_alive_s", config_path)
    if model_keep_alive is not None and model_keep_alive < 0:
        raise ConfigError(f"{config_path}: keep_alive_s must be >= 0")
    keep_alive = _first(entry.keep_alive_s, model_keep_alive, settings.keep_alive_s)
    policy = entry.policy or settings.policy
    if policy != "fixed":
        parse_policy_spec(policy)  # raises ConfigError naming the choices
    handler = _optional(model, "handler", str, config_path)
    engine = _engine(model, config_path)
    return ModelSpec(
        name=name,
        version=str(model.get("version") or "1"),
        policy=policy,
        config_path=config_path.resolve(),
        min_replicas=entry.min_replicas,
        max_replicas=entry.max_replicas,
        container_concurrency=concurrency,
        target=entry.target or float(concurrency),
        keep_alive_s=keep_alive,
        queue_size=settings.queue_size if entry.queue_size is None else entry.queue_size,
        deadline_s=entry.deadline_s or settings.deadline_s,
        startup_timeout_s=entry.startup_timeout_s or settings.startup_timeout_s,
        gpu_type=_optional(model, "gpu_type", str, config_path),
        price_per_hour=_optional(model, "price_per_hour", float, config_path),
        cpus=_optional(model, "cpus", float, config_path),
        device=_optional(model, "device", str, config_path),
        source=_optional(model, "source", str, config_path),
        prewarm=prewarm,
        handler=handler,
        engine=engine,
        engine_calls=_engine_calls(model, config_path) if engine == "command" else None,
        health=(
            _optional(model, "health", str, config_path) or "/health"
            if model.get("engine") == "command"
            else None
        ),
        metadata=declared_metadata(model, str(config_path)),
        max_batch_size=_optional(model, "max_batch_size", int, config_path) or 0,
    )


def _first(*values: float | None) -> float:
    """The first value given (the last one always is)."""
    return next(v for v in values if v is not None)


@dataclass(frozen=True)
class PolicySpec:
    """A keep-alive policy: ``fixed:DURATION``, ``knative``, ``hybrid`` or ``hybrid-paper``."""

    kind: Literal["fixed", "knative", "hybrid", "hybrid-paper"]
    keep_alive_s: float | None = None  # fixed's window


_POLICIES = "fixed:DURATION (e.g. fixed:10m, fixed:1h30m), knative, hybrid, hybrid-paper"


def parse_policy_spec(text: str) -> PolicySpec:
    """The policy a model's ``policy:`` names; ConfigError naming the choices if none.

    ``fixed:DURATION`` reads its duration as every duration is read (:mod:`contracts.durations`),
    but a unit is required: ``fixed:10`` is refused, saying so.
    """
    if text in ("knative", "hybrid", "hybrid-paper"):
        return PolicySpec(text)  # type: ignore[arg-type]
    if text == "tiered":
        raise ConfigError(
            "policy 'tiered' is a group's: it puts idle models to sleep on replicas they share "
            "(a model alone on its replicas saves nothing by sleeping); list the model under "
            f"groups: with policy: tiered, or choose {_POLICIES}"
        )
    kind, colon, arg = text.partition(":")
    if kind != "fixed":
        raise ConfigError(
            f"unknown policy {text!r}: {_POLICIES}; or tiered, for the models of a group "
            "(and ember simulate --policy tiered)"
        )
    if not colon or not arg:
        raise ConfigError(f"policy {text!r} needs a duration: fixed:DURATION, e.g. fixed:10m")
    try:
        seconds = parse_duration(arg, unit_required=True)
    except MissingUnit:
        raise ConfigError(
            f"policy {text!r} needs a unit: fixed:{arg}s, fixed:{arg}m or fixed:{arg}h"
        ) from None
    except ValueError as exc:
        raise ConfigError(f"policy {text!r}: {exc}") from None
    if seconds <= 0:
        raise ConfigError(f"policy {text!r}: the duration must be longer than 0")
    return PolicySpec("fixed", seconds)


def _check_policy(text: str | None) -> None:
    """A ``policy:`` key's validator: ValueError (pydantic reports it at the key) if unknown."""
    if text is None or text == "fixed":  # plain fixed: the keep_alive_s that applies
        return
    try:
        parse_policy_spec(text)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _engine(model: dict[str, Any], where: Path) -> str:
    engine = _optional(model, "engine", str, where) or "ember"
    if engine not in ("ember", "command"):
        raise ConfigError(f"{where}: engine must be ember or command, not {engine!r}")
    return str(engine)


def _engine_calls(model: dict[str, Any], where: Path) -> EngineCalls | None:
    """A command engine's ``sleep`` and ``wake`` calls, or None when it names neither."""
    sleep, wake = model.get("sleep"), model.get("wake")
    try:
        if sleep is None or wake is None:
            check_calls(sleep, wake)  # both or neither: says which is missing
            return None
        return EngineCalls.model_validate({"sleep": sleep, "wake": wake})
    except ValidationError as exc:
        raise ConfigError("\n".join(explain(exc, EngineCalls, file=where))) from None
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _optional(model: dict[str, Any], key: str, kind: type, where: Path) -> Any:
    """``model[key]`` checked to be a ``kind`` (ints pass as floats), or None when absent."""
    value = model.get(key)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        what = {float: "number", int: "whole number"}.get(kind, "string")
        raise ConfigError(f"{where}: {key} must be a {what}")
    return value


def _duration(model: dict[str, Any], key: str, where: Path) -> float | None:
    """``model[key]`` read as a duration (``90``, ``90s``, ``10m``), or None when absent."""
    value = model.get(key)
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {key}: {exc}") from None


def _read_stack_file(path: Path) -> StackFile:
    """``ember.yaml`` checked: ConfigError with one line per problem, each naming the key."""
    raw = read_config(path)
    if looks_like_model_config(raw):
        raise ConfigError(
            f"{path} is a model config, not a stack file (ember.yaml): use "
            f"`ember serve --config {path}`, or name it under models: in an ember.yaml"
        )
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: an ember.yaml is a mapping of keys (models:, and optionally activator: "
            f"and knative:), not {type(raw).__name__}"
        )
    try:
        return StackFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("\n".join(explain(exc, StackFile, file=path))) from None


def _read_model_config(stack_path: Path, where: str, config_path: Path) -> Any:
    """The document of ``{where}.config``; ConfigError naming both files if unreadable."""
    if not config_path.exists():
        raise ConfigError(f"{stack_path}: {where}.config: {config_path} does not exist")
    model = read_config(config_path)
    if looks_like_stack(model):
        raise ConfigError(
            f"{stack_path}: {where}.config: {config_path} is a stack file (ember.yaml), "
            "not a model config"
        )
    return model
