""":func:`quantize`: export, calibrate, build, validate, time and write one INT8 artifact (see the package doc)."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from .calib import CalibrationSet
from .result import Calibration, QATInfo, QuantizeReport, QuantizeResult, Score, Trial
from .spec import QuantizeError, QuantizeSpec, check_spec
from .steps import Job, load_input, refuse_blind_source, score, sizes, time_models, validate, write_model

log = logging.getLogger("yolopt")


def quantize(model_or_path, spec: QuantizeSpec) -> QuantizeResult:
    """INT8 ONNX for ONNX Runtime (or an INT8 IR for OpenVINO), validated before it is written."""
    import onnx

    from ..export import ExportSpec, export
    from . import onnx_qdq as Q
    from .report import write_report

    check_spec(spec)
    t_start = time.perf_counter()
    model, stem = load_input(model_or_path)
    out = _out_path(spec, stem)
    stride = int(model.stride.max())
    if spec.imgsz % stride:
        raise QuantizeError(f"image size {spec.imgsz}: must be a multiple of the model stride {stride}",
                            fields=("imgsz",))
    calib = CalibrationSet.from_images(spec.images, spec.imgsz, spec.calib, seed=spec.seed) if spec.images else \
        CalibrationSet.from_data(spec.data, spec.imgsz, spec.calib, seed=spec.seed)
    calib.check()
    report = QuantizeReport(model=str(model_or_path) if not hasattr(model_or_path, "forward") else "model",
                            backend=spec.backend, imgsz=spec.imgsz, spec=spec,
                            calibration=Calibration(images=len(calib), source=calib.source, method=spec.method))
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.stem}.quantize.", dir=out.parent))
    try:
        t0 = time.perf_counter()
        fp32 = export(model, ExportSpec(format="onnx", imgsz=spec.imgsz, dynamic=True, verify=False,
                                        raw_head=spec.raw_head, out=work / "fp32.onnx")).path
        meta = {k: json.loads(v) for k, v in Q.read_metadata(onnx.load(str(fp32))).items()}
        base = score(fp32, spec) if spec.data else None
        refuse_blind_source(base, spec)
        job = Job(spec=spec, calib=calib, out=out, work=work, fp32=fp32, meta=meta, base=base)
        if spec.backend == "openvino":
            _openvino(job, report)
        else:
            q_path = _onnxruntime(job, model, report, t0)
            report.seconds = round(time.perf_counter() - t_start, 1)
            os.replace(q_path, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.path = str(out)
    write_report(report, out)
    return QuantizeResult(out, report)


def _out_path(spec: QuantizeSpec, stem: str) -> Path:
    suffix = ".xml" if spec.backend == "openvino" else ".onnx"
    out = Path(spec.out) if spec.out else Path("runs/quantize") / f"{stem}_int8{suffix}"
    if out.suffix.lower() != suffix:
        out = out.with_suffix(suffix)
    if out.is_dir():
        raise QuantizeError(f"{out}: is a folder; give the .onnx file to write", fields=("out",))
    return out


def _openvino(job: Job, report: QuantizeReport) -> None:
    from .openvino_ptq import quantize_openvino

    report.fp32 = base = job.base
    _log_fp32(base)
    ov = quantize_openvino(job, base, report.calibration)
    report.calibration, report.int8, (report.map50_95_drop, report.map50_drop) = ov.calibration, ov.int8, ov.drops
    report.float_layers, report.layers, report.trials = ov.float_layers, ov.layers, []
    report.timing, report.size_mb = ov.timing, ov.size_mb
    os.replace(ov.xml.with_suffix(".bin"), job.out.with_suffix(".bin"))
    os.replace(ov.xml, job.out)


def _log_fp32(base: Score | None) -> None:
    if base:
        log.info("fp32 ONNX: mAP50-95 %.4f, mAP50 %.4f (%d images)", base.map50_95, base.map50, base.images)


def _onnxruntime(job: Job, model, report: QuantizeReport, t0: float) -> Path:
    """PTQ (of the QAT-tuned weights with ``spec.qat``) to a QDQ ONNX in the work folder, validated and timed;
    fills ``report`` and returns the model's path. ``t0``: when the export started (calibration time)."""
    import onnx

    from . import onnx_qdq as Q
    from . import sensitivity as S
    from .accuracy import accuracy_control, speed_aware

    spec, calib, fp32 = job.spec, job.calib, job.fp32
    proto = onnx.load(str(fp32))
    log.info("calibrating on %d images (%s, %s)...", len(calib), calib.source, spec.method)
    ranges = Q.calibrate(fp32, calib.batches(), spec.method)
    report.calibration.seconds = round(time.perf_counter() - t0, 1)
    build = {"per_channel": spec.per_channel, "reduce_range": spec.reduce_range}
    groups = Q.layer_groups(proto)
    report.layers = len(groups)

    def write(proto_q, name: str) -> Path:
        m = {**job.meta, "precision": "int8", "quantization": {
            "method": spec.method, "calib_images": len(calib), "per_channel": spec.per_channel,
            "reduce_range": spec.reduce_range, "input": "uint8 pixels (letterboxed RGB)",
            "decode": "int8" if spec.quantize_decode else "float"}}
        return write_model(proto_q, job.work / name, m)

    def build_model(float_layers=()):
        if spec.quantize_decode:
            return _naive(proto, ranges, build)
        return Q.build_qdq(proto, ranges, float_layers, **build)

    def write_with_float(float_layers, name: str) -> Path:
        return write(build_model(float_layers), name)

    report.fp32 = base = job.base
    _log_fp32(base)
    ptq = None
    if spec.qat:  # the rest runs on the QAT-tuned weights; PTQ's graph is kept for the comparison
        ptq = (proto, ranges)
        proto, ranges, report.qat = _qat(model, job, base)

    sens = None
    if spec.sensitivity or spec.max_map_drop is not None:
        t1 = time.perf_counter()
        map_eval = _map_evaluator(job) if spec.sensitivity and spec.sensitivity_map_images and spec.data else None
        sens = S.analyse(proto, ranges, calib.arrays(spec.sensitivity_images), map_eval=map_eval,
                         threads=spec.threads, progress=spec.progress, **build)
        sens.map_images = spec.sensitivity_map_images if map_eval else 0
        report.sensitivity_seconds = round(time.perf_counter() - t1, 1)
        if spec.sensitivity:
            report.sensitivity = sens

    # speed: layers ONNX Runtime runs no slower in float (profiled, both models) stay float when that
    # makes the whole model faster (measured)
    free: list[str] = []
    q_path = write(build_model(), "int8_k0.onnx")
    if spec.speed_aware and not spec.quantize_decode:
        free, q_path, report.speed_aware = speed_aware(fp32, q_path, list(groups), spec, write_with_float)
    q_res = score(q_path, spec) if spec.data else None
    if q_res:
        log.info("INT8, %d layers float: mAP50-95 %.4f (drop %.4f)", len(free), q_res.map50_95,
                 base.map50_95 - q_res.map50_95)
    float_layers, trials = list(free), [Trial(len(free), q_res)]
    if spec.max_map_drop is not None and q_res:  # accuracy control: bisect the sensitivity ranking
        float_layers, q_path, q_res, trials = accuracy_control(spec, base, free, sens.ranking(), (q_path, trials[0]),
                                                               write_with_float, len(groups))
    report.trials, report.float_layers, report.int8 = trials, float_layers, q_res
    report.map50_95_drop, report.map50_drop = validate(q_res, base, q_path, job)
    timed = {"fp32": fp32, "int8": q_path}
    if ptq is not None:  # PTQ with the same float layers: the same graph, so the same speed
        ptq_path = write(Q.build_qdq(ptq[0], ptq[1], float_layers, **build), "ptq.onnx")
        report.ptq = score(ptq_path, spec)
        report.qat.map50_95_gain_over_ptq = round(q_res.map50_95 - report.ptq.map50_95, 5)
        report.qat.map50_gain_over_ptq = round(q_res.map50 - report.ptq.map50, 5)
        log.info("same graph by PTQ: mAP50-95 %.4f; QAT gains %+.4f", report.ptq.map50_95,
                 report.qat.map50_95_gain_over_ptq)
        timed["ptq"] = ptq_path
    if spec.latency:
        report.timing = time_models(timed, spec)
    report.size_mb = sizes(fp32, q_path)
    return q_path


def _qat(model, job: Job, base: Score | None):
    """Fine-tune with fake quantization (:mod:`.qat`), export the tuned float weights and calibrate them:
    returns (proto, ranges, what the run did) for the same QDQ path as PTQ."""
    import onnx

    from ..export import ExportSpec, export
    from . import onnx_qdq as Q
    from .qat import QATSpec, qat_finetune

    spec, calib = job.spec, job.calib
    t0 = time.perf_counter()
    run_dir = Path(spec.qat_dir) if spec.qat_dir else job.out.with_name(job.out.stem + "_qat")
    qspec = QATSpec(data=spec.qat_data or spec.data, val_data=spec.data if spec.qat_data else None, epochs=spec.qat,
                    imgsz=spec.imgsz, batch=spec.qat_batch, lr0=spec.qat_lr, bits=7 if spec.reduce_range else 8,
                    unlabeled=list(spec.qat_unlabeled), out=run_dir, progress=spec.progress, seed=spec.seed)
    log.info("QAT: %d epoch(s) on %s%s, float model as teacher -> %s", spec.qat, qspec.data,
             f" + {', '.join(map(str, spec.qat_unlabeled))}" if spec.qat_unlabeled else "", run_dir)
    tuned = qat_finetune(model, qspec, calib)
    fp = export(tuned, ExportSpec(format="onnx", imgsz=spec.imgsz, dynamic=True, verify=False,
                                  raw_head=spec.raw_head, out=job.work / "fp32_qat.onnx")).path
    ranges = Q.calibrate(fp, calib.batches(), spec.method)
    info = QATInfo(epochs=spec.qat, run=str(run_dir), lr0=spec.qat_lr, batch=spec.qat_batch, data=str(qspec.data),
                   unlabeled=[str(u) for u in spec.qat_unlabeled], teacher="the float model",
                   fp32_tuned=score(fp, spec), seconds=round(time.perf_counter() - t0, 1))
    tuned_map = info.fp32_tuned.map50_95
    if base and base.map50_95 - tuned_map > 0.005:  # the float weights themselves got worse on val
        info.warning = (f"QAT moved the float model away from val: the tuned weights score {tuned_map:.4f} in fp32 "
                        f"vs {base.map50_95:.4f}; the QAT images do not represent the val data (or the QAT "
                        f"learning rate is too high)")
        log.warning(info.warning)
    return onnx.load(str(fp)), ranges, info


def _naive(proto, ranges, build: dict):
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


def _map_evaluator(job: Job):
    """``proto -> mAP50-95`` on the first ``sensitivity_map_images`` val images (per-layer mAP deltas)."""
    spec = job.spec
    counter = [0]

    def run(proto) -> float:
        counter[0] += 1
        p = write_model(copy.deepcopy(proto), job.work / f"sens_{counter[0] % 2}.onnx",
                        {**job.meta, "precision": "int8"})
        return score(p, spec, max_images=spec.sensitivity_map_images).map50_95

    return run
