"""The Dockerfiles, read: multi-stage, non-root, no compilers in the final stage, no weights baked
in; one base argument; the whole build context copied (so no package of the project can be left
out); the CUDA image the CPU one but for where torch comes from; and what each image's modules
import is what that image installs. (tests/images/ builds and starts them.)"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from tests.servers import ROOT

DOCKERFILES = sorted((ROOT / "templates").glob("Dockerfile.*"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = [
    "contracts",
    "ember",
    "runtime",
    "activator",
    "analysis",
    "weight_cache",
    "knative",
    "templates",
]


def final_stage(text: str) -> str:
    return re.split(r"^FROM ", text, flags=re.M)[-1]


def test_there_are_three_images() -> None:
    names = {p.name for p in DOCKERFILES}
    assert names == {"Dockerfile.runtime-cpu", "Dockerfile.runtime-cuda", "Dockerfile.activator"}


def test_the_packages_are_the_projects() -> None:
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(name.rstrip("*") for name in include) == sorted(PACKAGES)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_multi_stage_non_root_and_lean(path: Path) -> None:
    text = path.read_text()
    assert len(re.findall(r"^FROM ", text, flags=re.M)) >= 2
    final = final_stage(text)
    assert "COPY --from=build" in final
    assert re.search(r"^USER 10001$", final, flags=re.M)
    assert 'ENTRYPOINT ["ember"]' in final
    for forbidden in ("gcc", "build-essential", "apt-get install", "pip install"):
        assert forbidden not in final, forbidden
    assert not re.search(r"^(COPY|ADD) .*(weights|\.safetensors|\.bin)", text, flags=re.M)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_stage_starts_from_the_base_argument(path: Path) -> None:
    text = path.read_text()
    assert text.count("ARG BASE=python:3.11-slim\n") == 1
    assert re.findall(r"^FROM (\S+)", text, flags=re.M) == ["${BASE}", "${BASE}"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_the_whole_context_is_copied_not_a_list_of_packages(path: Path) -> None:
    copies = re.findall(r"^COPY (?!--from)(.*)$", path.read_text(), flags=re.M)
    assert copies == [". ."]


def test_the_build_context_keeps_every_package() -> None:
    ignored = [
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = [*PACKAGES, "pyproject.toml", "README.md", "requirements.lock"]
    for name in needed:
        assert not any(Path(name).match(pattern) for pattern in ignored), name
    for left_out in ("tests", ".venv", ".git", ".cache", "bench-results"):
        assert left_out in ignored, left_out


def test_the_cuda_image_is_the_cpu_image_but_for_where_torch_comes_from() -> None:
    def body(name: str) -> list[str]:
        lines = (ROOT / "templates" / f"Dockerfile.{name}").read_text().splitlines()
        first = next(i for i, line in enumerate(lines) if not line.startswith("#"))
        return lines[first:]  # the header comment says what each is

    cpu, cuda = body("runtime-cpu"), body("runtime-cuda")
    differ = [(a, b) for a, b in zip(cpu, cuda, strict=True) if a != b]
    assert differ == [
        (
            "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu",
            "ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128",
        )
    ]


def test_the_activator_image_installs_its_extra_and_no_torch() -> None:
    text = (ROOT / "templates" / "Dockerfile.activator").read_text()
    assert "extras['activator']" in text and "--no-deps ." in text
    assert "torch" not in text.replace("No torch", "")


def test_the_activator_image_leaves_the_offline_analysis_out() -> None:
    """Cost reports, charts and the simulator are never in the serving path: the package is
    removed from the copied context before the install, so no file of it is installed."""
    text = (ROOT / "templates" / "Dockerfile.activator").read_text()
    steps = [s.strip() for s in text.split("&&")]
    removed = steps.index("rm -r analysis \\")
    installed = next(i for i, s in enumerate(steps) if s.endswith("--no-deps . \\"))
    assert removed < installed
    # and what the image runs imports it only in the commands that use it (cost-report, simulate)
    at_import = {
        f"{module} imports {name}"
        for module in _modules_of("contracts", "activator", "knative", "ember")
        for name in _imports(FILES[module], anywhere=False)
        if name.split(".")[0] == "analysis"
    }
    assert at_import == set()


# ------------------------------------------------------------------------ what images import
def _module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


FILES = _module_files()


def _imports(path: Path, *, anywhere: bool) -> set[str]:
    """The modules ``path`` imports: at module level (what importing it imports), or
    ``anywhere`` (in its functions too: what running it may import); never under ``if
    TYPE_CHECKING``."""
    names: set[str] = set()
    todo: list[ast.AST] = list(ast.parse(path.read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif anywhere or isinstance(node, ast.If | ast.Try | ast.With):
            todo.extend(ast.iter_child_nodes(node))
    return names


def third_party(modules: set[str]) -> dict[str, str]:
    """The third-party top-level packages that ``modules`` import anywhere, and the modules of
    ours they import at module level do (with the first module found importing each)."""
    seen, todo, found = set(), sorted(modules), {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for name in _imports(FILES[module], anywhere=True):
            top = name.split(".")[0]
            if top not in PACKAGES and top not in sys.stdlib_module_names and top != "__future__":
                found.setdefault(top, module)
        todo += [n for n in _imports(FILES[module], anywhere=False) if n in FILES]
    return found


def _dist(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def distributions(imports: dict[str, str]) -> dict[str, str]:
    """Import name -> the distribution that installs it (as this environment has it)."""
    owners = metadata.packages_distributions()
    return {name: _dist(owners[name][0]) if name in owners else name for name in imports}


def _modules_of(*packages: str) -> set[str]:
    return {m for m in FILES if m.split(".")[0] in packages and m}


def test_the_activator_images_modules_import_only_its_extra() -> None:
    """What the activator image runs (`ember up`, `ember deploy`, `ember prewarm`, the Knative
    scaler): every module of contracts, activator, knative and ember (not analysis: the image
    leaves it out, and the CLI imports it only in the commands that use it)."""
    modules = _modules_of("contracts", "activator", "knative", "ember")
    imports = third_party(modules)
    declared = {_dist(r) for r in PYPROJECT["project"]["optional-dependencies"]["activator"]}
    missing = {
        name: f"{dist} (imported by {imports[name]})"
        for name, dist in distributions(imports).items()
        if dist not in declared
    }
    assert missing == {}, "add these to the activator extra in pyproject.toml"
    assert "torch" not in imports and "numpy" not in imports


def test_the_runtime_images_modules_import_only_what_it_installs() -> None:
    """What the runtime image runs (`ember serve`, `ember cache`): every module of runtime,
    weight_cache, contracts and ember, against the project's dependencies and the `hf` extra
    (what the image installs); the kserve handler imports kserve and the text-generation handler
    transformers when they load, the extras (`kserve`, `llm`) a user adds to the image."""
    modules = _modules_of("runtime", "weight_cache", "contracts", "ember")
    imports = third_party(modules)
    assert imports.pop("kserve") == "runtime.handlers.kserve_model"
    assert imports.pop("transformers") == "runtime.handlers.text_generation"
    project = PYPROJECT["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["hf"]]
    declared = {_dist(r) for r in requirements}
    missing = {
        name: f"{dist} (imported by {imports[name]})"
        for name, dist in distributions(imports).items()
        if dist not in declared
    }
    assert missing == {}, "declare these in pyproject.toml"
