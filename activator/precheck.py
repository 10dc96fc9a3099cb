"""A request for a model no replica serves, checked before it wakes the model.

A replica start costs seconds and a keep-alive of a GPU, so a request that its replica would
refuse (a body that is no JSON, no inference request, an input the model does not have, of the
wrong datatype or shape) is answered 400 here, with the predictor's own words: both servers
run :mod:`contracts.inference`. Its inputs are checked against what the model config declares
(``inputs``, and ``max_batch_size`` for the batch dimension); a model that declares none has
its body's form checked only. A body whose form the activator does not read (compressed, or raw
binary tensor data with no JSON header) is left to the replica.

Only while no replica is ready, and for a JSON part of at most 4 MiB (a bigger one would hold the
activator's event loop while it is parsed): a request that a ready replica takes at once is
relayed unread, as it always was.
"""

from __future__ import annotations

import logging

from activator.errors import BadRequest
from contracts.inference import (
    InputSpec,
    InvalidRequest,
    check_inputs,
    parse_inference_request,
    parse_json_object,
)
from contracts.stack import ModelSpec

log = logging.getLogger("ember.activator")

HEADER_LENGTH = b"inference-header-content-length"
# a JSON body past this is left to the replica: parsing it here would hold the activator's one
# event loop (every model's requests) for as long
MAX_CHECKED_BYTES = 4 * 1024 * 1024


def check_request(spec: ModelSpec, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """BadRequest, saying what the predictor would say, if the replica would refuse ``body``."""
    length: int | None = None
    for key, value in headers:
        if key == b"content-encoding" and value.strip().lower() != b"identity":
            return  # compressed: the replica decompresses and reads it
        if key == HEADER_LENGTH:
            if not value.isdigit():  # ASCII digits only, as the predictor reads it
                return  # the replica says what is wrong with it
            length = int(value)
    if length == 0 or (length is not None and not 0 < length <= len(body)):
        return  # raw binary data (its shape is the model's), or a length the replica refuses
    if (length if length is not None else len(body)) > MAX_CHECKED_BYTES:
        return
    try:
        if length is None:
            request = parse_inference_request(parse_json_object(body, "request body"))
        else:
            header = memoryview(body)[:length]
            request = parse_inference_request(parse_json_object(header, "inference header"))
        check_inputs(
            spec.name,
            request.inputs,
            _declared_inputs(spec),
            batching=spec.max_batch_size > 0,
            max_batch=spec.max_batch_size,
        )
    except InvalidRequest as exc:
        raise BadRequest(str(exc)) from None
    except Exception:  # a check of ours that broke: the replica answers, as it did before
        log.exception("model %s: the check of a request at zero failed", spec.name)


def _declared_inputs(spec: ModelSpec) -> dict[str, InputSpec]:
    """The inputs the model config declares, without the batch dimension (none: empty)."""
    if spec.metadata is None:
        return {}
    cut = 1 if spec.max_batch_size > 0 else 0
    return {
        t.name: InputSpec(t.name, t.datatype, tuple(t.shape[cut:])) for t in spec.metadata.inputs
    }
