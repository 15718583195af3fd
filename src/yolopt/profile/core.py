"""Orchestrates a full profile: torch layers, deployment runtimes, pipeline, sweep, roofline, findings."""

from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..bench import BenchSpec, measure
from ..errors import YoloptError
from ..runtime import TorchBackend, torch_threads
from . import layers as L
from . import pipeline as P
from . import roofline as R
from . import runtime_layers as RT
from .findings import find_bottlenecks

log = logging.getLogger("yolopt")

BACKENDS = ("torch", "onnxruntime", "openvino")
RUNTIME_SUFFIXES = {".onnx": "onnxruntime", ".xml": "openvino"}


def _have(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def _export_onnx(fused, path: Path, batch: int, imgsz: int, dynamic: bool = False) -> Path:
    """The deployment view's artifact, made by :mod:`yolopt.export` like any other."""
    from ..export import ExportSpec, export

    return export(fused, ExportSpec("onnx", imgsz=imgsz, batch=batch, dynamic=dynamic, out=path, verify=False)).path


def _runtime_backend(runtime: str, path: Path, threads: int | None):
    """A runtime backend of the named runtime for an .onnx (OpenVINO reads ONNX too) or .xml file."""
    from ..runtime import OnnxBackend, OpenVINOBackend

    if runtime == "onnxruntime":
        return OnnxBackend(path, threads=threads, providers=["CPUExecutionProvider"])
    return OpenVINOBackend(path, threads=threads)


def _machine(threads: int | None, measured: dict | None) -> dict:
    """The machine block: CPU, ISA flags and versions, plus this run's measured peaks (roofline)."""
    from ..machine import machine_info

    return {**machine_info(), **(measured or R.measure_machine(threads))}


def _say(progress, msg):
    if progress:
        progress(msg)


@dataclass(frozen=True)
class ProfileSpec:
    """What :func:`profile_model` measures.

    ``backend``: whose latency is the headline (torch, onnxruntime, openvino). ``source``: images for the
    pipeline stages (default: the sample images). ``deploy``: runtimes for the per-layer deployment view
    (None: onnxruntime and openvino when installed). ``repeats`` / ``warmup``: timed passes per
    measurement. ``children``: also time the sub-modules of each layer. ``sweep``: latency over
    ``sweep_sizes`` x ``sweep_batches``. ``top``: findings reported.
    """

    imgsz: int = 640
    batch: int = 1
    backend: str = "torch"
    threads: int | None = None
    source: object = None
    sweep: bool = False
    top: int = 10
    repeats: int = 30
    warmup: int = 5
    deploy: tuple[str, ...] | None = None
    pipeline: bool = True
    pipeline_repeats: int = 5
    children: bool = True
    sweep_sizes: tuple[int, ...] = (320, 416, 512, 640)
    sweep_batches: tuple[int, ...] = (1, 2, 4, 8, 16)
    sweep_repeats: int = 3


def profile_model(model, spec: ProfileSpec | None = None, *, machine: dict | None = None, progress=None) -> dict:
    """Profile ``model`` (a DetectionModel, a .pt/.safetensors path, or a .onnx/.xml file) as ``spec`` says.

    ``machine``: peak GFLOP/s and bandwidth measured before (default: measured here). ``progress``: called
    with a line per step. Returns the report dict that ``--json`` writes.
    """
    spec = spec or ProfileSpec()
    backend, deploy, threads = spec.backend, spec.deploy, spec.threads
    if backend not in BACKENDS:
        raise YoloptError(f"backend {backend}: choose one of {', '.join(BACKENDS)}", fields=("backend",))
    if spec.batch < 1:
        raise YoloptError(f"batch {spec.batch}: must be at least 1", fields=("batch",))
    if threads is not None and threads < 1:
        raise YoloptError(f"threads {threads}: must be at least 1", fields=("threads",))
    if spec.repeats < 1:
        raise YoloptError(f"repeats {spec.repeats}: must be at least 1", fields=("repeats",))
    if deploy is None:
        deploy = tuple(rt for rt, mod in (("onnxruntime", "onnxruntime"), ("openvino", "openvino")) if _have(mod))
    if backend != "torch" and backend not in deploy:
        deploy = (*deploy, backend)  # the chosen backend's whole-model latency comes from its profile
    for rt in deploy:
        if rt not in BACKENDS[1:]:
            raise YoloptError(f"deployment runtime {rt}: choose onnxruntime or openvino", fields=("runtimes",))

    source = spec.source
    if source:
        source = [str(p) for p in P.list_images(source)]  # fail fast on a bad source, before any timing
    runtime_file = None
    if isinstance(model, (str, Path)):
        p = Path(model)
        if p.suffix.lower() in RUNTIME_SUFFIXES:
            if not p.is_file():
                raise YoloptError(f"{p}: model file not found")
            runtime_file = p
        else:
            from ..models.checkpoint import load_model

            model = load_model(p)

    spec = replace(spec, source=source, deploy=tuple(deploy))
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="yolopt-profile-") as tmp:
        if runtime_file is not None:
            return _profile_runtime_file(runtime_file, spec, machine, progress)
        return _profile_torch(model, Path(tmp), spec, machine, progress)


def _profile_torch(model, tmp: Path, spec: ProfileSpec, machine, progress) -> dict:
    from ..ops.sizes import check_imgsz

    imgsz, batch, backend, threads, deploy = spec.imgsz, spec.batch, spec.backend, spec.threads, spec.deploy
    repeats, warmup, children = spec.repeats, spec.warmup, spec.children

    model = model.float().cpu().eval()
    params_unfused = None if model.is_fused else model.num_params()
    fused = copy.deepcopy(model)
    if not fused.is_fused:
        fused.fuse()
    fused.eval()
    stride = int(fused.stride.max())
    imgsz = check_imgsz(imgsz, stride)
    x = torch.zeros(batch, 3, imgsz, imgsz)

    _say(progress, f"torch per-layer analysis at {imgsz}x{imgsz}, batch {batch}")
    with torch.inference_mode():
        with FlopCounterMode(display=False) as fc:
            fused(x)
    total_flops = int(fc.get_total_flops())
    rows = L.analyse_layers(fused, x, children=children)
    timing = L.time_layers(fused, x, repeats=repeats, warmup=warmup, children=children)
    L.attach_latency(rows, timing)

    _say(progress, "measuring machine peak GFLOP/s and bandwidth")
    machine = _machine(threads, machine)
    R.classify_layers(rows, machine)

    layer_sum = sum(r["latency_ms"] for r in rows)
    whole = timing["whole_ms"]
    report = {
        "model": str(getattr(model, "provenance", {}).get("source", "")) or type(model).__name__,
        "format": "torch",
        "imgsz": imgsz,
        "batch": batch,
        "backend": backend,
        "precision": "fp32",
        "threads": threads or torch.get_num_threads(),
        "torch_version": torch.__version__.split("+")[0],
        "nc": int(fused.nc),
        "params": fused.num_params(),
        "params_unfused": params_unfused,
        "flops": total_flops,
        "gflops": total_flops / 1e9,
        "latency_ms_torch": whole,
        "layer_latency_sum_ms": layer_sum,
        "layer_sum_ratio": layer_sum / whole,
        "timing": {"method": "whole model: median of hook-free passes; layers: pre/post forward-hook perf_counter "
                             "deltas averaged over the typical (interquartile) repeats; hook-free and hooked passes "
                             "interleaved in shuffled order", "repeats": repeats, "warmup": warmup,
                   "whole_ms_central": timing["whole_ms_central"], "hooked_pass_ms": timing["hooked_pass_ms"],
                   "layers_ms_median": timing["layers_ms_median"]},
        "layers": rows,
        "groups": {"stage": L.group_totals(rows, "stage"), "type": L.group_totals(rows, "type")},
        "machine": machine,
        "achieved_gflops": total_flops / (whole / 1e3) / 1e9,
    }
    report["achieved_pct_of_peak"] = 100 * report["achieved_gflops"] / machine["peak_gflops"]
    report["activation_bytes"] = sum(r["activation_bytes"] for r in rows)

    # deployment view
    report["deploy"] = {}
    need_onnx = bool(deploy) or backend != "torch"
    onnx_static = onnx_dyn = None
    if need_onnx:
        _say(progress, "exporting ONNX (fused) for the deployment view")
        onnx_static = _export_onnx(fused, tmp / "model.onnx", batch, imgsz)
        if spec.pipeline or spec.sweep:
            onnx_dyn = _export_onnx(fused, tmp / "model_dynamic.onnx", 1, imgsz, dynamic=True)
    xn = x.numpy()
    for rt in deploy:
        _say(progress, f"{rt} per-layer profile")
        fn = RT.profile_onnxruntime if rt == "onnxruntime" else RT.profile_openvino
        try:
            d = fn(onnx_static, xn, threads, repeats=repeats, warmup=warmup)
        except YoloptError as e:
            log.warning("%s", e)
            report["deploy"][rt] = {"error": str(e)}
            continue
        RT.attach_torch_names(d, rows)
        plain = _runtime_backend(rt, onnx_static, threads)
        rec = measure(plain, imgsz, BenchSpec(batch=batch, warmup=warmup, iters=repeats))
        d["latency_ms_unprofiled"] = rec.latency_ms["p50"]
        report["deploy"][rt] = d

    report["latency_ms"] = whole
    if backend != "torch":
        d = report["deploy"].get(backend)
        if d and "latency_ms" in d:
            report["latency_ms"] = d["latency_ms"]

    cache: dict = {}

    def make_backend(b=1, s=imgsz):
        if backend == "torch":
            return cache.setdefault("torch", TorchBackend.from_model(fused, threads=threads))
        if backend not in cache:
            path = onnx_dyn or onnx_static
            cache[backend] = _runtime_backend(backend, path, threads)
        return cache[backend]

    _finish(report, make_backend, replace(spec, imgsz=imgsz), progress)
    return report


def _profile_runtime_file(path, spec: ProfileSpec, machine, progress) -> dict:
    imgsz, batch, backend, threads, deploy = spec.imgsz, spec.batch, spec.backend, spec.threads, spec.deploy
    repeats, warmup = spec.repeats, spec.warmup
    kind = RUNTIME_SUFFIXES[path.suffix.lower()]
    if backend == "torch":
        backend = kind
    if kind == "openvino" and backend == "onnxruntime":
        raise YoloptError(f"{path}: an OpenVINO .xml model cannot run in onnxruntime (use backend openvino)",
                          fields=("backend",))
    if not _have(backend):
        raise YoloptError(f"{path}: {backend} is not installed (pip install 'yolopt[deploy]')")
    main = _runtime_backend(backend, path, threads)
    shape = list(main.input_shape)
    params = None
    if kind == "onnxruntime":
        try:
            params = RT.onnx_params(path)
        except Exception as e:  # noqa: BLE001
            raise YoloptError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0]})") from None
    batch = shape[0] or batch
    if shape[2] and shape[3]:
        imgsz = shape[2]
    x = np.zeros((batch, 3, imgsz, imgsz), dtype=np.float32)
    machine = _machine(threads, machine)
    report = {
        "model": str(path), "format": kind, "imgsz": imgsz, "batch": batch, "backend": backend,
        "precision": main.precision, "threads": threads or torch.get_num_threads(), "params": params,
        "params_unfused": None, "flops": None, "layers": [], "groups": {},
        "note": f"per-layer torch table, FLOPs and roofline classes need the PyTorch model; {path.suffix} input "
                "gives the runtime per-layer view only",
        "machine": machine, "achieved_gflops": None, "deploy": {},
    }
    runtimes = [rt for rt in (deploy or ()) if rt == "openvino" or kind == "onnxruntime"] or [backend]
    for rt in dict.fromkeys(runtimes):
        _say(progress, f"{rt} per-layer profile")
        fn = RT.profile_onnxruntime if rt == "onnxruntime" else RT.profile_openvino
        report["deploy"][rt] = fn(path, x, threads, repeats=repeats, warmup=warmup)
    d = report["deploy"].get(backend) or next(iter(report["deploy"].values()))
    report["latency_ms"] = d["latency_ms"]
    report["layer_latency_sum_ms"] = d["layer_sum_ms"]
    report["layer_sum_ratio"] = d["sum_ratio"]

    def make_backend(b=1, s=imgsz):
        return main

    fixed_hw = bool(shape[2] and shape[3])
    fixed_b = bool(shape[0])
    sweep_sizes, sweep_batches = spec.sweep_sizes, spec.sweep_batches
    if spec.sweep and (fixed_hw or fixed_b):
        sweep_sizes = (imgsz,) if fixed_hw else sweep_sizes
        sweep_batches = (batch,) if fixed_b else sweep_batches
        report["sweep_note"] = (f"{path.name} has a fixed input shape {shape}; the sweep covers only the shapes it "
                                "accepts (export with dynamic axes to sweep sizes and batches)")
    _finish(report, make_backend, replace(spec, imgsz=imgsz, pipeline=spec.pipeline and shape[0] in (None, 1),
                                          sweep_sizes=sweep_sizes, sweep_batches=sweep_batches), progress)
    return report


def _finish(report, make_backend, spec: ProfileSpec, progress) -> None:
    imgsz = spec.imgsz
    if spec.pipeline:
        _say(progress, "pipeline stages on real images")
        srcs = spec.source if spec.source else P.default_sources()
        pipe = P.pipeline_stages(make_backend(1, imgsz), srcs, imgsz, repeats=spec.pipeline_repeats)
        report["pipeline"] = pipe
        report["stages_ms"] = pipe["deploy"]["stages_ms"]
        report["stages_ms_eval"] = pipe["eval"]["stages_ms"]
    else:
        report["pipeline"] = None
        report["stages_ms"] = None
    if spec.sweep:
        _say(progress, "scaling sweep")
        report["sweep"] = P.scaling_sweep(make_backend, spec.sweep_sizes, spec.sweep_batches,
                                          repeats=spec.sweep_repeats)
    else:
        report["sweep"] = None
    report["findings"] = find_bottlenecks(report, top=spec.top)
