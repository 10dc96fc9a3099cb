"""A serve order: JSON for a standby, ``ember serve`` arguments for a fresh process, the same
server either way; a line that is not an order is refused, saying why."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.replica import ContractViolation
from contracts.serve_order import ServeOrder, decode_order, encode_order, serve_argv

FULL = ServeOrder(
    configs=(Path("/m/a.yaml"), Path("/m/b.yaml")),
    host="0.0.0.0",
    port=0,
    cache_dir=Path("/tier"),
    cache_budget_gb=9.5,
    device_memory_budget=95_000_000,
    host_memory_budget=2**30,
    load_on_demand=True,
    exit_on_load_failure=True,
    stay_on_load_failure=True,
    log_level="warning",
    log_format="json",
)


@pytest.mark.parametrize("order", [FULL, ServeOrder(configs=(Path("m.yaml"),))])
def test_an_order_survives_its_json_round_trip(order: ServeOrder) -> None:
    line = encode_order(order)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_order(line) == order
    assert decode_order(line.decode()) == order


def test_a_key_left_out_takes_ember_serves_default() -> None:
    assert decode_order('{"configs": ["m.yaml"]}') == ServeOrder(configs=(Path("m.yaml"),))


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("not json", "a serve order that is not JSON"),
        ('["--config", "m.yaml"]', "a serve order is a JSON object"),
        ("{}", "missing 1 required positional argument: 'configs'"),
        ('{"configs": []}', "configs must be a non-empty list of paths"),
        ('{"configs": "m.yaml"}', "configs must be a non-empty list of paths"),
        ('{"configs": ["m.yaml"], "standby": true}', "unknown keys ['standby']"),
        ('{"configs": ["m.yaml"], "port": "8080"}', "port must be an integer, not str"),
        ('{"configs": ["m.yaml"], "port": true}', "port must be an integer, not bool"),
        ('{"configs": ["m.yaml"], "load_on_demand": 1}', "load_on_demand must be true or false"),
        ('{"configs": ["m.yaml"], "log_level": "loud"}', "log_level must be one of debug"),
        ('{"configs": ["m.yaml"], "device_memory_budget": "2GiB"}', "must be an integer"),
    ],
)
def test_a_malformed_order_is_a_contract_violation_saying_why(line: str, says: str) -> None:
    with pytest.raises(ContractViolation, match="serve order") as caught:
        decode_order(line)
    assert says in str(caught.value)


def test_the_arguments_of_a_fresh_process_are_read_back_into_the_same_order() -> None:
    """What ember serve reads from serve_argv is what a standby builds from the order."""
    from ember.cli import build_parser
    from ember.serve_cli import order_of

    for order in (FULL, ServeOrder(configs=(Path("m.yaml"),))):
        args = build_parser().parse_args(["serve", *serve_argv(order)])
        read = order_of(args)
        assert read == order


def test_the_rendered_arguments_name_only_what_the_order_says() -> None:
    assert serve_argv(ServeOrder(configs=(Path("m.yaml"),), port=0)) == [
        "--config",
        "m.yaml",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ]
