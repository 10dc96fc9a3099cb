"""The ``sleep`` step of ``scripts/gpu_check.py``: how long a served model takes to answer again
after it was put to sleep, per level.

``ember serve`` on one model's config (127.0.0.1, port 0), ready; the median of warm requests;
then per level (``host``, then ``disk``), ``repeats`` times: ``POST
/v2/repository/models/{m}/unload {"parameters": {"level": L}}`` (answered once the model is put
away) and one inference request, timed. The wake is that request's time minus the warm median
(the runtime counts a wake as queue time). Beside it, the runtime's own figure: the delta of the
``ember_model_wake_seconds`` histogram's sum over its count across the request (and of
``ember_model_sleep_seconds`` across the unload).

A target is met when the median wake, as the client sees it, is within it. Standard library only,
and none of gpu_check's helpers: gpu_check imports this module, not the other way round.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LEVELS = ("host", "disk")
# the targets, for the 2 GiB fp16 module on a GPU
TARGETS = {"host_s": 0.1, "disk_s": 1.0}
WARM_REQUESTS = 20
WAKE = "ember_model_wake_seconds"
SLEEP = "ember_model_sleep_seconds"


class RunFailed(Exception):
    """A step of the measurement failed; its message says which and why."""


def empty_report() -> dict[str, Any]:
    return {"results": [], "targets": dict(TARGETS), "met": {k: None for k in TARGETS}}


def met(results: list[dict[str, Any]]) -> dict[str, bool | None]:
    """Per target, whether its level's median wake is within it; None: no result."""
    medians = {f"{r['level']}_s": r["wake_s_median"] for r in results}
    return {
        key: None if medians.get(key) is None else medians[key] <= target
        for key, target in TARGETS.items()
    }


def summary(report: dict[str, Any]) -> list[str]:
    """Lines for gpu_check's printed summary."""
    lines = ["| sleep level | device | wake s (client) | wake s (runtime) | target s | met |"]
    met_ = report.get("met", {})
    for r in report.get("results", []):
        runtime = r.get("runtime_wake_s_median")
        key = f"{r['level']}_s"
        lines.append(
            f"| {r['level']} | {r['device']} | {r['wake_s_median']:.4f} | "
            f"{'-' if runtime is None else f'{runtime:.4f}'} | {TARGETS.get(key, '-')} | "
            f"{met_.get(key)} |"
        )
    return lines


@contextlib.contextmanager
def serving(config: Path, work: Path, deadline: float) -> Iterator[str]:
    """``ember serve`` on ``config`` until its models are ready; yields its URL, stops it after."""
    log_out, log_err = work / "serve-stdout.log", work / "serve-stderr.log"
    env = {k: v for k, v in os.environ.items() if k not in ("EMBER_API_TOKEN", "EMBER_ADMIN_TOKEN")}
    cmd = [sys.executable, "-m", "ember", "serve", "--config", str(config), "--port", "0"]
    cmd += ["--host", "127.0.0.1", "--cache-dir", str(work / "tier")]
    with log_out.open("w") as out, log_err.open("w") as err:
        proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
        )
    try:

        def check_alive() -> None:
            if proc.poll() is not None:
                tail = " | ".join(log_err.read_text().strip().splitlines()[-4:])[-300:]
                raise RunFailed(f"ember serve exited {proc.returncode}: {tail}")

        def listening() -> str | None:
            check_alive()
            found = re.search(r"listening on (http://\S+)", log_out.read_text())
            return found.group(1) if found else None

        url: str = wait_for(listening, min(60, deadline - time.time()), "ember serve to listen")

        def ready() -> bool:
            check_alive()
            return _get_status(url + "/v2/health/ready") == 200

        wait_for(ready, min(120, deadline - time.time()), "the model to load")
        yield url
    finally:
        _stop(proc, 20)


def wakes(
    url: str,
    *,
    model: str,
    dim: int,
    device: str,
    repeats: int,
    deadline: float,
    on_result: Callable[[dict[str, Any]], None],
    on_note: Callable[[str], None],
) -> None:
    """Per level, ``repeats`` sleeps and timed wakes of ``model``; ``on_result`` is given each
    level's row as soon as it is measured, ``on_note`` what was skipped."""
    body = {"inputs": [{"name": "x", "shape": [1, dim], "datatype": "FP16", "data": [0.01] * dim}]}

    def infer() -> float:
        started = time.perf_counter()
        status, text = http_post(f"{url}/v2/models/{model}/infer", body, _left(deadline))
        elapsed = time.perf_counter() - started
        if status != 200:
            raise RunFailed(f"an inference request answered {status}: {text[:300]}")
        if len(json.loads(text)["outputs"][0]["data"]) != dim:
            raise RunFailed(f"an answer has the wrong size: {text[:200]}")
        return elapsed

    infer()
    warm = statistics.median(infer() for _ in range(WARM_REQUESTS))
    per_run = [1.0]  # a sleep and wake's duration, for the time check before the next
    for level in LEVELS:
        runs: list[float] = []
        runtime_wakes: list[float] = []
        runtime_sleeps: list[float] = []
        for i in range(repeats):
            if time.time() + 3 * max(per_run) + 5 > deadline:
                on_note(f"{level} run {i}: skipped, out of this step's time")
                break
            started = time.time()
            before = http_get(url + "/metrics")
            status, text = http_post(
                f"{url}/v2/repository/models/{model}/unload",
                {"parameters": {"level": level}},
                _left(deadline),
            )
            if status != 200:
                raise RunFailed(f"unload at level {level} answered {status}: {text[:300]}")
            slept = http_get(url + "/metrics")
            runs.append(max(0.0, infer() - warm))
            after = http_get(url + "/metrics")
            per_run.append(time.time() - started)
            for into, name, a, b in (
                (runtime_sleeps, SLEEP, before, slept),
                (runtime_wakes, WAKE, slept, after),
            ):
                seconds = _delta_mean(a, b, name, model=model, level=level)
                if seconds is not None:
                    into.append(seconds)
        if not runs:
            continue
        row: dict[str, Any] = {
            "model": model,
            "level": level,
            "device": device,
            "wake_s_median": round(statistics.median(runs), 6),
            "runtime_wake_s_median": _median(runtime_wakes),
            "runtime_sleep_s_median": _median(runtime_sleeps),
            "warm_s_median": round(warm, 6),
            "runs": [round(x, 6) for x in runs],
            "runtime_runs": [round(x, 6) for x in runtime_wakes],
        }
        if len(runtime_wakes) < len(runs):
            on_note(f"{level}: {WAKE} counted {len(runtime_wakes)} of {len(runs)} wakes")
        runtime = row["runtime_wake_s_median"]
        print(
            f"sleep {level:4}: wake {row['wake_s_median'] * 1000:.1f} ms (runtime "
            f"{'-' if runtime is None else f'{runtime * 1000:.1f}'} ms), warm request "
            f"{warm * 1000:.1f} ms",
            flush=True,
        )
        on_result(row)


def histogram(text: str, name: str, *, model: str, level: str) -> tuple[float, float]:
    """A histogram's (sum, count) for one model and level in a /metrics page; zeros if absent."""
    values = {"sum": 0.0, "count": 0.0}
    pattern = rf"^{name}_(sum|count)\{{([^}}]*)\}}\s+(\S+)$"
    for part, labels, value in re.findall(pattern, text, re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if found.get("model") == model and found.get("level") == level:
            values[part] = float(value)
    return values["sum"], values["count"]


def _delta_mean(before: str, after: str, name: str, *, model: str, level: str) -> float | None:
    sum0, count0 = histogram(before, name, model=model, level=level)
    sum1, count1 = histogram(after, name, model=model, level=level)
    return (sum1 - sum0) / (count1 - count0) if count1 > count0 else None


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 6) if values else None


def _left(deadline: float) -> float:
    return max(5.0, deadline - time.time())


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    until = time.monotonic() + max(0.0, timeout_s)
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > until:
            raise RunFailed(f"timed out waiting for {what}")
        time.sleep(0.05)


def http_get(url: str, timeout_s: float = 5) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            text: str = r.read().decode()
            return text
    except OSError as exc:
        raise RunFailed(f"GET {url} failed: {exc}") from None


def _get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            status: int = r.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def http_post(url: str, body: dict[str, Any], timeout_s: float) -> tuple[int, str]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        raise RunFailed(f"POST {url} failed: {exc}") from None


def _stop(proc: subprocess.Popen[Any], grace_s: float) -> None:
    """SIGTERM the server, SIGKILL its process group if it is slow to go."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
