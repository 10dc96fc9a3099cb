"""The REST layer's one face onto the models: health, metadata, the repository extension (load,
unload, sleep at a level) and inference, without reaching into the data plane or an entry."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from runtime import repository
from runtime.dataplane import DataPlane
from runtime.errors import ModelNotFound, ModelNotReady
from runtime.facade import RuntimeFacade
from runtime.metrics import RuntimeMetrics
from runtime.repository import ModelRepository
from runtime.sleep import SleepLevel
from tests.unit.runtime.test_repository_sleep import Sleeper, Sources, _config, _request

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def models(monkeypatch: pytest.MonkeyPatch) -> RuntimeFacade:
    monkeypatch.setattr(repository, "create_handler", Sleeper)
    Sleeper.made = {}
    metrics = RuntimeMetrics()
    repo = ModelRepository(
        [_config("m", max_batch_size=4), _config("other")],
        metrics,
        Sources(),  # type: ignore[arg-type]
    )
    return RuntimeFacade(DataPlane(repo, metrics), repo)


async def test_health_index_load_sleep_and_unload_through_the_facade(
    models: RuntimeFacade,
) -> None:
    assert models.live() and models.not_ready() == "models are not ready"
    with pytest.raises(ModelNotReady, match="model 'm' is not ready: unavailable"):
        models.model_ready("m", None)
    with pytest.raises(ModelNotFound):
        models.known("nope")
    await models.load("m")
    await models.load("other")
    assert models.not_ready() is None
    models.model_ready("m", None)
    result = await models.infer("m", None, _request())
    assert result.model_name == "m" and result.outputs[0][0].array.tolist() == [[2.5, 3.5]]
    await models.unload("m", SleepLevel.HOST)  # with a level: a sleep
    (m, other) = models.index(ready_only=False)
    assert (m["state"], m["level"], other["state"]) == ("SLEEPING", "host", "READY")
    models.model_ready("m", None)  # a sleeper can serve: a request wakes it
    await models.unload("m", None)  # without: an unload
    assert [e["name"] for e in models.index(ready_only=True)] == ["other"]
    assert models.index(ready_only=False)[0]["reason"] == "unloaded"
    with pytest.raises(ModelNotReady):
        models.can_infer("m", None)
    assert b'ember_queue_depth{model="other"} 0.0' in models.metrics()
    await models.load("m")
    metadata = await models.model_metadata("m", None)
    assert metadata["name"] == "m" and metadata["platform"] == "test"
    assert (await models.model_config("m", None))["max_batch_size"] == 4


def test_the_rest_layer_imports_the_facade_not_the_data_plane_or_the_repository() -> None:
    tree = ast.parse((ROOT / "runtime" / "rest.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "runtime.facade" in imported
    assert not imported & {"runtime.dataplane", "runtime.repository", "runtime.entries"}
