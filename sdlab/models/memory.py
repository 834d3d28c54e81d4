"""Memory: the peak of one pipeline call (not of the process so far: a sweep runs many in one process) and what a
device has free for more weights."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import torch

STATUS, STATM = "/proc/self/status", "/proc/self/statm"
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
INTERVAL_S = 0.005  # resident memory is sampled this often while a CPU call runs


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
        import torch  # a model on CUDA has loaded it; reading a command line need not

        return int(torch.cuda.mem_get_info(device)[0])
    return proc_kib("/proc/meminfo", b"MemAvailable") if device.type == "cpu" else None


@contextmanager
def call_peak(device: torch.device) -> Iterator[list[int | None]]:
    """A one-item list holding the block's peak memory afterwards: CUDA's allocator peak, on Linux the raised VmHWM or
    else the most resident memory sampled (lowering the mark would hide an earlier peak); None elsewhere."""
    peak: list[int | None] = [None]
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)
        yield peak
        peak[0] = int(torch.cuda.max_memory_allocated(device))
        return
    before, sampled = high_water_bytes(), [resident_bytes()]
    if before is None or sampled[0] is None:
        yield peak
        return
    done = threading.Event()

    def sample() -> None:
        while not done.wait(INTERVAL_S):
            sampled.append(resident_bytes() or 0)

    sampler = threading.Thread(target=sample, name="sdlab-memory", daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()
    after = high_water_bytes() or 0
    peak[0] = after if after > before else max(*sampled, resident_bytes() or 0)
