"""runtime.app's routing: a path the route table lacks is the OIP's 404, never a redirect."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from runtime.app import create_app
from runtime.config import ServerSettings


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v2/models/m/infer/"), ("GET", "/v2/health/live/"), ("GET", "/v2/models/m/")],
)
async def test_a_trailing_slash_is_an_oip_404_not_a_redirect(
    tmp_path: Path, method: str, path: str
) -> None:
    settings = ServerSettings(load_on_start=False, cache_dir=tmp_path)
    transport = httpx.ASGITransport(app=create_app(settings, []))
    async with httpx.AsyncClient(transport=transport, base_url="http://ember") as client:
        response = await client.request(method, path, content=b"{}")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": f"no route for {path}"}
