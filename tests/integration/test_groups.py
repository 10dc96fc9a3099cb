"""``ember up`` with a group: the MLP and MiniLM served by one replica, awake or asleep on it.

The replica's device memory budget (91.5 MB) fits MiniLM's weights (90.9 MB) or the MLP's
(1.6 MB), not both; on the CPU the budget is kept all the same, so a request for the model
asleep puts the other to sleep first. With the tiered policy (and wake times small enough that
the hot window is about a second) the activator puts an idle model to sleep at host, then disk,
and lets the replica go when both are due at zero.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from tests.conftest import MINILM_CONFIG, MLP_CONFIG, slow_model
from tests.integration.test_activator import (
    MLP_BODY,
    activator,
    events,
    metric,
    replicas,
    wait_until,
)
from tests.servers import ServerProcess

TEXT_BODY = json.dumps(
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a sleepy model"]}]}
)


def group_stack(tmp_path: Path, **group: Any) -> Path:
    settings = {"events": str(tmp_path / "events.jsonl"), "grace_period_s": 5}
    entry = {
        "name": "shared",
        "models": [{"config": str(MLP_CONFIG)}, {"config": str(MINILM_CONFIG)}],
        "max_replicas": 1,
        **group,
    }
    path = tmp_path / "ember.yaml"
    path.write_text(yaml.safe_dump({"activator": settings, "groups": [entry]}))
    return path


def infer(server: ServerProcess, model: str) -> httpx.Response:
    body = MLP_BODY if model == "mlp" else TEXT_BODY
    return httpx.post(f"{server.url}/v2/models/{model}/infer", content=body, timeout=120)


def output(response: httpx.Response) -> list[float]:
    assert response.status_code == 200, response.text
    return list(response.json()["outputs"][0]["data"])


def read_replicas(server: ServerProcess) -> set[str]:
    """The group's ready replicas whose repository index the activator has read."""
    described = {m["name"]: m for m in httpx.get(server.url + "/admin/models").json()}
    return set(described["minilm"]["levels"])


def level_of(server: ServerProcess, model: str) -> str:
    """The level the activator's books have ``model`` at on the group's one replica."""
    described = {m["name"]: m for m in httpx.get(server.url + "/admin/models").json()}
    (level,) = described[model]["levels"].values()
    return str(level)


def of(tmp_path: Path, kind: str, **fields: Any) -> list[dict[str, Any]]:
    return [
        e
        for e in events(tmp_path)
        if e["event"] == kind and all(e.get(k) == v for k, v in fields.items())
    ]


def test_two_models_take_turns_on_one_replica_whose_budget_fits_one(tmp_path: Path) -> None:
    config = group_stack(tmp_path, device_memory_budget="91.5MB", keep_alive_s=60)
    with activator(config) as server:
        mlp, minilm = output(infer(server, "mlp")), output(infer(server, "minilm"))
        assert len(mlp) == 10 and len(minilm) == 384
        # interleaved and concurrent: every answer is its own model's, none lost
        order = ["mlp", "minilm"] * 12
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda m: infer(server, m), order))
        for model, answer in zip(order, answers, strict=True):
            assert answer.json()["model_name"] == model
            # (batched with others, MiniLM's floats may differ in the last digits)
            assert np.allclose(output(answer), mlp if model == "mlp" else minilm, atol=1e-5)
        assert len(of(tmp_path, "replica_starting", model="shared")) == 1
        # the replica's budget put one to sleep for the other, and the books say so
        wait_until(
            lambda: bool(of(tmp_path, "sleep", group="shared")),
            what="a sleep event from the replica's budget",
        )
        assert {e["level"] for e in of(tmp_path, "sleep", group="shared")} == {"host"}

        def levels() -> list[str]:
            described = {m["name"]: m for m in httpx.get(server.url + "/admin/models").json()}
            assert described["mlp"]["group"] == described["minilm"]["group"] == "shared"
            return sorted(lv for m in ("mlp", "minilm") for lv in described[m]["levels"].values())

        # a wake puts the other to sleep inside the replica: what the replica says tells it
        wait_until(lambda: levels() == ["host", "hot"], what="one awake, one asleep at host")
        # and the activator knows it as the replica says it (its status pipe), not at a poll:
        # its books have the other asleep within 0.2 s of the answer to the request that woke
        # the sleeper (the replica puts it to sleep before it answers; both clocks are the
        # machine's monotonic one)
        for _ in range(2):
            asleep_now = next(m for m in ("mlp", "minilm") if level_of(server, m) == "host")
            awake_now = "minilm" if asleep_now == "mlp" else "mlp"
            before = len(of(tmp_path, "sleep", model=awake_now))
            output(infer(server, asleep_now))
            answered = time.monotonic()
            wait_until(
                lambda m=awake_now, n=before: len(of(tmp_path, "sleep", model=m)) > n,
                what=f"{awake_now}'s sleep in the books",
            )
            booked = of(tmp_path, "sleep", model=awake_now)[before]
            assert booked["level"] == "host" and "budget" in booked["reason"]
            assert booked["mono"] - answered <= 0.2
        at = {
            (m, lv): metric(
                server, f'ember_activator_model_replicas_at_level{{level="{lv}",model="{m}"}}'
            )
            for m in ("mlp", "minilm")
            for lv in ("hot", "host")
        }
        assert sorted(at.values()) == [0, 0, 1, 1]  # one replica: each model at one level
        # the activator's index says what the replica says: one READY, one SLEEPING at host
        index = httpx.post(server.url + "/v2/repository/index").json()
        states = sorted((m["state"], m.get("level")) for m in index)
        assert states == [("READY", None), ("SLEEPING", "host")], index
        asleep = next(m for m in index if m["state"] == "SLEEPING")
        assert asleep["reason"] == "level host"
        # the group is taken to zero by hand, by its name, as a model is
        level = httpx.post(
            server.url + "/v2/repository/models/shared/unload",
            json={"parameters": {"level": "host"}},
        )
        assert level.status_code == 400 and "is a group" in level.json()["error"]
        assert httpx.post(server.url + "/v2/repository/models/shared/unload").status_code == 200
        wait_until(
            lambda: any(e["model"] == "shared" for e in of(tmp_path, "replica_stopped")),
            what="the group's replica stopped",
        )
        index = httpx.post(server.url + "/v2/repository/index").json()
        assert {m["state"] for m in index} == {"ZERO"}


def test_the_tiered_policy_sleeps_idle_models_then_lets_the_replica_go(tmp_path: Path) -> None:
    config = group_stack(
        tmp_path,
        policy="tiered",
        wake={"host": 0.001, "disk": 0.002},  # hot for 1.2 s (the break-even)
        host_hold_s=1.5,
        disk_hold_s=1.5,
    )
    with activator(config) as server:
        output(infer(server, "minilm"))  # wakes the group: where minilm is, nobody knows yet
        wait_until(lambda: read_replicas(server) == {"1"}, what="the replica's index read")
        for _ in range(3):  # warm requests: a wake is measured against them
            output(infer(server, "minilm"))
        output(infer(server, "mlp"))
        for level in ("host", "disk"):
            for model in ("mlp", "minilm"):
                wait_until(
                    lambda m=model, lv=level: bool(of(tmp_path, "sleep", model=m, level=lv)),
                    what=f"{model} asleep at {level}",
                )
        # a request finds MiniLM on disk (or the replica gone, if the test was slow to ask)
        output(infer(server, "minilm"))
        wait_until(
            lambda: bool(of(tmp_path, "wake", model="minilm") or of(tmp_path, "replica_stopped")),
            what="the wake recorded",
        )
        wakes = of(tmp_path, "wake", model="minilm")
        if wakes:
            assert wakes[-1]["level"] == "disk" and wakes[-1]["replica"] == 1
            assert wakes[-1]["wake_s"] is not None and wakes[-1]["wake_s"] >= 0
        # then both are due at zero again and the replica goes
        wait_until(
            lambda: any(
                e["reason"] == "keep-alive expired" for e in of(tmp_path, "replica_stopped")
            ),
            timeout_s=60,
            what="the group's replica stopped after the plans reached zero",
        )


def test_a_replica_killed_while_a_model_sleeps_is_replaced_and_the_request_answered(
    tmp_path: Path,
) -> None:
    config = group_stack(
        tmp_path, policy="tiered", wake={"host": 0.001, "disk": 0.002}, host_hold_s=600
    )
    with activator(config) as server:
        before = output(infer(server, "minilm"))
        output(infer(server, "mlp"))
        wait_until(
            lambda: bool(of(tmp_path, "sleep", model="minilm", level="host")),
            what="minilm asleep at host",
        )
        (pid,) = replicas(server)
        os.kill(pid, signal.SIGKILL)
        # once the activator has seen it go (a request sent on its kept-alive connection in the
        # moment before would be a 502, as for any replica that dies under a request)
        wait_until(
            lambda: any("crashed" in e["reason"] for e in of(tmp_path, "replica_stopped")),
            what="the crash noticed",
        )
        assert np.allclose(output(infer(server, "minilm")), before, atol=1e-5)
        wait_until(
            lambda: len(of(tmp_path, "replica_ready", model="shared")) == 2,
            what="a new replica for the group",
        )
        described = {m["name"]: m for m in httpx.get(server.url + "/admin/models").json()}
        assert "1" not in described["minilm"]["levels"]  # the dead replica's books are gone


def test_member_unloads_every_0_7_s_under_mixed_traffic_lose_and_spoil_nothing(
    tmp_path: Path,
) -> None:
    """The group as shipped (a budget that fits one, MiniLM batching with a 2 ms delay) under
    mixed traffic from four clients while a member is put to sleep (host, disk) or unloaded
    every 0.7 s, for 30 s: every request gets its own model's right answer, none a 500, none
    hangs."""
    config = group_stack(tmp_path, device_memory_budget="91.5MB", keep_alive_s=120)
    with activator(config) as server:
        reference = {"mlp": output(infer(server, "mlp")), "minilm": output(infer(server, "minilm"))}
        stop = threading.Event()
        answers: list[tuple[str, int, Any]] = []
        commands: list[int] = []

        def client(seed: int) -> None:
            rng = random.Random(seed)
            with httpx.Client(base_url=server.url, timeout=60) as http:
                while not stop.is_set():
                    model = rng.choice(["mlp", "minilm"])
                    body = MLP_BODY if model == "mlp" else TEXT_BODY
                    r = http.post(f"/v2/models/{model}/infer", content=body)
                    data = r.json()["outputs"][0]["data"] if r.status_code == 200 else r.text
                    answers.append((model, r.status_code, data))

        def commander() -> None:
            rng = random.Random(0)
            bodies = [b'{"parameters": {"level": "host"}}', b'{"parameters": {"level": "disk"}}']
            with httpx.Client(base_url=server.url, timeout=120) as http:
                while not stop.wait(0.7):
                    model = rng.choice(["mlp", "minilm"])
                    body = rng.choice([*bodies, b""])  # no level: a member sleeps at disk
                    r = http.post(f"/v2/repository/models/{model}/unload", content=body)
                    commands.append(r.status_code)

        with ThreadPoolExecutor(5) as pool:
            running = [pool.submit(client, i) for i in range(4)] + [pool.submit(commander)]
            stop.wait(30)
            stop.set()
            for future in running:
                future.result()  # a hung request raises here (httpx's 60 s timeout)
        assert len(commands) >= 30 and len(answers) > 100
        wrong = [(m, s, str(d)[:200]) for m, s, d in answers if s != 200]
        assert not wrong, f"{len(wrong)} of {len(answers)} not answered 200: {wrong[:5]}"
        for model, _, data in answers:
            assert np.allclose(data, reference[model], atol=1e-4), model
        assert set(commands) == {200}


def test_a_member_that_failed_to_load_is_unavailable_with_why_until_loaded_again(
    tmp_path: Path,
) -> None:
    broken = slow_model(tmp_path, device="auto")
    weights = tmp_path / "weights" / "model.safetensors"
    kept = weights.read_bytes()
    settings = {"events": str(tmp_path / "events.jsonl"), "grace_period_s": 5}
    entry = {
        "name": "shared",
        "models": [{"config": str(MLP_CONFIG)}, {"config": str(broken)}],
        "max_replicas": 1,
        "keep_alive_s": 120,
    }
    config = tmp_path / "ember.yaml"
    config.write_text(yaml.safe_dump({"activator": settings, "groups": [entry]}))
    slow_body = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [3.0]}]}
    )
    with activator(config) as server:
        weights.unlink()  # gone once ember up took the config: the replica's load of it fails
        output(infer(server, "mlp"))
        r = httpx.post(f"{server.url}/v2/models/slow/infer", content=slow_body, timeout=60)
        assert r.status_code == 503 and "does not exist" in r.json()["error"]

        def indexed() -> dict[str, Any]:
            index = httpx.post(server.url + "/v2/repository/index").json()
            return {m["name"]: m for m in index}

        wait_until(lambda: indexed()["slow"]["state"] == "UNAVAILABLE", what="slow unavailable")
        slow = indexed()["slow"]
        assert f"weights file {weights} does not exist" in slow["reason"]
        assert slow["activator_state"] == "unavailable" and indexed()["mlp"]["state"] == "READY"
        described = {m["name"]: m for m in httpx.get(server.url + "/admin/models").json()}
        assert described["slow"]["state"] == "unavailable"
        assert "does not exist" in described["slow"]["unavailable_on"]["1"]
        assert metric(server, 'ember_activator_model_state{model="slow",state="unavailable"}') == 1
        assert httpx.get(f"{server.url}/v2/models/slow/ready").status_code == 503
        assert [
            m["name"]
            for m in httpx.post(server.url + "/v2/repository/index", json={"ready": True}).json()
        ] == ["mlp"]
        # a load through the activator tries again on the replica: refused while it still fails
        r = httpx.post(f"{server.url}/v2/repository/models/slow/load", timeout=60)
        assert r.status_code == 503 and "did not load on every replica" in r.json()["error"]
        weights.write_bytes(kept)
        r = httpx.post(f"{server.url}/v2/repository/models/slow/load", timeout=60)
        assert r.status_code == 200, r.text
        wait_until(lambda: indexed()["slow"]["state"] == "READY", what="slow serving again")
        r = httpx.post(f"{server.url}/v2/models/slow/infer", content=slow_body, timeout=60)
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [6.0]
