"""Steps shared by the ONNX Runtime and OpenVINO paths of :func:`yolopt.quantize.quantize`: load, score,
write, guard against a model that lost its detections, time."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .calib import CalibrationSet
from .result import Score, Sizes, Timing
from .spec import COLLAPSE, QuantizeError, QuantizeSpec


@dataclass
class Job:
    """One run's working state: its spec, calibration set, output path, temporary folder, the fp32 ONNX
    exported there and that model's metadata."""

    spec: QuantizeSpec
    calib: CalibrationSet
    out: Path
    work: Path
    fp32: Path
    meta: dict
    base: Score | None = None  # the fp32 model's score on the val split (None without labels)


def load_input(model_or_path):
    """(model, name stem) of a module or a .pt / .safetensors path."""
    import torch

    from ..models.checkpoint import load_model

    if isinstance(model_or_path, torch.nn.Module):
        return model_or_path, "model"
    p = Path(model_or_path)
    if p.suffix.lower() not in (".pt", ".pth", ".safetensors"):
        raise QuantizeError(f"{p}: quantize takes the .pt / .safetensors model, not an exported artifact "
                            f"(the fp32 graph is exported and calibrated here)")
    return load_model(p), p.stem


def score(path, spec: QuantizeSpec, max_images: int | None = None) -> Score:
    """mAP of an artifact path or an in-memory backend on the val split of ``spec.data`` (the first
    ``max_images``, default ``spec.val_images``), with the detection count at the deployment operating point."""
    from ..evaluate import evaluate

    from ..evaluate import EvalSpec

    r = evaluate(str(path) if isinstance(path, Path) else path, spec.data, EvalSpec(match_classes=spec.match_classes),
                 imgsz=spec.imgsz, max_images=max_images or spec.val_images, progress=False, threads=spec.threads)
    m = (r.confusion or {}).get("matrix")
    dets = int(np.asarray(m)[:-1, :].sum()) if m else None  # detections at conf 0.25 (the deployment point)
    return Score(map50_95=r.map50_95, map50=r.map50, images=r.images, mode=r.mode, detections=dets)


def refuse_blind_source(base: Score | None, spec: QuantizeSpec) -> None:
    """Refuse, before any calibration, a source model that detects nothing on the val split: its INT8 graph
    would detect nothing too, and the drop against it (0) would say nothing."""
    if base is not None and (base.map50 <= 0 or base.detections == 0):
        raise QuantizeError(f"{spec.data}: the fp32 model finds nothing on the val split (mAP50 {base.map50:.4f}, "
                            f"{base.detections} detections at conf 0.25 on {base.images} images); an INT8 copy would "
                            f"detect nothing either, so nothing is quantized. Check that the model was trained for "
                            f"these classes", fields=("model", "data"))


def write_model(proto, path: Path, meta: dict) -> Path:
    import onnx

    from .onnx_qdq import with_metadata

    with_metadata(proto, {k: json.dumps(v) for k, v in meta.items()})
    onnx.save(proto, str(path))
    return path


def validate(q: Score | None, base: Score | None, q_path: Path, job: Job) -> tuple[float | None, float | None]:
    """Refuse (raise) an INT8 model that lost its detections; returns its (mAP50-95, mAP50) drops (None
    without labels: then its confident outputs are compared with fp32 on calibration images)."""
    if q is None:
        guard_outputs(q_path, job)
        return None, None
    if base.map50 > 0 and (q.map50 < COLLAPSE * base.map50 or q.detections == 0):
        raise QuantizeError(f"{job.out}: the INT8 model lost its detections (mAP50 {q.map50:.4f} vs fp32 "
                            f"{base.map50:.4f}); not written")
    return round(base.map50_95 - q.map50_95, 5), round(base.map50 - q.map50, 5)


def guard_outputs(q_path: Path, job: Job) -> None:
    """Without labels: the INT8 model must keep the fp32 model's confident detections on calibration images."""
    from ..runtime import open as open_backend

    a, b = open_backend(str(job.fp32)), open_backend(str(q_path))
    n_ref = n_q = 0
    for x in job.calib.batches(limit=8):
        ya, yb = a(x)[0], b(x)[0]
        n_ref += int(((ya[:, 4] * ya[:, 5:].max(1).values) > 0.25).sum())
        n_q += int(((yb[:, 4] * yb[:, 5:].max(1).values) > 0.25).sum())
    if n_ref and n_q < COLLAPSE * n_ref:
        raise QuantizeError(f"{job.out}: the INT8 model lost its detections ({n_q} confident outputs vs {n_ref} in "
                            f"fp32 on {min(8, len(job.calib))} calibration images); not written")


def time_models(models: dict[str, Path], spec: QuantizeSpec) -> Timing:
    """Interleaved model-only latency of ``models`` (``fp32`` and ``int8``, maybe ``ptq`` / ``fp32_openvino``)."""
    from ..bench import interleaved

    lat = interleaved(models, spec.imgsz, spec.threads)
    p50 = {k: v["p50_ms"] for k, v in lat.items()}
    t = Timing(latency={k: {kk: vv for kk, vv in v.items() if kk != "machine"} for k, v in lat.items()},
               machine=lat["int8"]["machine"], latency_ratio=round(p50["int8"] / p50["fp32"], 4),
               speedup=round(p50["fp32"] / p50["int8"], 4))
    if "ptq" in p50:
        t.latency_ratio_qat_vs_ptq = round(p50["int8"] / p50["ptq"], 4)
    if "fp32_openvino" in p50:
        t.latency_ratio_vs_fp32_openvino = round(p50["int8"] / p50["fp32_openvino"], 4)
    return t


def sizes(fp32: Path, *int8_files: Path) -> Sizes:
    """Sizes (MB) of the fp32 ONNX and of the INT8 artifact's files."""
    return Sizes(fp32=round(fp32.stat().st_size / 1e6, 3),
                 int8=round(sum(f.stat().st_size for f in int8_files) / 1e6, 3))


def val_images(spec: QuantizeSpec) -> CalibrationSet:
    """The first ``val_images`` (or all) val images, square-letterboxed, in the order ``evaluate`` reads them."""
    from ..data.dataset import image_files, load_data_config

    paths = image_files(load_data_config(spec.data), "val")[:spec.val_images]
    return CalibrationSet._pick(paths, spec.imgsz, None, spec.seed, f"{spec.data} (val)")
