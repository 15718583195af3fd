"""Post-training INT8 quantization with precision-loss analysis and accuracy-controlled mixed precision.

    >>> from yolopt.quantize import QuantizeSpec, quantize
    >>> res = quantize("yolov5n.pt", QuantizeSpec(data="coco128.yaml", max_map_drop=0.005, out="q.onnx"))
    >>> res.report.int8.map50_95, res.report.timing.speedup   # res.report.to_dict(): the JSON report

``quantize`` exports the model to fp32 ONNX (dynamic shape), calibrates on images pre-processed
exactly like inference (:mod:`.calib`), writes a QDQ graph for ONNX Runtime (:mod:`.onnx_qdq`: the
Detect decode stays float, the graph takes uint8 pixels), measures it against the fp32 ONNX on the
val split and in latency, and writes it only when it passes:

* a model that lost its detections (the failure mode of quantizing the decode) is never written;
* with ``max_map_drop``, the layers that introduce the most error (:mod:`.sensitivity`) stay float
  until the measured drop is within budget; the report lists them and what they cost in speed.

Modules: :mod:`.spec` (QuantizeSpec, checks), :mod:`.ptq` (the run), :mod:`.accuracy` (speed-aware and
accuracy-controlled float layers), :mod:`.openvino_ptq` (the nncf path), :mod:`.steps` (shared steps),
:mod:`.result` (the typed report), :mod:`.report` (its .json / .md).
"""

from __future__ import annotations

from .calib import CALIB_IMAGES, OPTIMIZE_CALIB_IMAGES, CalibrationError, CalibrationSet
from .ptq import quantize
from .result import QuantizeReport, QuantizeResult
from .spec import BACKENDS, COLLAPSE, QuantizeError, QuantizeSpec

__all__ = ["BACKENDS", "CALIB_IMAGES", "COLLAPSE", "OPTIMIZE_CALIB_IMAGES", "CalibrationError", "CalibrationSet",
           "QuantizeError", "QuantizeReport", "QuantizeResult", "QuantizeSpec", "quantize"]
