"""Everything checked before anything starts: ``ember.yaml`` and every model config it names.

``ember up`` and ``ember deploy`` call :func:`load_checked_stack` first, so a model config that
``ember serve`` would refuse (a mistyped key, a handler option it does not know) stops them with
the reason, instead of a replica that exits on the first request or a manifest that ships the
typo. It imports the runtime's config schema only, which needs neither torch nor numpy: the
activator's image has neither.
"""

from __future__ import annotations

import sys
from pathlib import Path

from contracts.errors import ConfigError
from contracts.stack import StackConfig, load_stack
from runtime.config import load_model_configs
from runtime.errors import ConfigError as ModelConfigError


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


def refuse(command: str, exc: Exception) -> int:
    """Print each line of a config error as ``ember COMMAND: line`` on stderr; exit status 2."""
    for line in str(exc).splitlines() or [type(exc).__name__]:
        print(f"ember {command}: {line}", file=sys.stderr)
    return 2
