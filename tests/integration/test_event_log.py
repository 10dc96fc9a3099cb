"""The event log through ``ember up``: bounded by what a caller sends, and never a reason not to
start. A real activator process with a real replica (the tiny ``slow`` torch-module model)."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.integration.test_activator import (
    BODY,
    activator,
    metric,
    post,
    slow,
    stack,
    wait_until,
)
from tests.servers import ROOT, ServerProcess

QUERY = "?q=" + "x" * 60 * 1024  # under max_header_bytes (64 KiB), over anything worth logging


def cost_report(log: Path) -> dict[str, Any]:
    """``ember cost-report --format json`` of the log, as a user runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "ember", "cost-report", "--events", str(log), "--format", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_3000_requests_with_a_60_kb_query_grow_the_log_by_under_1_mb(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    with activator(stack(tmp_path, [slow(tmp_path)])) as server:
        # http.client on one kept-alive connection: httpx spends ~15 ms parsing each such URL
        host, port = server.url.removeprefix("http://").split(":")
        client = http.client.HTTPConnection(host, int(port), timeout=60)

        def call(method: str, path: str, headers: dict[str, str] | None = None) -> int:
            client.request(method, path, BODY if method == "POST" else None, headers or {})
            answer = client.getresponse()
            answer.read()
            return answer.status

        assert call("POST", "/v2/models/slow/infer") == 200  # the cold start
        before = log.stat().st_size
        codes: dict[int, int] = {}
        for i in range(3000):
            kind = i % 6
            if kind in (0, 1, 2):  # relayed to the replica, logged by route
                status = call("GET", "/v2/models/slow/ready" + QUERY)
            elif kind == 3:
                status = call("POST", "/v2/models/slow/infer" + QUERY)
            elif kind == 4:  # refused before any replica: counted, not logged
                status = call("POST", "/v2/models/nope/infer" + QUERY)
            else:
                deadline = {"Ember-Deadline-Ms": "soon"}
                status = call("POST", "/v2/models/slow/infer" + QUERY, deadline)
            codes[status] = codes.get(status, 0) + 1
        client.close()
        assert codes == {200: 2000, 404: 500, 400: 500}, codes
        refused = 'ember_activator_refused_total{model="%s",reason="%s"}'
        assert metric(server, refused % ("", "unknown_model")) == 500
        assert metric(server, refused % ("slow", "bad_request")) == 500
    grown = log.stat().st_size - before
    assert grown < 1_000_000, f"the event log grew by {grown} bytes"
    assert "xxxxxxxx" not in log.read_text()
    requests = [json.loads(line) for line in log.read_text().splitlines()]
    routes = {(e["endpoint"], e["status"]) for e in requests if e["event"] == "request"}
    assert routes == {("infer", 200), ("ready", 200)}
    assert len([e for e in requests if e["event"] == "request"]) == 2001


def test_a_log_with_a_bad_timestamp_and_a_torn_line_neither_stops_the_start_nor_swallows(
    tmp_path: Path,
) -> None:
    log = tmp_path / "events.jsonl"
    good = {"event": "request", "model": "slow", "ts": 1.0, "arrival": 0.5, "status": 200}
    log.write_text(
        json.dumps(good)
        + "\n"
        + json.dumps({**good, "ts": "not a time"})  # once, this stopped `ember up`
        + "\n"
        + '{"event":"replica_ready","model":"slow","ts":2.0,"repl'  # torn by a crash
    )
    config = stack(tmp_path, [slow(tmp_path)], event_log_max_bytes="1MiB", event_log_keep=2)
    with activator(config) as server:
        assert metric(server, "ember_activator_event_log_skipped_lines_total") == 2
        assert "skipped 2 line(s) that are not well-typed events" in server.output
        infer = server.url + "/v2/models/slow/infer"  # waits for a start: 60 s, not httpx's 5
        assert httpx.post(infer, content=BODY, timeout=60).status_code == 200
    lines = log.read_text().splitlines()
    assert lines[2].endswith('"repl')  # the torn line, ended; the next event is whole
    after = [json.loads(line) for line in lines[3:]]
    assert [e["endpoint"] for e in after if e["event"] == "request"] == ["infer"]
    out = cost_report(log)
    assert out["total"]["requests"] == 2
    assert any("2 unreadable line(s) skipped" in note for note in out["notes"])


def test_a_bad_event_log_bound_is_refused_before_anything_starts(tmp_path: Path) -> None:
    config = stack(tmp_path, [slow(tmp_path)], event_log_keep=-1, event_log_max_bytes="lots")
    out = subprocess.run(
        [sys.executable, "-m", "ember", "up", "--config", str(config), "--port", "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "event_log_keep" in out.stderr and "event_log_max_bytes" in out.stderr


def test_a_killed_activators_run_is_billed_to_its_last_event_after_a_restart(
    tmp_path: Path,
) -> None:
    """SIGKILL mid-run (its replica dies with it, unlogged), a restart on the same log, one more
    request, SIGTERM: the report bills both runs' replicas and says one run was closed so."""
    log = tmp_path / "events.jsonl"
    config = stack(tmp_path, [slow(tmp_path, price_per_hour=1.0)])

    def logged(kind: str) -> int:
        text = log.read_text() if log.exists() else ""
        return sum(json.loads(line)["event"] == kind for line in text.splitlines() if line)

    first = ServerProcess(config, command="up")
    try:
        first.wait_ready(timeout_s=30)
        assert post(first).status_code == 200
        wait_until(lambda: logged("request") == 1, 10, "the request logged")
        first.proc.kill()  # no activator_stop, no replica_stopped
        first.proc.wait(30)
    finally:
        first.terminate()
    assert logged("activator_start") == 1 and logged("activator_stop") == 0
    with activator(config) as second:
        assert post(second).status_code == 200
    assert logged("activator_start") == 2 and logged("activator_stop") == 1
    report = cost_report(log)
    (slow_row,) = report["models"]
    assert slow_row["replica_starts"] == 2 and slow_row["requests"] == 2
    assert report["runs"]["closed_at_last_event"] == 1
    assert report["runs"]["replicas_closed"] == 1
    assert any("ended without stopping" in note for note in report["notes"])
    # both replicas' lives billed: at least the 60 s minimum each
    assert slow_row["replica_seconds"]["billed"] >= 120
