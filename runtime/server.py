"""Run the runtime under uvicorn: bind (port 0 picks one and prints it), serve, drain on SIGTERM.

With ``exit_on_load_failure`` the first model that cannot load stops the server the same
graceful way, and without it a server none of whose models could load (unless
``stay_on_load_failure``): see :mod:`runtime.termination`.
"""

from __future__ import annotations

import signal

import uvicorn
from starlette.types import ASGIApp

from contracts.logs import configure as configure_logging
from contracts.replica import Listening, ModelStatus
from contracts.sockets import bind
from runtime.app import create_app
from runtime.config import ModelConfig, ServerSettings
from runtime.http_protocol import protocol_class
from runtime.status import StatusChannel
from runtime.termination import EXIT_LOAD_FAILED, LoadFailureExit


def serve(settings: ServerSettings, configs: list[ModelConfig]) -> int:
    """Serve until SIGINT/SIGTERM; in-flight requests get ``grace_period_s`` to finish. Exit 0.

    With ``status_fd`` the address and every model's state changes go there too, as
    :mod:`contracts.replica` events (the activator's pipe). With ``exit_on_load_failure`` a
    model's failed load writes ``termination_log``, stops the server as SIGTERM would, and the
    exit status is :data:`~runtime.termination.EXIT_LOAD_FAILED`; so does (without writing) the
    failure of every model, unless ``stay_on_load_failure``.
    """
    configure_logging(settings.log_level, settings.log_format)
    sock = bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    status = StatusChannel(settings.status_fd)
    load_failed = LoadFailureExit(
        settings.termination_log,
        first=settings.exit_on_load_failure,
        models=() if settings.stay_on_load_failure else [c.name for c in configs],
    )

    def on_status(event: ModelStatus) -> None:  # called on the event loop, by the repository
        status.send(event)
        if load_failed(event):
            server.should_exit = True  # uvicorn's main loop sees it within 0.1 s, then drains

    app = create_app(settings, configs, on_status=on_status)
    server = uvicorn.Server(uvicorn_config(app, settings))

    # uvicorn re-raises the signal it caught once it has shut down; a handler of ours turns that
    # re-raise into a no-op, so a graceful stop exits 0 instead of dying of SIGTERM.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    url = f"http://{settings.host}:{port}"
    print(f"ember serve: listening on {url}", flush=True)
    status.send(Listening(url))  # the socket listens: connections queue until uvicorn accepts
    server.run(sockets=[sock])
    if load_failed.failed:
        return EXIT_LOAD_FAILED
    return 0 if server.started else 1


def uvicorn_config(app: ASGIApp, settings: ServerSettings) -> uvicorn.Config:
    """uvicorn's settings for the predictor: our HTTP/1.1 protocol, no websocket, our loggers."""
    return uvicorn.Config(
        app,
        http=protocol_class(
            header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s
        ),
        ws="none",  # a websocket handshake is refused by the protocol (runtime.http_protocol)
        log_level=settings.log_level,
        log_config=None,  # uvicorn's loggers go through ours (and its redacting filter)
        access_log=settings.access_log,
        timeout_graceful_shutdown=int(settings.grace_period_s) or None,
        server_header=False,
        date_header=False,
        lifespan="on",
    )
