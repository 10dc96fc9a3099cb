"""The Open Inference Protocol's tensor datatypes, by name only.

Model configs are checked against these without numpy (``ember up`` checks them in a process
that has none); :mod:`runtime.tensors` maps each to its numpy dtype, and
:mod:`contracts.inference` checks requests against them, in either server.
"""

from __future__ import annotations

DATATYPES = frozenset(
    {
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
        "BF16",
        "BYTES",
    }
)
