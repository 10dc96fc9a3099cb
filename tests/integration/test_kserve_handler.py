"""An existing kserve.Model subclass, run unchanged behind ember serve."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.conftest import FIXTURES
from tests.servers import ServerProcess, running_server, wait_for_state


def write_config(tmp_path: Path, model_class: str) -> Path:
    config = {
        "name": "echo",
        "handler": "kserve",
        "options": {"model_class": model_class, "kwargs": {"prefix": ">"}},
        "inputs": [
            {"name": "words", "datatype": "BYTES", "shape": [-1]},
            {"name": "nums", "datatype": "INT32", "shape": [-1]},
        ],
        "outputs": [
            {"name": "words_out", "datatype": "BYTES", "shape": [-1]},
            {"name": "nums_out", "datatype": "INT32", "shape": [-1]},
        ],
    }
    path = tmp_path / "echo.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    path = write_config(tmp_path_factory.mktemp("echo"), f"{FIXTURES / 'echo_kserve.py'}:EchoModel")
    with running_server(path) as server:
        yield server


@pytest.mark.parametrize("binary", [False, True])
def test_kserve_model_answers_through_ember(echo_server: ServerProcess, binary: bool) -> None:
    client = triton.InferenceServerClient(echo_server.url.removeprefix("http://"))
    words = triton.InferInput("words", [2], "BYTES")
    words.set_data_from_numpy(np.array([b"hi", b"there"], dtype=object), binary_data=binary)
    nums = triton.InferInput("nums", [3], "INT32")
    nums.set_data_from_numpy(np.array([1, -2, 3], dtype=np.int32), binary_data=binary)
    outputs = [
        triton.InferRequestedOutput(n, binary_data=binary) for n in ("words_out", "nums_out")
    ]
    result = client.infer("echo", [words, nums], outputs=outputs)
    # tritonclient gives str for JSON BYTES and bytes for binary ones, as with Triton itself
    words_out = [w if isinstance(w, bytes) else w.encode() for w in result.as_numpy("words_out")]
    assert words_out == [b">hi", b">there"]
    assert result.as_numpy("nums_out").tolist() == [1, -2, 3]
    assert client.get_model_metadata("echo")["platform"] == "kserve"
    client.close()


def test_not_a_kserve_model_fails_to_load_clearly(tmp_path: Path) -> None:
    path = write_config(tmp_path, f"{FIXTURES / 'models.py'}:Identity")
    with running_server(path, "--stay-on-load-failure", ready=False) as server:
        entry = wait_for_state(server, "UNAVAILABLE")
        assert "is not a kserve.Model subclass" in entry["reason"]
        r = httpx.post(server.url + "/v2/models/echo/infer", content=b"{}")
        assert r.status_code == 503
