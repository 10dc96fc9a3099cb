"""Sizes in bytes as people write them: ``2GiB``, ``512Mi``, ``1.5GB``, ``1048576``."""

from __future__ import annotations

import re

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_bytes(text: str) -> int:
    """``"2GiB"``, ``"512Mi"``, ``"1.5GB"``, ``"1048576"``: a size in bytes (binary: Ki, Mi, ...
    or KiB, MiB, ...; decimal: kB, MB, GB); ValueError for anything else."""
    match = _SIZE.fullmatch(text)
    unit = _UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise ValueError(f"{text!r:.40} is not a size (e.g. 2GiB, 512MiB, 1500000000)")
    return int(float(match.group(1)) * unit)


def human(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"
