"""A model that cannot load fails its request in seconds, not after ``startup_timeout_s``.

Through a real ``ember up`` (the files break once it has started: a file missing at its start is
refused by ``ember up`` itself, tests/unit/test_validation.py): the replica says on its status pipe
that its model is UNAVAILABLE and why; the activator answers 503 with that reason at once (the
timeout stays 300 s), shows it in its repository index, and the next request starts a replica again:
once the model is mended it is served.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FIXTURES, slow_model
from tests.integration.test_activator import activator, events, post, stack, wait_until

FAIL_WITHIN_S = 10.0  # generous: the replica's own start and its failed load take a few seconds


# each: the model's config (whole when the activator starts, so that `ember up` takes it), what
# breaks it once the activator runs (a file that vanishes or changes under it), the reason its
# load gives, and what mends it
Broken = tuple[Path, Callable[[], object], str, Callable[[], object]]


def missing_weights(tmp_path: Path) -> Broken:
    config = slow_model(tmp_path)
    weights = tmp_path / "weights" / "model.safetensors"
    kept = weights.read_bytes()
    reason = f"weights file {weights} does not exist"
    return config, weights.unlink, reason, lambda: weights.write_bytes(kept)


def corrupt_weights(tmp_path: Path) -> Broken:
    config = slow_model(tmp_path)
    weights = tmp_path / "weights" / "model.safetensors"
    kept = weights.read_bytes()
    return (
        config,
        lambda: weights.write_bytes(b"\x07not a safetensors header, and then some" * 64),
        f"cannot read weights {weights}",
        lambda: weights.write_bytes(kept),
    )


def class_path_that_does_not_import(tmp_path: Path) -> Broken:
    config = slow_model(tmp_path)
    module = tmp_path / "my_models.py"
    shutil.copy(FIXTURES / "models.py", module)
    raw = json.loads(config.read_text())
    raw["options"]["module"] = f"{module}:Slow"
    config.write_text(json.dumps(raw))
    return (
        config,
        module.unlink,
        f"cannot import {module}: no such file",
        lambda: shutil.copy(FIXTURES / "models.py", module),
    )


def named(tmp_path: Path, event: str) -> list[dict[str, Any]]:
    return [e for e in events(tmp_path) if e["event"] == event]


@pytest.mark.parametrize(
    "broken",
    [missing_weights, corrupt_weights, class_path_that_does_not_import],
    ids=["missing-weights", "corrupt-weights", "class-path-does-not-import"],
)
def test_a_model_that_cannot_load_answers_503_in_seconds_with_why(
    tmp_path: Path, broken: Callable[[Path], Broken]
) -> None:
    config, breaks, reason, mend = broken(tmp_path)
    ember = stack(tmp_path, [{"config": str(config), "startup_timeout_s": 300}])
    with activator(ember) as server:
        breaks()
        sent = time.monotonic()
        r = post(server, timeout=60)
        took = time.monotonic() - sent
        assert r.status_code == 503, r.text
        assert took < FAIL_WITHIN_S, f"{took:.1f}s: it waited for the timeout"
        assert reason in r.json()["error"], r.text
        (entry,) = httpx.post(server.url + "/v2/repository/index").json()
        assert entry["name"] == "slow" and entry["state"] != "READY"
        assert reason in entry["reason"], entry
        wait_until(lambda: len(named(tmp_path, "replica_failed")) == 1, 10, "replica_failed")
        assert reason in named(tmp_path, "replica_failed")[0]["reason"]

        # the model does not stay dead: the next request starts a replica again
        mend()
        r = post(server, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == [6.0]
        wait_until(lambda: len(named(tmp_path, "replica_starting")) == 2, 10, "a second start")
        (entry,) = httpx.post(server.url + "/v2/repository/index").json()
        assert entry["state"] == "READY" and entry["reason"] == ""
