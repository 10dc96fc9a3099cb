"""``ember serve --exit-on-load-failure``: a model that cannot load ends the process, saying why.

Behind a Knative Service the replica's repository index cannot reach the activator while a model
is not ready: the readiness probe (``/v2/health/ready``) keeps Knative from routing any request
to the pod. What Kubernetes does carry is a container that exits: the kubelet copies the file at
the container's ``terminationMessagePath`` (``/dev/termination-log``) into
``lastState.terminated.message``, and Knative's revision reconciler turns it into
``ContainerHealthy=False`` (reason ``ExitCode<N>``, message ``Container failed with: <it>``),
which reaches the ksvc's ``Ready=False`` condition that the activator's Knative scaler watches.
So, with the flag, the first failed load writes one line there, is logged, and stops the server
gracefully; the process exits :data:`EXIT_LOAD_FAILED`.

Without the flag a server whose every model failed to load stops the same way (logged, no
termination message): nothing it could serve is left, and an unready server that never exits
hides the failure from whoever started it. ``--stay-on-load-failure`` keeps it up (the activator's
replicas run so: the activator decides what a failed replica becomes).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

from contracts.replica import ModelStatus

log = logging.getLogger("ember.runtime")

EXIT_LOAD_FAILED = 3  # `ember serve`: 1 cannot listen, 2 bad arguments or config
MESSAGE_LIMIT = 4096  # bytes: the kubelet keeps no more of a termination message
_ELLIPSIS = "..."


def termination_message(status: ModelStatus) -> str:
    """One human line: which model, the kind of failure and the reason, within the limit."""
    reason = status.reason.removeprefix("load failed: ")
    kind = f" ({status.failure})" if status.failure is not None else ""
    line = " ".join(f"model '{status.model}' could not load{kind}: {reason}".split())
    data = line.encode()
    if len(data) <= MESSAGE_LIMIT:
        return line
    # cut on a character boundary, and say that it was cut
    return data[: MESSAGE_LIMIT - len(_ELLIPSIS)].decode(errors="ignore") + _ELLIPSIS


def write_termination_message(path: Path, message: str) -> bool:
    """Write ``message`` to ``path`` (replacing what is there); log and go on if it cannot."""
    try:
        # one short synchronous write, like the status channel's: not worth a thread
        path.write_text(message, encoding="utf-8")
    except OSError as exc:
        log.warning("cannot write the termination message to %s: %s", path, exc)
        return False
    return True


class LoadFailureExit:
    """Watches the models' status changes for failed loads.

    Called with every :class:`~contracts.replica.ModelStatus`; returns True once the server
    should stop: with ``first``, at the first ``UNAVAILABLE`` status with a ``failure`` kind
    (written to the termination-message file and logged); otherwise once every one of ``models``
    has failed so, none having loaded since (logged). A load that succeeds, an unload, or a load
    cancelled by the server's own shutdown (no ``failure``) is not a failure. With ``models``
    empty and not ``first`` it never stops the server.
    """

    def __init__(self, path: Path, *, first: bool = True, models: Collection[str] = ()) -> None:
        self.path = path
        self.first = first
        self.models = frozenset(models)
        self.failures: dict[str, ModelStatus] = {}  # each model's standing failed load
        self.message: str | None = None  # set once the server is to stop

    @property
    def failed(self) -> bool:
        return self.message is not None

    def __call__(self, status: ModelStatus) -> bool:
        if self.failed:
            return False
        if status.state != "UNAVAILABLE" or status.failure is None:
            self.failures.pop(status.model, None)
            return False
        self.failures[status.model] = status
        if self.first:
            self.message = termination_message(status)
            log.error(
                "%s; stopping (--exit-on-load-failure, exit %d)", self.message, EXIT_LOAD_FAILED
            )
            write_termination_message(self.path, self.message)
            return True
        if not self.models or not self.models <= set(self.failures):
            return False
        self.message = "; ".join(termination_message(self.failures[m]) for m in sorted(self.models))
        log.error(
            "no model could load: %s; stopping (exit %d; --stay-on-load-failure keeps serving)",
            self.message,
            EXIT_LOAD_FAILED,
        )
        return True
