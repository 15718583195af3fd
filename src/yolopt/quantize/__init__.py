"""Post-training INT8 quantization with precision-loss analysis and accuracy-controlled mixed precision.

    >>> from yolopt.quantize import QuantizeSpec, quantize
    >>> res = quantize("yolov5n.pt", QuantizeSpec(data="coco128.yaml", max_map_drop=0.005, out="q.onnx"))
    >>> res.report["int8"]["map50_95"], res.report["speedup"]

``quantize`` exports the model to fp32 ONNX (dynamic shape), calibrates on images pre-processed
exactly like inference (:mod:`.calib`), writes a QDQ graph for ONNX Runtime (:mod:`.onnx_qdq`: the
Detect decode stays float, the graph takes uint8 pixels), measures it against the fp32 ONNX on the
val split and in latency, and writes it only when it passes:

* a model that lost its detections (the failure mode of quantizing the decode) is never written;
* with ``max_map_drop``, the layers that introduce the most error (:mod:`.sensitivity`) stay float
  until the measured drop is within budget; the report lists them and what they cost in speed.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..bench import interleaved
from ..errors import YoloptError
from .calib import CalibrationError, CalibrationSet

log = logging.getLogger("yolopt")

BACKENDS = ("onnxruntime", "openvino")
COLLAPSE = 0.5  # an INT8 model keeping less than this fraction of the fp32 mAP50 has lost its detections


class QuantizeError(YoloptError):
    """A quantization that cannot be done, or whose result failed validation (nothing is written)."""


@dataclass
class QuantizeSpec:
    """Everything one ``yolopt quantize`` run needs."""

    data: str | None = None  # dataset yaml: calibration on its train split, validation on val
    images: list | None = None  # or calibration images (folders, globs, files); validation then needs data
    backend: str = "onnxruntime"
    imgsz: int = 640
    calib: int = 256  # calibration images (a fixed random subset when there are more)
    method: str = "minmax"  # minmax | entropy | percentile
    per_channel: bool = True
    reduce_range: bool = True  # 7-bit weights: no int16 overflow in the u8 x s8 kernels of CPUs without VNNI
    max_map_drop: float | None = None  # accuracy control: keep sensitive layers float until within budget
    val_images: int | None = None  # validate on the first N val images (None: all)
    sensitivity: bool = False  # per-layer analysis (table + PNG) in the report
    sensitivity_images: int = 8
    sensitivity_map_images: int = 0  # also the mAP delta of each layer alone, on this many val images
    speed_aware: bool = True  # layers whose float kernels are no slower than INT8 (profiled) stay float
    quantize_decode: bool = False  # ablation only: quantize the Detect decode too (loses every detection)
    qat: int = 0  # epochs of quantization-aware fine-tuning (0: post-training quantization only)
    qat_data: str | None = None  # QAT trains on this (yaml, or unlabelled images) instead of data's train split
    qat_unlabeled: list = field(default_factory=list)  # extra images for QAT (the float teacher labels them)
    qat_lr: float = 1e-3  # measured on hardhat (in-domain images): 2 epochs +0.75 pt mAP50-95 over PTQ
    qat_batch: int = 16
    qat_dir: str | Path | None = None  # the QAT training run (default: next to the artifact; resumable)
    latency: bool = True
    threads: int | None = None
    out: str | Path | None = None
    progress: bool = True
    seed: int = 0


@dataclass
class QuantizeResult:
    path: Path | None
    report: dict = field(default_factory=dict)


def _check_spec(spec: QuantizeSpec) -> None:
    if spec.backend not in BACKENDS:
        raise QuantizeError(f"--backend {spec.backend}: INT8 is built for {', '.join(BACKENDS)} so far")
    from .onnx_qdq import METHODS

    if spec.method not in METHODS:
        raise QuantizeError(f"--method {spec.method}: choose one of {', '.join(METHODS)}")
    if spec.max_map_drop is not None and not 0 <= spec.max_map_drop < 1:
        raise QuantizeError(f"--max-map-drop {spec.max_map_drop}: must be in [0, 1)")
    if not spec.data and not spec.images:
        raise QuantizeError("quantize needs calibration images: --data DATA.yaml or --images DIR")
    if spec.backend == "openvino" and (spec.sensitivity or spec.quantize_decode):
        raise QuantizeError("--backend openvino: --sensitivity and the naive ablation are built for onnxruntime so "
                            "far; the OpenVINO path is nncf PTQ (with --max-map-drop: nncf's accuracy control), "
                            "the decode float")
    if spec.max_map_drop is not None and not spec.data:
        raise QuantizeError("--max-map-drop needs --data (the drop is measured on its val split)")
    if spec.qat < 0:
        raise QuantizeError(f"--qat {spec.qat}: the number of QAT epochs must be >= 0")
    if spec.qat and (not spec.data or spec.backend != "onnxruntime" or spec.quantize_decode):
        raise QuantizeError("--qat needs --data (it fine-tunes on the train split) and --backend onnxruntime")


def _load(model_or_path):
    import torch

    from ..models.checkpoint import load_model

    if isinstance(model_or_path, torch.nn.Module):
        return model_or_path, "model"
    p = Path(model_or_path)
    if p.suffix.lower() not in (".pt", ".pth", ".safetensors"):
        raise QuantizeError(f"{p}: quantize takes the .pt / .safetensors model, not an exported artifact "
                            f"(the fp32 graph is exported and calibrated here)")
    return load_model(p), p.stem


def _evaluate(path, data: str, spec: QuantizeSpec, max_images: int | None = None) -> dict:
    """mAP of an artifact path or an in-memory backend on the val split (the first ``max_images``, default
    ``spec.val_images``), with the detection count at the deployment operating point."""
    from ..evaluate import evaluate

    r = evaluate(str(path) if isinstance(path, Path) else path, data, imgsz=spec.imgsz,
                 max_images=max_images or spec.val_images, progress=False,
                 threads=spec.threads)
    m = (r.confusion or {}).get("matrix")
    dets = int(np.asarray(m)[:-1, :].sum()) if m else None  # detections at conf 0.25 (the deployment point)
    return {"map50_95": r.map50_95, "map50": r.map50, "images": r.images, "mode": r.mode, "detections": dets}


def _write_model(proto, path: Path, meta: dict) -> Path:
    import onnx

    from .onnx_qdq import with_metadata

    with_metadata(proto, {k: json.dumps(v) for k, v in meta.items()})
    onnx.save(proto, str(path))
    return path


def quantize(model_or_path, spec: QuantizeSpec) -> QuantizeResult:
    """INT8 ONNX for ONNX Runtime, validated before it is written (see the module doc)."""
    import onnx

    from ..export import ExportSpec, export
    from . import onnx_qdq as Q
    from . import sensitivity as S

    _check_spec(spec)
    t_start = time.perf_counter()
    model, stem = _load(model_or_path)
    suffix = ".xml" if spec.backend == "openvino" else ".onnx"
    out = Path(spec.out) if spec.out else Path("runs/quantize") / f"{stem}_int8{suffix}"
    if out.suffix.lower() != suffix:
        out = out.with_suffix(suffix)
    if out.is_dir():
        raise QuantizeError(f"{out}: is a folder; give the .onnx file to write")
    stride = int(model.stride.max())
    if spec.imgsz % stride:
        raise QuantizeError(f"--imgsz {spec.imgsz}: must be a multiple of the model stride {stride}")
    calib = CalibrationSet.from_images(spec.images, spec.imgsz, spec.calib, seed=spec.seed) if spec.images else \
        CalibrationSet.from_data(spec.data, spec.imgsz, spec.calib, seed=spec.seed)
    calib.check()
    report: dict = {"model": str(model_or_path) if not hasattr(model_or_path, "forward") else "model",
                    "backend": spec.backend, "imgsz": spec.imgsz, "spec": _spec_dict(spec),
                    "calibration": {"images": len(calib), "source": calib.source, "method": spec.method,
                                    "preprocess": "square letterbox, as inference"}}
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.stem}.quantize.", dir=out.parent))
    try:
        t0 = time.perf_counter()
        fp32 = export(model, ExportSpec(format="onnx", imgsz=spec.imgsz, dynamic=True, verify=False,
                                        out=work / "fp32.onnx")).path
        proto = onnx.load(str(fp32))
        meta = {k: json.loads(v) for k, v in Q.read_metadata(proto).items()}
        log.info("calibrating on %d images (%s, %s)...", len(calib), calib.source, spec.method)
        ranges = Q.calibrate(fp32, calib.batches(), spec.method)
        report["calibration"]["seconds"] = round(time.perf_counter() - t0, 1)
        build = {"per_channel": spec.per_channel, "reduce_range": spec.reduce_range}
        groups = Q.layer_groups(proto)
        report["layers"] = len(groups)

        def write(proto_q, name: str) -> Path:
            m = {**meta, "precision": "int8", "quantization": {
                "method": spec.method, "calib_images": len(calib), "per_channel": spec.per_channel,
                "reduce_range": spec.reduce_range, "input": "uint8 pixels (letterboxed RGB)",
                "decode": "int8" if spec.quantize_decode else "float"}}
            return _write_model(proto_q, work / name, m)

        def build_model(float_layers=()):
            if spec.quantize_decode:
                return _naive(proto, ranges, build)
            return Q.build_qdq(proto, ranges, float_layers, **build)

        base = _evaluate(fp32, spec.data, spec) if spec.data else None
        if base:
            log.info("fp32 ONNX: mAP50-95 %.4f, mAP50 %.4f (%d images)", base["map50_95"], base["map50"],
                     base["images"])
        report["fp32"] = base
        ptq = None
        if spec.qat:  # the rest runs on the QAT-tuned weights; PTQ's graph is kept for the comparison
            ptq = (proto, ranges)
            proto, ranges = _qat(model, spec, calib, out, work, report)
        if spec.backend == "openvino":
            _openvino(fp32, calib, meta, spec, work, out, report, base)
            return QuantizeResult(out, report)

        sens = None
        if spec.sensitivity or spec.max_map_drop is not None:
            t0 = time.perf_counter()
            map_eval = None
            if spec.sensitivity and spec.sensitivity_map_images and spec.data:
                map_eval = _map_evaluator(work, meta, spec)
            sens = S.analyse(proto, ranges, calib.arrays(spec.sensitivity_images), map_eval=map_eval,
                             threads=spec.threads, progress=spec.progress, **build)
            sens.map_images = spec.sensitivity_map_images if map_eval else 0
            report["sensitivity_seconds"] = round(time.perf_counter() - t0, 1)
            if spec.sensitivity:
                report["sensitivity"] = sens.to_dict()

        # speed: layers ONNX Runtime runs no slower in float (profiled, both models) stay float when that
        # makes the whole model faster (measured)
        free: list[str] = []
        q_path = write(build_model(), "int8_k0.onnx")
        if spec.speed_aware and not spec.quantize_decode:
            free, q_path = _speed_aware(fp32, q_path, list(groups), spec, report, lambda fl, name: write(
                build_model(fl), name))
        q_res = _evaluate(q_path, spec.data, spec) if spec.data else None
        trials = [{"float_layers": len(free), **(q_res or {})}]
        if q_res:
            log.info("INT8, %d layers float: mAP50-95 %.4f (drop %.4f)", len(free), q_res["map50_95"],
                     base["map50_95"] - q_res["map50_95"])
        float_layers = list(free)
        # accuracy control: the smallest prefix of the ranking kept float that meets the budget (bisection)
        if spec.max_map_drop is not None and q_res and base["map50_95"] - q_res["map50_95"] > spec.max_map_drop:
            rank = [g for g in sens.ranking() if g not in free]
            lo, hi = 0, len(rank)  # lo fails; hi (everything float) meets any budget
            best = None
            while hi - lo > 1:
                k = (lo + hi) // 2
                path_k = write(build_model(free + rank[:k]), f"int8_k{k}.onnx")
                r = _evaluate(path_k, spec.data, spec)
                trials.append({"float_layers": len(free) + k, **r})
                log.info("INT8 with %d/%d layers float: mAP50-95 %.4f (drop %.4f)", len(free) + k, len(groups),
                         r["map50_95"], base["map50_95"] - r["map50_95"])
                if base["map50_95"] - r["map50_95"] <= spec.max_map_drop:
                    hi, best = k, (path_k, r)
                else:
                    lo = k
            if best is None:
                raise QuantizeError(f"no INT8 model within --max-map-drop {spec.max_map_drop}: even with "
                                    f"{len(groups) - 1} of {len(groups)} layers float the drop is larger; nothing "
                                    f"written")
            float_layers = free + rank[:hi]
            q_path, q_res = best
        report["trials"] = trials
        report["float_layers"] = float_layers
        _validate(report, q_res, base, q_path, fp32, calib, out)
        timed = {"fp32": fp32, "int8": q_path}
        if ptq is not None:  # PTQ with the same float layers: the same graph, so the same speed
            ptq_path = write(Q.build_qdq(ptq[0], ptq[1], float_layers, **build), "ptq.onnx")
            report["ptq"] = _evaluate(ptq_path, spec.data, spec)
            report["qat"]["map50_95_gain_over_ptq"] = round(q_res["map50_95"] - report["ptq"]["map50_95"], 5)
            report["qat"]["map50_gain_over_ptq"] = round(q_res["map50"] - report["ptq"]["map50"], 5)
            log.info("same graph by PTQ: mAP50-95 %.4f; QAT gains %+.4f", report["ptq"]["map50_95"],
                     report["qat"]["map50_95_gain_over_ptq"])
            timed["ptq"] = ptq_path
        if spec.latency:
            lat = interleaved(timed, spec.imgsz, spec.threads)
            report["latency"] = {k: {kk: vv for kk, vv in v.items() if kk != "machine"} for k, v in lat.items()}
            report["machine"] = lat["int8"]["machine"]
            report["latency_ratio"] = round(lat["int8"]["p50_ms"] / lat["fp32"]["p50_ms"], 4)
            report["speedup"] = round(lat["fp32"]["p50_ms"] / lat["int8"]["p50_ms"], 4)
            if "ptq" in lat:
                report["latency_ratio_qat_vs_ptq"] = round(lat["int8"]["p50_ms"] / lat["ptq"]["p50_ms"], 4)
        report["size_mb"] = {"fp32": round(fp32.stat().st_size / 1e6, 3), "int8": round(q_path.stat().st_size / 1e6, 3)}
        report["seconds"] = round(time.perf_counter() - t_start, 1)
        os.replace(q_path, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from .report import write_report

    report["path"] = str(out)
    write_report(report, out, sens)
    return QuantizeResult(out, report)


def _qat(model, spec: QuantizeSpec, calib: CalibrationSet, out: Path, work: Path, report: dict):
    """Fine-tune with fake quantization (:mod:`.qat`), export the tuned float weights and calibrate them:
    returns (proto, ranges) for the same QDQ path as PTQ."""
    import onnx

    from ..export import ExportSpec, export
    from . import onnx_qdq as Q
    from .qat import QATSpec, qat_finetune

    t0 = time.perf_counter()
    run_dir = Path(spec.qat_dir) if spec.qat_dir else out.with_name(out.stem + "_qat")
    qspec = QATSpec(data=spec.qat_data or spec.data, val_data=spec.data if spec.qat_data else None, epochs=spec.qat,
                    imgsz=spec.imgsz, batch=spec.qat_batch, lr0=spec.qat_lr, bits=7 if spec.reduce_range else 8,
                    unlabeled=list(spec.qat_unlabeled), out=run_dir, progress=spec.progress, seed=spec.seed)
    log.info("QAT: %d epoch(s) on %s%s, float model as teacher -> %s", spec.qat, qspec.data,
             f" + {', '.join(map(str, spec.qat_unlabeled))}" if spec.qat_unlabeled else "", run_dir)
    tuned = qat_finetune(model, qspec, calib)
    fp = export(tuned, ExportSpec(format="onnx", imgsz=spec.imgsz, dynamic=True, verify=False,
                                  out=work / "fp32_qat.onnx")).path
    ranges = Q.calibrate(fp, calib.batches(), spec.method)
    report["qat"] = {"epochs": spec.qat, "run": str(run_dir), "lr0": spec.qat_lr, "batch": spec.qat_batch,
                     "data": str(qspec.data), "unlabeled": [str(u) for u in spec.qat_unlabeled], "teacher": "the float model",
                     "fp32_tuned": _evaluate(fp, spec.data, spec), "seconds": round(time.perf_counter() - t0, 1)}
    base, tuned_map = report.get("fp32"), report["qat"]["fp32_tuned"]["map50_95"]
    if base and base["map50_95"] - tuned_map > 0.005:  # the float weights themselves got worse on val
        report["qat"]["warning"] = (f"QAT moved the float model away from val: the tuned weights score "
                                    f"{tuned_map:.4f} in fp32 vs {base['map50_95']:.4f}; the QAT images do not "
                                    f"represent the val data (or --qat-lr is too high)")
        log.warning(report["qat"]["warning"])
    return onnx.load(str(fp)), ranges


def _speed_aware(fp32: Path, q_path: Path, groups: list[str], spec: QuantizeSpec, report: dict, build):
    """Profile the fp32 and the INT8 model per layer; keep float the layers whose float kernels are no
    slower, if the resulting model is measured faster than the all-INT8 one. Returns (float layers, path)."""
    from .onnx_qdq import layer_times

    t0 = time.perf_counter()
    t_f = layer_times(fp32, groups, spec.imgsz, spec.threads)
    t_q = layer_times(q_path, groups, spec.imgsz, spec.threads)
    free = [g for g in groups if t_q[g] > 0 and t_f[g] <= t_q[g]]
    info = {"layer_ms": {g: {"fp32": round(t_f[g], 4), "int8": round(t_q[g], 4)} for g in groups},
            "float_no_slower": free, "adopted": False}
    report["speed_aware"] = info
    if not free:
        return [], q_path
    cand = build(free, "int8_free.onnx")
    lat = interleaved({"int8": q_path, "mixed": cand}, spec.imgsz, spec.threads, rounds=3)
    info.update({"all_int8_ms": lat["int8"]["p50_ms"], "with_float_ms": lat["mixed"]["p50_ms"],
                 "seconds": round(time.perf_counter() - t0, 1)})
    if lat["mixed"]["p50_ms"] < lat["int8"]["p50_ms"]:
        info["adopted"] = True
        log.info("speed: %d layers run no slower in float (%s); keeping them float: %.2f -> %.2f ms", len(free),
                 ", ".join(free[:6]) + (" ..." if len(free) > 6 else ""), lat["int8"]["p50_ms"], lat["mixed"]["p50_ms"])
        return free, cand
    log.info("speed: keeping %d float-no-slower layers float did not make the model faster (%.2f vs %.2f ms)",
             len(free), lat["mixed"]["p50_ms"], lat["int8"]["p50_ms"])
    return [], q_path


def _openvino(fp32: Path, calib: CalibrationSet, meta: dict, spec: QuantizeSpec, work: Path, out: Path,
              report: dict, base: dict | None) -> None:
    """nncf PTQ to an INT8 IR; validated and timed (against the fp32 IR and the fp32 ONNX) before the move."""
    import onnx

    from . import onnx_qdq as Q
    from .openvino_int8 import fp32_ir, quantize_ir
    from .report import write_report

    import openvino as ov

    t0 = time.perf_counter()
    dec = Q.decode_nodes(onnx.load(str(fp32), load_external_data=False))
    qmeta = {**meta, "precision": "int8", "quantization": {"tool": "nncf", "preset": "mixed", "calib_images": len(calib),
                                                            "decode": "float"}}
    control = None
    if spec.max_map_drop is not None:  # nncf's accuracy control, scored by yolopt's mAP on the val split
        val = _val_images(spec)
        log.info("nncf accuracy control: mAP50-95 drop <= %g on %d val images (ranks operations, then puts them "
                 "back in float one group at a time; this takes a while)...", spec.max_map_drop, len(val))
        qmeta["quantization"]["accuracy_control"] = {"max_map_drop": spec.max_map_drop, "val_images": len(val)}
        control = (val.arrays(), lambda backend, n: _evaluate(backend, spec.data, spec, n)["map50_95"], spec.max_map_drop)
    q_xml = quantize_ir(fp32, calib.arrays(), qmeta, work / out.name, dec, control=control)
    report["calibration"]["seconds"] = round(time.perf_counter() - t0, 1)
    report["calibration"]["method"] = "nncf (mixed preset, fast bias correction" + \
        (", accuracy control)" if control else ")")
    q_res = _evaluate(q_xml, spec.data, spec) if spec.data else None
    _validate(report, q_res, base, q_xml, fp32, calib, out)
    report["float_layers"], report["layers"], report["trials"] = [], None, []
    if control:
        from .openvino_int8 import float_convs

        fq = ov.Core().read_model(str(q_xml))
        report["float_layers"] = float_convs(fq)  # the decode has no convolutions: these were put back
        report["layers"] = sum(op.get_type_name() == "Convolution" for op in fq.get_ops())
        drop = report["map50_95_drop"]
        log.info("accuracy control kept %d of %d convolutions float: mAP50-95 %.4f (drop %.4f)",
                 len(report["float_layers"]), report["layers"], q_res["map50_95"], drop)
        if drop > spec.max_map_drop + 1e-9:
            raise QuantizeError(f"no INT8 model within --max-map-drop {spec.max_map_drop}: nncf's accuracy control "
                                f"ended at a drop of {drop:.4f}; nothing written")
    if spec.latency:
        f_xml = fp32_ir(fp32, {**meta, "precision": "fp32"}, work / "fp32_ir" / "fp32.xml")
        lat = interleaved({"fp32": fp32, "fp32_openvino": f_xml, "int8": q_xml}, spec.imgsz, spec.threads)
        report["latency"] = {k: {kk: vv for kk, vv in v.items() if kk != "machine"} for k, v in lat.items()}
        report["machine"] = lat["int8"]["machine"]
        report["latency_ratio"] = round(lat["int8"]["p50_ms"] / lat["fp32"]["p50_ms"], 4)  # vs fp32 ONNX Runtime
        report["latency_ratio_vs_fp32_openvino"] = round(lat["int8"]["p50_ms"] / lat["fp32_openvino"]["p50_ms"], 4)
        report["speedup"] = round(lat["fp32"]["p50_ms"] / lat["int8"]["p50_ms"], 4)
    report["size_mb"] = {"fp32": round(fp32.stat().st_size / 1e6, 3),
                         "int8": round((q_xml.stat().st_size + q_xml.with_suffix(".bin").stat().st_size) / 1e6, 3)}
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(q_xml.with_suffix(".bin"), out.with_suffix(".bin"))
    os.replace(q_xml, out)
    report["path"] = str(out)
    write_report(report, out)


def _val_images(spec: QuantizeSpec) -> CalibrationSet:
    """The first ``val_images`` (or all) val images, square-letterboxed, in the order ``evaluate`` reads them."""
    from ..data.dataset import image_files, load_data_config

    paths = image_files(load_data_config(spec.data), "val")[:spec.val_images]
    return CalibrationSet._pick(paths, spec.imgsz, None, spec.seed, f"{spec.data} (val)")


def _spec_dict(spec: QuantizeSpec) -> dict:
    d = asdict(spec)
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


def _naive(proto, ranges, build):
    """Everything quantized, the decode included (the known failure mode; for comparison only)."""
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    from . import onnx_qdq as Q

    q = Q._ort_quant()
    m = copy.deepcopy(proto)
    qz = QDQQuantizer(m, build["per_channel"], build["reduce_range"], q.QuantType.QInt8, q.QuantType.QUInt8,
                      copy.deepcopy(ranges), None, None, list(Q.OP_TYPES) + ["Reshape", "Transpose", "Split"],
                      {"ActivationSymmetric": False, "WeightSymmetric": True})
    qz.quantize_model()
    qz.model.topological_sort()
    return qz.model.model


def _validate(report: dict, q_res: dict | None, base: dict | None, q_path: Path, fp32: Path,
              calib: CalibrationSet, out: Path) -> None:
    """Record the INT8 result and its drop; refuse (raise) a model that lost its detections."""
    report["int8"] = q_res
    if q_res is None:  # no labels: compare confident outputs with fp32 on calibration images
        _guard_outputs(q_path, fp32, calib, out)
        return
    _guard(q_res, base, out)
    report["map50_95_drop"] = round(base["map50_95"] - q_res["map50_95"], 5)
    report["map50_drop"] = round(base["map50"] - q_res["map50"], 5)


def _guard(q: dict, base: dict, out: Path) -> None:
    """Refuse an INT8 model that lost its detections."""
    if base["map50"] > 0 and (q["map50"] < COLLAPSE * base["map50"] or q.get("detections") == 0):
        raise QuantizeError(f"{out}: the INT8 model lost its detections (mAP50 {q['map50']:.4f} vs fp32 "
                            f"{base['map50']:.4f}); not written")


def _guard_outputs(q_path: Path, fp32: Path, calib: CalibrationSet, out: Path) -> None:
    """Without labels: the INT8 model must keep the fp32 model's confident detections on calibration images."""
    from ..runtime import open as open_backend

    a, b = open_backend(str(fp32)), open_backend(str(q_path))
    n_ref = n_q = 0
    for x in calib.batches(limit=8):
        ya, yb = a(x)[0], b(x)[0]
        n_ref += int(((ya[:, 4] * ya[:, 5:].max(1).values) > 0.25).sum())
        n_q += int(((yb[:, 4] * yb[:, 5:].max(1).values) > 0.25).sum())
    if n_ref and n_q < COLLAPSE * n_ref:
        raise QuantizeError(f"{out}: the INT8 model lost its detections ({n_q} confident outputs vs {n_ref} in "
                            f"fp32 on {min(8, len(calib))} calibration images); not written")


def _map_evaluator(work: Path, meta: dict, spec: QuantizeSpec):
    from ..evaluate import evaluate

    counter = [0]

    def run(proto) -> float:
        counter[0] += 1
        p = _write_model(copy.deepcopy(proto), work / f"sens_{counter[0] % 2}.onnx", {**meta, "precision": "int8"})
        return evaluate(str(p), spec.data, imgsz=spec.imgsz, max_images=spec.sensitivity_map_images,
                        progress=False, threads=spec.threads).map50_95

    return run


__all__ = ["BACKENDS", "CalibrationError", "CalibrationSet", "QuantizeError", "QuantizeResult", "QuantizeSpec",
           "quantize"]
