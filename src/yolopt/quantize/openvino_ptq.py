"""The OpenVINO path of :func:`yolopt.quantize.quantize`: nncf PTQ to an INT8 IR (with an mAP drop budget:
nncf's accuracy control, scored by yolopt's mAP), validated and timed before it is moved into place."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .result import Calibration, Score, Sizes, Timing
from .spec import QuantizeError
from .steps import Job, score, sizes, time_models, val_images, validate

log = logging.getLogger("yolopt")


@dataclass
class OpenVINOBuild:
    """The INT8 IR written in the work folder, and what was measured on it."""

    xml: Path
    calibration: Calibration
    int8: Score | None
    drops: tuple[float | None, float | None]  # (mAP50-95, mAP50)
    size_mb: Sizes
    float_layers: list[str] = field(default_factory=list)
    layers: int | None = None  # with accuracy control: the model's convolutions
    timing: Timing | None = None


def quantize_openvino(job: Job, base: Score | None, calibration: Calibration) -> OpenVINOBuild:
    """nncf PTQ of ``job.fp32`` to an INT8 IR in ``job.work``; validated and timed (against the fp32 IR and
    the fp32 ONNX). Raises when the model lost its detections or misses the mAP drop budget."""
    import onnx

    import openvino as ov

    from . import onnx_qdq as Q
    from .openvino_int8 import fp32_ir, quantize_ir

    spec, calib, fp32 = job.spec, job.calib, job.fp32
    t0 = time.perf_counter()
    dec = Q.decode_nodes(onnx.load(str(fp32), load_external_data=False))
    qmeta = {**job.meta, "precision": "int8", "quantization": {"tool": "nncf", "preset": "mixed",
                                                                "calib_images": len(calib), "decode": "float"}}
    control = None
    if spec.max_map_drop is not None:  # nncf's accuracy control, scored by yolopt's mAP on the val split
        val = val_images(spec)
        log.info("nncf accuracy control: mAP50-95 drop <= %g on %d val images (ranks operations, then puts them "
                 "back in float one group at a time; this takes a while)...", spec.max_map_drop, len(val))
        qmeta["quantization"]["accuracy_control"] = {"max_map_drop": spec.max_map_drop, "val_images": len(val)}
        control = (val.arrays(), lambda backend, n: score(backend, spec, n).map50_95, spec.max_map_drop)
    q_xml = quantize_ir(fp32, calib.arrays(), qmeta, job.work / job.out.name, dec, control=control)
    cal = Calibration(images=calibration.images, source=calibration.source,
                      method="nncf (mixed preset, fast bias correction" + (", accuracy control)" if control else ")"),
                      preprocess=calibration.preprocess, seconds=round(time.perf_counter() - t0, 1))
    q_res = score(q_xml, spec) if spec.data else None
    drops = validate(q_res, base, q_xml, job)
    res = OpenVINOBuild(xml=q_xml, calibration=cal, int8=q_res, drops=drops,
                        size_mb=sizes(fp32, q_xml, q_xml.with_suffix(".bin")))
    if control:
        from .openvino_int8 import float_convs

        fq = ov.Core().read_model(str(q_xml))
        res.float_layers = float_convs(fq)  # the decode has no convolutions: these were put back
        res.layers = sum(op.get_type_name() == "Convolution" for op in fq.get_ops())
        drop = drops[0]
        log.info("accuracy control kept %d of %d convolutions float: mAP50-95 %.4f (drop %.4f)",
                 len(res.float_layers), res.layers, q_res.map50_95, drop)
        if drop > spec.max_map_drop + 1e-9:
            raise QuantizeError(f"no INT8 model within the mAP drop budget {spec.max_map_drop}: nncf's accuracy "
                                f"control ended at a drop of {drop:.4f}; nothing written", fields=("max_map_drop",))
    if spec.latency:
        f_xml = fp32_ir(fp32, {**job.meta, "precision": "fp32"}, job.work / "fp32_ir" / "fp32.xml")
        res.timing = time_models({"fp32": fp32, "fp32_openvino": f_xml, "int8": q_xml}, spec)
    return res
