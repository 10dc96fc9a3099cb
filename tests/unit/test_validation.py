"""Everything is checked before anything starts: ``ember up``, ``ember deploy`` (every mode) and
``ember serve`` refuse a config that ``ember serve`` would not run, handler options included, with
one line per problem naming the file, the key and the closest valid key; exit 2; nothing on
stdout, nothing started, no manifest printed or written."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ember.cli import main
from tests.conftest import MLP_CONFIG
from tests.servers import ROOT

TOP_TYPO = ("max_batch_size: 64", "max_batchsize: 64")
OPTION_TYPO = ("  kwargs: {", "  kwarg: {")
TOP_LINE = "max_batchsize: unknown key; did you mean 'max_batch_size'?"
OPTION_LINE = "options.kwarg: unknown option of the torch-module handler; did you mean 'kwargs'?"


def model_config(tmp_path: Path, *edits: tuple[str, str], name: str = "mlp") -> Path:
    """examples/mlp/model.yaml, edited, in tmp_path/NAME/model.yaml (its weights and module
    file named by absolute path: those of the example)."""
    here = MLP_CONFIG.parent
    text = MLP_CONFIG.read_text().replace("name: mlp", f"name: {name}")
    text = text.replace("source: weights ", f"source: {here / 'weights'} ")
    text = text.replace("module: mlp.py:MLP ", f"module: {here / 'mlp.py'}:MLP ")
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / name / "model.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def stack(tmp_path: Path, *models: Path, head: str = "") -> Path:
    path = tmp_path / "ember.yaml"
    listed = "".join(f"  - config: {m.relative_to(tmp_path)}\n" for m in models)
    path.write_text(f"{head}models:\n{listed}")
    return path


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What would have started (the activator, a server): the CLI calls these last."""
    import activator.server
    import runtime.server

    calls: list[Any] = []

    def record(what: str) -> Callable[..., int]:
        def call(*args: Any, **kwargs: Any) -> int:
            calls.append((what, args))
            return 0

        return call

    monkeypatch.setattr(activator.server, "up", record("up"))
    monkeypatch.setattr(runtime.server, "serve", record("serve"))
    return calls


def refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[str]:
    """The lines ``ember ARGV`` printed on stderr, having exited 2 with nothing on stdout."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert (code, out) == (2, ""), err
    command = argv[0]
    lines = err.splitlines()
    assert lines and all(line.startswith(f"ember {command}: ") for line in lines), err
    return [line.removeprefix(f"ember {command}: ") for line in lines]


STACK_COMMANDS = [
    ["up", "--port", "0"],
    ["deploy", "--dry-run"],
    ["deploy", "--kn", "{tmp}/manifests"],
    ["deploy"],  # apply
    ["deploy", "--delete"],
]


def stack_argv(command: list[str], config: Path, tmp_path: Path) -> list[str]:
    return [*(a.replace("{tmp}", str(tmp_path)) for a in command), "--config", str(config)]


@pytest.mark.parametrize("command", STACK_COMMANDS, ids=" ".join)
def test_a_typo_in_a_model_config_stops_the_stack_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], started: list[Any], command: list[str]
) -> None:
    model = model_config(tmp_path, TOP_TYPO, OPTION_TYPO)
    lines = refused(capsys, stack_argv(command, stack(tmp_path, model), tmp_path))
    assert lines == [f"{model}: {TOP_LINE}", f"{model}: {OPTION_LINE}"]
    assert started == [] and not (tmp_path / "manifests").exists()


def test_every_model_configs_problems_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], started: list[Any]
) -> None:
    one = model_config(tmp_path, TOP_TYPO, name="one")
    two = model_config(tmp_path, OPTION_TYPO, name="two")
    lines = refused(capsys, ["up", "--config", str(stack(tmp_path, one, two))])
    assert lines == [f"{one}: {TOP_LINE}", f"{two}: {OPTION_LINE}"]


def test_serve_refuses_a_bad_option_before_it_serves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], started: list[Any]
) -> None:
    model = model_config(tmp_path, OPTION_TYPO)
    assert refused(capsys, ["serve", "--config", str(model)]) == [f"{model}: {OPTION_LINE}"]
    assert started == []


def test_serve_exits_2_before_listening(tmp_path: Path) -> None:
    model = model_config(tmp_path, OPTION_TYPO)
    done = subprocess.run(
        [sys.executable, "-m", "ember", "serve", "--config", str(model), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr == f"ember serve: {model}: {OPTION_LINE}\n"


def test_up_exits_2_before_it_starts(tmp_path: Path) -> None:
    # were the model config not checked, this would serve (until the timeout fails the test)
    config = stack(tmp_path, model_config(tmp_path, TOP_TYPO))
    done = subprocess.run(
        [sys.executable, "-m", "ember", "up", "--config", str(config), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 2 and "listening" not in done.stderr + done.stdout, done.stderr
    assert TOP_LINE in done.stderr


def test_the_checks_of_up_import_neither_torch_nor_numpy() -> None:
    # the activator's image has neither: ember up checks model configs without them
    code = (
        "import sys\n"
        "from ember.checks import load_checked_stack\n"
        "load_checked_stack('examples/ember.yaml')\n"
        "bad = [m for m in ('torch', 'numpy', 'orjson', 'fastapi') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


@pytest.mark.parametrize("command", [["up"], ["deploy", "--dry-run"]], ids=" ".join)
def test_a_model_config_given_to_a_stack_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], started: list[Any], command: list[str]
) -> None:
    model = model_config(tmp_path)
    (line,) = refused(capsys, [*command, "--config", str(model)])
    assert line == (
        f"{model} is a model config, not a stack file (ember.yaml): use "
        f"`ember serve --config {model}`, or name it under models: in an ember.yaml"
    )


def test_an_ember_yaml_given_to_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], started: list[Any]
) -> None:
    config = stack(tmp_path, model_config(tmp_path))
    (line,) = refused(capsys, ["serve", "--config", str(config)])
    assert line == (
        f"{config} is a stack file (ember.yaml), not a model config: use "
        f"`ember up --config {config}` (or `ember deploy`)"
    )


@pytest.mark.parametrize("command", [["up"], ["serve"], ["deploy", "--dry-run"]], ids=" ".join)
def test_an_empty_file_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], started: list[Any], command: list[str]
) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("\n# nothing here yet\n")
    assert refused(capsys, [*command, "--config", str(empty)]) == [f"{empty} is empty"]


def test_yaml_errors_name_the_file_and_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], started: list[Any]
) -> None:
    model = model_config(tmp_path, ("max_batch_size: 64", "max_batch_size: [64"))
    # the flow sequence opened there is found unclosed on the next line
    line = model.read_text().splitlines().index("max_batch_size: [64") + 2
    where = f"{model}: line {line}, column "
    for argv in (
        ["serve", "--config", str(model)],
        ["up", "--config", str(stack(tmp_path, model))],
    ):
        (line,) = refused(capsys, argv)
        assert line.startswith(where), line
    assert started == []


def test_durations_with_units_reach_the_activator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], started: list[Any]
) -> None:
    model = model_config(
        tmp_path, ("max_queue_size: 1024", "max_queue_size: 1024\nkeep_alive_s: 2m")
    )
    head = "activator: {keep_alive_s: 10m, deadline_s: 90s, startup_timeout_s: 1h30m}\n"
    config = stack(tmp_path, model, head=head)
    assert main(["up", "--config", str(config), "--port", "0"]) == 0, capsys.readouterr().err
    ((what, (loaded, *_)),) = started
    s, spec = loaded.settings, loaded.models["mlp"]
    assert what == "up" and (s.keep_alive_s, s.deadline_s, s.startup_timeout_s) == (600, 90, 5400)
    assert spec.keep_alive_s == 120


def test_fixed_without_a_unit_says_it_needs_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], started: list[Any]
) -> None:
    config = stack(tmp_path, model_config(tmp_path), head="activator: {policy: 'fixed:10'}\n")
    assert refused(capsys, ["up", "--config", str(config)]) == [
        f"{config}: activator.policy: policy 'fixed:10' needs a unit: fixed:10s, fixed:10m or "
        "fixed:10h"
    ]
    events = tmp_path / "events.jsonl"
    events.write_text("")
    argv = ["simulate", "--trace", str(events), "--policy", "fixed:10"]
    assert refused(capsys, argv) == [
        "policy 'fixed:10' needs a unit: fixed:10s, fixed:10m or fixed:10h"
    ]


@pytest.mark.parametrize(
    ("edit", "prepare", "message"),
    [
        (
            ("source: weights", "source: nowhere"),
            None,
            "source: {dir}/nowhere does not exist",
        ),
        (
            ("module: mlp.py:MLP", "module: my_mlp.py:MLP"),
            "weights",
            "options.module: {dir}/my_mlp.py does not exist",
        ),
        (
            ("module: mlp.py:MLP", "module: no_such_package.mlp:MLP"),
            "weights",
            "options.module: Python package 'no_such_package' is not installed",
        ),
        (
            ("source: weights", "source: pickled"),
            "pickled",
            "source: {dir}/pickled has no model.safetensors; it holds pytorch_model.bin: a "
            "pickle checkpoint, which Ember does not load",
        ),
        (
            ("source: weights", "source: empty"),
            "empty",
            "source: {dir}/empty has no model.safetensors; it is empty",
        ),
        (
            ("source: weights", "source: other"),
            "other",
            "source: {dir}/other has no model.safetensors; it holds mlp-v2.safetensors (name the "
            "file in options.weights)",
        ),
        (
            ("source: weights", "source: file.txt"),
            "file.txt",
            "source: {dir}/file.txt is not a directory",
        ),
    ],
)
def test_up_refuses_local_files_its_replicas_would_fail_on(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    started: list[Any],
    edit: tuple[str, str],
    prepare: str | None,
    message: str,
) -> None:
    """A local source that is not there or holds no safetensors, or a module file that does
    not exist: ``ember up`` says so (what it found instead) before it starts; nothing starts."""
    here = tmp_path / "m"
    here.mkdir()
    text = MLP_CONFIG.read_text().replace(*edit)
    if "module: mlp.py" in text:
        (here / "mlp.py").write_text((MLP_CONFIG.parent / "mlp.py").read_text())
    if "source: weights" in text:
        (here / "weights").mkdir()
        (here / "weights" / "model.safetensors").write_bytes(b"")
    if prepare == "pickled":
        (here / "pickled").mkdir()
        (here / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x02")
    elif prepare == "empty":
        (here / "empty").mkdir()
    elif prepare == "other":
        (here / "other").mkdir()
        (here / "other" / "mlp-v2.safetensors").write_bytes(b"")
    elif prepare == "file.txt":
        (here / "file.txt").write_text("x")
    (here / "model.yaml").write_text(text)
    config = stack(
        tmp_path,
        here / "model.yaml",
        head="knative: {models_uri: s3://bucket/models, image: e:1, activator_image: a:1}\n",
    )
    lines = refused(capsys, ["up", "--port", "0", "--config", str(config)])
    (line,) = lines
    assert line.startswith(f"{here / 'model.yaml'}: {message.format(dir=here)}"), line
    assert started == []
    if message.startswith("source"):  # ember deploy's replicas read the weights from the store
        assert main(["deploy", "--dry-run", "--config", str(config)]) == 0, capsys.readouterr()
        capsys.readouterr()


def test_a_stack_on_knative_is_not_checked_for_local_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], started: list[Any]
) -> None:
    model = model_config(tmp_path, ("source: /", "source: /nowhere/"))
    config = stack(tmp_path, model, head="activator: {scaler: knative}\n")
    assert main(["up", "--port", "0", "--config", str(config)]) == 0
    assert [what for what, _ in started] == ["up"]


def test_a_package_in_the_working_directory_is_found_as_the_replicas_find_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    started: list[Any],
) -> None:
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "models.py").write_text("class Echo: ...\n")
    (tmp_path / "m.yaml").write_text(
        "name: m\nhandler: kserve\noptions: {model_class: mypkg.models:Echo}\n"
    )
    config = tmp_path / "ember.yaml"
    config.write_text("models:\n  - config: m.yaml\n")
    monkeypatch.chdir(tmp_path)  # where `ember up` runs: its replicas' path starts here
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    assert main(["up", "--port", "0", "--config", str(config)]) == 0, capsys.readouterr().err
    assert [what for what, _ in started] == ["up"]
