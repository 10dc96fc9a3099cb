"""Modules built without initialising their parameters, then given the loaded weights."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

from runtime.handlers.base import HandlerLoadError
from runtime.handlers.meta_build import load_module
from tests.fixtures import meta_modules as fx
from tests.servers import ROOT

FALLBACK = "built with initialised parameters"


@pytest.fixture(autouse=True)
def _no_inits_recorded() -> Iterator[None]:
    fx.INIT_DEVICES.clear()
    yield
    fx.INIT_DEVICES.clear()


def state_of(build: Callable[[], nn.Module], seed: int = 0) -> dict[str, torch.Tensor]:
    """A file's worth of weights for what ``build`` makes: random, and unlike its own init."""
    torch.manual_seed(seed)
    return {k: torch.randn_like(v.float()).to(v.dtype) for k, v in build().state_dict().items()}


def load(build: Callable[[], Any], state: dict[str, torch.Tensor], **kw: Any) -> nn.Module:
    options: dict[str, Any] = {"device": "cpu", "strict": True, "init_missing": False}
    return load_module(build, state, what=getattr(build, "__name__", "module"), **{**options, **kw})


def tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {
        **dict(module.named_parameters(remove_duplicate=False)),
        **dict(module.named_buffers(remove_duplicate=False)),
    }


def assert_nothing_on_meta(module: nn.Module) -> None:
    assert [name for name, t in tensors(module).items() if t.is_meta] == []


def test_the_module_holds_the_files_tensors_and_nothing_is_left_on_meta() -> None:
    state = state_of(fx.Net)
    module = load(fx.Net, state)
    assert_nothing_on_meta(module)
    assert module.state_dict().keys() == state.keys()
    for name, value in state.items():
        assert module.state_dict()[name].data_ptr() == value.data_ptr()  # adopted, not copied
    assert not module.training
    x = torch.randn(2, 8)
    assert module(x).shape == (2, 3)


def test_the_constructors_init_does_not_run_on_real_memory() -> None:
    state = state_of(fx.Net)
    fx.INIT_DEVICES.clear()
    load(fx.Net, state)
    assert fx.INIT_DEVICES == ["meta", "meta"]  # both layers' init ran, at no cost
    fx.Net()
    assert fx.INIT_DEVICES[2:] == ["cpu", "cpu"]  # what a plain construction costs


def test_non_persistent_buffers_keep_the_constructors_values() -> None:
    module = load(fx.Net, state_of(fx.Net))
    plain = fx.Net()
    assert torch.equal(module.position_ids, torch.arange(16))
    assert torch.equal(module.inv_freq, plain.inv_freq)


def test_a_module_builds_on_meta_only_in_the_thread_that_asked() -> None:
    """Models load side by side: another thread's modules are built as usual meanwhile."""
    fx.Gated.started.clear()
    fx.Gated.release.clear()
    done: list[nn.Module] = []
    state = {"fc.weight": torch.randn(2, 2), "fc.bias": torch.randn(2)}
    builder = threading.Thread(target=lambda: done.append(load(fx.Gated, state)))
    builder.start()
    try:
        assert fx.Gated.started.wait(10)
        elsewhere = nn.Linear(2, 2)  # while the other thread is inside its meta build
        assert elsewhere.weight.device.type == "cpu" and elsewhere.weight.abs().sum() > 0
    finally:
        fx.Gated.release.set()
        builder.join(10)
    assert torch.equal(done[0].fc.weight, state["fc.weight"])


def test_tied_parameters_stay_tied_and_take_the_files_values() -> None:
    embedding = torch.randn(6, 4)
    module = load(fx.Tied, {"emb.weight": embedding})  # a file holds a tied tensor once
    assert module.head.weight is module.emb.weight
    assert torch.equal(module.emb.weight, embedding)
    assert_nothing_on_meta(module)


def test_a_cast_copies_into_materialised_parameters() -> None:
    state = {k: v.half() for k, v in state_of(fx.Net).items() if v.is_floating_point()}
    module = load(fx.Net, state)
    assert module.fc1.weight.dtype == torch.float32
    assert torch.equal(module.fc1.weight, state["fc1.weight"].float())
    assert_nothing_on_meta(module)


def test_a_constructor_that_needs_values_is_built_normally(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = {"fc.weight": torch.randn(2, 2), "fc.bias": torch.randn(2)}
    with caplog.at_level(logging.INFO, logger="ember.runtime"):
        module = load(fx.NeedsValues, state)
    assert torch.equal(module.fc.weight, state["fc.weight"])
    assert_nothing_on_meta(module)
    (record,) = [r for r in caplog.records if FALLBACK in r.getMessage()]
    assert "NeedsValues" in record.getMessage() and "meta" in record.getMessage()


def test_a_buffer_left_on_meta_means_a_normal_build(caplog: pytest.LogCaptureFixture) -> None:
    state = {"fc.weight": torch.randn(2, 2), "fc.bias": torch.randn(2)}
    with caplog.at_level(logging.INFO, logger="ember.runtime"):
        module = load(fx.DerivedBuffer, state)
    assert_nothing_on_meta(module)
    assert torch.equal(module.fc.weight, state["fc.weight"])
    (record,) = [r for r in caplog.records if FALLBACK in r.getMessage()]
    assert "'weight_t' is still on the meta device" in record.getMessage()


def test_a_missing_parameter_gets_its_modules_own_init_without_strict() -> None:
    state = state_of(fx.Net)
    del state["fc2.bias"]
    file = {k: v.clone() for k, v in state.items()}  # the module adopts (and could write) state's
    fx.INIT_DEVICES.clear()
    module = load(fx.Net, state, strict=False, init_missing=True)
    bias = module.fc2.bias
    assert bias.device.type == "cpu" and bias.abs().sum() > 0  # initialised, not left empty
    assert bias.abs().max() <= 1 / math.sqrt(8)  # nn.Linear's bound: 1/sqrt(fan_in)
    assert torch.equal(module.fc2.weight, file["fc2.weight"])  # the reset spared the loaded one
    assert torch.equal(module.fc1.bias, file["fc1.bias"])
    assert len(fx.INIT_DEVICES) == 3  # both constructors' (on meta), then fc2's reset only
    assert_nothing_on_meta(module)


def test_a_missing_parameter_with_strict_is_an_error() -> None:
    state = state_of(fx.Net)
    del state["fc2.bias"]
    with pytest.raises(HandlerLoadError, match=r"weights lack parameters: \['fc2.bias'\]"):
        load(fx.Net, state)


def test_a_reset_spares_loaded_buffers() -> None:
    """BatchNorm's reset_parameters also zeroes its running statistics: not the loaded ones."""
    state = {"running_mean": torch.full((3,), 5.0)}
    module = load(lambda: nn.BatchNorm1d(3), state, strict=False, init_missing=True)
    assert torch.equal(module.running_mean, torch.full((3,), 5.0))
    assert torch.equal(module.weight, torch.ones(3)) and torch.equal(module.bias, torch.zeros(3))


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (fx.Scaled, "has no reset_parameters()"),
        (fx.PartialReset, "does not initialise 'b'"),
    ],
)
def test_a_missing_parameter_no_reset_can_initialise_means_a_normal_build(
    caplog: pytest.LogCaptureFixture, build: type[nn.Module], reason: str
) -> None:
    constructed = build().state_dict()
    state = {k: torch.randn_like(v) for k, v in constructed.items() if k not in ("scale", "b")}
    with caplog.at_level(logging.INFO, logger="ember.runtime"):
        module = load(build, state, strict=False, init_missing=True)
    (record,) = [r for r in caplog.records if FALLBACK in r.getMessage()]
    assert reason in record.getMessage()
    missing = "scale" if "scale" in constructed else "b"
    assert torch.equal(module.get_parameter(missing), constructed[missing])  # the constructor's
    for name, value in state.items():
        assert torch.equal(module.state_dict()[name], value)


def test_a_parameter_the_constructor_put_on_meta_is_named() -> None:
    state = {"fc.weight": torch.randn(2, 2), "fc.bias": torch.randn(2)}
    with pytest.raises(HandlerLoadError, match="parameter 'w' was left on the meta device"):
        load(fx.OnMeta, state, strict=False, init_missing=True)


def test_extra_tensors_with_strict_do_not_fit() -> None:
    state = {**state_of(fx.Net), "other": torch.ones(1)}
    with pytest.raises(HandlerLoadError, match=r"weights do not fit .*no parameters \['other'\]"):
        load(fx.Net, state)
    assert load(fx.Net, state, strict=False).fc1.weight.data_ptr() == state["fc1.weight"].data_ptr()


def test_a_shape_mismatch_does_not_fit() -> None:
    state = state_of(fx.Net)
    state["fc1.weight"] = torch.randn(8, 9)
    with pytest.raises(HandlerLoadError, match="weights do not fit"):
        load(fx.Net, state)


def test_a_constructor_that_fails_either_way_says_so() -> None:
    def broken() -> nn.Module:
        raise ValueError("bad kwargs")

    with pytest.raises(HandlerLoadError, match=r"\(\*\*kwargs\) failed: bad kwargs"):
        load(broken, {})
    with pytest.raises(HandlerLoadError, match=r"did not build a torch\.nn\.Module"):
        load(lambda: object(), {})


def test_normal_init_on_meta_is_skipped_so_a_cold_start_never_imports_dynamo() -> None:
    # torch runs normal_ on a meta tensor through a reference that imports torch._dynamo (about
    # a second of every cold start); a fresh interpreter shows whether the build still does
    code = (
        "import sys, torch\n"
        "from torch import nn\n"
        "from runtime.handlers.meta_build import load_module\n"
        "state = {'weight': torch.arange(12.0).reshape(6, 2)}\n"
        "m = load_module(lambda: nn.Sequential(nn.Embedding(6, 2)), {'0.weight': state['weight']},"
        " device='cpu', strict=True, init_missing=False, what='E')\n"
        "assert torch.equal(m[0].weight, state['weight'])\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_a_normal_init_on_real_memory_still_runs_inside_a_build() -> None:
    def build() -> nn.Module:
        module = nn.Linear(3, 3)
        real = torch.zeros(4)
        nn.init.normal_(real)  # not a parameter: real memory, initialised as asked
        module.register_buffer("noise", real, persistent=False)
        return module

    state = {k: v for k, v in state_of(lambda: nn.Linear(3, 3)).items()}
    module = load(build, state)
    assert not torch.equal(module.noise, torch.zeros(4))  # type: ignore[arg-type]
