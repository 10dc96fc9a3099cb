"""What a handler can do is declared on its class, and the runtime reads it there."""

from __future__ import annotations

import pytest

from runtime.handlers.base import ModelHandler, handler_class
from runtime.sleep import SleepLevel


@pytest.mark.parametrize(
    ("kind", "can_sleep", "measures", "checks_inputs", "takes_tensors"),
    [
        ("torch-module", True, True, False, True),
        ("hf-encoder", True, True, True, True),
        ("kserve", False, False, False, False),
    ],
)
def test_each_handler_declares_what_it_can_do(
    kind: str, can_sleep: bool, measures: bool, checks_inputs: bool, takes_tensors: bool
) -> None:
    cls = handler_class(kind)
    assert issubclass(cls, ModelHandler)
    declared = (cls.can_sleep, cls.measures, cls.checks_inputs, cls.takes_tensors)
    assert declared == (can_sleep, measures, checks_inputs, takes_tensors)


def test_the_base_declares_nothing_and_refuses_to_sleep() -> None:
    class Plain(ModelHandler):
        platform = "test"

    assert not (Plain.can_sleep or Plain.measures or Plain.checks_inputs or Plain.takes_tensors)
    handler = Plain.__new__(Plain)
    assert handler.device_bytes() == 0 and dict(handler.input_limits) == {}
    handler.check_inputs({})  # nothing to refuse
    with pytest.raises(NotImplementedError, match="cannot sleep"):
        handler.sleep(SleepLevel.HOST)
