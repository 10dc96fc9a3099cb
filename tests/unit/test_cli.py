from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def test_version() -> None:
    from ember.help import ember_version

    done = run("-m", "ember", "--version")
    assert done.returncode == 0 and done.stdout == f"ember {ember_version()}\n"
    assert ember_version()[0].isdigit()


def test_every_command_shows_an_example() -> None:
    from ember.cli import build_parser
    from ember.help import commands

    parser = build_parser()
    every = dict(commands(parser, ()))
    assert {("serve",), ("up",), ("deploy",), ("cache", "pull")} <= set(every)
    for path, command in [((), parser), *every.items()]:
        # the command itself, under an "example(s):" heading at the end of its help
        example = re.escape(f"ember {' '.join(path)}".rstrip())
        assert re.search(rf"\nexamples?:\n(  .*\n)*  .*{example}", command.format_help()), path


def test_serve_shows_config_as_required_and_both_servers_take_the_same_log_levels() -> None:
    from ember.cli import build_parser

    parser = build_parser()
    serve, up = (parser.parse_args([c, "--config", "x"]) for c in ("serve", "up"))
    assert serve.log_level == "info" and up.log_level is None  # up: ember.yaml's, else info
    usage = run("-m", "ember", "serve", "--help").stdout
    assert "(-c CONFIG | --standby)" in usage
    levels = "{debug,info,warning,error}"
    assert f"--log-level {levels}" in usage
    assert f"--log-level {levels}" in run("-m", "ember", "up", "--help").stdout
    missing = run("-m", "ember", "serve")
    assert missing.returncode == 2 and "--config" in missing.stderr


def test_cache_pull_prints_the_path_alone_on_stdout(tmp_path: Path) -> None:
    store = f"file://{tmp_path / 'store'}"
    weights = MLP_CONFIG.parent / "weights"
    assert run("-m", "ember", "cache", "push", str(weights), store).returncode == 0
    tier = str(tmp_path / "tier")
    first, again = (run("-m", "ember", "cache", "pull", store, "--cache-dir", tier) for _ in "12")
    assert first.returncode == 0 and again.returncode == 0, first.stderr
    path = Path(first.stdout.rstrip("\n"))
    assert first.stdout == f"{path}\n" and again.stdout == first.stdout
    assert (path / "model.safetensors").is_file()
    assert f"{store}: fetched in " in first.stderr
    assert f"{store}: already in the local tier" in again.stderr


def test_simulate_help_names_tiered_and_its_wake_costs() -> None:
    out = run("-m", "ember", "simulate", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())  # argparse wraps lines
    assert "tiered" in text and "--wake LEVEL=SECONDS" in text
    assert "host=0.05 disk=0.15" in text and "ember simulate --trace" in text


def test_the_small_things_a_first_hour_runs_into(tmp_path: Path, capsys: Any) -> None:
    from ember.cli import main

    # the cost report writes a file with -o, saying where on stderr
    log = tmp_path / "events.jsonl"
    log.write_text(
        '{"event": "replica_starting", "model": "m", "ts": 0, "mono": 0, "replica": 1}\n'
        '{"event": "replica_stopped", "model": "m", "ts": 90, "mono": 90, "replica": 1}\n'
    )
    out = tmp_path / "report.md"
    assert main(["cost-report", "--events", str(log), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and f"wrote {out}" in captured.err
    assert out.read_text().startswith("#")
    # an unknown policy lists tiered too
    trace = tmp_path / "trace.jsonl"
    trace.write_text('{"event": "request", "model": "m", "ts": 1}\n')
    assert main(["simulate", "--trace", str(trace), "--policy", "lru"]) == 2
    assert "or tiered, for the models of a group" in capsys.readouterr().err
    # ember up reads ./ember.yaml unless told otherwise (-c names another)
    assert main(["up", "-c", str(tmp_path / "nowhere.yaml")]) == 2
    assert "nowhere.yaml does not exist" in capsys.readouterr().err


def test_without_the_analysis_package_the_reports_say_so(monkeypatch: Any, capsys: Any) -> None:
    """As in the activator image, which leaves the offline analysis out."""
    from ember.cli import main

    for name in [m for m in sys.modules if m.partition(".")[0] == "analysis"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "analysis", None)  # import analysis -> ModuleNotFoundError
    for argv in (
        ["cost-report", "--events", "x"],
        ["simulate", "--trace", "x", "--policy", "knative"],
    ):
        assert main(argv) == 1
        said = capsys.readouterr()
        assert said.out == "" and said.err.startswith(
            f"ember {argv[0]}: this installation has no offline analysis"
        ), said.err


WARM = ("--model", "m", "--seconds", "1")


def test_prewarm_takes_host_port_as_ember_up_prints_it() -> None:
    with socket.socket() as listener:  # nothing answers HTTP here: the error names the URL
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    done = subprocess.run(
        [sys.executable, "-m", "ember", "prewarm", "--activator", f"127.0.0.1:{port}", *WARM],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"cannot reach 127.0.0.1:{port}" in done.stderr
    assert "unknown url type" not in done.stderr.lower()


def test_an_event_log_that_cannot_be_written_stops_up_saying_so(
    tmp_path: Path, capsys: Any
) -> None:
    from ember.cli import main

    (tmp_path / "mod.py").write_text("class Y: ...\n")
    (tmp_path / "m.yaml").write_text("name: m\nhandler: kserve\noptions: {model_class: mod.py:Y}\n")
    (tmp_path / "ember.yaml").write_text(  # /proc takes no new directory, not even from root
        "activator: {events: /proc/no/events.jsonl}\nmodels:\n  - config: m.yaml\n"
    )
    assert main(["up", "-c", str(tmp_path / "ember.yaml"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "cannot write the event log /proc/no/events.jsonl" in err and "listen" not in err
