"""Each handler's options schema lives where torch does not: the CLI checks options with it."""

from __future__ import annotations

import subprocess
import sys
import typing

from contracts.datatypes import DATATYPES
from runtime.config import ModelConfig
from runtime.handlers import base
from runtime.handlers.options import HANDLER_OPTIONS
from runtime.tensors import NUMPY_DTYPES
from tests.servers import ROOT


def test_every_handler_has_an_options_schema() -> None:
    optional = ModelConfig.model_fields["handler"].annotation  # absent: engine: command
    (named,) = [a for a in typing.get_args(optional) if a is not type(None)]
    handlers = set(typing.get_args(named))
    assert handlers == set(HANDLER_OPTIONS) == set(base._REGISTRY)


def test_the_handlers_parse_options_with_the_same_schemas() -> None:
    from runtime.handlers import hf_encoder, kserve_model, torch_module

    assert HANDLER_OPTIONS["torch-module"] is torch_module.TorchModuleOptions
    assert HANDLER_OPTIONS["hf-encoder"] is hf_encoder.HFEncoderOptions
    assert HANDLER_OPTIONS["kserve"] is kserve_model.KServeOptions


def test_datatype_names_match_the_numpy_table() -> None:
    assert set(NUMPY_DTYPES) == DATATYPES


def test_model_configs_are_read_without_numpy_or_torch() -> None:
    code = (
        "import sys\n"
        "from runtime.config import load_model_configs\n"
        "load_model_configs('examples/mlp/model.yaml')\n"
        "bad = [m for m in ('torch', 'numpy', 'orjson') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
