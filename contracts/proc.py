"""Processes: children that never outlive their parent, their memory, and giving memory back."""

from __future__ import annotations

import ctypes
import signal


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGKILL this (child) process when its parent dies (``PR_SET_PDEATHSIG``)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def give_big_blocks_back(threshold_bytes: int = 128 * 1024) -> bool:
    """Have glibc map blocks of ``threshold_bytes`` and more on their own, and unmap them when
    they are freed; whether it could be set (not on another libc).

    glibc's default raises that threshold after the first big free (up to 32 MiB), so the parts
    of a request body a server held (256 KiB reads) land on the heap afterwards and its memory
    stays taken when they are let go. Setting the threshold keeps it where it is.
    """
    try:
        return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, threshold_bytes))
    except (OSError, AttributeError):
        return False


def rss_bytes(pid: int) -> int:
    """A process's resident memory (``VmRSS``), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


_started_at: float | None = None  # monotonic: when this process became what it serves as


def restart_the_clock() -> None:
    """From now on :func:`process_age_s` counts from here: a warm-pool standby, given its model
    long after its start, counts its start-up from the assignment."""
    import time

    global _started_at
    _started_at = time.monotonic()


def process_age_s() -> float | None:
    """Seconds since this process was started (its exec, as the kernel counts it: the
    interpreter's own start-up and every import included), or since :func:`restart_the_clock`;
    None where /proc cannot say."""
    import os
    import time

    if _started_at is not None:
        return time.monotonic() - _started_at
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        started_ticks = int(fields[19])  # field 22, counted after the ")" that ends comm
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started_ticks / ticks)
