"""Every image Ember ships on this machine, built and started: ``scripts/build_images`` builds the
activator and runtime-cpu images from the Dockerfiles users build (on a Debian base mmdebstrap
makes, with buildah as root: no daemon, no registry), and ``buildah run`` starts them on the
host's loopback.

* the runtime image serves the MLP example, from local weights and from S3 (its tier where the
  manifests mount one), as the non-root user, and answers a v2 infer as ``ember serve`` does
  outside it; it writes nothing outside its volumes and /tmp (the manifests make its root
  read-only); SIGTERM stops it cleanly; its start compiles none of the image's modules (their
  bytecode was compiled when it was built);
* the activator image imports every module it runs, each from its bytecode, has neither torch nor
  pip, and runs ``ember up --help`` and ``ember deploy --dry-run`` on the examples;
* every package the project declares is in both images; their sizes stay under the targets.

The CUDA image is not built here (its torch brings ~3 GB of CUDA libraries): the unit tests
check its Dockerfile is the CPU one but for where torch comes from.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.servers import ROOT, ServerProcess, children_of

TAG = "test"
BUILD_TIMEOUT_S = 45 * 60  # a fresh machine: the base (~100 s), torch and the project's packages
BUILDAH = ["buildah", "--storage-driver", os.environ.get("STORAGE_DRIVER", "vfs")]
RUN = ["run", "--isolation", "chroot"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = [p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]
MB = 1_000_000
LIMITS = {"activator": 300 * MB, "runtime-cpu": 1200 * MB}  # uncompressed root filesystems
ROW = [((i % 17) - 8) / 8 for i in range(784)]
# where a running image may write: its volumes and scratch (/tmp is an emptyDir in the manifests,
# /var/cache/ember the weight tier), and what buildah itself makes (/run/.containerenv)
WRITABLE = ("tmp", "run", "var/cache/ember", "models", "examples")
VERBOSE = {"PYTHONVERBOSE": "1"}  # Python says, per module, whether it compiled its source


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``scripts/build_images --base debian``: what it built, with sizes (its --out JSON)."""
    missing = [tool for tool in ("buildah", "mmdebstrap") if shutil.which(tool) is None]
    assert not missing, f"{', '.join(missing)} missing: scripts/setup installs them (as root)"
    assert os.geteuid() == 0, "buildah builds and runs images here as root"
    out = tmp_path_factory.mktemp("images") / "images.json"
    command = [sys.executable, "scripts/build_images.py", "--base", "debian", "--tag", TAG]
    built = subprocess.run(
        [*command, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert built.returncode == 0, built.stdout[-6000:] + built.stderr[-6000:]
    return dict(json.loads(out.read_text()))


class Container:
    """A working container of an image (``buildah from``: on vfs, a copy of its root filesystem,
    so each image gets one for all its tests); ``created`` is when, for what it wrote since."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.created = time.time() - 1  # mtimes are whole seconds on some filesystems

    def command(self, *argv: str, volumes: dict[Path, str] | None = None) -> list[str]:
        mounts = [f"--volume={host}:{inside}" for host, inside in (volumes or {}).items()]
        return [*BUILDAH, *RUN, *mounts, self.name, "--", *argv]

    def run(
        self, *argv: str, volumes: dict[Path, str] | None = None, timeout_s: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*argv, volumes=volumes), capture_output=True, text=True, timeout=timeout_s
        )

    def root(self) -> Path:
        """The container's root filesystem, on the host."""
        mounted = subprocess.run([*BUILDAH, "mount", self.name], capture_output=True, text=True)
        assert mounted.returncode == 0, mounted.stderr
        return Path(mounted.stdout.strip())


@contextlib.contextmanager
def container(image: str) -> Iterator[Container]:
    made = subprocess.run(
        [*BUILDAH, "from", "--quiet", "--pull-never", image], capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    name = made.stdout.strip()
    try:
        yield Container(name)
    finally:
        subprocess.run([*BUILDAH, "umount", name], capture_output=True)
        subprocess.run([*BUILDAH, "rm", name], capture_output=True)


@pytest.fixture(scope="module")
def runtime(images: dict[str, Any]) -> Iterator[Container]:
    with container(images["images"]["runtime-cpu"]["image"]) as box:
        yield box


@pytest.fixture(scope="module")
def activator(images: dict[str, Any]) -> Iterator[Container]:
    with container(images["images"]["activator"]["image"]) as box:
        yield box


def written_since(root: Path, since: float) -> list[str]:
    """Files and folders under ``root`` changed after ``since``, but where the image may write."""
    changed = []
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        if str(rel).startswith(WRITABLE) or rel.parts[:1] in (("proc",), ("sys",), ("dev",)):
            dirs[:] = []
            continue
        for name in [*dirs, *files]:
            path = Path(folder) / name
            with contextlib.suppress(FileNotFoundError):
                if path.lstat().st_mtime > since and str(rel / name) not in WRITABLE:
                    changed.append(str(rel / name))
    return changed


def inside(pid: int, *argv: str) -> int:
    """The deepest process under ``pid`` whose command line has ``argv`` in it, in a row: with
    chroot isolation, what ``buildah run`` starts is a host process, under buildah's own."""
    want, found, todo = [a.encode() for a in argv], None, [pid]
    while todo:
        current = todo.pop(0)
        with contextlib.suppress(OSError):
            args = Path(f"/proc/{current}/cmdline").read_bytes().split(b"\0")
            names = [arg.rsplit(b"/", 1)[-1] for arg in args]
            if any(names[i : i + len(want)] == want for i in range(len(names))):
                found = current
        todo += children_of(current)
    assert found is not None, f"no {' '.join(argv)} under pid {pid}"
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def readable_copy(source: Path, target: Path) -> Path:
    """``source`` copied, readable by anyone (the image runs as uid 10001; the example's weights
    are written 0600)."""
    shutil.copytree(source, target)
    for path in [target, *target.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0))
    return target


def infer(url: str, model: str) -> list[float]:
    body = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": ROW}]}
    answer = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    (logits,) = answer.json()["outputs"]
    assert logits["name"] == "logits" and logits["shape"] == [1, 10]
    return [float(x) for x in logits["data"]]


def wait_ready(url: str, proc: subprocess.Popen[str], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"ember serve in the image exited {proc.returncode}"
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"the runtime image was not ready within {timeout_s} s")


IMPORT_ALL = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\n"


class Served:
    """``ember serve`` in an image: its address; once stopped, its exit status and output."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.returncode: int | None = None
        self.log = ""


@contextlib.contextmanager
def serving(
    box: Container, configs: list[str], *, volumes: dict[Path, str], env: dict[str, str]
) -> Iterator[Served]:
    """``ember serve --config ...`` in ``box`` on a loopback port, ready; then SIGTERM."""
    port = free_port()
    served = Served(f"http://127.0.0.1:{port}")
    argv = ["env", *(f"{k}={v}" for k, v in sorted(env.items()))]
    argv += ["ember", "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += [arg for config in configs for arg in ("--config", config)]
    # its output to a file, not a pipe no one reads before it ends: a verbose start fills one
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            box.command(*argv, volumes=volumes), stdout=log, stderr=subprocess.STDOUT, text=True
        )
        try:
            wait_ready(served.url, proc)
            yield served
        finally:
            # buildah run kills what it runs on SIGTERM: the signal goes to ember serve itself
            with contextlib.suppress(AssertionError):
                os.kill(inside(proc.pid, "ember", "serve"), signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            served.returncode = proc.returncode
            log.seek(0)
            served.log = log.read()


def code_sources(log: str) -> tuple[list[str], list[str]]:
    """From Python's verbose import messages: the sources whose code was read from their bytecode,
    and those compiled because no valid bytecode was found for them."""
    found = re.findall(r"^# code object from '?(\S+?)'?$", log, flags=re.M)
    # DIR/__pycache__/NAME.cpython-311.pyc is the bytecode of DIR/NAME.py
    pyc = re.compile(r"(.*)/__pycache__/([^/.]+)\.[^/]+\.pyc")
    read = [pyc.sub(r"\1/\2.py", f) for f in found if f.endswith(".pyc")]
    return read, [f for f in found if f.endswith(".py")]


# ------------------------------------------------------------------------------- the runtime
def test_the_runtime_image_runs_as_the_non_root_user(runtime: Container) -> None:
    said = runtime.run("id", "-u")
    assert (said.returncode, said.stdout.strip()) == (0, "10001"), said.stderr
    said = runtime.run("ember", "serve", "--help")
    assert said.returncode == 0 and "--config" in said.stdout, said.stderr


def test_the_runtime_image_serves_the_mlp_as_ember_serve_does_outside(
    runtime: Container, mlp_server: ServerProcess, s3_server: str, tmp_path: Path
) -> None:
    """From local weights (a volume) and from S3 (into the tier at /var/cache/ember); then
    SIGTERM, and nothing written outside the volumes and /tmp, by this or the tests before."""
    import boto3

    model = readable_copy(ROOT / "examples" / "mlp", tmp_path / "mlp")
    boto3.client("s3").create_bucket(Bucket="images")
    pushed = subprocess.run(
        [sys.executable, "-m", "ember", "cache", "push", str(model / "weights"), "s3://images/mlp"],
        capture_output=True,
        text=True,
    )
    assert pushed.returncode == 0, pushed.stderr
    from_s3 = {
        "name": "mlp-s3",
        "handler": "torch-module",
        "source": "s3://images/mlp",
        "options": {"module": "/models/mlp/mlp.py:MLP"},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [784]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [10]}],
        "max_batch_size": 8,
    }
    (model / "s3.json").write_text(json.dumps(from_s3))
    (model / "s3.json").chmod(0o644)
    env = {k: os.environ[k] for k in os.environ if k.startswith("AWS_")}
    configs = ["/models/mlp/model.yaml", "/models/mlp/s3.json"]
    with serving(runtime, configs, volumes={model: "/models/mlp"}, env=env) as served:
        outside = infer(mlp_server.url, "mlp")
        assert infer(served.url, "mlp") == pytest.approx(outside, rel=1e-5, abs=1e-6)
        assert infer(served.url, "mlp-s3") == pytest.approx(outside, rel=1e-5, abs=1e-6)
        platform = httpx.get(f"{mlp_server.url}/v2/models/mlp").json()["platform"]
        assert httpx.get(f"{served.url}/v2/models/mlp").json()["platform"] == platform
    assert served.returncode == 0, served.log[-4000:]
    root = runtime.root()
    assert list((root / "var/cache/ember").rglob("model.safetensors")), "mlp-s3 is not in the tier"
    written = written_since(root, runtime.created)
    assert written == [], "the image wrote outside its volumes and /tmp"


def test_a_start_of_the_runtime_image_compiles_nothing(runtime: Container, tmp_path: Path) -> None:
    """``ember serve`` of the MLP, to its first answer, with Python naming where each module's
    code comes from (PYTHONVERBOSE): every module the image holds (its venv, the standard library)
    is read from the bytecode compiled when it was built; none is compiled from source, which a
    start would do on every scale from zero and could not keep (its root filesystem is read-only).
    The model's own module, mounted beside its weights, is the only source compiled."""
    model = readable_copy(ROOT / "examples" / "mlp", tmp_path / "mlp")
    with serving(
        runtime, ["/models/mlp/model.yaml"], volumes={model: "/models/mlp"}, env=VERBOSE
    ) as served:
        infer(served.url, "mlp")
    assert served.returncode == 0, served.log[-4000:]
    read, compiled = code_sources(served.log)
    # the log is the start's: torch, Ember's runtime and the standard library were loaded
    for module in ("/torch/__init__.py", "/runtime/server.py", "/asyncio/__init__.py"):
        assert any(module in path for path in read + compiled), f"no {module} in the log"
    of_the_image = [path for path in compiled if not path.startswith("/models/")]
    assert of_the_image == [], f"{len(of_the_image)} compiled at start: {of_the_image[:5]}"
    assert compiled == ["/models/mlp/mlp.py"]


# ----------------------------------------------------------------------------- the activator
def _activator_modules() -> list[str]:
    """Every module the activator image runs: contracts, activator, knative and the CLI (the
    offline analysis, cost reports and the simulator, is left out of it)."""
    names = []
    for package in ("contracts", "activator", "knative", "ember"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            if not name.endswith("__main__"):
                names.append(name)
    return names


def test_the_activator_image_imports_every_module_it_runs(activator: Container) -> None:
    """... each from the bytecode compiled when the image was built, none from its source."""
    modules = _activator_modules()
    assert {"contracts", "activator.server", "knative.client"} <= set(modules)
    said = activator.run("env", "PYTHONVERBOSE=1", "python", "-c", IMPORT_ALL, *modules)
    assert said.returncode == 0, said.stderr[-4000:]
    read, compiled = code_sources(said.stderr)
    loaded = read + compiled
    assert any(path.endswith("/activator/server.py") for path in loaded), said.stderr[-4000:]
    assert compiled == [], f"{len(compiled)} compiled: {compiled[:5]}"
    said = activator.run("python", "-c", "import contracts, activator.server, knative.client")
    assert said.returncode == 0, said.stderr


def test_the_activator_image_has_no_torch_no_pip_and_no_analysis(activator: Container) -> None:
    modules = "('torch', 'pip', 'analysis')"
    script = f"import importlib.util as u; print([m for m in {modules} if u.find_spec(m)])"
    said = activator.run("python", "-c", script)
    assert (said.returncode, said.stdout.strip()) == (0, "[]"), said.stderr


def test_the_activator_image_runs_ember_up_and_deploy(activator: Container) -> None:
    said = activator.run("id", "-u")
    assert said.stdout.strip() == "10001"
    said = activator.run("ember", "up", "--help")
    assert said.returncode == 0 and "--config" in said.stdout, said.stderr
    said = activator.run(
        "ember",
        "deploy",
        "--config",
        "/examples/ember.yaml",
        "--dry-run",
        volumes={ROOT / "examples": "/examples"},
    )
    assert said.returncode == 0, said.stderr[-4000:]
    kinds = {doc["kind"] for doc in yaml.safe_load_all(said.stdout) if doc}
    assert {"Service", "Deployment", "ConfigMap"} <= kinds, said.stdout[:2000]
    assert "registry.example.com/ember/runtime-cpu:0.1.0" in said.stderr
    written = written_since(activator.root(), activator.created)
    assert written == [], "the image wrote outside its volumes and /tmp"


# ------------------------------------------------------------------------ both: packages, sizes
def test_every_package_of_the_project_is_in_its_images(
    runtime: Container, activator: Container
) -> None:
    """The runtime image has them all; the activator's all but the offline analysis."""
    for box, packages in (
        (runtime, PACKAGES),
        (activator, [p for p in PACKAGES if p != "analysis"]),
    ):
        said = box.run("python", "-c", IMPORT_ALL, *packages)
        assert said.returncode == 0, said.stderr[-4000:]


@pytest.mark.parametrize("name", ["activator", "runtime-cpu"])
def test_the_image_is_within_its_size(images: dict[str, Any], name: str) -> None:
    size = images["images"][name]["bytes"]
    assert 0 < size <= LIMITS[name], f"{name}: {size / MB:.1f} MB, over {LIMITS[name] / MB:.0f}"
