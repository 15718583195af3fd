"""Deployment view: per-layer latency in ONNX Runtime and OpenVINO, mapped to yolopt layer names.

The artifact comes from :mod:`yolopt.export` and runs through :mod:`yolopt.runtime` backends opened
with the runtime's profiler on; this module only reads the profilers' per-node records. Node names from ``torch.onnx.export``
carry the module path (``/model.8/cv1/conv/Conv``); runtimes keep (a variant of) those names
for fused kernels, so each node's time is credited to ``model.<i>`` and to a module path
(``model.8.cv1.conv``). Nodes without a module path (input/output reorders) go to ``other``.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import YoloptError

log = logging.getLogger("yolopt")

_LAYER_RE = re.compile(r"/model\.(\d+)((?:/[a-z_][A-Za-z0-9_]*(?:\.\d+)?)*)")


def map_node_name(node: str) -> tuple[str, str]:
    """ONNX/runtime node name -> (top-level layer ``model.<i>`` or ``other``, module path)."""
    m = _LAYER_RE.search(node)
    if not m:
        return "other", "other"
    top = f"model.{m.group(1)}"
    segs = [s for s in m.group(2).split("/") if s]
    return top, ".".join([top, *segs])


def onnx_params(path: Path) -> int:
    import onnx

    g = onnx.load(str(path)).graph
    return int(sum(int(np.prod(t.dims)) if len(t.dims) else 1 for t in g.initializer))


def _layer_table(per_run_layers: list[dict], per_run_modules: list[dict], whole: list[float], node_sums: list[float],
                 runtime: str, extra: dict) -> dict:
    """Per-layer times averaged over the typical (interquartile) runs, like the torch table."""
    from .layers import central_mean

    lay = central_mean(per_run_layers, whole)
    names = sorted(lay, key=lambda n: (n == "other", int(n.split(".")[1]) if n != "other" else 0))
    layers = [{"name": n, "latency_ms": lay[n],
               "latency_ms_median": statistics.median([r.get(n, 0.0) for r in per_run_layers])} for n in names]
    total = sum(r["latency_ms"] for r in layers) or 1.0
    for r in layers:
        r["share"] = r["latency_ms"] / total
    modules = central_mean(per_run_modules, whole)
    whole_ms = statistics.median(whole)
    sum_ms = sum(r["latency_ms"] for r in layers)
    return {
        "runtime": runtime,
        "latency_ms": whole_ms,
        "layer_sum_ms": sum_ms,
        "node_sum_ms": statistics.median(node_sums),
        "sum_ratio": sum_ms / whole_ms if whole_ms else None,
        "layers": layers,
        "modules_ms": dict(sorted(modules.items(), key=lambda kv: -kv[1])),
        "repeats": len(whole),
        **extra,
    }


def profile_onnxruntime(onnx_path: Path, x: np.ndarray, threads: int | None, repeats: int = 20, warmup: int = 3) -> dict:
    """Per-layer latency from ONNX Runtime's built-in profiler (a :mod:`yolopt.runtime` backend opened
    with profiling on).

    Whole-model time is the profiler's ``model_run`` event; node time is the sum of its
    ``*_kernel_time`` events inside that run.
    """
    from ..runtime import OnnxBackend

    with tempfile.TemporaryDirectory(prefix="yolopt-ortprof-") as tmp:
        backend = OnnxBackend(onnx_path, threads=threads, providers=["CPUExecutionProvider"],
                              profiling=str(Path(tmp) / "ort"))
        for _ in range(warmup + repeats):
            backend(x)
        events = json.loads(Path(backend.session.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"])
    nodes = sorted((e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")),
                   key=lambda e: e["ts"])
    runs = runs[warmup:]
    per_layers, per_modules, whole, sums = [], [], [], []
    ops = defaultdict(list)
    j = 0
    for run in runs:
        t0, t1 = run["ts"], run["ts"] + run["dur"]
        lay, mod, s = defaultdict(float), defaultdict(float), 0.0
        op_run = defaultdict(float)
        while j < len(nodes) and nodes[j]["ts"] < t0:
            j += 1
        while j < len(nodes) and nodes[j]["ts"] <= t1:
            e = nodes[j]
            ms = e["dur"] / 1e3
            top, path = map_node_name(e["name"][: -len("_kernel_time")])
            lay[top] += ms
            mod[path] += ms
            op_run[e.get("args", {}).get("op_name", "?")] += ms
            s += ms
            j += 1
        per_layers.append(dict(lay))
        per_modules.append(dict(mod))
        whole.append(run["dur"] / 1e3)
        sums.append(s)
        for k, v in op_run.items():
            ops[k].append(v)
    if not runs:
        raise YoloptError(f"{onnx_path}: onnxruntime profiler recorded no runs")
    import onnxruntime as ort

    op_ms = {k: statistics.median(v + [0.0] * (len(runs) - len(v))) for k, v in ops.items()}
    return _layer_table(per_layers, per_modules, whole, sums, "onnxruntime",
                        {"version": ort.__version__, "precision": backend.precision,
                         "ops_ms": dict(sorted(op_ms.items(), key=lambda kv: -kv[1])),
                         "timing": "profiler model_run event vs sum of node kernel_time events"})


def profile_openvino(model_path: Path, x: np.ndarray, threads: int | None, repeats: int = 20, warmup: int = 3) -> dict:
    """Per-layer latency from OpenVINO's per-node performance counters (CPU plugin, f32 inference
    precision like every yolopt OpenVINO backend)."""
    from ..runtime import OpenVINOBackend

    try:
        backend = OpenVINOBackend(model_path, threads=threads, profiling=True)
    except YoloptError as e:
        raise YoloptError(f"{model_path}: OpenVINO cannot compile this model: {e}") from None
    per_layers, per_modules, whole, sums = [], [], [], []
    ops = defaultdict(list)
    for r in range(warmup + repeats):
        t0 = time.perf_counter()
        backend(x)
        t1 = time.perf_counter()
        if r < warmup:
            continue
        lay, mod, s, op_run = defaultdict(float), defaultdict(float), 0.0, defaultdict(float)
        for p in backend.request.get_profiling_info():
            ms = p.real_time.total_seconds() * 1e3
            if ms <= 0:
                continue
            top, path = map_node_name(p.node_name)
            lay[top] += ms
            mod[path] += ms
            op_run[p.node_type] += ms
            s += ms
        per_layers.append(dict(lay))
        per_modules.append(dict(mod))
        whole.append((t1 - t0) * 1e3)
        sums.append(s)
        for k, v in op_run.items():
            ops[k].append(v)
    import openvino as ov

    op_ms = {k: statistics.median(v + [0.0] * (repeats - len(v))) for k, v in ops.items()}
    return _layer_table(per_layers, per_modules, whole, sums, "openvino",
                        {"version": ov.__version__.split("-")[0], "precision": backend.precision,
                         "compiled_precision": backend.compiled_precision,
                         "ops_ms": dict(sorted(op_ms.items(), key=lambda kv: -kv[1])),
                         "timing": "wall time of infer() vs sum of per-node real_time counters"})


def attach_torch_names(deploy: dict, torch_rows: list[dict] | None) -> None:
    """Add the torch layer type/stage and torch latency next to each runtime layer row."""
    if not torch_rows:
        return
    by_name = {r["name"]: r for r in torch_rows}
    for r in deploy["layers"]:
        t = by_name.get(r["name"])
        if t:
            r["type"], r["stage"], r["torch_ms"] = t["type"], t["stage"], t.get("latency_ms")
        else:
            r["type"], r["stage"], r["torch_ms"] = "other", "other", None
