"""The package graph keeps its directions, and nothing imports in a circle.

Read from the source (every ``import`` and ``from ... import``, at module level or inside a
function, ``TYPE_CHECKING`` blocks included: a cycle hidden in a function is still a cycle).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ROOT

PACKAGES = ("contracts", "weight_cache", "runtime", "activator", "analysis", "knative", "ember")
# what each package may import of ours (besides itself)
ALLOWED = {
    "contracts": set(),
    "weight_cache": {"contracts"},
    "runtime": {"contracts", "weight_cache"},
    "activator": {"contracts", "knative"},  # its Knative scaler uses knative.client
    # offline: reads the activator's event and policy types; the activator never imports it
    "analysis": {"contracts", "activator"},
    "knative": {"contracts"},
    "ember": {"contracts", "weight_cache", "runtime", "activator", "analysis", "knative"},
}


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The modules of ours that ``name`` imports (a ``from X import y`` of a submodule counts)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _ours(alias.name, known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield from _ours(full if full in known else base, known)


def _ours(module: str, known: dict[str, Path]) -> Iterator[str]:
    while module and module not in known:
        module = module.rpartition(".")[0]
    if module:
        yield module


GRAPH = {
    name: sorted(set(imports(name, path, modules())) - {name}) for name, path in modules().items()
}


def top(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_it_may(package: str) -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if top(module) == package
        for target in targets
        if top(target) != package and top(target) not in ALLOWED[package]
    ]
    assert not wrong, "\n".join(wrong)


def test_nothing_imports_the_cli() -> None:
    wrong = [f"{m} imports {t}" for m, ts in GRAPH.items() for t in ts if top(t) == "ember"]
    assert not [w for w in wrong if not w.startswith("ember")], "\n".join(wrong)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph``, as the path around it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        graph.setdefault(top(module), set()).update(
            top(t) for t in targets if top(t) != top(module)
        )
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


@pytest.mark.parametrize("package", PACKAGES)
def test_no_cycle_between_modules_of_a_package(package: str) -> None:
    # a package's __init__ re-exporting its modules is not a cycle of theirs
    graph = {
        m: {t for t in ts if top(t) == package and t != package}
        for m, ts in GRAPH.items()
        if top(m) == package and m != package
    }
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_checker_sees_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
