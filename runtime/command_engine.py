"""``engine: command``: a model served by another OpenAI-compatible server (``vllm serve``,
``transformers serve``, ``llama-server``, SGLang), with Ember's weight tier and scale to zero.

``ember serve`` given such a model's config does not start its own server: it says where the
model will listen (a free port on ``--host``: :class:`~contracts.replica.Listening`, so the
activator knows its replica started), pulls the weights into the local tier as for its own
handlers (an ``s3://`` source streamed and verified; a local one as it is), starts the command
with ``{weights}`` (the model's folder), ``{port}``, ``{host}`` and ``{model}`` (its name)
filled in, and polls ``health`` until it answers 200; then it asks ``/v1/models`` what the
server serves, and says READY on its status channel with the seconds each phase took (and, when
the server does not answer to the model's name, the name it answers to: ``served_as``, which the
activator puts in the requests it relays). From
then the activator relays the model's requests to that server directly: this process only
watches it. It exits when the server does (with its status), and on SIGTERM it passes the
signal on to the server's process group (what it started too) and waits ``--grace-period`` for
it to stop, then kills the group. The server dies with this process too
(``PR_SET_PDEATHSIG``); told to stop while the weights are still coming, it starts nothing.

A load that fails (the weights, the command not found, the server exiting before it is
healthy) is said as UNAVAILABLE with its kind, as for any model, and the process exits 3.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import os
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

from contracts import engine
from contracts.logs import configure as configure_logging
from contracts.proc import die_with_parent
from contracts.replica import FailureKind, Listening, ModelState, ModelStatus
from runtime.config import ModelConfig, ServerSettings
from runtime.sources import WeightSources
from runtime.status import StatusChannel, failure_kind

log = logging.getLogger("ember.runtime")

HEALTH_POLL_S = 0.1
EXIT_LOAD_FAILED = 3


def serve_command(settings: ServerSettings, config: ModelConfig) -> int:
    """Run ``config``'s command as its model's server until it exits or this process is told
    to stop; the exit status (3: the model could not be loaded)."""
    configure_logging(settings.log_level, settings.log_format)
    return asyncio.run(_serve(settings, config))


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def command_argv(config: ModelConfig, *, weights: Path, host: str, port: int) -> list[str]:
    """The command with its placeholders filled in (each argument as a whole: no shell)."""
    return engine.command_argv(
        config.command, weights=str(weights), port=port, host=host, model=config.name
    )


async def _serve(settings: ServerSettings, config: ModelConfig) -> int:
    channel = StatusChannel(settings.status_fd)
    port = settings.port or free_port(settings.host)
    url = f"http://{settings.host}:{port}"
    print(f"ember serve: listening on {url} (the command's server, once healthy)", flush=True)
    channel.send(Listening(url))
    channel.send(ModelStatus(config.name, ModelState.LOADING))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def unavailable(reason: str, kind: FailureKind) -> int:
        log.error("model %s: %s", config.name, reason)
        channel.send(ModelStatus(config.name, ModelState.UNAVAILABLE, reason, kind))
        return EXIT_LOAD_FAILED

    sources = WeightSources(
        cache_dir=settings.cache_dir,
        budget_bytes=settings.cache_budget_bytes,
        concurrency=settings.fetch_concurrency,
        chunk_bytes=settings.fetch_chunk_bytes,
    )
    started = time.perf_counter()
    pulling = asyncio.ensure_future(sources.localize(config))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait((pulling, stopping), return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not pulling.done():  # told to stop while its weights came: nothing started yet
        pulling.cancel()
        with contextlib.suppress(BaseException):
            await pulling
        await sources.aclose()
        return 0
    try:
        localized = pulling.result()
        weights = localized.config.local_source() if config.source else Path(".")
    except Exception as exc:  # the weights: missing, corrupt, a store down, a full disk
        await sources.aclose()
        return unavailable(f"cannot fetch its weights: {exc}", failure_kind(exc))
    phases = dict(localized.phases)
    argv = command_argv(config, weights=weights, host=settings.host, port=port)
    log.info("model %s: starting %s", config.name, " ".join(argv))
    launched = time.perf_counter()
    proc: asyncio.subprocess.Process | None = None
    try:
        try:
            # its own process group (what it starts is signalled with it), and killed with
            # this process
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        except OSError as exc:
            why = f"cannot start {argv[0]!r}: {exc.strerror or exc}"
            return unavailable(why, FailureKind.BAD_CONFIG)
        healthy = await _until_healthy(url + config.health, proc, stop)
        if stop.is_set():
            return await _stop(proc, settings.grace_period_s)
        if not healthy:
            return unavailable(
                f"its command exited with status {proc.returncode} before {config.health} "
                "answered 200",
                FailureKind.LOAD_FAILED,
            )
        phases["load"] = time.perf_counter() - launched
        served = await asyncio.to_thread(_models, url)
        if stop.is_set():
            return await _stop(proc, settings.grace_period_s)
        log.info(
            "model %s: ready in %.2fs, its server at %s serving %s",
            config.name,
            time.perf_counter() - started,
            url,
            ", ".join(served) or "(no /v1/models list)",
        )
        # a server pinned to another name (transformers serve answers to its weights' path):
        # the activator renames the model in the requests it relays
        served_as = engine.served_as(config.name, served)
        ready = ModelStatus(config.name, ModelState.READY, phases=phases, served_as=served_as)
        channel.send(ready)
        await _until_exit(proc, stop)
        if proc.returncode is None:
            return await _stop(proc, settings.grace_period_s)
        code = proc.returncode
        log.warning("model %s: its server exited with status %s", config.name, code)
        return 128 - code if code < 0 else code  # killed by a signal: as a shell says it
    finally:
        localized.release()
        await sources.aclose()
        if proc is not None and proc.returncode is None:
            _signal_group(proc, signal.SIGKILL)
            await proc.wait()


async def _until_healthy(url: str, proc: asyncio.subprocess.Process, stop: asyncio.Event) -> bool:
    """Poll ``url`` until it answers 200 (True); False once the command exits or a stop comes."""
    while not stop.is_set():
        if proc.returncode is not None:
            return False
        if await asyncio.to_thread(_answers_200, url):
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), HEALTH_POLL_S)
    return False


async def _until_exit(proc: asyncio.subprocess.Process, stop: asyncio.Event) -> None:
    waiting = asyncio.ensure_future(proc.wait())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait((waiting, stopping), return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not waiting.done():
        waiting.cancel()


async def _stop(proc: asyncio.subprocess.Process, grace_s: float) -> int:
    """SIGTERM to the server's process group, then SIGKILL past ``grace_s``; 0 (this process
    was told to stop)."""
    _signal_group(proc, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        log.warning("its server did not stop within %gs: killed", grace_s)
        _signal_group(proc, signal.SIGKILL)
        await proc.wait()
    return 0


def _signal_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


# loopback only: a proxy in the environment (HTTP_PROXY) is not asked
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _answers_200(url: str) -> bool:
    try:
        with _OPENER.open(url, timeout=2) as r:
            return int(r.status) == 200
    except (OSError, ValueError, http.client.HTTPException):
        return False


def _models(base: str) -> list[str]:
    """The model ids the server lists at ``/v1/models`` (none when it lists none)."""
    try:
        with _OPENER.open(base + "/v1/models", timeout=5) as r:
            data = json.loads(r.read()).get("data") or []
    except (OSError, ValueError, AttributeError, http.client.HTTPException):
        return []
    return [str(m.get("id")) for m in data if isinstance(m, dict)]


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run through `ember serve --config CONFIG`")
