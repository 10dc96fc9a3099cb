"""One ``ember serve`` process of the local scaler, and its status pipe.

:func:`spawn` starts it with a pipe for its status (``ember serve --status-fd N``); its lines, the
:mod:`contracts.replica` events, land in a :class:`Status` (a ready standby, where it listens,
each model's state). Its stdout and stderr are re-logged here: it logs JSON lines
(``--log-format json``, :mod:`contracts.logs`), each re-logged at its own level on the
``ember.replica`` logger, prefixed with the model and the process id; a line that is no record
(what a library or the interpreter printed itself) at INFO from stdout and WARNING from stderr.
With ``forward`` off (``ember up --quiet-replicas``) everything is re-logged at DEBUG. The last
lines of stderr are kept to quote to a human in an error.

A process that cannot be started fails as a :class:`~activator.errors.ReplicaStartFailed`
(``PLATFORM``: this machine refused it), read from the ``OSError`` by its errno: out of file
descriptors (EMFILE, ENFILE) is :class:`OutOfDescriptors`. The descriptors a start needs are
taken and given back first (``SPAWN_DESCRIPTORS``): uvloop, short of them half-way through a
start, reports ``[Errno -1] Unknown error -1``, which says nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import resource
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from activator.errors import ReplicaStartFailed, StartFailure
from contracts.logs import decode_record
from contracts.proc import die_with_parent
from contracts.replica import (
    ContractViolation,
    Listening,
    ModelStatus,
    Readiness,
    Ready,
    Standby,
    decode,
    readiness,
)

T = TypeVar("T")
log = logging.getLogger("ember.activator")
replica_log = logging.getLogger("ember.replica")  # what replicas logged, re-logged

STATUS_LINE_LIMIT = 1 << 20  # a status line longer than this breaks the contract
# descriptors a start holds at once: its status pipe, three stdio pipes, the event loop's own
# for the child (pipes to learn of a failed exec, to be told of its exit), with room to spare
SPAWN_DESCRIPTORS = 16
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


class OutOfDescriptors(ReplicaStartFailed):
    """No file descriptors are left to start a replica with (a retryable 503 for its waiters)."""

    def __init__(self, code: int) -> None:
        name = errno.errorcode.get(code, str(code))
        if code == errno.ENFILE:
            where = "the system's open-file table is full"
        else:
            where = f"the activator holds {_open_descriptors()} of its limit of {_limit()}"
        super().__init__(
            f"out of file descriptors ({name}) starting a replica: {where}; raise the limit "
            "(ulimit -n) or take load off the activator",
            StartFailure.PLATFORM,
        )
        self.errno = code


class Status:
    """What a process's status pipe has said so far; ``changed`` is set at every line and at EOF."""

    def __init__(self, model: str) -> None:
        self.model = model  # the model it serves ("standby" until it is given one)
        # the models it must report serving before it is ready: its model, or a group's members
        self.expect: tuple[str, ...] = (model,)
        self.standby: Standby | None = None
        self.url: str | None = None
        self.models: dict[str, ModelStatus] = {}  # each model's latest state
        self.violation: ContractViolation | None = None  # the first bad line, before ready
        self.closed = False  # EOF: the process exited (or closed its end)
        self.ready: ModelStatus | None = None  # its model's READY: a bad line now is only logged
        self.changed = asyncio.Event()
        # each watcher's queue of (status, when it came); None at EOF
        self._watchers: list[asyncio.Queue[tuple[ModelStatus, float] | None]] = []

    def take(self, line: bytes) -> None:
        try:
            event = decode(line)
        except ContractViolation as exc:
            self.broken(exc)
            return
        log.debug("[%s] status: %s", self.model, event)
        if isinstance(event, Standby):
            self.standby = event
        elif isinstance(event, Listening):
            self.url = event.url
        else:
            self.models[event.model] = event
            if self.ready is None and self.settled():
                self.ready = event
            now = time.monotonic()
            for queue in self._watchers:
                queue.put_nowait((event, now))
        self.changed.set()

    def watch(self) -> asyncio.Queue[tuple[ModelStatus, float] | None]:
        """A queue of each model status from now on (and None once the pipe closed); give it
        back with :meth:`unwatch`."""
        queue: asyncio.Queue[tuple[ModelStatus, float] | None] = asyncio.Queue()
        if self.closed:
            queue.put_nowait(None)
        self._watchers.append(queue)
        return queue

    def unwatch(self, queue: asyncio.Queue[tuple[ModelStatus, float] | None]) -> None:
        self._watchers.remove(queue)

    def close(self) -> None:
        """The pipe closed (the process exited, or closed its end)."""
        self.closed = True
        for queue in self._watchers:
            queue.put_nowait(None)
        self.changed.set()

    def readiness(self) -> Readiness:
        """Where its start stands (:func:`contracts.replica.readiness` over what it said)."""
        return readiness(self.models, self.expect)

    def settled(self) -> bool:
        """Every expected model has said it serves (READY, or SLEEPING: a request wakes it) or
        that it cannot load, and one of them serves: the replica is ready."""
        return isinstance(self.readiness(), Ready)

    def phases(self) -> dict[str, float]:
        """The load phases of the models it serves, added up (one model: its own)."""
        total: dict[str, float] = {}
        for name in self.expect:
            status = self.models.get(name)
            for phase, seconds in (status.phases if status is not None else {}).items():
                total[phase] = total.get(phase, 0.0) + seconds
        return total

    def broken(self, violation: ContractViolation) -> None:
        if self.ready is not None:
            log.warning("[%s] ignored a bad status line: %s", self.model, violation)
            return
        self.violation = self.violation or violation
        self.changed.set()

    async def wait(self, deadline: float) -> bool:
        """Wait for the next line (or EOF) until ``deadline`` (monotonic); False once it passed.

        The caller checks what it waits for before each call: between that check and the
        ``clear`` here nothing runs, so no line is missed.
        """
        self.changed.clear()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            await asyncio.wait_for(self.changed.wait(), remaining)
        except TimeoutError:
            return False
        return True


@dataclass
class Process:
    """A started process, what it said on its status pipe, and the tasks reading from it."""

    proc: asyncio.subprocess.Process
    tail: collections.deque[str]  # the last lines of its stderr, for a human
    status: Status
    stderr: asyncio.Task[None]  # drains stderr into ``tail``; done once the process closed it
    readers: list[asyncio.Task[None]]  # every task reading from or watching the process
    stopping: bool = False
    report: Standby | None = field(default=None)  # a standby's preload report


async def spawn(
    command: Sequence[str],
    args: list[str],
    *,
    env: dict[str, str],
    standby: bool,
    label: str,
    forward: bool = True,
) -> Process:
    """Start ``command ARGS --status-fd N``, its status pipe read and its output re-logged
    (``forward``: at each record's level, else at DEBUG; ``standby``: its stdin a pipe, for the
    arguments it is given later)."""
    try:
        _reserve(SPAWN_DESCRIPTORS)
        read_fd, write_fd = os.pipe()  # the status pipe; both ends stay out of other children
    except OSError as exc:
        raise _start_failed(exc) from exc
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            *args,
            "--status-fd",
            str(write_fd),
            pass_fds=(write_fd,),
            stdin=asyncio.subprocess.PIPE if standby else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches the activator, which drains
            preexec_fn=die_with_parent,
        )
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        write_fd = -1
        try:  # what uvloop's errno does not say, a second try at the descriptors does
            _reserve(SPAWN_DESCRIPTORS)
        except OSError as short:
            raise _start_failed(short) from exc
        raise _start_failed(exc) from exc
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        if write_fd >= 0:
            os.close(write_fd)  # the child's copy is the only writer: its exit is our EOF
    assert proc.stdout is not None and proc.stderr is not None
    tail: collections.deque[str] = collections.deque(maxlen=30)
    status = Status(label)
    stderr = asyncio.create_task(
        _pump(proc.stderr, status, proc.pid, tail, logging.WARNING if forward else None)
    )
    stdout = asyncio.create_task(
        _pump(proc.stdout, status, proc.pid, None, logging.INFO if forward else None)
    )
    reading = asyncio.create_task(_read_status(read_fd, status))
    return Process(proc, tail, status, stderr, [reading, stderr, stdout])


def _reserve(count: int) -> None:
    """Take ``count`` descriptors and give them back: OSError (EMFILE) if they are not there."""
    held: list[int] = []
    try:
        while len(held) < count:
            held.extend(os.pipe())
    finally:
        for fd in held:
            os.close(fd)


def _start_failed(exc: OSError) -> ReplicaStartFailed:
    """A process that could not be started, said by its errno."""
    if exc.errno in _OUT_OF_DESCRIPTORS:
        return OutOfDescriptors(exc.errno)
    return ReplicaStartFailed(
        f"its replica process could not be started: {exc}", StartFailure.PLATFORM
    )


def _open_descriptors() -> str:
    try:
        return str(len(os.listdir("/proc/self/fd")))
    except OSError:  # not Linux, or none left to list them with
        return "nearly all"


def _limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def reap(state: Process) -> None:
    """Kill the process; wait for it, and for every task reading from or watching it."""
    with contextlib.suppress(ProcessLookupError):
        state.proc.kill()
    await state.proc.wait()
    for task in state.readers:
        task.cancel()
    await asyncio.gather(*state.readers, return_exceptions=True)


async def _read_status(fd: int, status: Status) -> None:
    """Read the status pipe's lines into ``status`` until EOF (the process exited)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STATUS_LINE_LIMIT)
    pipe = os.fdopen(fd, "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
    except BaseException:
        pipe.close()
        raise
    try:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # over the limit: the reader dropped it
                status.broken(ContractViolation(f"a status line over {STATUS_LINE_LIMIT} bytes"))
                continue
            if not line:
                break
            status.take(line)
    finally:
        transport.close()
        status.close()


async def _pump(
    stream: asyncio.StreamReader,
    status: Status,
    pid: int,
    tail: collections.deque[str] | None,
    plain_level: int | None,
) -> None:
    """Keep an output pipe drained, re-logging what it says: a record at its own level and a
    plain line at ``plain_level`` (None: everything at DEBUG). The last lines of stderr explain
    a failure to a human."""
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # a line over the stream's limit, dropped: keep draining
            continue
        if not line:
            return
        record = decode_record(line)
        if record is None:
            text = line.decode(errors="replace").rstrip()
            level = plain_level
            said = text
        else:
            text = record.message
            level = record.level if plain_level is not None else None
            said = f"{record.logger}: {record.message}"
            if record.exc:
                said = f"{said}\n{record.exc}"
        if tail is not None:
            tail.append(text)
        replica_log.log(
            logging.DEBUG if level is None else level, "[%s pid %d] %s", status.model, pid, said
        )


async def until(
    state: Process,
    said: Callable[[], T | None],
    deadline: float,
    *,
    broke: Callable[[ContractViolation], BaseException],
    gone: Callable[[str], BaseException],
    late: Callable[[], BaseException],
) -> T:
    """What ``said()`` finds in what the process said, once it finds something, waiting on its
    status pipe until ``deadline`` (monotonic). Raises ``broke(violation)`` at a bad line,
    ``gone(how it ended)`` once it exited, ``late()`` at the deadline."""
    status = state.status
    while True:
        if status.violation is not None:
            raise broke(status.violation)
        found = said()
        if found is not None:
            return found
        if status.closed:
            raise gone(await exited(state))
        if not await status.wait(deadline):
            raise late()


async def exited(state: Process) -> str:
    """How the process ended, once its status pipe closed (its stderr read to the end)."""
    try:
        code = await asyncio.wait_for(state.proc.wait(), 5)
    except TimeoutError:
        return "closed its status channel"
    await asyncio.wait({state.stderr}, timeout=1)  # its last lines say why
    return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"


def last_line(tail: collections.deque[str]) -> str:
    """The last line of stderr worth quoting, as ``": line"`` to end a message (or nothing)."""
    lines = [t for t in tail if t.strip()]
    return f": {lines[-1][-300:]}" if lines else ""
