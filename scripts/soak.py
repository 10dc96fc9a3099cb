#!/usr/bin/env python3
"""A bounded chaos soak of the one-machine stack: nothing lost, nothing hung, nothing leaked.

Starts, all on loopback: an S3-compatible server (moto) behind a fault-injecting proxy, and
``ember up`` with: ``mlp-s3`` (weights streamed from S3 through the proxy, short keep-alive, so
it goes to zero and back), ``slow`` (a tiny queue and one request per replica, so the load runs
well past its bound), ``mlp`` (local weights), the group ``pair`` (``pair-a`` and ``pair-b``, the
MLP twice, batching with a 5 ms delay, on one replica whose device memory budget fits one of
them, so mixed traffic switches them), ``hostile`` (the MLP again, for the hostile client
alone) and ``tiny-llm`` (the tiny random-weight LLM of examples/tiny-llm, text generation, with
a 2 s keep-alive). Then, for ``--minutes``:

* ``--concurrency`` client threads send inference requests (each with a 10 s deadline, half of
  them in an ``Ember-Deadline-Ms`` header, which sends them through the queue) as fast as they
  are answered, spread over the five models; every 200's outputs are checked against the
  model's first answer (the MLPs share their weights);
* ``--llm-clients`` threads send OpenAI ``/v1/chat/completions`` and ``/v1/completions`` to
  ``tiny-llm`` (tests/fixtures/llm_clients.py): streamed (SSE, half of them asking for usage)
  and whole, a third of the streams left after 1-4 events; in waves of 8-15 s with 4 s gaps, so
  the model goes to zero between them and each wave wakes it (a cold start);
* a chaos thread, every 1-3 s: SIGKILLs a replica (not ``hostile``'s), or ``tiny-llm``'s
  mid-stream; or injects S3 faults
  (503 SlowDown, 500, a body cut in half, a stalled connection), puts ``mlp-s3`` to sleep and
  evicts its tier entry, so its next request streams the weights from S3 through those faults;
  or puts a model to sleep (``tiny-llm`` too, whose engine cuts its streams short), or warms
  one (admin API);
* a storm thread, every 0.3-0.7 s, sends the group's members a repository unload with a level
  (``host``, ``disk``), one without (a member sleeps at disk), an admin sleep or a repository
  load; each answer must be a 200 or a documented 503/504 (**storm_wrong**);
* a hostile client sends, one at a time, what an adversarial probe found (tests/fixtures/
  hostile.py) to ``hostile``: malformed framing, a refused header, deep nesting, bodies over the
  limit (declared, and chunked until refused), a stalled head, pipelined requests nobody reads;
  each answer is checked (**hostile_wrong**), and the event log's lines for ``hostile`` are
  left out of the count of requests;
* a monitor samples the activator's and the replicas' memory.

Then it stops the load, SIGTERMs the activator and checks:

* every request got exactly one answer: a 200 with the right outputs, or a documented 502, 503
  or 504 with the OIP error body (anything else, or no answer at all, is **lost**); the event log
  holds one line per request;
* every LLM request got exactly one outcome: a whole answer with choices and usage, a stream
  whose events all parse and end with ``data: [DONE]`` (usage in its last event where asked),
  a stream ended by an error event (the replica's, or the activator's when the replica died
  mid-stream; docs/llm.md), a documented 502/503/504 with OpenAI's error body, or a stream its
  client left; anything else is **lost**; the event log holds one line per LLM request (the
  ones left included, as the activator recorded them) and its 200s carry their tokens
  (**llm_event_log_matches**); once the load has stopped, one more stream is left after its
  first event and the replica's running sequences must drop to 0 (**leaked_sequences**);
* none waited past its deadline plus a margin (**hung**);
* no replica outlived the activator (**leaked_processes**); no half-written file is left in the
  tier once its own start-up sweep has run (**leaked_files**); every entry the tier calls
  complete matches its manifest's sizes and sha256 (**bad_cache_entries**);
* the activator's memory stayed under ``--rss-limit-mb`` (its Deployment's limit).

It prints a table, writes ``--out`` (JSON), and exits 1 if lost, hung, wrong or any leak is not 0
(or the memory bound was passed). Usage: ``scripts/soak --minutes 5 --out soak.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contracts.proc import rss_bytes  # noqa: E402
from tests.faultproxy import FaultProxy  # noqa: E402  (the harness's loopback fault proxy)
from tests.fixtures.hostile import HostileClient  # noqa: E402
from tests.fixtures.llm_clients import (  # noqa: E402
    CUT_BY_ACTIVATOR,
    CUT_BY_REPLICA,
    LEFT,
    STREAMED,
    WHOLE,
    LlmClients,
    running_sequences,
)
from tests.servers import children_of as children  # noqa: E402

DOCUMENTED = {200, 502, 503, 504}
DEADLINE_MS = 10_000
HUNG_MARGIN_S = 20.0  # past its deadline by this much, a request is hung
MLP_BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0.5] * 784}]}
).encode()
SLOW_BODY = json.dumps(
    {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [3.0]}]}
).encode()
MODELS = {"slow": 0.4, "mlp": 0.2, "mlp-s3": 0.15, "pair-a": 0.125, "pair-b": 0.125}  # shares
GROUP = ("pair-a", "pair-b")
LLM = "tiny-llm"
LLM_KEEP_ALIVE_S = 2.0  # so each gap between the LLM clients' waves sends it to zero
LLM_DEADLINE_S = 60.0  # a fresh LLM replica imports transformers: 10-45 s on two busy cores
LLM_FIRST_WAVE_S = 10  # held warm this long after the warm-up, for the first wave
LLM_KILL_AFTER = 3  # answers of tiny-llm between two kills of its replica by the chaos
HEADER_TIMEOUT_S = 2.0  # the activator's here, so a stalled head is answered soon
MAX_REQUEST_BYTES = 64 * 1024 * 1024


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = 0
        self.answered: Counter[int] = Counter()
        self.lost = 0
        self.hung = 0
        self.wrong = 0
        self.samples: list[str] = []
        self.latency: dict[int, list[float]] = {}
        self.by_model: dict[str, Counter[int]] = {m: Counter() for m in MODELS}
        self.reference: dict[str, list[float]] = {}  # slow, or mlp (the MLPs' shared weights)

    def bad(self, kind: str, detail: str) -> None:
        with self.lock:
            setattr(self, kind, getattr(self, kind) + 1)
            if len(self.samples) < 20:
                self.samples.append(f"{kind}: {detail}")


def client(url: str, tally: Tally, stop: threading.Event, rng: random.Random, cap: int) -> None:
    names, weights = list(MODELS), list(MODELS.values())
    timeout = DEADLINE_MS / 1000 + HUNG_MARGIN_S
    with httpx.Client(base_url=url, timeout=timeout) as http:
        while not stop.is_set():
            with tally.lock:
                if tally.sent >= cap:
                    return
                tally.sent += 1
            model = rng.choices(names, weights)[0]
            body = SLOW_BODY if model == "slow" else MLP_BODY
            headers = {"content-type": "application/json"}
            if rng.random() < 0.5:
                # the same deadline as the stack's deadline_s, said per request: such requests
                # always wait through the queue, the others take a free slot at once
                headers["ember-deadline-ms"] = str(DEADLINE_MS)
            started = time.monotonic()
            try:
                r = http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
            except httpx.TimeoutException as exc:
                tally.bad("hung", f"{model}: no answer in {timeout:.0f}s ({type(exc).__name__})")
                continue
            except httpx.HTTPError as exc:
                tally.bad("lost", f"{model}: {type(exc).__name__}: {exc}")
                continue
            elapsed = time.monotonic() - started
            with tally.lock:
                tally.answered[r.status_code] += 1
                tally.by_model[model][r.status_code] += 1
                tally.latency.setdefault(r.status_code, []).append(elapsed)
            check_answer(model, r, tally)


def check_answer(model: str, r: httpx.Response, tally: Tally) -> None:
    where = f"{model}: {r.status_code} {r.text[:160]!r}"
    if r.status_code not in DOCUMENTED:
        tally.bad("lost", f"undocumented status: {where}")
        return
    try:
        body = r.json()
    except ValueError:
        tally.bad("lost", f"not JSON: {where}")
        return
    if r.status_code != 200:
        if not (isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]):
            tally.bad("lost", f"not an OIP error body: {where}")
        return
    outputs = body.get("outputs") or [{}]
    want = [1, 1] if model == "slow" else [1, 10]
    if outputs[0].get("shape") != want or body.get("model_name") != model:
        tally.bad("wrong", f"unexpected outputs: {where}")
        return
    family = "slow" if model == "slow" else "mlp"
    data = outputs[0].get("data")
    with tally.lock:
        reference = tally.reference.setdefault(family, data)
    if not (isinstance(data, list) and len(data) == len(reference)) or any(
        abs(a - b) > 1e-4 for a, b in zip(data, reference, strict=True)
    ):
        tally.bad("wrong", f"outputs differ from the first answer's: {where}")


# ----------------------------------------------------------------------------------------- chaos
def rss_mb(pid: int) -> float:
    return rss_bytes(pid) / (1024 * 1024)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rfind(")") + 2] != "Z"


class Chaos:
    def __init__(
        self,
        url: str,
        activator_pid: int,
        proxy: FaultProxy,
        tier: Path,
        seed: int,
        *,
        spare: int,
        llm: LlmClients,
        llm_config: Path,
    ):
        self.url = url
        self.pid = activator_pid
        self.spare = spare  # a replica never killed (hostile's)
        self.llm = llm
        self.llm_config = str(llm_config)  # on the command line of tiny-llm's replicas
        self.llm_answered = 0  # what tiny-llm had answered when its replica was last killed
        self.proxy = proxy
        self.tier = tier
        self.rng = random.Random(seed)
        self.done: Counter[str] = Counter()
        self.seen_replicas: set[int] = set()
        self.max_rss = 0.0
        self.max_replica_rss = 0.0
        self.rss_trace: list[float] = []

    def run(self, stop: threading.Event) -> None:
        actions = [
            self.kill_replica,
            self.kill_replica,
            self.kill_llm,
            self.s3_cold_start,
            self.s3_cold_start,
            self.sleep_model,
            self.warm_model,
        ]
        next_at = time.monotonic() + 2.0
        while not stop.wait(0.25):
            self.sample()
            if time.monotonic() >= next_at:
                action = self.rng.choice(actions)
                with contextlib.suppress(httpx.HTTPError, OSError):
                    if action():
                        self.done[action.__name__] += 1
                next_at = time.monotonic() + self.rng.uniform(1.0, 3.0)

    def sample(self) -> None:
        rss = rss_mb(self.pid)
        self.max_rss = max(self.max_rss, rss)
        self.rss_trace.append(rss)
        for child in children(self.pid):
            self.seen_replicas.add(child)
            self.max_replica_rss = max(self.max_replica_rss, rss_mb(child))

    def kill_replica(self) -> bool:
        replicas = [pid for pid in children(self.pid) if pid != self.spare]
        if not replicas:
            return False
        os.kill(self.rng.choice(replicas), signal.SIGKILL)
        return True

    def kill_llm(self) -> bool:
        """SIGKILL tiny-llm's replica while a stream is mid-way, once it has answered a few
        requests since the last such kill (its starts are slow: a short run still streams)."""
        answered = self.llm.answered()
        if answered < self.llm_answered + LLM_KILL_AFTER:
            return False
        deadline = time.monotonic() + 2.0
        while not self.llm.streaming:  # a wave may be on: wait a little for a stream
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        self.llm_answered = answered
        for pid in children(self.pid):
            with contextlib.suppress(OSError):
                if self.llm_config in Path(f"/proc/{pid}/cmdline").read_bytes().decode():
                    os.kill(pid, signal.SIGKILL)
                    return True
        return False

    def s3_cold_start(self) -> bool:
        """Faults on S3, then mlp-s3 to zero and its tier entry evicted: its next request
        streams the weights from S3 again, through the faults."""
        fault = self.rng.choice(
            [
                ("status", 503, "SlowDown"),
                ("status", 500, "InternalError"),
                ("reset",),
                ("stall", 2.0),
            ]
        )
        self.proxy.add(*fault, times=self.rng.randint(1, 3))
        httpx.post(f"{self.url}/admin/models/mlp-s3/sleep", timeout=10)
        from weight_cache import LocalTier

        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # its replica drains, then lets go of the entry
            tier = LocalTier(self.tier)
            if any([tier.evict(e.key) for e in tier.entries()]):
                return True
            time.sleep(0.1)
        return False

    def sleep_model(self) -> bool:
        model = self.rng.choice([*MODELS, LLM])
        return httpx.post(f"{self.url}/admin/models/{model}/sleep", timeout=10).status_code == 200

    def warm_model(self) -> bool:
        model = self.rng.choice([*MODELS, LLM])
        r = httpx.post(f"{self.url}/admin/models/{model}/warm", json={"seconds": 3}, timeout=10)
        return r.status_code == 200


class Storm:
    """Sleep, wake and unload commands for the group's members, as fast as one at a time."""

    DOCUMENTED = {200, 503, 504}

    def __init__(self, url: str, seed: int) -> None:
        self.url = url
        self.rng = random.Random(seed)
        self.done: Counter[str] = Counter()
        self.wrong: list[str] = []

    def run(self, stop: threading.Event) -> None:
        levels = [b'{"parameters": {"level": "host"}}', b'{"parameters": {"level": "disk"}}']
        with httpx.Client(base_url=self.url, timeout=90) as http:
            while not stop.wait(self.rng.uniform(0.3, 0.7)):
                model = self.rng.choice(GROUP)
                kind = self.rng.choice(["host", "disk", "unload", "admin-sleep", "load"])
                try:
                    if kind in ("host", "disk"):
                        body = levels[kind == "disk"]
                        r = http.post(f"/v2/repository/models/{model}/unload", content=body)
                    elif kind == "unload":
                        r = http.post(f"/v2/repository/models/{model}/unload")
                    elif kind == "admin-sleep":
                        r = http.post(f"/admin/models/{model}/sleep")
                    else:
                        r = http.post(f"/v2/repository/models/{model}/load")
                except httpx.HTTPError as exc:
                    self.wrong.append(f"{kind} {model}: {type(exc).__name__}: {exc}")
                    continue
                self.done[f"{kind} {r.status_code}"] += 1
                if r.status_code not in self.DOCUMENTED:
                    self.wrong.append(f"{kind} {model}: {r.status_code} {r.text[:160]!r}")


# ----------------------------------------------------------------------------------------- checks
def refused_requests(url: str, models: set[str]) -> int:
    """The clients' requests for ``models`` the activator refused before any replica (its
    metrics)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"ember_activator_refused_total\{([^}]*)\} (\S+)$", line)
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) if match else {}
        if match and labels.get("model") in models:
            total += float(match.group(2))
    return int(total)


def bad_cache_entries(tier_root: Path) -> list[str]:
    from weight_cache import MANIFEST_NAME, LocalTier, Manifest

    bad = []
    for entry in LocalTier(tier_root).entries():
        try:
            manifest = Manifest.loads(
                (entry.path / MANIFEST_NAME).read_bytes(), where=str(entry.path)
            )
        except Exception as exc:
            bad.append(f"{entry.key}: {exc}")
            continue
        for f in manifest.files:
            path = entry.path / f.path
            digest = hashlib.sha256()
            try:
                with path.open("rb") as fh:
                    while chunk := fh.read(1 << 20):
                        digest.update(chunk)
                size = path.stat().st_size
            except OSError as exc:
                bad.append(f"{entry.key}/{f.path}: {exc}")
                continue
            if size != f.size or digest.hexdigest() != f.sha256:
                bad.append(f"{entry.key}/{f.path}: size or sha256 differs from the manifest")
    return bad


def leftover_files(tier_root: Path) -> tuple[int, list[str]]:
    """(entries the start-up sweep removed, files still left that belong to no complete entry)."""
    from weight_cache.tier import COMPLETE, LocalTier

    tier = LocalTier(tier_root)
    swept = tier.clean_stale()  # what the next replica's start does
    left = []
    for path in (tier_root / "entries").iterdir():
        if not (path / COMPLETE).exists():
            left.append(str(path))
        left += [str(p) for p in path.rglob("*.partial")]
    return swept, left


def llm_books(events: list[dict[str, Any]], llm: LlmClients, refused: int) -> dict[str, Any]:
    """The event log's lines for tiny-llm against what its clients saw: one line per request
    (those refused before a replica are counted in the metrics instead), each outcome logged
    with the status the activator gives it (a stream left mid-way: 499, or whatever came
    first), and every 200 with its tokens, but for the streams whose replica cut them short,
    which say none."""
    lines = [e for e in events if e.get("event") == "request" and e.get("model") == LLM]
    logged = Counter(e["status"] for e in lines)
    no_tokens = sum(
        1
        for e in lines
        if e["status"] == 200
        and not (
            isinstance(e.get("prompt_tokens"), int) and isinstance(e.get("completion_tokens"), int)
        )
    )
    seen = llm.outcomes
    whole = seen[WHOLE] + seen[STREAMED] + seen[CUT_BY_REPLICA]  # logged 200 each
    left_logged_200 = logged[200] - whole
    matches = (
        sum(logged.values()) + refused == llm.sent
        and 0 <= left_logged_200 <= seen[LEFT]
        and logged[499] <= seen[LEFT]
        and logged[502] >= seen[CUT_BY_ACTIVATOR] + seen["502"]
        and no_tokens <= seen[CUT_BY_REPLICA] + left_logged_200
    )
    return {
        "llm_event_log": {str(k): v for k, v in sorted(logged.items())},
        "llm_refused_before_a_replica": refused,
        "llm_200s_without_tokens": no_tokens,
        "llm_event_log_matches": matches,
        "llm_completion_tokens_logged": sum(int(e.get("completion_tokens") or 0) for e in lines),
        "llm_cold_requests": sum(1 for e in lines if e.get("cold")),
        "llm_replica_starts": sum(
            1 for e in events if e.get("event") == "replica_starting" and e.get("model") == LLM
        ),
    }


def llm_replica(events_path: Path, timeout_s: float = 5.0) -> str | None:
    """The URL of tiny-llm's newest ready replica, once its metrics answer."""
    from activator.events import read_events
    from contracts.events import to_record

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records = [to_record(e) for e in read_events(events_path)]
        ready = [r["url"] for r in records if r["event"] == "replica_ready" and r["model"] == LLM]
        if ready and running_sequences(ready[-1], LLM) >= 0:
            return str(ready[-1])
        time.sleep(0.1)
    return None


# ----------------------------------------------------------------------------------------- the run
def tiny_llm(tmp: Path, given: Path | None) -> Path:
    """The tiny LLM's files: ``given``, else examples/tiny-llm/model (scripts/setup builds it),
    else built into the run's folder (a few seconds)."""
    if given is not None:
        return given
    built = ROOT / "examples" / "tiny-llm" / "model"
    if (built / "config.json").is_file():
        return built
    from tests.fixtures.tiny_llm import build_tiny_llm

    return build_tiny_llm(tmp / "tiny-llm")


def write_stack(tmp: Path, llm_dir: Path) -> Path:
    from tests.conftest import slow_model

    mlp = ROOT / "examples" / "mlp"
    s3_model = {
        "name": "mlp-s3",
        "handler": "torch-module",
        "source": "s3://soak/mlp",
        "options": {"module": str(mlp / "mlp.py") + ":MLP"},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [784]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [10]}],
        "max_batch_size": 8,
    }
    (tmp / "mlp-s3.json").write_text(json.dumps(s3_model))
    local = {**s3_model, "source": str(mlp / "weights"), "max_queue_delay_ms": 5}
    for name in (*GROUP, "hostile"):
        (tmp / f"{name}.json").write_text(json.dumps({**local, "name": name}))
    slow = slow_model(tmp, load_delay_s=0.3, delay_s=0.02)
    llm = {
        "name": LLM,
        "handler": "text-generation",
        "source": str(llm_dir),
        "options": {"max_running": 8, "max_waiting": 64},
    }
    (tmp / f"{LLM}.json").write_text(json.dumps(llm))
    stack = {
        "activator": {
            "events": str(tmp / "events.jsonl"),
            "keep_alive_s": 3,
            "deadline_s": DEADLINE_MS / 1000,
            "startup_timeout_s": 60,
            "grace_period_s": 15,
            "cache_dir": str(tmp / "tier"),
            "header_timeout_s": HEADER_TIMEOUT_S,
            "max_request_bytes": MAX_REQUEST_BYTES,
        },
        "models": [
            {"config": str(tmp / "mlp-s3.json"), "max_replicas": 1, "container_concurrency": 8},
            {"config": str(slow), "max_replicas": 2, "container_concurrency": 1, "queue_size": 4},
            {"config": str(mlp / "model.yaml"), "max_replicas": 2, "keep_alive_s": 30},
            # always up: what the hostile client checks is the protocol, not a cold start
            {"config": str(tmp / "hostile.json"), "min_replicas": 1, "max_replicas": 1},
            {
                "config": str(tmp / f"{LLM}.json"),
                "max_replicas": 1,
                "container_concurrency": 8,
                "keep_alive_s": LLM_KEEP_ALIVE_S,
                "deadline_s": LLM_DEADLINE_S,
            },
        ],
        "groups": [
            {
                "name": "pair",
                "models": [{"config": str(tmp / f"{name}.json")} for name in GROUP],
                "max_replicas": 1,
                "container_concurrency": 8,
                "keep_alive_s": 30,
                "device_memory_budget": "2MB",  # one MLP (1.6 MB) at a time
            }
        ],
    }
    path = tmp / "ember.yaml"
    path.write_text(json.dumps(stack))
    return path


def start_activator(config: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ember", "up", "--config", str(config), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            # keep draining its output so it never blocks on a full pipe
            threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
            return proc, match.group(1)
    raise RuntimeError("ember up did not start:\n" + "".join(lines))


def warm_up(url: str, activator_pid: int) -> int:
    """Start the replicas that stay up (mlp, the group's, hostile's) before the load begins: on
    two cores, their imports side by side would otherwise take the run's first seconds. Returns
    the pid of hostile's replica (the first one started), which the chaos leaves alone: what the
    hostile client checks is the protocol, and a crash is the other models' test. mlp-s3 is
    loaded once too, so its weights cross the fault proxy at least once whatever the chaos does
    to its later starts (a short run whose every start of it is killed before its fetch would
    say nothing of S3); its keep-alive is short, so the load still finds it at zero. tiny-llm,
    the slowest to start, is loaded beside them (after hostile's) and held warm until the LLM
    clients' first wave is over (a fresh LLM replica's start can take past its deadline on two
    busy cores, and a run whose every wave waited for one could stream nothing); the waves after
    the first find it at zero."""
    hostile = 0
    done = threading.Event()
    failed: list[BaseException] = []
    llm = threading.Thread(target=_hold_llm, args=(url, done, failed))
    for model in ("hostile", GROUP[0], "mlp", "mlp-s3"):
        httpx.post(f"{url}/v2/repository/models/{model}/load", timeout=120).raise_for_status()
        if model == "hostile":
            (hostile,) = children(activator_pid)
            llm.start()
    done.set()
    llm.join()
    if failed:
        raise failed[0]
    warm = {"seconds": LLM_FIRST_WAVE_S}
    httpx.post(f"{url}/admin/models/{LLM}/warm", json=warm, timeout=10).raise_for_status()
    return hostile


def _hold_llm(url: str, done: threading.Event, failed: list[BaseException]) -> None:
    """Load tiny-llm, then keep it from its keep-alive until ``done`` (an error: in ``failed``)."""
    try:
        httpx.post(f"{url}/v2/repository/models/{LLM}/load", timeout=120).raise_for_status()
        while not done.wait(1.0):
            httpx.post(f"{url}/admin/models/{LLM}/warm", json={"seconds": 3}, timeout=10)
    except (httpx.HTTPError, OSError) as exc:
        failed.append(exc)


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


def soak(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    host, port = s3.get_host_and_port()
    proxy = FaultProxy(host, int(port)).start()
    base_env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "soak",
        "AWS_SECRET_ACCESS_KEY": "soak",
        "AWS_DEFAULT_REGION": "us-east-1",
        "HF_HUB_OFFLINE": "1",
    }
    try:
        import boto3

        boto3.client("s3", endpoint_url=f"http://{host}:{port}", **_creds()).create_bucket(
            Bucket="soak"
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "ember",
                "cache",
                "push",
                str(ROOT / "examples/mlp/weights"),
                "s3://soak/mlp",
            ],
            check=True,
            env={**base_env, "AWS_ENDPOINT_URL": f"http://{host}:{port}"},
            capture_output=True,
        )
        config = write_stack(tmp, tiny_llm(tmp, args.tiny_llm))
        proc, url = start_activator(config, {**base_env, "AWS_ENDPOINT_URL": proxy.url})
        hostile_replica = warm_up(url, proc.pid)
        tally = Tally()
        llm = LlmClients(
            url,
            LLM,
            seed=args.seed + 2000,
            cap=args.max_requests,
            timeout_s=LLM_DEADLINE_S + HUNG_MARGIN_S,
            gap_s=LLM_KEEP_ALIVE_S + 2,
        )
        chaos = Chaos(
            url,
            proc.pid,
            proxy,
            tmp / "tier",
            args.seed,
            spare=hostile_replica,
            llm=llm,
            llm_config=tmp / f"{LLM}.json",
        )
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=client,
                args=(url, tally, stop, random.Random(args.seed + i), args.max_requests),
            )
            for i in range(args.concurrency)
        ]
        chaos_thread = threading.Thread(target=chaos.run, args=(stop,))
        storm = Storm(url, args.seed + 1000)
        storm_thread = threading.Thread(target=storm.run, args=(stop,))
        hostile = HostileClient(
            url,
            random.Random(args.seed - 1),
            limit=MAX_REQUEST_BYTES,
            header_timeout_s=HEADER_TIMEOUT_S,
            model="hostile",
        )
        hostile_thread = threading.Thread(target=hostile.run, args=(stop,))
        started = time.monotonic()
        others = [chaos_thread, storm_thread, hostile_thread, *llm.threads(args.llm_clients, stop)]
        for t in [*threads, *others]:
            t.start()
        try:
            stop.wait(args.minutes * 60)
        finally:
            stop.set()
            # the leak check's stream should find tiny-llm up: woken now, while the clients end
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(f"{url}/admin/models/{LLM}/warm", json={"seconds": 60}, timeout=10)
            for t in [*threads, *others]:
                t.join()
        load_s = time.monotonic() - started
        leaks = llm.leave_and_count(lambda: llm_replica(tmp / "events.jsonl"))
        s3_requests = len(proxy.requests)
        proxy.clear()
        rss_end = rss_mb(proc.pid)
        refused = refused_requests(url, set(MODELS))
        llm_refused = refused_requests(url, {LLM})
        chaos.sample()
        proc.send_signal(signal.SIGTERM)
        try:
            exit_code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            exit_code = proc.wait()
        time.sleep(0.5)  # let the kernel reap what the activator stopped
        leaked = sorted(pid for pid in chaos.seen_replicas if alive(pid))
        for pid in leaked:  # never leave them behind, even when reporting them
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        swept, left = leftover_files(tmp / "tier")
        bad = bad_cache_entries(tmp / "tier")
        events = [
            json.loads(line)
            for line in (tmp / "events.jsonl").read_text().splitlines()
            if line.strip()
        ]
        logged = Counter(
            e["status"]
            for e in events
            if e.get("event") == "request" and e.get("model") not in ("hostile", LLM)
        )
        answered = sum(tally.answered.values())
        half = len(chaos.rss_trace) // 2
        return {
            "sent": tally.sent,
            "answered": {str(k): v for k, v in sorted(tally.answered.items())},
            "lost": tally.lost + llm.lost,
            "hung": tally.hung + llm.hung,
            "wrong_outputs": tally.wrong,
            "llm_sent": llm.sent,
            "llm_outcomes": dict(sorted(llm.outcomes.items())),
            "llm_lost": llm.lost,
            "llm_hung": llm.hung,
            "llm_completion_tokens_told": llm.completion_tokens,
            **llm_books(events, llm, llm_refused),
            "llm_waves": llm.waves,
            "llm_clients": args.llm_clients,
            **leaks,
            "hostile_wrong": len(hostile.wrong),
            "hostile_sent": dict(hostile.done),
            "storm_wrong": len(storm.wrong),
            "storm": dict(storm.done),
            "leaked_processes": len(leaked),
            "leaked_files": len(left),
            "bad_cache_entries": len(bad),
            "max_rss_mb": round(chaos.max_rss, 1),
            "rss_limit_mb": args.rss_limit_mb,
            "rss_first_half_max_mb": round(max(chaos.rss_trace[:half] or [0]), 1),
            "rss_second_half_max_mb": round(max(chaos.rss_trace[half:] or [0]), 1),
            "rss_end_mb": round(rss_end, 1),
            "replica_max_rss_mb": round(chaos.max_replica_rss, 1),
            "event_log_requests": sum(logged.values()),
            "refused_before_a_replica": refused,
            # what was refused before a replica is counted in the metrics, not logged
            "event_log_matches_answers": sum(logged.values()) + refused == answered
            and all(logged[status] <= n for status, n in tally.answered.items()),
            "chaos": dict(chaos.done),
            "replicas_started": len(chaos.seen_replicas),
            "s3_requests_through_proxy": s3_requests,
            "answered_by_model": {
                m: {str(k): v for k, v in sorted(c.items())} for m, c in tally.by_model.items()
            },
            "stale_entries_swept": swept,
            "activator_exit_code": exit_code,
            "load_s": round(load_s, 1),
            "concurrency": args.concurrency,
            "latency_p50_s": {
                str(k): round(sorted(v)[len(v) // 2], 4) for k, v in sorted(tally.latency.items())
            },
            "latency_max_s": {str(k): round(max(v), 3) for k, v in sorted(tally.latency.items())},
            "samples": tally.samples
            + llm.samples
            + hostile.wrong[:5]
            + storm.wrong[:5]
            + [f"leaked process {p}" for p in leaked]
            + left[:5]
            + bad[:5],
        }
    finally:
        proxy.stop()
        s3.stop()


def _creds() -> dict[str, str]:
    return {
        "aws_access_key_id": "soak",
        "aws_secret_access_key": "soak",
        "region_name": "us-east-1",
    }


def failed(result: dict[str, Any]) -> list[str]:
    reasons = [
        key
        for key in (
            "lost",
            "hung",
            "wrong_outputs",
            "hostile_wrong",
            "storm_wrong",
            "leaked_processes",
            "leaked_files",
            "bad_cache_entries",
            "leaked_sequences",
        )
        if result[key]
    ]
    if result["max_rss_mb"] > result["rss_limit_mb"]:
        reasons.append("max_rss_mb")
    if not result["event_log_matches_answers"]:
        reasons.append("event_log_matches_answers")
    if not result["llm_event_log_matches"]:
        reasons.append("llm_event_log_matches")
    if result["activator_exit_code"] != 0:
        reasons.append("activator_exit_code")
    return reasons


def table(result: dict[str, Any]) -> str:
    rows = [
        ("requests sent", result["sent"]),
        *[(f"answered {k}", v) for k, v in result["answered"].items()],
        ("lost (no answer, or not a documented one)", result["lost"]),
        ("hung (past deadline + margin)", result["hung"]),
        ("wrong outputs", result["wrong_outputs"]),
        ("LLM requests sent", result["llm_sent"]),
        *[(f"LLM {k}", v) for k, v in result["llm_outcomes"].items()],
        ("LLM lost / hung (in the counts above)", f"{result['llm_lost']} / {result['llm_hung']}"),
        (
            "LLM event log (+ refused) = requests, 200s with tokens",
            f"{result['llm_event_log_matches']} "
            f"({', '.join(f'{k} {v}' for k, v in result['llm_event_log'].items())}; "
            f"{result['llm_200s_without_tokens']} 200s without tokens)",
        ),
        (
            "leaked sequences (after the load; drop after a left stream, s)",
            f"{result['leaked_sequences']} ({result['sequences_drop_s']})",
        ),
        (
            "LLM replica starts, cold requests, waves",
            f"{result['llm_replica_starts']}, {result['llm_cold_requests']}, {result['llm_waves']}",
        ),
        ("hostile requests answered wrong", result["hostile_wrong"]),
        ("hostile requests", sum(result["hostile_sent"].values())),
        ("storm commands answered wrong", result["storm_wrong"]),
        ("storm", ", ".join(f"{k} {v}" for k, v in sorted(result["storm"].items()))),
        ("leaked processes", result["leaked_processes"]),
        ("leaked files", result["leaked_files"]),
        ("bad cache entries", result["bad_cache_entries"]),
        ("activator max RSS (MB)", f"{result['max_rss_mb']} (limit {result['rss_limit_mb']})"),
        ("event log + refused = answers", result["event_log_matches_answers"]),
        ("replicas started", result["replicas_started"]),
        ("chaos", ", ".join(f"{k} {v}" for k, v in sorted(result["chaos"].items()))),
        ("S3 requests (through the fault proxy)", result["s3_requests_through_proxy"]),
        (
            "load duration (s), clients (LLM)",
            f"{result['load_s']}, {result['concurrency']} ({result['llm_clients']})",
        ),
    ]
    width = max(len(str(k)) for k, _ in rows)
    lines = [f"| {'check':<{width}} | value |", f"|{'-' * (width + 2)}|---|"]
    lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/soak",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Loopback only; bounded in time (--minutes) and count (--max-requests).",
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="how long the load runs")
    parser.add_argument("--out", type=Path, help="write the result here (JSON)")
    parser.add_argument("--concurrency", type=int, default=24, help="client threads (default 24)")
    parser.add_argument(
        "--llm-clients", type=int, default=4, help="OpenAI client threads for tiny-llm (default 4)"
    )
    parser.add_argument(
        "--tiny-llm",
        type=Path,
        help="the tiny LLM's files (default: examples/tiny-llm/model, else built for the run)",
    )
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="stop after this many")
    parser.add_argument("--rss-limit-mb", type=float, default=512.0, help="the activator's bound")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 240:
        parser.error("--minutes must be in (0, 240]")
    with tempfile.TemporaryDirectory(prefix="ember-soak-") as tmp:
        result = soak(args, Path(tmp))
    print(table(result))
    reasons = failed(result)
    for sample in result["samples"]:
        print("  " + sample)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if reasons:
        print(f"soak: FAILED: {', '.join(reasons)}", file=sys.stderr)
        return 1
    print("soak: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
