"""Run the runtime under uvicorn: bind (port 0 picks one and prints it), serve, drain on SIGTERM."""

from __future__ import annotations

import signal

import uvicorn

from contracts.logs import configure as configure_logging
from contracts.sockets import bind
from runtime.app import create_app
from runtime.config import ModelConfig, ServerSettings


def serve(settings: ServerSettings, configs: list[ModelConfig]) -> int:
    """Serve until SIGINT/SIGTERM; in-flight requests get ``grace_period_s`` to finish. Exit 0."""
    configure_logging(settings.log_level)
    sock = bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    app = create_app(settings, configs)
    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's loggers go through ours (and its redacting filter)
        access_log=settings.access_log,
        timeout_graceful_shutdown=int(settings.grace_period_s) or None,
        server_header=False,
        date_header=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)

    # uvicorn re-raises the signal it caught once it has shut down; a handler of ours turns that
    # re-raise into a no-op, so a graceful stop exits 0 instead of dying of SIGTERM.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    print(f"ember serve: listening on http://{settings.host}:{port}", flush=True)
    server.run(sockets=[sock])
    return 0 if server.started else 1
