"""What Ember knows of a command engine (``engine: command``) wherever it runs it.

On this machine ``ember serve`` starts the command (:mod:`runtime.command_engine`); on Knative the
engine's own image runs it as its container (:mod:`knative.engine`). Both fill in its
placeholders with :func:`command_argv`, and both ask the server's ``GET /v1/models`` once it is
healthy and rename the model's requests to what it answers to (:func:`served_as`).
"""

from __future__ import annotations

from collections.abc import Sequence


def command_argv(
    command: Sequence[str], *, weights: str, port: int, host: str, model: str
) -> list[str]:
    """``command`` with ``{weights}``, ``{port}``, ``{host}`` and ``{model}`` filled in, each
    argument as a whole (no shell; ``{{`` and ``}}`` are literal braces). A placeholder the model
    config's check refused (KeyError, ValueError) is the caller's to report."""
    fields = {"weights": weights, "port": str(port), "host": host, "model": model}
    return [arg.format_map(fields) for arg in command]


def served_as(model: str, listed: Sequence[str]) -> str | None:
    """The name to send ``model``'s requests under, given the ids the server's ``/v1/models``
    lists: None when it answers to the model's own name (or lists nothing), else the first it
    lists (``transformers serve`` and ``vllm serve`` answer to their weights' path unless told
    a name)."""
    return listed[0] if listed and model not in listed else None
