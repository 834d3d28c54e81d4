"""Memory: the peak of one pipeline call (not of the process so far: a sweep runs many in one process) and what a
device has free for more weights."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from sdlab.lazy import torch

STATUS, STATM, CLEAR_REFS = "/proc/self/status", "/proc/self/statm", "/proc/self/clear_refs"
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """The process's resident memory now (Linux), else None."""
    try:
        with open(STATM, "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return None


def proc_kib(path: str, key: bytes) -> int | None:
    """The bytes a Linux /proc file's `key:` line gives in kB (VmHWM, MemAvailable), else None."""
    try:
        with open(path, "rb") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + b":"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def high_water_bytes() -> int | None:
    """The process's peak resident memory so far (`VmHWM`, Linux), else None."""
    return proc_kib(STATUS, b"VmHWM")


def free_bytes(device: torch.device) -> int | None:
    """Memory free for more weights on `device`: CUDA's free memory, or on Linux the CPU's MemAvailable; else None."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return cpu_free_bytes() if device.type == "cpu" else None


def cpu_free_bytes() -> int | None:
    """The CPU memory Linux can give without swapping (`MemAvailable`), else None."""
    return proc_kib("/proc/meminfo", b"MemAvailable")


def reset_high_water() -> bool:
    """Lower the process's `VmHWM` to its resident memory now (Linux 4.0+: `5` to /proc/self/clear_refs)."""
    try:
        with open(CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextmanager
def call_peak(device: torch.device) -> Iterator[list[int | None]]:
    """A one-item list holding the block's peak memory afterwards: CUDA's allocator peak, on Linux `VmHWM` lowered at
    the block's start (or, where it cannot be lowered, only if the block raised it); None elsewhere."""
    peak: list[int | None] = [None]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield peak
        peak[0] = int(torch.cuda.max_memory_allocated(device))
        return
    before = None if reset_high_water() else high_water_bytes()
    yield peak
    after = high_water_bytes()
    peak[0] = after if after is not None and (before is None or after > before) else None
