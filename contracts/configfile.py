"""Reading a config file, and saying what is wrong with it in our words: one line per problem,
each naming the file and the key, an unknown key with the closest valid one.

Shared by ``ember.yaml`` (:mod:`contracts.stack`) and model configs (``runtime.config``). A
pydantic error is told by its ``type`` code, never by its message; the few codes not listed here
keep pydantic's text.
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from contracts.errors import ConfigError

Loc = Sequence[str | int]

# keys only a model config has, and only an ember.yaml has: a file given to the wrong command
_MODEL_KEYS = frozenset({"handler", "source", "inputs", "outputs", "options", "max_batch_size"})
_STACK_KEYS = frozenset({"activator", "knative"})
MAX_DEPTH = 32  # levels of nesting: the deepest real config has fewer than ten
MAX_VALUES = 100_000  # values, aliases expanded: a real config has hundreds


def read_config(path: Path) -> Any:
    """The document in ``path`` (JSON if it ends in ``.json``, else YAML).

    ConfigError, naming the file, when it cannot be read, is empty, or does not parse (with the
    line and column).
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file (not UTF-8)") from None
    too_deep = ConfigError(f"{path}: nested deeper than {MAX_DEPTH} levels; no config is")
    if path.suffix == ".json":
        try:
            doc = json.loads(text) if text.strip() else None
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}: line {exc.lineno}, column {exc.colno}: not valid JSON: {exc.msg}"
            ) from None
        except RecursionError:  # the parsers recurse per level of nesting
            raise too_deep from None
    else:
        try:
            doc = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            raise ConfigError(f"{path}: {_yaml_problem(exc)}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {_one_line(str(exc))}") from None
        except RecursionError:
            raise too_deep from None
    if doc is None:
        raise ConfigError(f"{path} is empty")
    if _depth(doc) > MAX_DEPTH:  # what parsed may still be too deep for what reads it next
        raise too_deep
    if _values(doc) > MAX_VALUES:  # YAML aliases repeat a node without repeating its text
        raise ConfigError(
            f"{path}: expands to more than {MAX_VALUES} values (through YAML aliases?); "
            "no config is that large"
        )
    return doc


def _containers(node: Any) -> list[Any]:
    children = node.values() if isinstance(node, dict) else node
    return [c for c in children if isinstance(c, dict | list)]


def _depth(doc: Any) -> int:
    """How deeply lists and mappings nest in ``doc`` (a scalar: 0), without recursing; past
    :data:`MAX_DEPTH` it stops counting (a node that holds itself, through a YAML alias, is
    nested without end). A node that aliases share is walked again only if reached deeper."""
    deepest, stack = 0, [(doc, 1)]
    reached: dict[int, int] = {}  # id of a node -> the deepest it was walked at
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, dict | list) or reached.get(id(node), 0) >= depth:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            break
        reached[id(node)] = depth
        stack.extend((child, depth + 1) for child in _containers(node))
    return deepest


def _values(doc: Any) -> int:
    """How many values ``doc`` holds once its aliases are expanded, counted without expanding
    them (each shared node once); ``doc`` is acyclic (:func:`_depth` is bounded)."""
    sizes: dict[int, int] = {}
    stack = [(doc, False)]
    while stack:
        node, children_done = stack.pop()
        if not isinstance(node, dict | list) or id(node) in sizes:
            continue
        children = _containers(node)
        if children_done:
            sizes[id(node)] = len(node) + sum(sizes[id(c)] for c in children)
        else:
            stack.append((node, True))
            stack.extend((child, False) for child in children)
    return sizes.get(id(doc), 0)


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = exc.problem or "cannot parse"
    if exc.context:
        what += f" ({exc.context})"
    return f"{where}not valid YAML: {_one_line(what)}"


def looks_like_model_config(doc: object) -> bool:
    """``doc`` is a runtime model config (one, a list, or ``models:`` of them), not ember.yaml."""
    if isinstance(doc, dict) and set(doc) == {"models"}:
        doc = doc["models"]
    entries = doc if isinstance(doc, list) else [doc]
    return bool(entries) and all(
        isinstance(e, dict) and "config" not in e and bool(_MODEL_KEYS & set(e)) for e in entries
    )


def looks_like_stack(doc: object) -> bool:
    """``doc`` is an ``ember.yaml`` (activator/knative sections, models by ``config:``)."""
    if not isinstance(doc, dict):
        return False
    if _STACK_KEYS & set(doc):
        return True
    models = doc.get("models")
    return (
        isinstance(models, list)
        and bool(models)
        and all(isinstance(m, dict) and "config" in m for m in models)
    )


def key_path(loc: Loc) -> str:
    """``("models", 0, "config")`` as ``models[0].config``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice ``word`` was most likely meant to be, if one is close enough."""
    by_lower = {c.lower(): c for c in choices}
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[found[0]] if found else None


def unknown_key(word: str, valid: Iterable[str], *, what: str = "unknown key") -> str:
    """``unknown key; did you mean 'x'?`` (or the valid keys, when none is close)."""
    keys = sorted(valid)
    guess = closest(word, keys)
    if guess is not None:
        return f"{what}; did you mean '{guess}'?"
    return f"{what}; valid keys: {', '.join(keys)}" if keys else what


def explain(
    exc: ValidationError,
    schema: type[BaseModel],
    *,
    file: Path | str,
    at: Loc = (),
    unknown: str = "unknown key",
) -> list[str]:
    """One line per error of ``exc`` (raised validating ``schema``): ``FILE: KEY: problem``.

    ``at`` is where in the file the validated mapping sits (``("models", 0)``); ``unknown`` names
    an unknown key (``unknown option of the kserve handler``).
    """
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        key = key_path((*at, *loc))
        problem = _problem(error, schema, loc, unknown)
        lines.append(_one_line(f"{file}: {key}: {problem}" if key else f"{file}: {problem}"))
    return lines


_TYPES = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping of keys",
    "model_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys",
    "list_type": "a list",
    "tuple_type": "a list",
    "path_type": "a path",
}
_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def _problem(error: Any, schema: type[BaseModel], loc: Loc, unknown: str) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "extra_forbidden":
        return unknown_key(str(loc[-1]), _keys_at(schema, loc[:-1]), what=unknown)
    if kind == "missing":
        return "missing (required)"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind == "literal_error":
        return f"{_shown(value)} is not one of {ctx.get('expected', '')}"
    if kind in _BOUNDS:
        name, sign = _BOUNDS[kind]
        bound = ctx.get(name)
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)  # a float field's bound: 0, not 0.0
        return f"must be {sign} {bound}, not {_shown(value)}"
    if kind in _TYPES:
        return f"must be {_TYPES[kind]}, not {_shown(value)}"
    if kind == "string_pattern_mismatch":
        return f"{_shown(value)} does not match {ctx.get('pattern')}"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"takes at most {ctx.get('max_length')} item(s)"
    return str(error["msg"])


def _shown(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _keys_at(schema: type[BaseModel], loc: Loc) -> list[str]:
    """The keys the mapping at ``loc`` (inside ``schema``) may hold; none if not a model's."""
    current: Any = schema
    for part in loc:
        if isinstance(part, int):
            current = _element(current)
            continue
        model = _model(current)
        if model is None or part not in model.model_fields:
            return []
        current = model.model_fields[part].annotation
    model = _model(current)
    if model is None:
        return []
    # fields the loader sets itself (excluded from dumps) are not for users to write
    return [name for name, field in model.model_fields.items() if not field.exclude]


def _model(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _element(annotation: Any) -> Any:
    for candidate in (annotation, *_args(annotation)):
        origin = typing.get_origin(candidate)
        if origin in (list, tuple, set, frozenset):
            args = typing.get_args(candidate)
            return args[0] if args else None
    return None


def _args(annotation: Any) -> tuple[Any, ...]:
    # X | None and Optional[X]: their members; anything else: none
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return ()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def class_file(class_path: str, base_dir: Path | None) -> Path | None:
    """The file a ``file.py:Class`` class path names (relative to the config file's directory,
    ``base_dir``); None for a ``package.module:Class`` one."""
    target = class_path.partition(":")[0]
    if not target.endswith(".py"):
        return None
    file = Path(target)
    return file if file.is_absolute() or base_dir is None else base_dir / file
