from __future__ import annotations

import socket
import subprocess
import sys

from tests.conftest import MLP_CONFIG


def run(*code_or_args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *code_or_args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_serve_and_its_flags() -> None:
    top = run("-m", "ember", "--help")
    assert top.returncode == 0 and "serve" in top.stdout
    serve = run("-m", "ember", "serve", "--help")
    for flag in ("--config", "--host", "--port", "--max-request-bytes", "--grace-period"):
        assert flag in serve.stdout


def test_the_server_modules_do_not_import_torch() -> None:
    # torch (seconds to import) is loaded by a handler, in a worker thread, never on the way up
    probe = run(
        "-c", "import sys, ember.cli, runtime.app, runtime.server; print('torch' in sys.modules)"
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "False"


def test_a_busy_port_is_a_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run("-m", "ember", "serve", "--config", str(MLP_CONFIG), "--port", str(port))
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
