"""``ember up`` with a group of two text-generation models: the tiny random-weight LLM
(``tiny-a``) and the same model with its output layer negated (``tiny-b``), so the two answer
differently and an answer shows whose weights made it. Everything goes through the activator,
with the OpenAI client, as streamed greedy chats:

- ``policy: tiered``, with wake times that make the hot window 0.6 s: an idle member sleeps at
  host, then disk (the events and the replica's own index say so) and the group goes to zero; a
  stream wakes a member from host and from disk and streams the very tokens it streamed hot;
  a stream in flight on a member the policy would put to sleep is left to finish;
- a device memory budget that fits one member: streams alternating between the two, one after
  the other and from two clients at once, switch the members on the replica and every one is
  answered, whole, by its own model (a switch waits for the other model's streams).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from safetensors.torch import load_file, save_file

from tests.integration.test_activator import activator, wait_until
from tests.integration.test_groups import of
from tests.servers import ServerProcess

MESSAGES = [{"role": "user", "content": "hi, how are you?"}]
TICK_S = 0.5  # how often a group's tiered policy looks at its members (activator.groups.Group)


@pytest.fixture(scope="module")
def members(tiny_llm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The two members' model configs: ``tiny-a`` and ``tiny-b`` (lm_head negated)."""
    root = tmp_path_factory.mktemp("llm-members")
    negated = root / "negated"
    shutil.copytree(tiny_llm_dir, negated)
    weights = load_file(negated / "model.safetensors")
    weights["lm_head.weight"] = -weights["lm_head.weight"]
    save_file(weights, negated / "model.safetensors", metadata={"format": "pt"})
    configs = []
    for name, source in (("tiny-a", tiny_llm_dir), ("tiny-b", negated)):
        config = {
            "name": name,
            "handler": "text-generation",
            "source": str(source),
            "device": "cpu",
        }
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        configs.append(path)
    return configs


def group_stack(tmp_path: Path, members: list[Path], **group: Any) -> Path:
    settings = {"events": str(tmp_path / "events.jsonl"), "grace_period_s": 5}
    entry = {
        "name": "llms",
        "models": [{"config": str(m)} for m in members],
        "max_replicas": 1,
        "container_concurrency": 16,
        **group,
    }
    path = tmp_path / "ember.yaml"
    path.write_text(yaml.safe_dump({"activator": settings, "groups": [entry]}))
    return path


@dataclass
class Answer:
    text: str
    finish_reason: str | None
    completion_tokens: int
    first: float = field(compare=False)  # time.monotonic() at its first chunk and its last
    last: float = field(compare=False)


def chat(
    server: ServerProcess, model: str, max_tokens: int, during: Callable[[], None] = lambda: None
) -> Answer:
    """A streamed greedy chat through the activator, read to its end (``during`` is called
    after each chunk); an error event ends it with openai.APIError."""
    with openai.OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0) as client:
        stream = client.chat.completions.create(
            model=model,
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            timeout=120,
        )
        text, reason, tokens, first = "", None, 0, None
        for chunk in stream:
            first = first or time.monotonic()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
            for choice in chunk.choices:
                text += choice.delta.content or ""
                reason = choice.finish_reason or reason
            during()
    assert first is not None
    return Answer(text, reason, tokens, first, time.monotonic())


def replica_says(tmp_path: Path, model: str) -> tuple[str, str | None]:
    """The state and level the group's replica itself gives ``model`` (its repository index)."""
    (ready,) = of(tmp_path, "replica_ready", model="llms")
    index = httpx.post(ready["url"] + "/v2/repository/index").json()
    status = next(m for m in index if m["name"] == model)
    return status["state"], status.get("level")


def activator_says(server: ServerProcess, model: str) -> tuple[str, str | None]:
    index = httpx.post(server.url + "/v2/repository/index").json()
    status = next(m for m in index if m["name"] == model)
    return status["state"], status.get("level")


def asleep_at(tmp_path: Path, model: str, level: str, count: int = 1) -> None:
    """Wait for ``model``'s ``count``-th sleep event at ``level``."""
    wait_until(
        lambda: len(of(tmp_path, "sleep", model=model, level=level)) >= count,
        what=f"{model} asleep at {level}",
    )


def test_the_tiered_policy_sleeps_an_idle_llm_and_a_stream_wakes_it_with_its_weights_intact(
    tmp_path: Path, members: list[Path]
) -> None:
    config = group_stack(
        tmp_path,
        members,
        policy="tiered",
        # hot for 0.6 s (the break-even) until a wake is measured; disk is given as slower
        # than any host wake measured here, so that no plan skips host
        wake={"host": 0.0005, "disk": 1.0},
        host_hold_s=3,
        disk_hold_s=2,
    )
    with activator(config) as server:
        hot = {m: chat(server, m, max_tokens=40) for m in ("tiny-a", "tiny-b")}
        for answer in hot.values():
            assert (answer.finish_reason, answer.completion_tokens) == ("length", 40)
        assert hot["tiny-a"].text != hot["tiny-b"].text  # whose weights answered shows

        # (a) idle, both sleep at host as the policy plans
        for model in ("tiny-b", "tiny-a"):
            asleep_at(tmp_path, model, "host")
            (slept,) = of(tmp_path, "sleep", model=model)
            assert slept["group"] == "llms" and slept["reason"].startswith("tiered policy")

        # (b) a stream for tiny-b wakes it from host, with the tokens it streamed hot
        assert chat(server, "tiny-b", max_tokens=40) == hot["tiny-b"]
        wait_until(lambda: bool(of(tmp_path, "wake", model="tiny-b")), what="tiny-b's wake")
        (wake,) = of(tmp_path, "wake", model="tiny-b")
        assert wake["level"] == "host" and wake["wake_s"] is not None

        # (a) tiny-a sleeps on, at host: the replica says so, as the activator's books do;
        # idle past host_hold_s, it goes down to disk
        assert replica_says(tmp_path, "tiny-a") == ("SLEEPING", "host")
        assert activator_says(server, "tiny-a") == ("SLEEPING", "host")
        asleep_at(tmp_path, "tiny-a", "disk")
        assert replica_says(tmp_path, "tiny-a") == ("SLEEPING", "disk")
        assert activator_says(server, "tiny-a") == ("SLEEPING", "disk")

        # (b) a stream wakes it from disk: the weights read back are the ones it had
        assert chat(server, "tiny-a", max_tokens=40) == hot["tiny-a"]
        wait_until(lambda: bool(of(tmp_path, "wake", model="tiny-a")), what="tiny-a's wake")
        (wake,) = of(tmp_path, "wake", model="tiny-a")
        assert wake["level"] == "disk" and wake["wake_s"] is not None

        # (d) asleep again, tiny-a is woken by a long stream: its idle time is past its plan's
        # at every tick the stream lasts, and the policy leaves it awake until the stream ends.
        # The stream is made to last about 3 s at the rate the hot answers streamed at.
        per_s = max(40 / (a.last - a.first) for a in hot.values())
        tokens = min(4000, max(200, int(3 * per_s)))
        asleep_at(tmp_path, "tiny-a", "host", count=2)
        started: list[float] = []  # when its first chunk came: the activator holds its slot
        looked: list[tuple[str, str | None]] = []  # what the replica said two ticks later

        def look() -> None:
            started.append(time.monotonic())
            if not looked and started[-1] > started[0] + 2 * TICK_S + 0.2:
                looked.append(replica_says(tmp_path, "tiny-a"))  # a sleep would show here

        sleeps = len(of(tmp_path, "sleep", model="tiny-a"))
        long = chat(server, "tiny-a", max_tokens=tokens, during=look)
        assert looked, f"{tokens} tokens streamed within two ticks of the policy ({per_s:.0f}/s)"
        assert looked == [("READY", None)]
        assert (long.finish_reason, long.completion_tokens) == ("length", tokens)
        assert long.text.startswith(hot["tiny-a"].text.rstrip("\ufffd"))
        # nothing put it to sleep while it streamed (what the policy does after is no matter)
        asleep = [e for e in of(tmp_path, "sleep", model="tiny-a") if e["mono"] <= long.last]
        assert len(asleep) == sleeps
        wait_until(lambda: len(of(tmp_path, "wake", model="tiny-a")) == 2, what="its wake")
        assert of(tmp_path, "wake", model="tiny-a")[1]["level"] in ("host", "disk")

        # (a) idle, the members' plans reach zero and the group's replica goes
        wait_until(
            lambda: any(
                e["model"] == "llms" and e["reason"] == "keep-alive expired"
                for e in of(tmp_path, "replica_stopped")
            ),
            what="the group's replica stopped once the plans reached zero",
        )
        for model in ("tiny-a", "tiny-b"):
            assert activator_says(server, model) == ("ZERO", None)


def test_streams_alternating_under_a_budget_that_fits_one_switch_the_models(
    tmp_path: Path, members: list[Path]
) -> None:
    # each member's weights are 492,800 bytes: the budget fits one of them, not both
    config = group_stack(tmp_path, members, device_memory_budget=700_000, keep_alive_s=60)
    with activator(config) as server:
        first = {m: chat(server, m, max_tokens=100) for m in ("tiny-a", "tiny-b")}
        assert first["tiny-a"].text != first["tiny-b"].text
        for answer in first.values():
            assert (answer.finish_reason, answer.completion_tokens) == ("length", 100)

        def levels() -> dict[str, str]:
            described = {m["name"]: m for m in httpx.get(server.url + "/admin/models").json()}
            return {m: described[m]["levels"]["1"] for m in ("tiny-a", "tiny-b")}

        # one after the other: each request wakes its model and the other goes to sleep
        for model in ["tiny-a", "tiny-b"] * 2:
            other = "tiny-b" if model == "tiny-a" else "tiny-a"
            assert chat(server, model, max_tokens=100) == first[model]
            wait_until(
                lambda m=model, o=other: levels() == {m: "hot", o: "host"},
                what=f"{model} awake and {other} asleep",
            )
        # from two clients at once: a switch waits for the other model's streams, none is cut
        switches = len(of(tmp_path, "sleep", group="llms"))
        with ThreadPoolExecutor(2) as pool:
            answers = list(
                pool.map(
                    lambda m: [chat(server, m, max_tokens=100) for _ in range(4)],
                    ["tiny-a", "tiny-b"],
                )
            )
        assert answers == [[first["tiny-a"]] * 4, [first["tiny-b"]] * 4]
        assert len(of(tmp_path, "sleep", group="llms")) > switches
        sleeps = of(tmp_path, "sleep", group="llms")
        assert all(s["level"] == "host" and "budget" in s["reason"] for s in sleeps)
        wakes = of(tmp_path, "wake", group="llms")
        assert len(wakes) >= 4 and {w["level"] for w in wakes} == {"host"}
        assert all(e["status"] == 200 for e in of(tmp_path, "request"))
