"""The ``ModelHandler`` seam and the lazy registry of handlers.

A handler's ``load`` and ``predict`` are blocking: the data plane always calls them from worker
threads, never on the event loop. Handler modules are imported only when a model uses them, so a
server that serves no torch model never imports torch (this module names torch's types for the
type checker only).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, TypeVar

from pydantic import BaseModel, ValidationError

from contracts.configfile import class_file
from contracts.replica import FailureKind
from runtime.config import ModelConfig, TensorSpec
from runtime.errors import ConfigError
from runtime.protocol import validation_message
from runtime.sleep import SleepLevel
from runtime.tensors import Tensor

if TYPE_CHECKING:
    import torch

StreamedTensors: TypeAlias = "Mapping[str, Mapping[str, torch.Tensor]]"
"""Tensors made while a model's files streamed in: ``{file path in the model's directory:
{tensor name: tensor}}``, e.g. ``{"model.safetensors": {"fc1.weight": ...}}``."""

_Options = TypeVar("_Options", bound=BaseModel)

_REGISTRY = {
    "torch-module": "runtime.handlers.torch_module:TorchModuleHandler",
    "hf-encoder": "runtime.handlers.hf_encoder:HFEncoderHandler",
    "kserve": "runtime.handlers.kserve_model:KServeModelHandler",
    "text-generation": "runtime.handlers.text_generation:TextGenerationHandler",
}


class HandlerLoadError(Exception):
    """A model could not be loaded: missing or corrupt weights, a bad class path, ...

    ``failure`` says which, by subclass; None leaves it to the exception that caused this one
    (an out-of-memory error, a weight cache error), else it is a plain ``load_failed``.
    """

    failure: ClassVar[FailureKind | None] = None


class WeightsMissing(HandlerLoadError):
    """A weights (or other model) file the handler needs is not in the model's directory."""

    failure = FailureKind.WEIGHTS_MISSING


class WeightsCorrupt(HandlerLoadError):
    """A model file is there but is not what its format says (a bad header, truncated, ...)."""

    failure = FailureKind.WEIGHTS_CORRUPT


class BadHandlerConfig(HandlerLoadError):
    """The handler's options cannot work: a class path that does not import, a missing device."""

    failure = FailureKind.BAD_CONFIG


class ModelHandler:
    """What the data plane needs from a model: the base every handler subclasses.

    ``inputs``/``outputs`` describe one item: with batching on, the data plane adds the batch
    dimension in front. ``predict`` receives a whole batch and returns every output it has.

    ``load`` may be given the tensors the weight cache already made while it streamed the model's
    files (see :data:`StreamedTensors`); a handler uses them instead of reading those files, or
    ignores them. The caller keeps no reference once ``load`` returns.

    What a handler can do beyond that is declared on its class, and read there (never guessed
    from its kind's name or from which methods it has):

    - ``can_sleep``: ``sleep``/``wake`` put its weights away without unloading (see
      :mod:`runtime.sleep`). Both are blocking and called from worker threads, never while a
      batch runs. ``wake`` puts the weights back where ``load`` put them and raises what ``load``
      raises when it cannot (the files gone, the device out of memory). ``sleep(disk)`` is also
      called on a model asleep at ``host``, past the host memory budget: it drops the host copy,
      needing no device memory.
    - ``measures``: its weights live on a torch device, and ``device_bytes`` says what they hold
      there once loaded (parameters and buffers): what :mod:`runtime.budget` counts; a handler
      that does not measure counts as 0, and its device does not set the default budget.
    - ``checks_inputs``: limits on a request's inputs, enforced before it is queued.
      ``check_inputs`` sees one request's decoded inputs and raises ``InvalidInput`` for what the
      model would refuse or choke on (an overlong text, say), so a bad request never occupies a
      batch. It runs on the event loop: its work must be small and bounded whatever the request.
      ``input_limits`` are published as the model metadata's ``properties`` (strings, per the
      spec).
    - ``takes_tensors``: ``load`` adopts the torch tensors made while the files streamed in, so
      the weight cache makes them (on the model's device) as the bytes arrive.
    - ``generates``: a text-generation model; the generate and OpenAI routes reach its engine
      (``generator``, ``encode_prompt``, ``chat_prompt``: see
      :mod:`runtime.handlers.text_generation`).
    - ``embeds``: its one text input's output is an embedding per text; OpenAI's
      ``/v1/embeddings`` serves it, counting tokens with :meth:`count_tokens`.
    """

    platform: ClassVar[str]
    can_sleep: ClassVar[bool] = False
    measures: ClassVar[bool] = False
    checks_inputs: ClassVar[bool] = False
    takes_tensors: ClassVar[bool] = False
    generates: ClassVar[bool] = False
    embeds: ClassVar[bool] = False

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def count_tokens(self, texts: list[str]) -> int:
        """How many tokens ``texts`` take (an ``embeds`` handler's usage); 0 if it cannot say."""
        return 0

    def __init__(self, config: ModelConfig) -> None:
        self.config = config

    def load(self, *, tensors: StreamedTensors | None = None) -> None:
        raise NotImplementedError

    def predict(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    def warmup_inputs(self) -> dict[str, Tensor] | None:
        return None

    def unload(self) -> None:
        raise NotImplementedError

    def sleep(self, level: SleepLevel) -> None:
        """Put the weights away at ``level`` (``can_sleep`` handlers only)."""
        raise NotImplementedError(f"{type(self).__name__} cannot sleep")

    def wake(self) -> None:
        """Put the weights back where ``load`` put them (``can_sleep`` handlers only)."""
        raise NotImplementedError(f"{type(self).__name__} cannot sleep")

    def device_bytes(self) -> int:
        """Bytes its weights hold on its device (``measures`` handlers; else 0)."""
        return 0

    @property
    def input_limits(self) -> Mapping[str, str]:
        """The limits ``check_inputs`` enforces, as the metadata's properties."""
        return {}

    def check_inputs(self, inputs: dict[str, Tensor]) -> None:
        """Refuse a request's inputs before it is queued (``checks_inputs`` handlers)."""


def handler_class(kind: str) -> type[ModelHandler]:
    """The handler class of a model config's ``handler`` kind, imported now (blocking: it may
    import torch); ConfigError when its module cannot be imported."""
    module_name, _, class_name = _REGISTRY[kind].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = {"hf-encoder": "hf", "kserve": "kserve", "text-generation": "llm"}.get(kind, "")
        hint = f" (install ember[{extra}])" if extra else ""
        raise ConfigError(f"handler '{kind}' is unavailable: {exc}{hint}") from None
    cls: type[ModelHandler] = getattr(module, class_name)
    return cls


def create_handler(config: ModelConfig) -> ModelHandler:
    return handler_class(config.handler_name)(config)


def parse_options(model: type[_Options], config: ModelConfig) -> _Options:
    """Validate a handler's ``options`` block against its own schema (unknown keys rejected)."""
    try:
        return model.model_validate(config.options)
    except ValidationError as exc:
        raise ConfigError(
            f"model '{config.name}': options for the {config.handler} handler: "
            f"{validation_message(exc)}"
        ) from None


def import_object(path: str, *, base_dir: Path | None) -> Any:
    """Import ``package.module:Name`` or ``relative/file.py:Name`` (relative to the config file)."""
    target, sep, attr = path.partition(":")
    if not sep or not attr:
        raise BadHandlerConfig(
            f"class path {path!r} must look like 'module:Class' or 'file.py:Class'"
        )
    try:
        file = class_file(path, base_dir)
        if file is not None:
            spec = importlib.util.spec_from_file_location(f"ember_user_{file.stem}", file)
            if spec is None or spec.loader is None or not file.is_file():
                raise BadHandlerConfig(f"cannot import {file}: no such file")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except BadHandlerConfig:
        raise
    except Exception as exc:
        raise BadHandlerConfig(f"cannot import {target}: {type(exc).__name__}: {exc}") from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise BadHandlerConfig(f"{target} has no attribute {attr!r}") from None
    if not inspect.isclass(obj) and not callable(obj):
        raise BadHandlerConfig(f"{path} is not a class or callable")
    return obj


def pick_device(requested: str) -> str:
    """Resolve ``auto`` to ``cuda`` when a GPU is usable, else ``cpu``; check explicit requests."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise BadHandlerConfig(f"device {requested!r} requested but no CUDA device is available")
    return requested
