"""What machine a number was measured on: CPU model, cores, the ISA flags that change results, versions.

Every benchmark, profile and val JSON carries :func:`machine_info` as its ``machine`` block, because
the same model gives different speed (INT8 with VNNI, bf16 with AVX-512 BF16 / AMX) and slightly
different float rounding (AVX2 vs AVX-512 kernels) on different CPUs.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
from pathlib import Path

# ISA flags (as /proc/cpuinfo names them) that change speed or results of inference runtimes.
ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "asimd", "sve")
RUNTIME_PACKAGES = ("torch", "onnxruntime", "openvino", "onnx", "numpy", "opencv-python-headless", "tensorrt", "nncf",
                    "ncnn", "pnnx", "ai-edge-litert", "litert-torch", "executorch")


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = val.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(val.split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def cpu_flags() -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is missing)."""
    return _cpu()[1]


@functools.lru_cache(maxsize=1)
def _cpu() -> tuple[str, frozenset]:
    model, flags = _cpuinfo()
    return model, frozenset(flags)


def has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX-512 BF16 or AMX-BF16)."""
    f = cpu_flags()
    return "avx512_bf16" in f or "amx_bf16" in f


def has_native_fp16() -> bool:
    """True when the CPU computes fp16 in hardware (AVX-512 FP16 or AMX-FP16)."""
    f = cpu_flags()
    return "avx512_fp16" in f or "amx_fp16" in f


def has_vnni() -> bool:
    f = cpu_flags()
    return "avx512_vnni" in f or "avx_vnni" in f or "amx_int8" in f


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs this process's cgroup may use (``cpu.max`` quota / period, cgroup v2; ``cfs_quota_us`` v1), or None."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        q = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        per = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return q / per if q > 0 and per > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """The cores this process may run on: its CPU affinity (``taskset``, cpusets), capped by the cgroup CPU
    quota where one is set (containers). Every default thread, worker and stream count derives from it, so a
    process confined to one core never runs two threads against each other."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, int(quota)))  # a quota of 1.5 CPUs: one thread per full CPU
    return max(1, n)


@functools.lru_cache(maxsize=1)
def machine_info() -> dict:
    """The ``machine`` block of every JSON result (cheap: no measurement)."""
    from . import __version__

    model, flags = _cpu()
    versions = {"yolopt": __version__, "python": platform.python_version()}
    for pkg in RUNTIME_PACKAGES:
        v = _version(pkg)
        if v is not None:
            versions[pkg.replace("-python-headless", "")] = v
    return {
        "cpu": model,
        "arch": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "isa": {k: (k in flags) for k in ISA_FLAGS},
        "native_bf16": has_native_bf16(),
        "native_fp16": has_native_fp16(),
        "vnni": has_vnni(),
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions,
    }


def describe() -> str:
    """One line for logs: 'AMD EPYC (2 cpus; avx2 fma; no avx512)'."""
    m = machine_info()
    isa = [k for k in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile")
           if m["isa"][k]]
    return f"{m['cpu']} ({m['logical_cpus']} cpus; {' '.join(isa) or 'no avx2'})"
