"""Timing and peak-memory helpers shared by the benchmark scripts.

Only the standard library and torch: the DGMR benchmark's peer process imports this module too,
and must not see geogen.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def peak_memory_bytes(device) -> int:
    """Peak memory of this process: CUDA ``max_memory_allocated``, else the peak RSS (VmHWM)."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return -1


def timed(fn: Callable[[], object], device, repeat: int) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs after one warm-up run."""
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
