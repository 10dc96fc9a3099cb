"""``engine: command``: the command's arguments, and its process group stopped with it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from contracts.replica import SleepLevel
from runtime.command_engine import command_argv
from runtime.config import ModelConfig, load_model_configs
from runtime.errors import ConfigError
from tests.servers import ROOT


def config(**kw: object) -> ModelConfig:
    return ModelConfig.model_validate({"name": "m", "engine": "command", **kw})


def test_placeholders_are_filled_and_braces_kept() -> None:
    c = config(command=["serve", "{weights}", "--port={port}", "--hf-overrides", '{{"a": 1}}'])
    argv = command_argv(c, weights=Path("/tier/m"), host="127.0.0.1", port=8000)
    assert argv == ["serve", "/tier/m", "--port=8000", "--hf-overrides", '{"a": 1}']
    assert command_argv(
        config(command=["x", "{model}@{host}"]), weights=Path("."), host="h", port=1
    ) == [
        "x",
        "m@h",
    ]


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["x", "{nope}"], "unknown placeholder {nope}"),
        (["x", "{port!r}"], "unknown placeholder {port}"),
        (["x", "{port:>5}"], "unknown placeholder {port}"),
        (["x", "{model.name}"], "unknown placeholder {model.name}"),
        (["x", '{"a": 1}'], "unknown placeholder"),
        (["x", "a}b"], "write {{ and }} for braces"),
    ],
)
def test_bad_placeholders_are_refused(command: list[str], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("{", r"\{").replace("}", r"\}")):
        config(command=command)


def test_its_servers_sleep_and_wake_calls_are_read_from_its_config(tmp_path: Path) -> None:
    c = config(
        command=["vllm", "serve"],
        sleep={"host": "POST /sleep?level=1", "disk": "POST /sleep?level=2"},
        wake="POST /wake_up",
    )
    assert c.engine_calls is not None and c.engine_calls.levels == {"host", "disk"}
    assert [str(x) for x in c.engine_calls.wake_calls(SleepLevel.DISK)] == ["POST /wake_up"]
    assert config(command=["x"]).engine_calls is None  # none named: the group refuses it
    (tmp_path / "m.yaml").write_text(
        "name: m\nengine: command\ncommand: [x]\nsleep: {host: POST sleep}\nwake: POST /w\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_model_configs(tmp_path / "m.yaml")
    assert str(caught.value) == (
        f"{tmp_path / 'm.yaml'}: sleep: host: 'POST sleep' is not a call: write METHOD /PATH, "
        "e.g. 'POST /sleep?level=1'"
    )


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"sleep": {"host": "POST /sleep?level=1"}}, "'sleep' needs the 'wake' call(s) too"),
        ({"wake": "POST /wake_up"}, "'wake' needs the 'sleep' calls too"),
        ({"sleep": {"disk": "POST /s"}, "wake": {"host": "POST /w"}}, "no call for level disk"),
        ({"sleep": {"level1": "POST /s"}, "wake": "POST /w"}, "unknown level 'level1'"),
    ],
)
def test_bad_sleep_and_wake_calls_are_refused(keys: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        config(command=["x"], **keys)


def test_sleep_calls_are_a_command_engines_only() -> None:
    with pytest.raises(ValidationError, match="Ember's own handlers sleep without them"):
        ModelConfig.model_validate(
            {"name": "m", "handler": "kserve", "sleep": {"host": "POST /s"}, "wake": "POST /w"}
        )


def test_stopped_while_not_yet_healthy_its_whole_group_goes(tmp_path: Path) -> None:
    marker = str(tmp_path / "grandchild")
    # a server that never answers, which starts a process of its own
    grandchild = [sys.executable, "-c", "import time; time.sleep(300)", marker]
    script = f"import subprocess, time; subprocess.Popen({grandchild!r}); time.sleep(300)"
    model = {"name": "m", "engine": "command", "command": [sys.executable, "-c", script, "{port}"]}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(model))
    serve = [sys.executable, "-m", "ember", "serve", "--config", str(tmp_path / "m.yaml")]
    proc = subprocess.Popen(
        [*serve, "--port", "0"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def running() -> list[str]:
        out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
        return out.stdout.split()

    try:
        deadline = time.monotonic() + 60
        while len(running()) < 2:  # the command, and what it started (both name the marker)
            assert proc.poll() is None, "ember serve exited"
            assert time.monotonic() < deadline, "the command's own process never started"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(40) == 0
        deadline = time.monotonic() + 10
        while running():
            assert time.monotonic() < deadline, "a process the command started outlived it"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
        for pid in running():
            os.kill(int(pid), signal.SIGKILL)
