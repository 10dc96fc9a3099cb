"""The protocol-agnostic data plane: models and tensors in, tensors out; no HTTP in here.

It checks a request against the model's declared tensors (names, datatypes, shapes, batch size)
before anything is queued, so the caller's mistakes are 400s and never reach the model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from contracts.inference import check_inputs
from runtime import __version__
from runtime.config import TensorSpec
from runtime.errors import InvalidInput, RuntimeServerError, ShuttingDown
from runtime.metrics import RuntimeMetrics
from runtime.protocol import InferenceRequest, RequestInput, caller_mistakes
from runtime.repository import SERVING, ModelEntry, ModelRepository
from runtime.tensors import (
    NUMPY_DTYPES,
    Tensor,
    check_json_finite,
    from_binary,
    from_json,
)

EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics"]


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(slots=True)
class OutputSelection:
    """What a request asked for: ``wanted`` in that order, or (None) every output the model
    produced, each binary when ``all_binary`` (the request's ``binary_data_output``)."""

    wanted: list[RequestedOutput] | None
    all_binary: bool = False


@dataclass(slots=True)
class InferResult:
    model_name: str
    model_version: str
    id: str | None
    outputs: list[tuple[Tensor, bool]]  # (tensor, send as binary)


class DataPlane:
    def __init__(self, repository: ModelRepository, metrics: RuntimeMetrics) -> None:
        self.repository = repository
        self.metrics = metrics
        self.draining = False
        # prometheus children looked up once, not on every request
        self._counters: dict[tuple[str, int], Any] = {}
        self._latencies: dict[str, Any] = {}

    # ----------------------------------------------------------------------------- metadata
    def server_metadata(self) -> dict[str, Any]:
        return {"name": "ember", "version": __version__, "extensions": EXTENSIONS}

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return not self.draining and self.repository.all_ready()

    def model_ready(self, name: str, version: str | None) -> bool:
        return self.repository.entry(name, version).state in SERVING  # a sleeper wakes to serve

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        entry = self.repository.ready_entry(name, version)
        assert entry.handler is not None
        batching = entry.config.batching
        metadata: dict[str, Any] = {
            "name": name,
            "versions": [entry.config.version],
            "platform": entry.handler.platform,
            "inputs": [_tensor_metadata(s, batching) for s in entry.handler.inputs],
            "outputs": [_tensor_metadata(s, batching) for s in entry.handler.outputs],
        }
        if entry.handler.checks_inputs:  # the spec's string-valued "properties"
            metadata["properties"] = dict(entry.handler.input_limits)
        return metadata

    def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        """A Triton-style model configuration (what ``tritonclient.get_model_config`` reads)."""
        entry = self.repository.ready_entry(name, version)
        assert entry.handler is not None
        c = entry.config
        config: dict[str, Any] = {
            "name": name,
            "platform": entry.handler.platform,
            "backend": c.handler,
            "max_batch_size": c.max_batch_size,
            "input": [_tensor_config(s) for s in entry.handler.inputs],
            "output": [_tensor_config(s) for s in entry.handler.outputs],
            "instance_group": [{"count": c.instance_count, "kind": "KIND_AUTO"}],
        }
        if c.batching:
            config["dynamic_batching"] = {
                "preferred_batch_size": list(c.preferred_batch_size),
                "max_queue_delay_microseconds": int(c.max_queue_delay_ms * 1000),
                "default_queue_policy": {"max_queue_size": c.max_queue_size},
            }
        return config

    def statistics(self, name: str | None, version: str | None) -> dict[str, Any]:
        entries = [self.repository.entry(name, version)] if name else self.repository.entries()
        return {"model_stats": [e.stats.as_dict() for e in entries]}

    def repository_index(self, ready_only: bool) -> list[dict[str, Any]]:
        index = []
        for e in self.repository.entries():
            if ready_only and e.state not in SERVING:
                continue
            entry = {
                "name": e.config.name,
                "version": e.config.version,
                "state": e.state.value,
                "reason": e.reason,
            }
            if e.failure is not None:  # Ember's extension: the kind of a failed load
                entry["failure"] = e.failure.value
            if e.sleep_level is not None:  # Ember's: the level a SLEEPING model is at
                entry["level"] = e.sleep_level
            index.append(entry)
        return index

    # ----------------------------------------------------------------------------- inference
    def decode_inputs(
        self,
        entry: ModelEntry,
        request: InferenceRequest,
        binary: memoryview | None,
    ) -> dict[str, Tensor]:
        specs = {s.name: s for s in entry.handler.inputs} if entry.handler else {}
        with caller_mistakes():  # as the activator checks it at zero (contracts.inference)
            checked = check_inputs(
                entry.config.name,
                request.inputs,
                specs,
                batching=entry.config.batching,
                max_batch=entry.config.max_batch_size,
            )
        tensors: dict[str, Tensor] = {}
        offset = 0
        for item, datatype, shape in checked:
            array, offset = _decode_one(item, datatype, shape, binary, offset)
            tensors[item.name] = Tensor(item.name, datatype, array)
        if binary is not None and offset != len(binary):
            raise InvalidInput(
                f"request carries {len(binary) - offset} bytes of binary data that no input claims"
            )
        # the model's declared order, which positional handlers rely on
        ordered = {n: tensors[n] for n in specs} if specs else tensors
        if entry.handler is not None and entry.handler.checks_inputs:  # no batch pays for it
            entry.handler.check_inputs(ordered)
        return ordered

    def requested_outputs(self, entry: ModelEntry, request: InferenceRequest) -> OutputSelection:
        default_binary = _flag(request.parameters, "binary_data_output", "request")
        specs = {s.name: s for s in entry.handler.outputs} if entry.handler else {}
        if not request.outputs:  # absent or [], alike: every output
            if not default_binary:
                for spec in specs.values():
                    _check_json_output(spec)
            return OutputSelection(None, all_binary=default_binary)
        known = set(specs)
        requested: list[RequestedOutput] = []
        for out in request.outputs:
            if known and out.name not in known:
                raise InvalidInput(
                    f"model '{entry.config.name}' has no output '{out.name}'; "
                    f"expected {sorted(known)}"
                )
            binary = _flag(out.parameters, "binary_data", f"output '{out.name}'", default_binary)
            if not binary and out.name in specs:
                _check_json_output(specs[out.name])
            requested.append(RequestedOutput(out.name, binary))
        return OutputSelection(requested)

    async def infer(
        self,
        name: str,
        version: str | None,
        request: InferenceRequest,
        binary: memoryview | None = None,
    ) -> InferResult:
        if self.draining:
            raise ShuttingDown()
        started = time.perf_counter_ns()
        entry = self.repository.ready_entry(name, version)
        try:
            queued = None
            if entry.deferred:  # not loaded yet: its tensors are checked once it is loaded
                queued = started  # a load on demand is time spent waiting, as a wake is
                entry = await self.repository.loaded_entry(name, version)
            inputs = self.decode_inputs(entry, request, binary)
            selection = self.requested_outputs(entry, request)
            if queued is None:
                queued = time.perf_counter_ns()  # a wake is time spent waiting, as a queue is
            entry, outputs = await self.repository.infer(
                name, version, inputs, arrived_ns=queued, request_id=request.id
            )
            result = _select_outputs(name, outputs, selection)
        except RuntimeServerError as exc:
            elapsed = time.perf_counter_ns() - started
            entry.stats.record_request(ok=False, items=0, total_ns=elapsed)
            self._counter(name, exc.status_code).inc()
            raise
        elapsed = time.perf_counter_ns() - started
        items = next(iter(inputs.values())).array.shape[0] if entry.config.batching else 1
        entry.stats.record_request(ok=True, items=items, total_ns=elapsed)
        self._counter(name, 200).inc()
        self._latency(name).observe(elapsed / 1e9)
        return InferResult(name, entry.config.version, request.id, result)

    def _counter(self, name: str, code: int) -> Any:
        key = (name, code)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = self.metrics.requests.labels(name, str(code))
        return child

    def _latency(self, name: str) -> Any:
        child = self._latencies.get(name)
        if child is None:
            child = self._latencies[name] = self.metrics.latency.labels(name)
        return child

    def raw_request(self, name: str, version: str | None, body: bytes) -> InferenceRequest:
        """A binary request with no JSON header: the whole body is the model's only input."""
        entry = self.repository.ready_entry(name, version)
        specs = entry.handler.inputs if entry.handler else ()
        if len(specs) != 1:
            raise InvalidInput(
                "a request with Inference-Header-Content-Length 0 is only accepted by a model "
                f"with exactly one input; '{name}' has {len(specs)}"
            )
        spec = specs[0]
        shape = _raw_shape(spec, entry.config.batching, len(body))
        return InferenceRequest(
            inputs=[
                RequestInput(
                    name=spec.name,
                    shape=list(shape),
                    datatype=spec.datatype,
                    parameters={"binary_data_size": len(body)},
                )
            ]
        )


def _tensor_metadata(spec: TensorSpec, batching: bool) -> dict[str, Any]:
    shape = [-1, *spec.shape] if batching else list(spec.shape)
    return {"name": spec.name, "datatype": spec.datatype, "shape": shape}


def _tensor_config(spec: TensorSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "data_type": f"TYPE_{'STRING' if spec.datatype == 'BYTES' else spec.datatype}",
        "dims": list(spec.shape),
    }


def _flag(parameters: dict[str, Any] | None, key: str, where: str, default: bool = False) -> bool:
    """A boolean parameter, strictly: ``"false"`` is not false, and must not read as true."""
    value = (parameters or {}).get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(
            f"{where}: parameter '{key}' must be a boolean (true or false), "
            f"got {type(value).__name__} {value!r:.40}"
        )
    return value


def _check_json_output(spec: TensorSpec) -> None:
    """Refuse before computing what could not be sent: BF16 has no JSON form."""
    if spec.datatype == "BF16":
        raise InvalidInput(
            f"output '{spec.name}' is BF16, which has no JSON form; request it with "
            '"binary_data": true'
        )


def _decode_one(
    item: RequestInput,
    datatype: str,
    shape: tuple[int, ...],
    binary: memoryview | None,
    offset: int,
) -> tuple[Any, int]:
    params = item.parameters or {}
    if "binary_data_size" not in params:
        if item.data is None:
            raise InvalidInput(f"input '{item.name}' has neither data nor binary_data_size")
        return from_json(item.name, datatype, shape, item.data), offset
    size = params["binary_data_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInput(
            f"input '{item.name}': parameter 'binary_data_size' must be a non-negative integer, "
            f"got {type(size).__name__} {size!r:.40}"
        )
    if item.data is not None:
        raise InvalidInput(f"input '{item.name}' has both data and binary_data_size")
    if binary is None or offset + size > len(binary):
        raise InvalidInput(
            f"input '{item.name}': binary_data_size {size} runs past the end of the request body"
        )
    return from_binary(item.name, datatype, shape, binary[offset : offset + size]), offset + size


def _raw_shape(spec: TensorSpec, batching: bool, nbytes: int) -> tuple[int, ...]:
    if spec.datatype == "BYTES":
        raise InvalidInput("a raw binary request cannot carry a BYTES input; send a JSON header")
    dims = list(spec.shape)
    if batching:  # the batch size is the unknown, unless the item shape has one already
        dims.insert(0, 1 if -1 in dims else -1)
    itemsize = NUMPY_DTYPES[spec.datatype].itemsize
    unknown = [i for i, d in enumerate(dims) if d == -1]
    known = itemsize
    for d in dims:
        known *= d if d != -1 else 1
    if len(unknown) > 1:
        raise InvalidInput(
            f"input '{spec.name}' has shape {dims} with several variable dimensions; a raw binary "
            "request cannot say which, send a JSON header"
        )
    if unknown:
        if known == 0 or nbytes % known:
            raise InvalidInput(f"raw body of {nbytes} bytes does not fit shape {dims}")
        dims[unknown[0]] = nbytes // known
    elif nbytes != known:
        raise InvalidInput(f"raw body of {nbytes} bytes, input '{spec.name}' needs {known}")
    return tuple(dims)


def _select_outputs(
    model: str, outputs: dict[str, Tensor], selection: OutputSelection
) -> list[tuple[Tensor, bool]]:
    if selection.wanted is None:
        chosen = [(t, selection.all_binary) for t in outputs.values()]
    else:
        chosen = []
        for out in selection.wanted:
            if out.name not in outputs:
                raise InvalidInput(f"model '{model}' produced no output '{out.name}'")
            chosen.append((outputs[out.name], out.binary))
    for tensor, binary in chosen:
        if not binary:  # here, not only when encoding, so the request counts as failed
            check_json_finite(tensor.name, tensor.array)
    return chosen
