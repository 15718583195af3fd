"""Timing primitives: call a function repeatedly, summarise latencies, read memory and file sizes."""

from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import YoloptError


def percentiles(samples_ms) -> dict:
    """p50/p90/p99/mean (ms) of a list of latencies."""
    a = np.asarray(list(samples_ms), dtype=np.float64)
    if not a.size:
        raise YoloptError("no timing samples (iters/duration too small)")
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}


def _status_mb(key: str) -> float | None:
    """A memory line of this process's ``/proc/self/status`` (``VmHWM``, ``VmRSS``) in MB; None without /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB): Linux's ``VmHWM``, the high-water mark of this
    process's own memory. Not ``getrusage``'s ``ru_maxrss`` where ``VmHWM`` exists: a process started by fork +
    exec inherits its parent's resident size at the fork there (optimize's benchmark workers, started from a
    4 GB optimize process after an OpenVINO INT8 build, reported 4281 MB for a model that needs 100)."""
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux (bytes on macOS)


def rss_mb() -> float:
    """Resident memory of this process now (MB; 0 where /proc is missing)."""
    return _status_mb("VmRSS") or 0.0


def artifact_size_mb(path) -> float:
    p = Path(path)
    if not p.exists():
        return 0.0
    files = [p, p.with_suffix(".bin")] if p.suffix in (".xml", ".param") else [p]  # OpenVINO IR, NCNN
    return sum(f.stat().st_size for f in files if f.exists()) / 1e6


def time_calls(fn: Callable[[], object], warmup: int = 10, iters: int | None = 100,
               duration: float | None = None) -> list[float]:
    """Call ``fn`` ``warmup`` times, then ``iters`` times (or for ``duration`` seconds); ms per call."""
    for _ in range(max(0, warmup)):
        fn()
    out = []
    t_end = time.perf_counter() + duration if duration else None
    n = 0
    while True:
        if t_end is None and n >= (iters or 0):
            break
        if t_end is not None and time.perf_counter() >= t_end and n > 0:
            break
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
        n += 1
    return out


def median(values) -> float:
    return float(statistics.median(values))


