"""Everything checked before anything starts: ``ember.yaml`` and every model config it names.

``ember up`` and ``ember deploy`` call :func:`load_checked_stack` first, so a model config that
``ember serve`` would refuse (a mistyped key, a handler option it does not know) stops them with the
reason, instead of a replica that exits on the first request or a manifest that ships the typo.
``ember up`` with local replicas then checks the files they will read (:func:`check_local_files`): a
source that is not there, holds no safetensors, or a module file that does not exist. ``ember
deploy`` does not: its replicas read the weights from the store. It imports the runtime's config
schema only, which needs neither torch nor numpy: the activator's image has neither.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from typing import TypeVar

from contracts.configfile import class_file
from contracts.errors import ConfigError
from contracts.stack import StackConfig, load_stack
from runtime.config import ModelConfig, load_model_configs
from runtime.errors import ConfigError as ModelConfigError
from runtime.handlers.options import KServeOptions, TorchModuleOptions
from weight_cache import holds

# the files a handler reads from a local source, besides torch-module's options.weights
_HF_ENCODER_FILES = ("config.json", "tokenizer.json", "model.safetensors")


def load_checked_stack(path: str | Path) -> StackConfig:
    """:func:`contracts.stack.load_stack`, then each model config as ``ember serve`` checks it.

    Raises ConfigError with one line per problem, over all the model configs.
    """
    stack = load_stack(path)
    problems: list[str] = []
    for spec in stack.models.values():
        try:
            load_model_configs(spec.config_path)
        except ModelConfigError as exc:
            problems += str(exc).splitlines()
    if problems:
        raise ConfigError("\n".join(problems))
    return stack


def check_local_files(stack: StackConfig) -> None:
    """What ``ember up``'s local replicas would fail to load, found before the first request
    (a start that fails costs every request that waits for it seconds): each model's local
    source and imported file (:func:`local_problems`). ConfigError, one line per problem."""
    problems: list[str] = []
    checked: set[Path] = set()
    for spec in stack.models.values():
        if spec.config_path in checked:  # a file defining several models
            continue
        checked.add(spec.config_path)
        for config in load_model_configs(spec.config_path):
            problems += [f"{spec.config_path}: {p}" for p in local_problems(config)]
    if problems:
        raise ConfigError("\n".join(problems))


def local_problems(config: ModelConfig) -> list[str]:
    """What a model's files on this machine lack: its local ``source`` (there, a directory,
    holding the safetensors its handler reads, or what it holds instead) and the Python file its
    handler imports. Sources in a store (``s3://``, ``hf://``) are checked when fetched."""
    problems: list[str] = []
    if config.handler == "torch-module":
        module = _options(config, TorchModuleOptions)
        if module is not None:
            problems += _import_problems("options.module", module.module, config.base_dir)
    elif config.handler == "kserve":
        kserve = _options(config, KServeOptions)
        if kserve is not None:
            problems += _import_problems("options.model_class", kserve.model_class, config.base_dir)
    if config.source is None:
        return problems
    if "://" in config.source and not config.source.startswith(("file://", "pkg://")):
        return problems  # in a store
    try:
        root = config.local_source()
    except ModelConfigError as exc:
        return [*problems, f"source: {exc}"]
    if not root.exists():
        return [*problems, f"source: {root} does not exist"]
    if not root.is_dir():
        return [*problems, f"source: {root} is not a directory"]
    wanted: tuple[str, ...] = ()  # a kserve model reads what it likes from its source
    if config.handler == "torch-module":
        module = _options(config, TorchModuleOptions)
        wanted = (module.weights,) if module is not None else ()
    elif config.handler == "hf-encoder":
        wanted = _HF_ENCODER_FILES
    missing = [name for name in wanted if not (root / name).is_file()]
    if missing:
        hint = holds(root, weights_option=config.handler == "torch-module")
        problems.append(f"source: {root} has no {', '.join(missing)}; {hint}")
    return problems


_Options = TypeVar("_Options", TorchModuleOptions, KServeOptions)


def _options(config: ModelConfig, schema: type[_Options]) -> _Options | None:
    try:
        return schema.model_validate(config.options)
    except ValueError:  # said already, by the config's own check
        return None


def _import_problems(key: str, path: str, base_dir: Path | None) -> list[str]:
    """A ``file.py:Class`` whose file is missing, or a ``package.module:Class`` whose top-level
    package is not installed (nothing is imported: the activator has no torch)."""
    file = class_file(path, base_dir)
    if file is not None:
        return [] if file.is_file() else [f"{key}: {file} does not exist"]
    top = path.partition(":")[0].split(".", 1)[0]
    try:
        # the replicas run `python -m ember serve` from here: the working directory is on
        # their path, as it is not on the `ember` script's
        found = (
            importlib.util.find_spec(top) is not None
            or importlib.machinery.PathFinder.find_spec(top, [os.getcwd()]) is not None
        )
    except (ImportError, ValueError):
        found = False
    return [] if found else [f"{key}: Python package {top!r} is not installed"]


def refuse(command: str, exc: Exception) -> int:
    """Print each line of a config error as ``ember COMMAND: line`` on stderr; exit status 2."""
    for line in str(exc).splitlines() or [type(exc).__name__]:
        print(f"ember {command}: {line}", file=sys.stderr)
    return 2
