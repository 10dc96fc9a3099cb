"""scripts/build_images without an engine: which engine, what the host's pip settings become in
the build, where each image's torch comes from, and its errors. (tests/images/ runs it for real.)"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.servers import ROOT


@pytest.fixture
def build_images() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_images", ROOT / "scripts/build_images.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_host_pips_settings_and_the_paths_they_name_go_into_the_build(
    build_images: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels = tmp_path / "wheels"
    index = tmp_path / "mirror" / "simple"
    index.mkdir(parents=True)
    wheels.mkdir()
    listed = "\n".join(
        [
            f"global.find-links='{wheels} /nowhere/at/all'",
            "global.index-url='https://pypi.org/simple'",
            f"install.extra-index-url='file://{index}'",
            "global.timeout='60'",
            "global.timeout='90'",
            ":env:.timeout='120'",  # the environment's wins, as in pip
            "site.nonsense='x'",
        ]
    )
    monkeypatch.setattr(build_images, "output", lambda cmd: listed)
    conf, mounts = build_images.host_pip()
    lines = conf.splitlines()
    assert lines[0] == "[global]"
    assert f"find-links = {wheels} /nowhere/at/all" in lines
    assert "timeout = 120" in lines and "nonsense = x" not in conf
    # the folders that exist; an index's parent (its pages link beside it), not a URL
    assert wheels in mounts and index.parent in mounts
    assert Path("/nowhere/at/all") not in mounts and Path("https:") not in mounts


class FakeEngine:
    name = "fake"

    def __init__(self) -> None:
        self.built: list[tuple[str, dict[str, str], list[Any]]] = []

    def build(self, dockerfile: Path, image: str, args: dict[str, str], mounts: Any) -> None:
        self.built.append((dockerfile.name, args, mounts))

    def size(self, image: str) -> int:
        return 123_000_000


def test_only_the_cpu_runtime_takes_torch_from_the_hosts_pip(
    build_images: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeEngine()
    monkeypatch.setattr(build_images, "Buildah", FakeEngine)  # so it counts as buildah
    monkeypatch.setattr(build_images, "engine", lambda: fake)
    monkeypatch.setattr(build_images, "host_pip", lambda: ("[global]\n", [tmp_path]))
    out = tmp_path / "images.json"
    names = "activator,runtime-cpu,runtime-cuda"
    argv = ["--images", names, "--base", "example/base:1", "--tag", "t", "--out", str(out)]
    assert build_images.main(argv) == 0
    args = {dockerfile: args for dockerfile, args, _ in fake.built}
    assert args["Dockerfile.runtime-cpu"] == {"BASE": "example/base:1", "TORCH_INDEX": ""}
    assert args["Dockerfile.runtime-cuda"] == {"BASE": "example/base:1"}  # its CUDA index
    assert args["Dockerfile.activator"] == {"BASE": "example/base:1"}
    mounts = fake.built[0][2]
    assert (tmp_path, str(tmp_path)) in mounts and mounts[-1][1] == "/etc/pip.conf"
    written = json.loads(out.read_text())
    assert written["images"]["runtime-cpu"] == {
        "image": "ember/runtime-cpu:t",
        "bytes": 123_000_000,
        "build_s": written["images"]["runtime-cpu"]["build_s"],
    }


def test_an_unknown_image_is_refused(
    build_images: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_images.main(["--images", "activator,runtime-tpu"])
    assert exited.value.code == 2
    assert "runtime-tpu" in capsys.readouterr().err


def test_no_engine_says_what_to_install(
    build_images: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(build_images.shutil, "which", lambda name: None)
    assert build_images.main(["--images", "activator"]) == 2
    err = capsys.readouterr().err
    assert "no container engine" in err and "apt-get install buildah" in err


def test_a_failed_build_exits_1_naming_the_command(
    build_images: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail() -> Any:
        raise subprocess.CalledProcessError(125, ["buildah", "bud", "-f", "x", "more"])

    monkeypatch.setattr(build_images, "engine", fail)
    assert build_images.main(["--images", "activator"]) == 1
    assert "buildah bud -f x ... failed (exit 125)" in capsys.readouterr().err
