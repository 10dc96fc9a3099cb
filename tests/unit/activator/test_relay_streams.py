"""A streamed answer through the relay: written as it comes, timed by its silences rather than
its length, its usage read into the request's record, and ended with an error event when its
replica dies mid-stream."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from tests.fixtures.frontdoor import Raw, Replica, request, serving, until

BODY = json.dumps({"model": "m", "prompt": "hi", "stream": True}).encode()
USAGE = {"stream_options": {"include_usage": True}}
LLM = "text-generation"  # the OpenAI routes take a model that generates


async def test_a_stream_longer_than_the_timeout_is_answered_whole(tmp_path: Path) -> None:
    # six events 0.2 s apart: 1.2 s in all, each silence under the 0.5 s timeout
    replica = Replica("stream", events=6, gap_s=0.2)
    async with serving(
        tmp_path, [replica], min_replicas=1, request_timeout_s=0.5, handler=LLM
    ) as h:
        await until(lambda: h.activator.pools["m"].state == "ready", "the replica")
        body = json.dumps({**json.loads(BODY), **USAGE})
        async with h.client.stream("POST", "/v1/completions", content=body) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "text/event-stream"
            lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        texts = [json.loads(x[6:])["choices"] for x in lines[:-1]]
        assert [c[0]["text"] for c in texts if c] == [f"t{i}" for i in range(6)]
        assert json.loads(lines[-2][6:])["usage"]["completion_tokens"] == 6  # the client's own
        assert not [r for r in replica.received if (b"ember-usage", b"comment") in r[2]]
        (event,) = h.events()
        assert event["status"] == 200 and event["endpoint"] == "completions"
        assert (event["prompt_tokens"], event["completion_tokens"]) == (3, 6)
        assert 0 <= event["ttft_s"] < 0.5
        metrics = (await h.client.get("/metrics")).text
        assert 'ember_activator_inter_token_latency_seconds_count{model="m"}' in metrics


async def test_each_event_reaches_the_client_before_the_stream_ends(tmp_path: Path) -> None:
    async with serving(tmp_path, [Replica("stall")], min_replicas=1, handler=LLM) as h:
        await until(lambda: h.activator.pools["m"].state == "ready", "the replica")
        async with Raw.open(h) as raw:
            raw.writer.write(request("POST", "/v1/completions", BODY))
            got = await raw.read_until(lambda b: b.count(b"data: ") == 2, "two events")
        assert b'"text": "t1"' in got  # while the replica still holds its stream open


async def test_a_stream_that_falls_silent_is_cut_at_the_timeout(tmp_path: Path) -> None:
    async with serving(
        tmp_path, [Replica("stall")], min_replicas=1, request_timeout_s=0.5, handler=LLM
    ) as h:
        await until(lambda: h.activator.pools["m"].state == "ready", "the replica")
        async with Raw.open(h) as raw:
            raw.writer.write(request("POST", "/v1/completions", BODY))
            got = await raw.read_to_eof()  # the activator closes it: the answer cannot end
        assert got.count(b"data: ") == 2 and b"[DONE]" not in got
        await until(lambda: bool(h.events()), "the request's record")
        (event,) = h.events()
        assert event["status"] == 504 and "prompt_tokens" not in event


async def test_an_infer_answer_is_not_watched_for_tokens(tmp_path: Path) -> None:
    async with serving(tmp_path, [Replica("answer")], min_replicas=1) as h:
        await until(lambda: h.activator.pools["m"].state == "ready", "the replica")
        r = await h.client.post("/v2/models/m/infer", content=b'{"usage": {"prompt_tokens": 1}}')
        assert r.status_code == 200
        (event,) = h.events()
        assert "prompt_tokens" not in event and "ttft_s" not in event


async def test_a_streams_tokens_are_asked_for_when_its_client_did_not(tmp_path: Path) -> None:
    replica = Replica("stream", events=3)
    async with serving(tmp_path, [replica], min_replicas=1, handler=LLM) as h:
        await until(lambda: h.activator.pools["m"].state == "ready", "the replica")
        async with Raw.open(h) as raw:  # a client that sends the activator's header itself
            raw.writer.write(request("POST", "/v1/completions", BODY, "ember-usage: nonsense"))
            got = await raw.read_until(lambda b: b.endswith(b"0\r\n\r\n"), "the whole stream")
        assert b"ember-usage" not in got and b"prompt_tokens" not in got  # the client sees neither
        assert got.count(b"data: ") == 4  # three events and [DONE]
        (sent,) = replica.received
        assert [v for k, v in sent[2] if k == b"ember-usage"] == [b"comment"]  # ours only
        await until(lambda: bool(h.events()), "the request's record")
        (event,) = h.events()
        assert (event["prompt_tokens"], event["completion_tokens"]) == (3, 3)


async def test_an_openai_request_for_a_model_that_cannot_answer_it_wakes_nothing(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, [Replica()], handler="torch-module") as h:
        r = await h.client.post("/v1/completions", content=BODY)
        assert r.status_code == 400
        error = r.json()["error"]
        assert error["param"] == "model" and "does not make text" in error["message"]
        r = await h.client.post("/v1/embeddings", content=b'{"model": "m", "input": "x"}')
        assert r.status_code == 400 and "does not make embeddings" in r.json()["error"]["message"]
        r = await h.client.post("/v1/nothing", content=BODY)
        assert r.status_code == 404 and r.json()["error"]["code"] is None  # a path, not a model
        assert h.activator.pools["m"].state == "zero" and not h.events("replica_starting")


async def test_a_stream_whose_replica_dies_ends_with_an_error_event(tmp_path: Path) -> None:
    async with serving(tmp_path, [Replica("die")], min_replicas=1, handler=LLM) as h:
        await until(lambda: h.activator.pools["m"].state == "ready", "the replica")
        async with h.client.stream("POST", "/v1/completions", content=BODY) as r:
            assert r.status_code == 200
            # the chunked body ends: httpx would raise on a cut one
            lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
        assert len(lines) == 3 and "data: [DONE]" not in lines  # not whole, and it says so
        assert [json.loads(x[6:])["choices"][0]["text"] for x in lines[:2]] == ["t0", "t1"]
        error = json.loads(lines[-1][6:])["error"]
        assert error["type"] == "server_error" and "went away mid-stream" in error["message"]
        assert set(error) == {"message", "type", "param", "code"}
        await until(lambda: bool(h.events()), "the request's record")
        (event,) = h.events()
        assert event["status"] == 502 and event["endpoint"] == "completions"


async def test_the_connection_of_a_stream_ended_so_goes_on(tmp_path: Path) -> None:
    # its answer is whole: closing the connection now would race the client's next request
    async with serving(tmp_path, [Replica("die")], min_replicas=1, handler=LLM) as h:
        await until(lambda: h.activator.pools["m"].state == "ready", "the replica")
        async with Raw.open(h) as raw:
            raw.writer.write(request("POST", "/v1/completions", BODY))
            got = await raw.read_until(lambda b: b.endswith(b"0\r\n\r\n"), "the ended stream")
            assert b"went away mid-stream" in got and b"connection: close" not in got
            raw.writer.write(request("GET", "/v2/health/live"))
            got = await raw.read_until(lambda b: b.count(b"HTTP/1.1 200") == 2, "the next answer")
        assert got.count(b"HTTP/1.1 200") == 2  # answered on the same connection


async def test_an_openai_client_is_told_why_its_stream_ended(tmp_path: Path) -> None:
    async with serving(tmp_path, [Replica("die")], min_replicas=1, handler=LLM) as h:
        await until(lambda: h.activator.pools["m"].state == "ready", "the replica")
        client = openai.AsyncOpenAI(base_url=h.url + "/v1", api_key="-", max_retries=0)
        texts = []
        with pytest.raises(openai.APIError, match="went away mid-stream"):
            async with client:
                stream = await client.completions.create(model="m", prompt="hi", stream=True)
                async for chunk in stream:
                    texts.append(chunk.choices[0].text)
        assert texts == ["t0", "t1"]


async def test_a_stream_cut_inside_a_chunk_is_cut_for_its_client_too(tmp_path: Path) -> None:
    # an event cannot follow half a chunk: the client's connection is cut, as the replica's was
    async with serving(tmp_path, [Replica("tear")], min_replicas=1, handler=LLM) as h:
        await until(lambda: h.activator.pools["m"].state == "ready", "the replica")
        async with Raw.open(h) as raw:
            raw.writer.write(request("POST", "/v1/completions", BODY))
            got = await raw.read_to_eof()
        assert got.count(b"data: ") == 3 and b'"error"' not in got
        assert not got.endswith(b"0\r\n\r\n")
        await until(lambda: bool(h.events()), "the request's record")
        (event,) = h.events()
        assert event["status"] == 502


@pytest.mark.parametrize(
    ("mode", "leave_at", "status"),
    [("linger", b"data: [DONE]", 200), ("stall", b'"t1"', 499)],
)
async def test_a_client_that_leaves_at_done_had_the_whole_answer(
    tmp_path: Path, mode: str, leave_at: bytes, status: int
) -> None:
    # linger: the replica holds the body's end back after [DONE], and the client (as an OpenAI
    # client does) closes on [DONE]; stall: the client leaves before [DONE] ever comes
    async with serving(tmp_path, [Replica(mode, events=3)], min_replicas=1, handler=LLM) as h:
        await until(lambda: h.activator.pools["m"].state == "ready", "the replica")
        async with Raw.open(h) as raw:
            raw.writer.write(request("POST", "/v1/completions", BODY))
            await raw.read_until(lambda b: leave_at in b, "the stream so far")
        await until(lambda: bool(h.events()), "the request's record")
        (event,) = h.events()
        assert event["status"] == status
        if status == 200:  # its usage came before [DONE]: booked
            assert (event["prompt_tokens"], event["completion_tokens"]) == (3, 3)
