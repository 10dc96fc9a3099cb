"""vLLM's sleep mode on Ember's server: ``POST /sleep?level=1|2``, ``POST /wake_up`` and
``GET /is_sleeping``, for every model or ``?model=`` one, onto the repository's own sleep. The
app is the real one serving the MLP example (torch-module, which sleeps), its lifespan run."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from runtime.app import create_app
from runtime.config import ServerSettings, load_model_configs
from runtime.errors import InvalidInput
from runtime.sleep import SleepLevel, SleepModeCall, sleep_mode_call
from tests.conftest import MLP_CONFIG

REQUEST = (MLP_CONFIG.parent / "request.json").read_bytes()


@pytest.mark.parametrize(
    ("route", "query", "call"),
    [
        ("/sleep", "", SleepModeCall(None, SleepLevel.HOST)),  # vLLM's default level: 1
        ("/sleep", "level=1", SleepModeCall(None, SleepLevel.HOST)),
        ("/sleep", "level=2&model=m", SleepModeCall("m", SleepLevel.DISK)),
        ("/wake_up", "", SleepModeCall()),
        ("/wake_up", "tags=weights&tags=kv_cache", SleepModeCall()),  # woken whole
        ("/is_sleeping", "model=m", SleepModeCall("m")),
    ],
)
def test_a_sleep_mode_query(route: str, query: str, call: SleepModeCall) -> None:
    assert sleep_mode_call(route, query) == call


@pytest.mark.parametrize(
    ("route", "query", "message"),
    [
        ("/sleep", "level=3", "level must be 1 (weights to host memory) or 2"),
        ("/sleep", "level=host", "not 'host'"),
        ("/sleep", "level=1&level=2", "level is given twice"),
        ("/sleep", "lvl=1", "unknown query parameter 'lvl'; it reads level, model"),
        ("/sleep", "model=", "model is empty"),
        ("/wake_up", "level=1", "unknown query parameter 'level'"),
        ("/wake_up", "tags=cuda_graphs", "unknown tag 'cuda_graphs'"),
        ("/is_sleeping", "tags=weights", "unknown query parameter 'tags'"),
    ],
)
def test_a_bad_sleep_mode_query_is_a_400(route: str, query: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)) as caught:
        sleep_mode_call(route, query)
    assert caught.value.status_code == 400


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The MLP's server, its model loaded."""
    settings = ServerSettings(cache_dir=tmp_path, device_memory_budget_bytes=1 << 30)
    app = create_app(settings, load_model_configs(MLP_CONFIG))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://ember") as http,
    ):
        for _ in range(1200):  # until the model has loaded (torch imported): within 60 s
            if (await http.get("/v2/health/ready")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the MLP never loaded")
        yield http


async def state(client: httpx.AsyncClient) -> tuple[str, str | None]:
    (entry,) = (await client.post("/v2/repository/index", json={})).json()
    return entry["state"], entry.get("level")


async def test_vllms_sleep_and_wake_put_the_models_away_and_back(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/is_sleeping")).json() == {"is_sleeping": False}
    asleep = await client.post("/sleep?level=1")
    assert asleep.status_code == 200 and asleep.json() == {"level": "host", "models": ["mlp"]}
    assert await state(client) == ("SLEEPING", "host")
    assert (await client.get("/is_sleeping")).json() == {"is_sleeping": True}
    assert (await client.get("/is_sleeping?model=mlp")).json() == {"is_sleeping": True}
    deeper = await client.post("/sleep?level=2&model=mlp")
    assert deeper.json() == {"level": "disk", "models": ["mlp"]}
    assert await state(client) == ("SLEEPING", "disk")
    woken = await client.post("/wake_up")
    assert woken.status_code == 200 and woken.json() == {"models": ["mlp"]}
    assert await state(client) == ("READY", None)
    assert (await client.get("/is_sleeping")).json() == {"is_sleeping": False}
    assert (await client.post("/wake_up")).json() == {"models": []}  # nothing asleep
    answer = await client.post("/v2/models/mlp/infer", content=REQUEST)
    assert answer.status_code == 200 and len(answer.json()["outputs"][0]["data"]) == 10


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("POST", "/sleep?level=3", 400, "/sleep: level must be 1"),
        ("POST", "/sleep?level=1&model=nope", 404, "model 'nope' is not in the repository"),
        ("POST", "/wake_up?model=nope", 404, "model 'nope' is not in the repository"),
        ("GET", "/is_sleeping?model=nope", 404, "model 'nope' is not in the repository"),
        ("GET", "/sleep", 405, "Method Not Allowed"),
    ],
)
async def test_a_bad_sleep_mode_request_is_an_oip_error_and_changes_nothing(
    client: httpx.AsyncClient, method: str, path: str, status: int, message: str
) -> None:
    response = await client.request(method, path)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert list(response.json()) == ["error"] and message in response.json()["error"]
    assert await state(client) == ("READY", None)
