"""Start real ``ember serve`` processes on loopback port 0 and poll them until they answer."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"listening on (http://\S+)")


class ServerProcess:
    """``ember serve`` (or, with ``command="up"``, the activator) on port 0."""

    def __init__(
        self, config: Path, *args: str, command: str = "serve", env: dict[str, str] | None = None
    ) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ember", command, "--config", str(config), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.lines: list[str] = []
        self._url: str | None = None
        self._found = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            match = _LISTENING.search(line)
            if match and self._url is None:
                self._url = match.group(1)
                self._found.set()
        self._found.set()

    @property
    def url(self) -> str:
        if not self._found.wait(60) or self._url is None:
            raise RuntimeError(f"server did not start:\n{self.output}")
        return self._url

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout_s: float = 120.0, path: str = "/v2/health/ready") -> None:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output}")
                try:
                    if client.get(path).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout_s}s:\n{self.output}")

    def terminate(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


@contextmanager
def running_server(
    config: Path,
    *args: str,
    ready: bool = True,
    env: dict[str, str] | None = None,
    timeout_s: float = 120.0,
) -> Iterator[ServerProcess]:
    server = ServerProcess(config, *args, env=env)
    try:
        if ready:
            server.wait_ready(timeout_s)
        else:
            _ = server.url
        yield server
    finally:
        server.terminate()


def wait_for_state(server: ServerProcess, state: str, timeout_s: float = 60) -> dict[str, Any]:
    """Poll the repository index until a model has tried to load and reached ``state``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            for entry in httpx.post(server.url + "/v2/repository/index").json():
                if entry["state"] == state and entry["reason"] != "not loaded":
                    return dict(entry)
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"model never reached {state}:\n{server.output}")


def children_of(pid: int) -> list[int]:
    """PIDs of a process's live (not zombie) children, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return out
