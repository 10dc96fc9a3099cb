"""Model configuration files and the server's settings, validated with clear errors.

A config file (YAML or JSON) holds one model, a list of models, or ``{"models": [...]}``. Unknown
keys are rejected: a mistyped ``max_batch_szie`` must fail loudly, not be dropped.
"""

from __future__ import annotations

import importlib.util
import re
import string
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contracts import configfile
from contracts.datatypes import DATATYPES
from contracts.durations import Seconds
from contracts.engine_calls import EngineCalls, SleepCalls, WakeCalls, check_calls
from contracts.errors import ConfigError as FileError
from contracts.logs import LogFormat, LogLevel
from contracts.metadata import Tensor
from contracts.names import HF_REPO, MODEL_NAME, valid_image
from runtime.errors import ConfigError
from runtime.handlers.options import HANDLER_OPTIONS

DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(Tensor):
    """A model input or output. With batching, ``shape`` excludes the batch dimension."""

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value.upper() not in DATATYPES:
            raise ValueError(f"unknown datatype {value!r}; expected one of {sorted(DATATYPES)}")
        return value.upper()

    @field_validator("shape")
    @classmethod
    def _dims(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(d < -1 for d in value):
            raise ValueError("dimensions are >= 0, or -1 for a variable size")
        return value


class PrewarmWindow(BaseModel):
    """Keep replicas warm from a cron-scheduled start for a duration."""

    model_config = _FROZEN

    cron: str
    timezone: str = "UTC"
    duration_s: Seconds = Field(gt=0)  # seconds, or with units: 90m, 1h30m
    replicas: int = Field(default=1, ge=1)


# what a command engine's arguments may name (runtime.command_engine fills them in)
COMMAND_FIELDS = ("weights", "port", "host", "model")
_FORMAT = string.Formatter()


class ModelConfig(BaseModel):
    """One model: where its weights are, how it is run, batched, kept alive and priced."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    name: str
    version: str = "1"
    source: str | None = None
    handler: Literal["torch-module", "hf-encoder", "kserve", "text-generation"] | None = None
    # what serves it: Ember's own server and a handler ("ember"), or another OpenAI-compatible
    # server started from ``command`` (runtime.command_engine), its readiness ``health``'s 200
    engine: Literal["ember", "command"] = "ember"
    command: tuple[str, ...] = ()
    health: str = "/health"
    # its server's sleep and wake calls (contracts.engine_calls): with them, a group's tiered
    # policy puts it to sleep and wakes it
    sleep: SleepCalls | None = None
    wake: WakeCalls | None = None
    device: str = "auto"
    options: dict[str, Any] = Field(default_factory=dict)
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    max_batch_size: int = Field(default=0, ge=0)
    preferred_batch_size: tuple[int, ...] = ()
    max_queue_delay_ms: float = Field(default=0.0, ge=0)
    max_queue_size: int = Field(default=1024, ge=0)
    instance_count: int = Field(default=1, ge=1, le=64)
    warmup: bool = True
    container_concurrency: int = Field(default=0, ge=0)
    keep_alive_s: Seconds = Field(default=300.0, ge=0)  # seconds, or with units: 10m
    prewarm: tuple[PrewarmWindow, ...] = ()
    gpu_type: str | None = None
    price_per_hour: float | None = Field(default=None, ge=0)
    # CPU cores a replica is sized and billed for: the cost report prices a model without a
    # gpu_type at cpus x its --price cpu=USD_PER_CORE_HOUR (price_per_hour, when set, wins)
    cpus: float | None = Field(default=None, gt=0)
    # engine: command on Knative: the container image that runs the command (``ember deploy``
    # requires it; ``ember up`` runs the command on this machine and does not use it)
    image: str | None = None
    # Directory of the config file, for relative sources; set by the loader, not by users.
    base_dir: Path | None = Field(default=None, exclude=True)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not MODEL_NAME.match(value):
            raise ValueError(
                "must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a "
                "letter or digit"
            )
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not MODEL_NAME.match(value):
            raise ValueError("must be letters, digits, '-', '_' or '.'")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not DEVICE.match(value):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        if value is not None and not valid_image(value):
            raise ValueError(
                "must be a container image reference, e.g. vllm/vllm-openai:v0.9.1 or "
                "registry.example.com/team/engine@sha256:..."
            )
        return value

    @model_validator(mode="after")
    def _image_engine(self) -> ModelConfig:
        if self.image is not None and self.engine != "command":
            raise ValueError(
                "'image' is for 'engine: command' (the image that runs its command on Knative)"
            )
        return self

    @model_validator(mode="after")
    def _batching(self) -> ModelConfig:
        for size in self.preferred_batch_size:
            if not 1 <= size <= self.max_batch_size:
                raise ValueError(
                    f"preferred_batch_size {size} must be between 1 and max_batch_size "
                    f"({self.max_batch_size})"
                )
        names = [t.name for t in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError("input names must be unique")
        return self

    @model_validator(mode="after")
    def _engine(self) -> ModelConfig:
        if self.engine == "ember":
            if self.handler is None:
                raise ValueError(
                    "'handler' is required: torch-module, hf-encoder, kserve or text-generation "
                    "(or 'engine: command' with the 'command' that serves the model)"
                )
            if self.command:
                raise ValueError("'command' is for 'engine: command'")
            if self.sleep is not None or self.wake is not None:
                raise ValueError(
                    "'sleep' and 'wake' name the calls of a command engine's server "
                    "('engine: command'); Ember's own handlers sleep without them"
                )
            return self
        if self.handler is not None:
            raise ValueError("a model served by its 'command' has no 'handler'")
        if not self.command:
            raise ValueError("'engine: command' needs the 'command' that serves the model")
        known = ", ".join(f"{{{f}}}" for f in COMMAND_FIELDS)
        for arg in self.command:
            try:
                fields = [
                    (f, spec, conv) for _, f, spec, conv in _FORMAT.parse(arg) if f is not None
                ]
            except ValueError as exc:  # a lone { or }: {{ and }} are literal braces
                raise ValueError(
                    f"command: {arg!r}: {exc} (write {{{{ and }}}} for braces)"
                ) from None
            for field, spec, conv in fields:
                if field not in COMMAND_FIELDS or spec or conv:
                    raise ValueError(
                        f"command: unknown placeholder {{{field}}} in {arg!r}; known: {known}"
                    )
        if not self.health.startswith("/"):
            raise ValueError("health must be a path, starting with /")
        check_calls(self.sleep, self.wake)
        return self

    @property
    def engine_calls(self) -> EngineCalls | None:
        """A command engine's sleep and wake calls, when its config names them."""
        if self.sleep is None or self.wake is None:
            return None
        return EngineCalls(sleep=self.sleep, wake=self.wake)

    @property
    def handler_name(self) -> str:
        """The handler of a model Ember's own server serves (a command's model has none)."""
        if self.handler is None:
            raise ConfigError(f"model '{self.name}' is served by its command, not by a handler")
        return self.handler

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 0

    def local_source(self) -> Path:
        """The model's directory on this machine, for sources that are local."""
        if self.source is None:
            raise ConfigError(
                f"model '{self.name}': 'source' is required by the {self.handler} handler"
            )
        return resolve_local_source(self.source, self.base_dir)


def resolve_local_source(source: str, base_dir: Path | None) -> Path:
    """``file:///abs``, a plain path (relative to the config file) or ``pkg://package/sub/dir``."""
    parsed = urlparse(source)
    if parsed.scheme == "file":
        return Path(unquote(parsed.netloc + parsed.path))
    if parsed.scheme == "pkg":
        spec = importlib.util.find_spec(parsed.netloc)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"source {source!r}: Python package '{parsed.netloc}' is not installed"
            )
        root = Path(next(iter(spec.submodule_search_locations)))
        return root / parsed.path.lstrip("/")
    if parsed.scheme in ("s3", "hf"):
        raise ConfigError(f"source {source!r} must be fetched into the local tier first")
    if parsed.scheme in ("gs", "http", "https"):
        raise ConfigError(
            f"source {source!r}: {parsed.scheme}:// is not served directly; push it to the "
            "regional cache (`ember cache push`) and use its s3:// URI, or a local directory"
        )
    if parsed.scheme:
        raise ConfigError(f"source {source!r}: unknown scheme '{parsed.scheme}://'")
    path = Path(source)
    return path if path.is_absolute() or base_dir is None else base_dir / path


class ServerSettings(BaseModel):
    """Settings of one ``ember serve`` process; built once in the CLI and passed down."""

    model_config = _FROZEN

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_request_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    grace_period_s: float = Field(default=30.0, ge=0)
    # a request's head must be whole this long after its first byte (the first request: after
    # the connection opened), and a body may pause no longer: else 408 (runtime.http_protocol)
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"  # json: a record a line (contracts.logs), for the activator
    access_log: bool = False
    load_on_start: bool = True
    cache_dir: Path = Path("~/.cache/ember")
    cache_budget_bytes: int | None = Field(default=None, gt=0)
    # the awake models' footprints stay within it (runtime.budget); None: what a CUDA device
    # has free at start, or no budget on the CPU
    device_memory_budget_bytes: int | None = Field(default=None, gt=0)
    # what the models asleep at level host may hold in host memory; past it the least recently
    # used go down to disk (runtime.budget); None: no host budget
    host_memory_budget_bytes: int | None = Field(default=None, gt=0)
    # register the models without loading them: each loads on its first request (group replicas)
    load_on_demand: bool = False
    fetch_concurrency: int = Field(default=8, ge=1, le=256)
    fetch_chunk_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)
    status_fd: int | None = Field(default=None, ge=0)  # where contracts.replica events go
    # a failed load stops the server (exit 3), saying why in termination_log: runtime.termination
    exit_on_load_failure: bool = False
    # a server none of whose models could load keeps running (unready) instead of exiting 3
    stay_on_load_failure: bool = False
    termination_log: Path = Path("/dev/termination-log")


def load_model_config_files(paths: list[str] | list[Path]) -> list[ModelConfig]:
    """The models of several config files (``ember serve --config A --config B``), in order;
    each model's relative paths resolve against its own file. Every file's problems are
    reported together, and so is a model name that two files both define."""
    configs: list[ModelConfig] = []
    problems: list[str] = []
    defined_in: dict[str, Path] = {}
    for path in map(Path, paths):
        if path in defined_in.values():
            problems.append(f"{path}: the same config file is given twice")
            continue
        try:
            models = load_model_configs(path)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        for model in models:
            first = defined_in.get(model.name)
            if first is not None:
                problems.append(
                    f"{path}: model '{model.name}' is already defined in {first}; a model "
                    "name must be unique across the config files"
                )
        defined_in.update((m.name, path) for m in models)
        configs += models
    if problems:
        raise ConfigError("\n".join(problems))
    return configs


def load_model_configs(path: str | Path) -> list[ModelConfig]:
    """Read and validate a model config file, each model's handler ``options`` included.

    Raises :class:`ConfigError` with one line per problem found (all of them, not the first),
    each naming the file and the key; an unknown key with the closest valid one.
    """
    path = Path(path)
    try:
        doc = configfile.read_config(path)
    except FileError as exc:
        raise ConfigError(str(exc)) from None
    if configfile.looks_like_stack(doc):
        raise ConfigError(
            f"{path} is a stack file (ember.yaml), not a model config: use "
            f"`ember up --config {path}` (or `ember deploy`)"
        )
    at: tuple[str, ...] = ()
    if isinstance(doc, dict) and set(doc) == {"models"}:
        doc, at = doc["models"], ("models",)
    entries = doc if isinstance(doc, list) else [doc]
    if not entries:
        raise ConfigError(f"{path} lists no models")
    configs: list[ModelConfig] = []
    problems: list[str] = []
    for i, entry in enumerate(entries):
        where: tuple[str | int, ...] = (*at, i) if isinstance(doc, list) else ()
        if not isinstance(entry, dict):
            key = configfile.key_path(where)
            problems.append(
                f"{path}: {key + ': ' if key else ''}a model config is a mapping of keys "
                f"(name:, handler:, ...), not {type(entry).__name__}"
            )
            continue
        try:
            configs.append(ModelConfig.model_validate({**entry, "base_dir": path.parent.resolve()}))
        except ValidationError as exc:
            problems += configfile.explain(exc, ModelConfig, file=path, at=where)
        problems += _option_problems(entry, path, where)
    if problems:
        raise ConfigError("\n".join(problems))
    problems += [f"{path}: {p}" for c in configs for p in _source_problems(c)]
    if problems:
        raise ConfigError("\n".join(problems))
    names = [c.name for c in configs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{path}: model names must be unique, repeated: {duplicates}")
    return configs


def _source_problems(config: ModelConfig) -> list[str]:
    """A ``source`` that reads as a Hugging Face Hub id (``org/name``) but names no directory
    here: said, with the ``hf://`` form that serves it (never taken for a path that is missing)."""
    source = config.source
    if source is None or "://" in source or not HF_REPO.match(source):
        return []
    if config.base_dir is not None and (config.base_dir / source).exists():
        return []  # a folder that happens to look like an id
    return [
        f"source: {source!r} is no directory here; a Hugging Face Hub model is written "
        f"hf://{source} (or hf://{source}@REVISION)"
    ]


def _option_problems(entry: dict[str, Any], path: Path, where: configfile.Loc) -> list[str]:
    """What is wrong with a model's ``options`` for its handler (nothing if either is unknown:
    the model's own check says so)."""
    handler, options = entry.get("handler"), entry.get("options", {})
    schema = HANDLER_OPTIONS.get(handler) if isinstance(handler, str) else None
    if schema is None or not isinstance(options, dict):
        return []
    try:
        schema.model_validate(options)
    except ValidationError as exc:
        unknown = f"unknown option of the {handler} handler"
        return configfile.explain(exc, schema, file=path, at=(*where, "options"), unknown=unknown)
    return []
