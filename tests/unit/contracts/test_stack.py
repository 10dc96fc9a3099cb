"""ember.yaml: defaults, per-model overrides, what comes from the model config; no torch."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.errors import ConfigError
from contracts.stack import ModelSpec, load_stack
from tests.servers import ROOT


def test_the_example_stack_resolves_paths_and_defaults() -> None:
    stack = load_stack(ROOT / "examples" / "ember.yaml")
    assert set(stack.models) == {"mlp", "minilm"}
    mlp, minilm = stack.models["mlp"], stack.models["minilm"]
    assert mlp.config_path == ROOT / "examples" / "mlp" / "model.yaml"
    assert mlp.max_replicas == 2 and mlp.container_concurrency == 64 and mlp.target == 64
    assert mlp.keep_alive_s == 60 and minilm.keep_alive_s == 120
    assert stack.settings.events == ROOT / ".ember" / "events.jsonl"


def test_model_config_defaults_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("name: m\ncontainer_concurrency: 4\ngpu_type: L4\n")
    (tmp_path / "ember.yaml").write_text(
        "activator: {queue_size: 7, deadline_s: 9}\n"
        "models:\n  - {config: m.yaml, deadline_s: 2, target: 1.5}\n"
    )
    (m,) = load_stack(tmp_path / "ember.yaml").models.values()
    assert (m.container_concurrency, m.target, m.queue_size, m.deadline_s) == (4, 1.5, 7, 2)
    assert (m.gpu_type, m.price_per_hour, m.prewarm) == ("L4", None, ())


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("handler: x\n", "no 'name'"),
        ("- {name: a}\n- {name: b}\n", "holds 2 models"),
        ("name: [unclosed\n", "not valid YAML"),
        ("name: ../etc\n", "model name '../etc' must be"),
        ("name: a/b\n", "must be 1-63"),
        ("name: 'x; rm -rf /'\n", "must be 1-63"),
        ("name: '-x'\n", "must be 1-63"),
        (f"name: {'a' * 64}\n", "must be 1-63"),
        ("name: 'm\\n'\n", "must be 1-63"),
    ],
)
def test_bad_model_configs_are_named(tmp_path: Path, model: str, message: str) -> None:
    (tmp_path / "m.yaml").write_text(model)
    (tmp_path / "ember.yaml").write_text("models:\n  - config: m.yaml\n")
    with pytest.raises(ConfigError, match=message):
        load_stack(tmp_path / "ember.yaml")


def test_a_model_listed_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("name: m\n")
    (tmp_path / "ember.yaml").write_text("models:\n  - config: m.yaml\n  - config: m.yaml\n")
    with pytest.raises(ConfigError, match="listed twice"):
        load_stack(tmp_path / "ember.yaml")


# ---------------------------------------------------------------------- what a model config sets
def one_model(tmp_path: Path, model: str, entry: str = "", activator: str = "{}") -> ModelSpec:
    (tmp_path / "m.yaml").write_text("name: m\n" + model)
    (tmp_path / "ember.yaml").write_text(
        f"activator: {activator}\nmodels:\n  - {{config: m.yaml{', ' + entry if entry else ''}}}\n"
    )
    (spec,) = load_stack(tmp_path / "ember.yaml").models.values()
    return spec


@pytest.mark.parametrize(
    ("model", "entry", "activator", "expected"),
    [
        ("", "", "{keep_alive_s: 45}", 45),  # the activator's
        ("keep_alive_s: 300\n", "", "{keep_alive_s: 45}", 300),  # the model config's over it
        ("keep_alive_s: 300\n", "keep_alive_s: 30", "{keep_alive_s: 45}", 30),  # the entry's
        ("keep_alive_s: 0\n", "", "{}", 0),  # 0 is a value, not "unset"
        ("", "", "{}", 60),
    ],
)
def test_keep_alive_entry_over_model_config_over_activator(
    tmp_path: Path, model: str, entry: str, activator: str, expected: float
) -> None:
    assert one_model(tmp_path, model, entry, activator).keep_alive_s == expected


@pytest.mark.parametrize(
    ("model", "entry", "expected"),
    [
        ("", "", 8),
        ("container_concurrency: 4\n", "", 4),
        ("container_concurrency: 4\n", "container_concurrency: 16", 16),
        ("container_concurrency: 0\n", "", 8),  # the runtime's 0: "the default"
    ],
)
def test_container_concurrency_entry_over_model_config_over_default(
    tmp_path: Path, model: str, entry: str, expected: int
) -> None:
    spec = one_model(tmp_path, model, entry)
    assert (spec.container_concurrency, spec.target) == (expected, expected)


@pytest.mark.parametrize(
    ("model", "key", "expected"),
    [
        ("version: '7'\n", "version", "7"),
        ("gpu_type: L4\n", "gpu_type", "L4"),
        ("price_per_hour: 1\n", "price_per_hour", 1.0),
        ("cpus: 2\n", "cpus", 2.0),
        ("device: cuda:1\n", "device", "cuda:1"),
        ("source: s3://b/m\n", "source", "s3://b/m"),
        ("handler: hf-encoder\n", "handler", "hf-encoder"),
    ],
)
def test_each_key_the_activator_reads_from_a_model_config(
    tmp_path: Path, model: str, key: str, expected: object
) -> None:
    assert getattr(one_model(tmp_path, model), key) == expected


def test_prewarm_windows_come_from_the_model_config(tmp_path: Path) -> None:
    spec = one_model(tmp_path, "prewarm: [{cron: '0 8 * * 1-5', duration_s: 3600, replicas: 2}]\n")
    (window,) = spec.prewarm
    assert (window.duration_s, window.replicas) == (3600, 2)


def test_metadata_comes_from_the_model_config_when_it_declares_it() -> None:
    stack = load_stack(ROOT / "examples" / "ember.yaml")
    mlp, minilm = stack.models["mlp"].metadata, stack.models["minilm"].metadata
    assert mlp is not None and minilm is None  # hf-encoder: learned from its first replica
    assert mlp.platform == "pytorch" and mlp.inputs[0].shape == (-1, 784)


@pytest.mark.parametrize(
    "model",
    ["container_concurrency: many\n", "container_concurrency: -1\n", "keep_alive_s: -5\n"],
)
def test_a_bad_value_the_activator_reads_is_named(tmp_path: Path, model: str) -> None:
    with pytest.raises(ConfigError, match=model.partition(":")[0]):
        one_model(tmp_path, model)


def test_every_duration_takes_units(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(
        "name: m\nkeep_alive_s: 2m\nprewarm: [{cron: '0 8 * * *', duration_s: 1h30m}]\n"
    )
    (tmp_path / "ember.yaml").write_text(
        "activator: {keep_alive_s: 10m, deadline_s: 90s, startup_timeout_s: 1h, "
        "grace_period_s: 45, request_timeout_s: 5m, header_timeout_s: '10', "
        "body_timeout_s: 1m30s, idle_timeout_s: 2.5m}\n"
        "knative: {timeout_s: 10m, progress_deadline_s: 1h}\n"
        "models:\n  - {config: m.yaml, deadline_s: 30s, startup_timeout_s: 2m}\n"
        "  - {config: n.yaml, keep_alive_s: 1h}\n"
    )
    (tmp_path / "n.yaml").write_text("name: n\n")
    stack = load_stack(tmp_path / "ember.yaml")
    s = stack.settings
    assert (s.keep_alive_s, s.deadline_s, s.startup_timeout_s, s.grace_period_s) == (
        600,
        90,
        3600,
        45,
    )
    assert (s.request_timeout_s, s.header_timeout_s, s.body_timeout_s, s.idle_timeout_s) == (
        300,
        10,
        90,
        150,
    )
    assert (stack.knative.timeout_s, stack.knative.progress_deadline_s) == (600, 3600)
    m, n = stack.models["m"], stack.models["n"]
    assert (m.keep_alive_s, m.deadline_s, m.startup_timeout_s) == (120, 30, 120)
    assert m.prewarm[0].duration_s == 5400 and n.keep_alive_s == 3600


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("activator: {keep_alive_s: 1x}\n", "activator.keep_alive_s: '1x' is not a duration"),
        (
            "activator: {policy: 'fixed:10'}\n",
            "activator.policy: policy 'fixed:10' needs a unit: fixed:10s, fixed:10m or fixed:10h",
        ),
        ("activator: {policy: lru}\n", "activator.policy: unknown policy 'lru'"),
        ("activator: {keep_alive: 3}\n", "activator.keep_alive: unknown key; did you mean"),
        (
            "activator: {log_level: verbose}\n",
            "activator.log_level: 'verbose' is not one of 'debug', 'info', 'warning' or 'error'",
        ),
        ("knative: {timeout_s: 1.5s}\n", "knative.timeout_s: '1.5s' must be a whole number"),
    ],
)
def test_a_bad_key_is_one_line_naming_the_file_and_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "m.yaml").write_text("name: m\n")
    path = tmp_path / "ember.yaml"
    path.write_text(text + "models: [{config: m.yaml}]\n")
    with pytest.raises(ConfigError) as caught:
        load_stack(path)
    assert str(caught.value).startswith(f"{path}: {message}")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        (
            "model: [{config: m.yaml}]\n",
            ["model: unknown key; did you mean 'models'?"],
        ),
        (
            "models: [{config: m.yaml, max_replica: 2, policy: 'fixed:10'}]\n",
            [
                "models[0].max_replica: unknown key; did you mean 'max_replicas'?",
                "models[0].policy: policy 'fixed:10' needs a unit: fixed:10s, fixed:10m or "
                "fixed:10h",
            ],
        ),
    ],
)
def test_every_problem_of_ember_yaml_at_once(tmp_path: Path, text: str, lines: list[str]) -> None:
    path = tmp_path / "ember.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_stack(path)
    assert sorted(str(caught.value).splitlines()) == sorted(f"{path}: {line}" for line in lines)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "ember.yaml is empty"),
        ("models: [\n", "ember.yaml: line 2, column 1: not valid YAML"),
        ("- 1\n", "ember.yaml: an ember.yaml is a mapping of keys"),
        (
            "name: m\nhandler: torch-module\noptions: {module: m.py:M}\n",
            "ember.yaml is a model config, not a stack file (ember.yaml): use `ember serve "
            "--config",
        ),
        ("models: [{config: other.yaml}]\n", "ember.yaml: models[0].config: "),
    ],
)
def test_the_wrong_file_says_what_it_is(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "other.yaml").write_text("models: [{config: m.yaml}]\n")
    path = tmp_path / "ember.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_stack(path)
    assert str(caught.value).startswith(f"{tmp_path}/{message}")
    if "other.yaml" in text:
        assert "other.yaml is a stack file (ember.yaml), not a model config" in str(caught.value)


# ---------------------------------------------------------------------------- groups


def _group_stack(tmp_path: Path, group: str) -> Path:
    (tmp_path / "a.yaml").write_text("name: a\nprice_per_hour: 1.0\ncpus: 2\nkeep_alive_s: 30\n")
    (tmp_path / "b.yaml").write_text("name: b\nprice_per_hour: 2.5\nkeep_alive_s: 90\n")
    path = tmp_path / "ember.yaml"
    path.write_text(group)
    return path


def test_a_group_is_one_pool_spec_serving_its_members(tmp_path: Path) -> None:
    path = _group_stack(
        tmp_path,
        "groups:\n"
        "  - name: shared\n"
        "    models: [{config: a.yaml}, {config: b.yaml, queue_size: 5}]\n"
        "    max_replicas: 2\n"
        "    device_memory_budget: 95MB\n"
        "    host_memory_budget: 1GiB\n"
        "    policy: tiered\n"
        "    wake: {host: 0.01}\n"
        "    host_hold_s: 10m\n",
    )
    stack = load_stack(path)
    assert set(stack.models) == {"a", "b"}
    assert stack.models["a"].group == stack.models["b"].group == "shared"
    assert stack.models["b"].queue_size == 5
    group = stack.groups["shared"]
    assert group.members == ("a", "b")
    assert (group.policy, group.device_memory_budget, group.host_memory_budget) == (
        "tiered",
        95_000_000,
        2**30,
    )
    assert group.wake == {"host": 0.01} and group.host_hold_s == 600
    pool = group.pool
    assert pool.name == "shared" and pool.members == ("a", "b")
    assert pool.config_paths == (tmp_path / "a.yaml", tmp_path / "b.yaml")
    assert (pool.device_memory_budget, pool.host_memory_budget) == (95_000_000, 2**30)
    # one replica serves both: it costs the dearer one's price, and is kept as long as the
    # longest keep-alive among them
    assert pool.max_replicas == 2 and pool.price_per_hour == 2.5 and pool.keep_alive_s == 90


@pytest.mark.parametrize(
    ("group", "message"),
    [
        (
            "  - name: a\n    models: [{config: b.yaml}]\n",
            "groups[0]: the name 'a' is a model's; a group needs its own",
        ),
        (
            "  - name: g\n    models: [{config: a.yaml}]\n"
            "  - name: g\n    models: [{config: b.yaml}]\n",
            "group 'g' is listed twice",
        ),
        (
            "  - name: g\n    models: [{config: a.yaml}, {config: a.yaml}]\n",
            "model 'a' is listed twice",
        ),
        (
            "  - name: g\n    models: [{config: b.yaml, max_replicas: 2}]\n",
            "groups[0].models[0].max_replicas: unknown key",
        ),
        (
            "  - name: g\n    models: [{config: b.yaml}]\n    device_memory_budget: lots\n",
            "groups[0].device_memory_budget: 'lots' is not a size",
        ),
        (
            "  - name: g\n    models: [{config: b.yaml}]\n    policy: hybrid\n",
            "groups[0].policy:",
        ),
        (
            "  - name: Big_Name\n    models: [{config: b.yaml}]\n",
            "groups[0].name:",
        ),
        (
            "  - name: g\n    models: [{config: b.yaml}]\n    wake: {host: -1}\n",
            "groups[0].wake:",
        ),
        (
            "  - name: g\n    models: [{config: b.yaml}]\n    wake: {gpu: 1}\n",
            "groups[0].wake.gpu",
        ),
        (
            "  - name: g\n    models: [{config: missing.yaml}]\n",
            "groups[0].models[0].config:",
        ),
    ],
)
def test_a_bad_group_is_refused_naming_it(tmp_path: Path, group: str, message: str) -> None:
    path = _group_stack(tmp_path, "models: [{config: a.yaml}]\ngroups:\n" + group)
    if "name: a\n" not in group and "config: a.yaml" in group:
        path.write_text("groups:\n" + group)
    with pytest.raises(ConfigError) as caught:
        load_stack(path)
    assert message in str(caught.value)


def test_a_group_of_models_on_different_devices_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: a\ngpu_type: L4\n")
    (tmp_path / "b.yaml").write_text("name: b\ngpu_type: H100\n")
    path = tmp_path / "ember.yaml"
    path.write_text("groups: [{name: g, models: [{config: a.yaml}, {config: b.yaml}]}]\n")
    with pytest.raises(ConfigError, match="one gpu_type"):
        load_stack(path)


def test_a_model_its_own_command_serves_cannot_share_a_group(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: a\nengine: command\ncommand: [serve, '{port}']\n")
    (tmp_path / "b.yaml").write_text("name: b\n")
    path = tmp_path / "ember.yaml"
    path.write_text("groups: [{name: g, models: [{config: a.yaml}, {config: b.yaml}]}]\n")
    with pytest.raises(ConfigError, match="a is served by its own command"):
        load_stack(path)
    path.write_text("models: [{config: a.yaml}, {config: b.yaml}]\n")
    models = load_stack(path).models
    assert (models["a"].engine, models["a"].health) == ("command", "/health")  # its default
    assert (models["b"].engine, models["b"].health) == ("ember", None)  # the predictor's
    (tmp_path / "a.yaml").write_text(
        "name: a\nengine: command\ncommand: [serve, '{port}']\nhealth: /v2/health/ready\n"
    )
    assert load_stack(path).models["a"].health == "/v2/health/ready"


ENGINE = "name: a\nengine: command\ncommand: [serve, '{port}']\nhealth: /up\n"
CALLS = "sleep:\n  host: POST /sleep?level=1\n  disk: POST /sleep?level=2\nwake: POST /wake_up\n"


def test_a_command_engine_with_sleep_calls_may_be_a_groups_only_member(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(ENGINE + CALLS)
    path = tmp_path / "ember.yaml"
    path.write_text("groups: [{name: g, models: [{config: a.yaml}], policy: tiered}]\n")
    stack = load_stack(path)
    member, group = stack.models["a"], stack.groups["g"]
    assert member.engine_calls is not None and member.engine_calls.levels == {"host", "disk"}
    assert (group.policy, group.members) == ("tiered", ("a",))
    # its replicas are its server: started from its config, ready when its health path is
    assert (group.pool.engine, group.pool.health) == ("command", "/up")
    assert group.pool.config_paths == (member.config_path,)


@pytest.mark.parametrize(
    ("models", "group", "message"),
    [
        (
            "[{config: a.yaml}, {config: b.yaml}]",
            "",
            "a is served by its own command, which runs alone: it cannot share a group's",
        ),
        ("[{config: a.yaml}]", "", None),  # a.yaml without calls, below
        (
            "[{config: a.yaml}]",
            ", device_memory_budget: 1GiB",
            "device_memory_budget budget Ember's own server; a's server keeps its own memory",
        ),
    ],
)
def test_other_groupings_of_a_command_engine_are_refused(
    tmp_path: Path, models: str, group: str, message: str | None
) -> None:
    (tmp_path / "a.yaml").write_text(ENGINE + (CALLS if message else ""))
    (tmp_path / "b.yaml").write_text("name: b\n")
    path = tmp_path / "ember.yaml"
    path.write_text(f"groups: [{{name: g, models: {models}{group}}}]\n")
    with pytest.raises(ConfigError) as caught:
        load_stack(path)
    said = str(caught.value)
    assert said.startswith(f"{path}: groups[0] (g): ")
    assert (message or "a group of it alone needs its server's sleep and wake calls") in said


def test_a_bad_sleep_call_names_the_model_file_and_the_key(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(ENGINE + "sleep: {hot: POST /s}\nwake: POST /w\n")
    path = tmp_path / "ember.yaml"
    path.write_text("groups: [{name: g, models: [{config: a.yaml}]}]\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: sleep: hot: unknown level 'hot'"):
        load_stack(path)
    (tmp_path / "a.yaml").write_text(ENGINE + "wake: POST /w\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: 'wake' needs the 'sleep' calls too"):
        load_stack(path)
    (tmp_path / "a.yaml").write_text("name: a\n" + CALLS)  # Ember's own: the runtime refuses
    assert load_stack(path).models["a"].engine_calls is None


def test_a_stack_with_nothing_to_serve_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ember.yaml"
    path.write_text("activator: {keep_alive_s: 5}\n")
    with pytest.raises(ConfigError, match="serves nothing"):
        load_stack(path)


def test_tiered_on_a_model_of_its_own_says_it_is_a_groups_policy(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: a\n")
    path = tmp_path / "ember.yaml"
    path.write_text("models: [{config: a.yaml, policy: tiered}]\n")
    with pytest.raises(ConfigError, match="policy 'tiered' is a group's"):
        load_stack(path)


def test_the_event_log_is_on_by_default_beside_the_file_and_null_turns_it_off(
    tmp_path: Path,
) -> None:
    (tmp_path / "m.yaml").write_text("name: m\nhandler: kserve\noptions: {model_class: x:Y}\n")
    path = tmp_path / "ember.yaml"
    path.write_text("models:\n  - config: m.yaml\n")
    assert load_stack(path).settings.events == tmp_path / ".ember" / "events.jsonl"
    path.write_text("activator: {events: null}\nmodels:\n  - config: m.yaml\n")
    assert load_stack(path).settings.events is None
    path.write_text("activator: {events: log/e.jsonl}\nmodels:\n  - config: m.yaml\n")
    assert load_stack(path).settings.events == tmp_path / "log" / "e.jsonl"
