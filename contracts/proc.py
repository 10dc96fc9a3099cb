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
