"""Memory handed back when the service goes idle.

A burst of concurrent verifications leaves the process larger than it was, and it stays so
(`benchmarks/bench_faults.py --only memory`: 1346 MiB after a warm-up, 2225 MiB after three
bursts of 4, still 2225 MiB idle). Two things keep it: OpenVINO's compiled models keep
their intermediate buffers at the size of the largest batch they have run (batches merged
across concurrent requests are larger), and glibc's allocator keeps freed memory in its
per-thread arenas. Neither grows without bound, and the next burst reuses it, but a pod that
stays at its peak looks busy to whoever places pods and reads memory. So once no request
has run for `MEMORY_RELEASE_IDLE_S`, the backend releases what it can and `malloc_trim`
hands free pages back; the next request pays for allocating them again. ONNX Runtime's
arena (YuNet and dlib, about 100 MiB at their largest batches) is kept: without it YuNet's
calls cost about 12 % more CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("portrait.service")


def resident_mib() -> float | None:
    """This process's resident size in MiB (Linux), None where it cannot be read."""
    try:
        found = re.search(r"^VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return round(int(found.group(1)) / 1024, 1) if found else None


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, None on other C libraries."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def release_memory(backend: object) -> None:
    """Ask the backend to release its runtimes' buffers (if it can), then trim the heap.
    Runs on a thread of its own; logs what it did."""
    started, before = time.perf_counter(), resident_mib()
    try:
        release = getattr(backend, "release_memory", None)
        complete = release() if release is not None else True
        if _TRIM is not None:
            _TRIM(0)
    except Exception as error:  # never worth more than a log line
        log.warning("memory release failed", extra={"error": type(error).__name__})
        return
    log.info("memory released", extra={"rss_mib_before": before, "rss_mib_after": resident_mib(),
                                       "complete": complete, "ms": round((time.perf_counter() - started) * 1000, 1)})
