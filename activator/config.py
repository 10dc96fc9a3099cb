"""``ember.yaml``: the one-machine stack (and the activator's settings on Knative).

::

    activator:                     # all optional
      events: events.jsonl         # the event log (relative to this file)
      keep_alive_s: 60             # idle time before a model's replicas drain and stop
      queue_size: 1000             # per model; past it: 503 + Retry-After
      deadline_s: 120              # how long a request may wait for a replica; then 504
      startup_timeout_s: 300       # a replica not ready by then is stopped, its waiters 504
      grace_period_s: 30           # drain time for a stopping replica (then SIGKILL)
      admin_token_env: EMBER_ADMIN_TOKEN   # where the admin API's bearer token comes from
      admin_token_file: null       # or a file of tokens, one per line (rotation: list both)
      api_token_env: EMBER_API_TOKEN       # bearer token(s) for /v2 and /metrics; unset: open
      api_token_file: null
      max_header_bytes: 65536      # request line + headers; past it: 431
      max_request_bytes: 67108864
      cache_dir: /var/cache/ember  # the replicas' local weight tier
      warm_pool: 0                 # standby interpreters for faster local starts (0: none)
    models:
      - config: mlp/model.yaml     # a runtime model config (one model), relative to this file
        min_replicas: 0
        max_replicas: 2
        container_concurrency: 16  # requests one replica takes at once (default: the model
                                   # config's, else 8)
        target: 8                  # in-flight requests per replica before another starts
        keep_alive_s: 30           # overrides the activator's (and the model config's)
        queue_size: 100
        deadline_s: 60

The activator reads only what it needs from each model config (its name, and its
``container_concurrency`` and ``keep_alive_s`` defaults) with a YAML parser; the replicas it
starts run ``ember serve --config`` on the file itself. Unknown keys are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from activator.auth import Tokens
from activator.errors import ConfigError
from activator.schedule import parse_window
from ember.names import valid_model_name


class ActivatorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    events: Path | None = None
    keep_alive_s: float = Field(default=60.0, ge=0)
    queue_size: int = Field(default=1000, ge=0)
    deadline_s: float = Field(default=120.0, gt=0)
    startup_timeout_s: float = Field(default=300.0, gt=0)
    grace_period_s: float = Field(default=30.0, ge=0)
    policy: str = "fixed"  # the keep-alive/pre-warm policy of models that name none
    admin_token_env: str = "EMBER_ADMIN_TOKEN"
    admin_token_file: Path | None = None
    api_token_env: str = "EMBER_API_TOKEN"
    api_token_file: Path | None = None
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    max_request_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    cache_dir: Path | None = None
    # local scaler: `ember serve --standby` processes kept ready (imports done, no model), so a
    # start skips Python's and torch's start-up; each costs memory only. 0 disables the pool.
    warm_pool: int = Field(default=0, ge=0, le=16)
    log_level: str = "info"
    # local: replicas are `ember serve` processes here; knative: each model's Knative Service,
    # woken through min-scale (ember deploy renders them) in knative.namespace
    scaler: Literal["local", "knative"] = "local"

    def admin_tokens(self) -> Tokens | None:
        return Tokens.load(self.admin_token_env, self.admin_token_file, "admin")

    def api_tokens(self) -> Tokens | None:
        return Tokens.load(self.api_token_env, self.api_token_file, "API")


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
    # where models with local weights are served from in the cluster: URI/NAME (ember cache push)
    models_uri: str | None = Field(default=None, pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,62}(/.*)?$")
    cache_size_gi: float = Field(default=20, gt=0)  # the local tier's emptyDir
    timeout_s: int = Field(default=300, ge=1)  # the revision's request timeout
    progress_deadline_s: int = Field(
        default=600, ge=1
    )  # raised from Knative's 600 s for big models
    cpu: str = "1"
    memory: str = "2Gi"


class ModelEntry(BaseModel):
    """One model of the stack: where its runtime config is, and how to scale it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: Path
    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    container_concurrency: int | None = Field(default=None, ge=1)
    target: float | None = Field(default=None, gt=0)
    keep_alive_s: float | None = Field(default=None, ge=0)
    policy: str | None = None  # fixed (keep_alive_s) | fixed:DURATION | knative | hybrid
    queue_size: int | None = Field(default=None, ge=0)
    deadline_s: float | None = Field(default=None, gt=0)
    startup_timeout_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> ModelEntry:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
        return self


class StackFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    activator: ActivatorSettings = ActivatorSettings()
    knative: KnativeSettings = KnativeSettings()
    models: list[ModelEntry] = Field(min_length=1)


class ModelSpec(BaseModel):
    """Everything the activator knows about one model, resolved."""

    model_config = ConfigDict(frozen=True)

    name: str
    config_path: Path
    min_replicas: int
    max_replicas: int
    container_concurrency: int
    target: float
    keep_alive_s: float
    queue_size: int
    deadline_s: float
    startup_timeout_s: float
    policy: str = "fixed"  # "fixed" keeps keep_alive_s; see activator/policy.py for the others
    # from the model config, for the cost report and Knative: gpu_type, price_per_hour, ...
    extra: dict[str, Any] = Field(default_factory=dict)


class StackConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: Path
    settings: ActivatorSettings
    models: dict[str, ModelSpec]
    knative: KnativeSettings = KnativeSettings()


def load_stack(path: str | Path) -> StackConfig:
    """Read and check ``ember.yaml`` and the model configs it names."""
    path = Path(path)
    raw = _read_yaml(path, "config")
    try:
        stack = StackFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_message(exc)}") from None
    base = path.resolve().parent
    settings = stack.activator
    if settings.events is not None and not settings.events.is_absolute():
        settings = settings.model_copy(update={"events": (base / settings.events).resolve()})
    for key in ("cache_dir", "admin_token_file", "api_token_file"):
        value = getattr(settings, key)
        if value is not None and not value.is_absolute():
            settings = settings.model_copy(update={key: (base / value).resolve()})
    models: dict[str, ModelSpec] = {}
    for i, entry in enumerate(stack.models):
        config_path = entry.config if entry.config.is_absolute() else base / entry.config
        model = _read_yaml(config_path, f"models[{i}].config")
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
        if name in models:
            raise ConfigError(f"{path}: model '{name}' is listed twice")
        for w, window in enumerate(model.get("prewarm") or []):
            parse_window(window, f"{config_path}: prewarm[{w}]")  # raises on a bad window
        concurrency = entry.container_concurrency or int(model.get("container_concurrency") or 8)
        keep_alive = entry.keep_alive_s
        if keep_alive is None:
            keep_alive = settings.keep_alive_s
        policy = entry.policy or settings.policy
        if policy != "fixed":
            from activator.policy import parse_policy

            parse_policy(policy)  # raises ConfigError naming the choices
        models[name] = ModelSpec(
            name=name,
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
            extra={
                k: model[k]
                for k in ("gpu_type", "price_per_hour", "prewarm", "device", "source")
                if k in model
            },
        )
    return StackConfig(path=path.resolve(), settings=settings, models=models, knative=stack.knative)


def _read_yaml(path: Path, what: str) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{what}: {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def _message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "config"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
