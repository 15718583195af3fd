"""Roofline: this machine's peak compute and memory bandwidth, and where each layer sits.

Peak GFLOP/s is the best of several large fp32 GEMMs; bandwidth the best of several large
tensor copies (bytes read + bytes written). Both run with the thread count being profiled.
A layer's arithmetic intensity is FLOPs / bytes moved, where bytes moved is what its aten ops
read and write as eager PyTorch runs them (e.g. a conv writes its output and the in-place SiLU
reads and writes it again); the ideal minimum (input + output + weights) is reported too.
Below the ridge point (peak / bandwidth) a layer is memory-bound.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import torch


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@torch.inference_mode()
def measure_machine(threads: int | None = None, gemm_n: int = 1536, copy_mb: int = 256, repeats: int = 5) -> dict:
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(gemm_n, gemm_n, generator=g)
        b = torch.randn(gemm_n, gemm_n, generator=g)
        c = torch.empty(gemm_n, gemm_n)
        torch.mm(a, b, out=c)
        flops = 2.0 * gemm_n ** 3
        gf = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            gf.append(flops / (time.perf_counter() - t0) / 1e9)
        n = copy_mb * 1024 * 1024 // 4
        src = torch.ones(n)
        dst = torch.empty(n)
        dst.copy_(src)
        bw = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            dst.copy_(src)
            bw.append(2 * n * 4 / (time.perf_counter() - t0) / 1e9)
        del src, dst
    finally:
        torch.set_num_threads(old)
    peak, band = max(gf), max(bw)
    return {
        "cpu": _cpu_name(),
        "logical_cpus": os.cpu_count(),
        "threads": threads or old,
        "peak_gflops": peak,
        "peak_gflops_median": statistics.median(gf),
        "bandwidth_gbs": band,
        "bandwidth_gbs_median": statistics.median(bw),
        "ridge_flops_per_byte": peak / band,
        "method": f"best of {repeats}: fp32 GEMM {gemm_n}x{gemm_n}x{gemm_n}; copy of {copy_mb} MiB (read+write bytes)",
    }


def classify_layers(rows: list[dict], machine: dict) -> None:
    """Add arithmetic intensity, bound, achieved GFLOP/s and shares of peak/roof to rows (in place)."""
    peak, bw = machine["peak_gflops"], machine["bandwidth_gbs"]
    ridge = peak / bw
    for r in rows:
        ideal = r["input_bytes"] + r["activation_bytes"] + r["param_bytes"]
        traffic = r.get("op_bytes") or ideal
        ai = r["flops"] / traffic if traffic else 0.0
        r["arithmetic_intensity_ideal"] = r["flops"] / ideal if ideal else 0.0
        roof = min(peak, ai * bw)
        ms = r.get("latency_ms") or 0.0
        achieved = r["flops"] / (ms / 1e3) / 1e9 if ms > 0 else 0.0
        r["arithmetic_intensity"] = ai
        r["bound"] = "compute" if ai >= ridge else "memory"
        r["achieved_gflops"] = achieved
        r["pct_of_peak"] = 100.0 * achieved / peak if peak else 0.0
        r["pct_of_roof"] = 100.0 * achieved / roof if roof else 0.0
        r["achieved_gbs"] = traffic / (ms / 1e3) / 1e9 if ms > 0 else 0.0
