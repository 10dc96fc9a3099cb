"""``ember up``: the activator and its local replicas, until SIGTERM/SIGINT.

On SIGTERM the activator stops accepting connections, lets the requests it holds (queued ones
included) finish within the grace period, drains and stops every replica, and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

from activator.app import Activator
from activator.frontdoor import run
from activator.scalers.base import Scaler
from activator.scalers.local import LocalScaler
from contracts.logs import configure as configure_logging
from contracts.preload import preload_modules
from contracts.proc import give_big_blocks_back
from contracts.sockets import bind
from contracts.stack import StackConfig


def up(stack: StackConfig, host: str, port: int, *, access_log: bool = False) -> int:
    settings = stack.settings
    configure_logging(settings.log_level)
    give_big_blocks_back()  # request bodies, once let go, leave the process's memory too
    sock = bind(host, port)
    try:
        return _serve(stack, sock, host, access_log=access_log)
    finally:
        sock.close()  # a failed start leaves no bound socket (a second close is a no-op)


def _serve(stack: StackConfig, sock: socket.socket, host: str, *, access_log: bool) -> int:
    settings = stack.settings
    bound = sock.getsockname()[1]
    scaler: Scaler
    if settings.scaler == "knative":
        from activator.scalers.knative import KnativeScaler

        scaler = KnativeScaler.from_environment(stack.knative.namespace)
        # Knative scales pods behind one URL: one "replica" per model, with all their slots
        models = {
            name: spec.model_copy(
                update={
                    "max_replicas": 1,
                    "container_concurrency": spec.container_concurrency * spec.max_replicas,
                    "target": float(spec.container_concurrency * spec.max_replicas),
                }
            )
            for name, spec in stack.models.items()
        }
        stack = stack.model_copy(update={"models": models})
    else:
        scaler = LocalScaler(
            cache_dir=settings.cache_dir,
            warm_pool=settings.warm_pool,
            withhold_env=(settings.admin_token_env, settings.api_token_env),  # no token leaks
            log_level=settings.log_level,
            forward_logs=not settings.quiet_replicas,
            preload=preload_modules(stack.models.values()) if settings.warm_pool else (),
        )
    activator = Activator(stack, scaler, host=host, access_log=access_log)

    def signals(stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

    print(f"ember up: listening on http://{host}:{bound}", flush=True)
    logging.getLogger("ember.activator").info(
        "serving %d model(s): %s", len(stack.models), ", ".join(stack.models)
    )
    if settings.events is not None:
        logging.getLogger("ember.activator").info(
            "event log: %s (ember cost-report --events %s; activator.events sets it, null: off)",
            settings.events,
            settings.events,
        )
    else:
        logging.getLogger("ember.activator").info("event log: off (activator.events is null)")
    run(activator, sock, signals)
    logging.getLogger("ember.activator").info("stopped")
    return 0
