"""The variants ``yolopt optimize`` tries: how each artifact is built, and how each variant is measured.

A *build* is an artifact (FP32 at a size, fixed or dynamic; INT8; mixed precision; pruned). A *variant*
is a build deployed one way: letterbox (square or rect), threads and streams. Several variants share a
build (the rect variant of an INT8 graph, the two-stream variant of the baseline), so builds are cached
by key under ``OUT/artifacts/<key>/`` and variants under ``OUT/variants/<name>.json``; both are written
atomically and only when finished, so a killed run redoes at most the step it was in.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import TransientError, YoloptError
from ..fileio import write_json
from .spec import OptimizeSpec

log = logging.getLogger("yolopt")


@dataclass
class Variant:
    """One deployable configuration. ``build``: the artifact's key (see :func:`build_artifact`)."""

    name: str
    kind: str  # baseline | rect | imgsz | streams | int8 | fp16 | mixed | qat | prune | combined
    description: str
    build: str
    imgsz: int
    letterbox: str = "square"  # square: fixed input; rect: dynamic input, minimal padding per image
    streams: int = 1  # pipelines run at once, each with threads // streams intra-op threads
    spin: bool = True  # False: ONNX Runtime's idle threads sleep instead of spin-waiting (pipeline setting)
    runtime: str | None = None  # the runtime it deploys on; None: the run's target
    estimate_s: float = 0.0  # expected cost of building + measuring it (for the time budget)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["runtime"] is None:  # the run's target: rows as before the field existed
            del d["runtime"]
        return d

    @classmethod
    def from_dict(cls, d: dict, **changes) -> "Variant":
        """A variant as ``to_dict`` wrote it; fields added later take their defaults. ``changes`` override."""
        return cls(**{**d, **changes})


@dataclass
class Accuracy:
    """A variant's mAP on the val split (:func:`evaluate_variant`)."""

    map50_95: float
    map50: float
    val_images: int
    val_mode: str


@dataclass
class BenchResult:
    """A variant's end-to-end benchmark (:func:`bench_variant`): throughput of all pipelines together,
    latency as each pipeline saw it."""

    fps: float
    latency_ms: dict  # p50, p99, mean, ... of one image end to end (ms)
    stages_ms: dict | None  # decode, preprocess, inference, nms, postprocess (ms per image)
    peak_mem_mb: float  # peak resident memory of the deployed pipeline: its bundle's worker processes, summed
    size_mb: float  # the artifact on disk
    threads_per_stream: int
    machine: dict  # the benchmark process's machine block
    measured_by: str = "infer.py"  # the bundle's own pipeline, or "yolopt" (an artifact that makes no bundle)


@dataclass
class Build:
    """A built artifact (``OUT/artifacts/<key>/build.json``): ``seconds`` it took, ``details`` of the build
    (float layers, QAT gains, prune summary); ``cached``: it was there before this call."""

    key: str
    artifact: str
    seconds: float
    details: dict
    cached: bool = False

    def to_dict(self) -> dict:
        return {"key": self.key, "artifact": self.artifact, "seconds": self.seconds, "details": self.details}


def _suffix(target: str) -> str:
    return {"openvino": ".xml", "ncnn": ".param", "litert": ".tflite"}.get(target, ".onnx")


def build_key(kind: str, imgsz: int, dynamic: bool = False, extra: str = "", runtime: str | None = None) -> str:
    """``[runtime.]kind[extra]-imgsz-dyn|fixed``: the runtime prefix only for a build on another runtime than the
    run's target (e.g. ``openvino.int8-640-fixed`` in an ONNX Runtime run)."""
    return f"{runtime + '.' if runtime else ''}{kind}{extra}-{imgsz}-{'dyn' if dynamic else 'fixed'}"


def split_key(key: str, target: str) -> tuple[str, str, int, bool]:
    """``(runtime, kind, imgsz, dynamic)`` of a :func:`build_key`; the runtime defaults to ``target``."""
    from .spec import TARGETS

    head, imgsz, mode = key.rsplit("-", 2)
    runtime, dot, kind = head.partition(".")
    if not dot or runtime not in TARGETS:  # no prefix (kinds like prune0.75 have dots of their own)
        runtime, kind = target, head
    return runtime, kind, int(imgsz), mode == "dyn"


class Builder:
    """Builds (and caches) the artifacts of one optimize run: ``OUT/artifacts/<key>/``."""

    def __init__(self, spec: OptimizeSpec, root: Path, model):
        self.spec = spec
        self.root = root
        self.model = model  # the fp32 DetectionModel (unfused, eval)

    def info(self, key: str) -> Build | None:
        f = self.root / key / "build.json"
        if f.exists():
            try:
                d = json.loads(f.read_text())
                if stale_int8(d.get("details"), split_key(key, self.spec.target)[0], self.spec):
                    return None  # an INT8 build with the other weight range (another CPU) or head: rebuilt
                if Path(d["artifact"]).exists():
                    return Build(key=d.get("key", key), artifact=d["artifact"], seconds=float(d["seconds"]),
                                 details=d.get("details") or {}, cached=True)
            except (ValueError, KeyError, TypeError):
                pass
        return None

    def get(self, key: str) -> Build:
        """The build (artifact, seconds, details), building it when not cached."""
        done = self.info(key)
        if done is not None:
            return done
        folder = self.root / key
        shutil.rmtree(folder, ignore_errors=True)  # what a killed build left
        folder.mkdir(parents=True)
        t0 = time.perf_counter()
        runtime, kind, imgsz, dynamic = split_key(key, self.spec.target)
        out = folder / f"model{_suffix(runtime)}"
        details: dict = {}
        if kind in ("fp32", "fp16"):  # fp16: fp16 weights (ncnn, litert), computed in fp32
            artifact = self._export(self.model, out, imgsz, dynamic, precision=kind, runtime=runtime)
        elif kind == "int8" and runtime == "litert":  # quantized by the exporter, calibrated on --data
            artifact = self._export(self.model, out, imgsz, dynamic, precision=kind, runtime=runtime)
            from ..runtime.edge import tflite_metadata

            details = {"calibration": tflite_metadata(Path(artifact).read_bytes()).get("calibration")}
        elif kind in ("int8", "mixed") or kind.startswith("qat"):
            qat = int(kind[len("qat"):]) if kind.startswith("qat") else 0
            artifact, details = self._quantize(out, imgsz, mixed=kind == "mixed", qat=qat,
                                               qat_dir=self.root / f"{key}.qat_run" if qat else None, runtime=runtime)
        elif kind.startswith("prune"):
            artifact, details = self._prune(folder, out, imgsz, dynamic, float(kind[len("prune"):]))
        else:  # pragma: no cover - keys come from plan()
            raise YoloptError(f"unknown build {key}")
        rec = Build(key=key, artifact=str(artifact), seconds=time.perf_counter() - t0, details=details)
        write_json(folder / "build.json", rec.to_dict(), quiet=True)
        return rec

    def _export(self, model, out: Path, imgsz: int, dynamic: bool, precision: str = "fp32",
                runtime: str | None = None) -> Path:
        from ..export import ExportSpec, export

        runtime = runtime or self.spec.target
        fmt = runtime if runtime in ("openvino", "ncnn", "litert") else "onnx"
        folder = {"openvino": "ov", "ncnn": "ncnn"}.get(fmt)  # folder formats: OUT/artifacts/<key>/<folder>/model.*
        from ..quantize import OPTIMIZE_CALIB_IMAGES

        calib = {"calib_data": self.spec.data, "calib": OPTIMIZE_CALIB_IMAGES} if precision == "int8" else {}
        res = export(model, ExportSpec(format=fmt, imgsz=imgsz, dynamic=dynamic, verify=True, precision=precision,
                                       out=out if folder is None else out.parent / folder, **calib))
        return res.path

    def _quantize(self, out: Path, imgsz: int, mixed: bool, qat: int = 0, qat_dir: Path | None = None,
                  runtime: str | None = None) -> tuple[Path, dict]:
        """PTQ (``yolopt quantize``), with accuracy control (``mixed``) or after ``qat`` epochs of QAT. The QAT
        run is kept outside the build folder (``qat_dir``), so a killed build resumes its training."""
        from ..quantize import quantize

        q = quantize_spec(self.spec, out, imgsz, mixed, qat, qat_dir, runtime=runtime)
        res = quantize(self.model, q)
        rep = res.report
        details = {"float_layers": len(rep.float_layers), "layers": rep.layers,
                   "calibration": rep.calibration.to_dict(), "reduce_range": q.reduce_range, "raw_head": q.raw_head}
        if qat:
            details["qat"] = {k: getattr(rep.qat, k) for k in ("epochs", "seconds", "map50_95_gain_over_ptq",
                                                                "map50_gain_over_ptq")}
        return res.path, details

    def _prune(self, folder: Path, out: Path, imgsz: int, dynamic: bool, flops: float) -> tuple[Path, dict]:
        """``compress.run_prune`` to ``flops`` of the FLOPs with a distilled fine-tune (CPU), then export."""
        from ..compress.workflow import PruneWorkflowSpec, run_prune
        from ..models.checkpoint import load_model

        spec = self.spec
        pruned = folder / "pruned.safetensors"
        epochs = spec.finetune_epochs or 4
        log.info("pruning: %s to %g of the FLOPs, %d distilled fine-tuning epoch(s) at %d", spec.model, flops, epochs,
                 imgsz)
        rep = run_prune(PruneWorkflowSpec(model=str(spec.model), data=spec.data, unlabeled=tuple(spec.unlabeled),
                                          target_flops=flops, finetune=epochs, distill=True, imgsz=imgsz,
                                          out=pruned, device="cpu", progress=False))
        artifact = self._export(load_model(pruned), out, imgsz, dynamic)
        return artifact, {"epochs": epochs, "target_flops": flops, "summary": rep.summary.to_dict()}


def full_range_weights(target: str) -> bool:
    """8-bit (full-range) INT8 weights for ONNX Runtime on CPUs with VNNI, whose u8 x s8 kernels do not
    overflow; 7-bit elsewhere (the int16 accumulation of AVX2-only kernels can saturate)."""
    from ..machine import has_vnni

    return target == "onnxruntime" and has_vnni()


def stale_int8(details: dict | None, runtime: str, spec: OptimizeSpec) -> bool:
    """True for an INT8 build (its details) that this run would build otherwise: the other weight range
    (:func:`stale_weight_range`), or a decode in the graph where the run wants a raw head (or the reverse)."""
    details = details or {}
    if "calibration" not in details:
        return False
    raw = bool(spec.raw_head) and runtime == "onnxruntime"
    return stale_weight_range(details, runtime) or bool(details.get("raw_head", False)) != raw


def stale_weight_range(details: dict | None, target: str) -> bool:
    """True for an INT8 build (its details) made with the weight range this CPU does not use (7-bit by default
    before full-range weights were chosen on VNNI CPUs)."""
    details = details or {}
    return "calibration" in details and details.get("reduce_range", True) == full_range_weights(target)


def quantize_spec(spec: OptimizeSpec, out: Path, imgsz: int, mixed: bool, qat: int = 0,
                  qat_dir: Path | None = None, runtime: str | None = None):
    """The :class:`~yolopt.quantize.QuantizeSpec` of one INT8 build (PTQ, mixed precision or QAT) on ``runtime``
    (default: the run's target)."""
    from ..quantize import OPTIMIZE_CALIB_IMAGES, QuantizeSpec

    runtime = runtime or spec.target
    return QuantizeSpec(data=spec.data, backend=runtime, imgsz=imgsz, calib=OPTIMIZE_CALIB_IMAGES,
                        max_map_drop=spec.max_map_drop / 2 if mixed else None, val_images=spec.val_images,
                        latency=False, threads=spec.threads, out=out, progress=spec.progress, qat=qat,
                        qat_unlabeled=list(spec.unlabeled), qat_dir=qat_dir,
                        reduce_range=not full_range_weights(runtime),
                        raw_head=bool(spec.raw_head) and runtime == "onnxruntime")


def evaluate_variant(artifact: str, v: Variant, spec: OptimizeSpec) -> tuple[Accuracy, object]:
    """mAP of the artifact deployed as ``v`` says (same letterbox as deployment, batch 1).

    Returns ``(Accuracy, ImageMatches or None)``: the matches let the drop against the baseline be bootstrapped.
    """
    from ..evaluate import EvalSpec, evaluate

    r = evaluate(artifact, spec.data, EvalSpec(imgsz=v.imgsz, batch=1, mode=v.letterbox, max_images=spec.val_images,
                 progress=False, threads=spec.threads))
    return Accuracy(map50_95=r.map50_95, map50=r.map50, val_images=r.images, val_mode=r.mode), r.matches


def bench_variant(artifact: str, v: Variant, spec: OptimizeSpec, images: list[str],
                  seconds: float | None = None) -> BenchResult:
    """End-to-end images/s, latency and memory in a child process (:mod:`yolopt.pipeline.worker`): the
    variant's deploy bundle, written to a temporary folder with the settings it deploys with, run by its own
    infer.py pipeline (:mod:`yolopt.pipeline.harness`), and the per-stage times of yolopt's pipeline; an
    artifact that makes no bundle (a PyTorch model, a TensorRT engine) is timed by yolopt's pipeline alone."""
    from .deploy import BundleSpec, write_bundle
    from .deploy import log as deploy_log

    threads = max(1, spec.threads // v.streams)
    req = {"artifact": artifact, "imgsz": v.imgsz, "letterbox": v.letterbox, "threads": threads, "streams": v.streams,
           "images": images, "conf": spec.conf, "iou": spec.iou, "seconds": seconds or spec.bench_seconds,
           "spin": v.spin}
    with tempfile.TemporaryDirectory(prefix="yolopt-bench-") as tmp:
        dlog = deploy_log
        level = dlog.level
        dlog.setLevel(logging.WARNING)  # a temporary bundle: no "wrote deploy bundle" line
        try:
            req["bundle"] = str(write_bundle(artifact, Path(tmp) / "bundle", BundleSpec(
                letterbox=v.letterbox, conf=spec.conf, iou=spec.iou, threads=threads, spin=v.spin, workers=v.streams)))
        except YoloptError:
            pass  # not bundleable: yolopt's own pipeline times it
        finally:
            dlog.setLevel(level)
        rq, out = Path(tmp) / "req.json", Path(tmp) / "out.json"
        rq.write_text(json.dumps(req))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        r = subprocess.run([sys.executable, "-m", "yolopt.pipeline.worker", str(rq), str(out)], capture_output=True,
                           text=True, env=env)
        if r.returncode != 0 or not out.exists():
            tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
            if r.returncode < 0:  # the worker was killed (a signal: out of memory, a user), not the variant's doing
                raise TransientError(f"benchmark of {v.name} failed: its worker was killed by signal {-r.returncode}")
            raise YoloptError(f"benchmark of {v.name} failed: {tail}")
        rec = json.loads(out.read_text())
    dep = rec.get("deployed")
    if dep:  # the bundle's own pipeline: all its workers together
        fps, lat, mem = dep["fps"], dep["latency_ms"], dep["peak_mem_mb"]
    elif v.streams > 1:  # throughput of all pipelines together; latency as each pipeline saw it
        fps, lat, mem = rec["throughput_fps"], rec["extra"]["stream_latency_ms"], rec["model_mem_mb"]
    else:
        fps, lat, mem = rec["fps"], rec["latency_ms"], rec["model_mem_mb"]
    return BenchResult(fps=fps, latency_ms=lat, stages_ms=rec.get("stages_ms"), peak_mem_mb=mem,
                       measured_by="infer.py" if dep else "yolopt",
                       size_mb=rec["size_mb"], threads_per_stream=threads, machine=rec["machine"])
