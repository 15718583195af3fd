"""The LiteRT conversion, run in a child process by :func:`yolopt.export.edge.write_litert`.

``python -m yolopt.export.litert_child JOB.json`` converts the yolopt model named in the job with ``litert-torch``
(``torch.export`` -> StableHLO -> the LiteRT converter) and, for fp16 / int8, quantizes the float ``.tflite`` with
``ai-edge-quantizer``. A child process because the converter prints its progress and C++ logs on the process's
own stdout / stderr, imports jax and torchao (which register things with torch), and can abort the process on a
graph it cannot lower: the parent reads one error line instead.

The job (JSON): ``model`` (a yolopt ``.safetensors``), ``imgsz`` [h, w], ``batch``, ``precision``
(fp32 | fp16 | int8), ``calib`` (int8: the calibration image paths, square-letterboxed as for inference), ``out``
(the ``.tflite`` to write) and ``error`` (where the first line of a failure goes); for the ablation in
``benchmarks/litert_int8.py`` also ``split`` (two outputs: boxes (B, N, 4) and scores (B, N, 1 + nc)) and
``recipe`` (an ai-edge-quantizer recipe instead of ``INT8_RECIPE``). Exit status 0 on success, 2 on a conversion
error (its line in ``error``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

# before litert_torch is imported: no progress bars, no TensorFlow / absl INFO logs
os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# fp16 weights: ai-edge-quantizer's float casting, weight-only (the ops still compute in fp32)
FP16_RECIPE = [{"regex": ".*", "operation": "*", "algorithm_key": "float_casting",
                "op_config": {"weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT"},
                              "compute_precision": "FLOAT", "explicit_dequantize": True}}]
# int8: static, int8 weights (per channel) and int8 activations (per tensor), calibrated min / max (moving
# averages over the calibration images)
INT8_OP = {"operation": "*", "algorithm_key": "min_max_uniform_quantize",
           "op_config": {"activation_tensor_config": {"num_bits": 8, "symmetric": False, "granularity": "TENSORWISE",
                                                      "dtype": "INT"},
                         "weight_tensor_config": {"num_bits": 8, "symmetric": True, "granularity": "CHANNELWISE",
                                                  "dtype": "INT"},
                         "compute_precision": "INTEGER", "explicit_dequantize": False}}
FLOAT_OP = {"operation": "*", "algorithm_key": "no_quantize", "op_config": {"compute_precision": "FLOAT"}}
# Regexes on an op's scope (its output tensor names, each followed by ";"; litert-torch names them after the
# module path, e.g. ".../yolopt.models.yolo.Detect_24/torch.nn.modules.conv.Conv2d_0;2;"); the later rule wins.
DETECT = r"yolopt\.models\.yolo\.Detect_\d+"
# The head (Detect's three 1x1 convs and the box decode) and the output stay float. Boxes (0-640 px) and scores
# (0-1) in one int8 tensor share a scale that rounds every score to 0; in two int8 tensors, boxes move in 2.5 px
# steps. yolov5n at 640 on coco128 (square letterbox, 128 calibration images), mAP50-95 against PyTorch's 0.357:
# everything int8 with split outputs -3.2 points, decode float -2.0, whole head float -1.1 (docs/edge.md).
INT8_RECIPE = [{**INT8_OP, "regex": ".*"}, {**FLOAT_OP, "regex": DETECT}, {**FLOAT_OP, "regex": r"^serving_default_"}]
CALIB_CHUNK = 16  # calibration images per quantizer call (its min / max are moving averages across calls)


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


class SplitOutputs(torch.nn.Module):
    """``model`` with two outputs: boxes (B, N, 4) xywh pixels and scores (B, N, 1 + nc), decoded apart
    (``Detect.decode_split``). An int8 graph gives each tensor its own scale: boxes span 0-640 px, scores 0-1,
    and one shared int8 scale (one output, or a concat before a slice) rounds every score to 0."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.m = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        det = self.m.detect
        return det.decode_split(det.raw_maps(self.m.neck_features(x)))


def convert(job: dict) -> None:
    from yolopt.export.exporter import traceable
    from yolopt.models.checkpoint import load_model

    torch.set_num_threads(max(1, int(job.get("threads") or 1)))
    model = traceable(load_model(job["model"]), "cpu", "fp32")
    if job.get("split"):
        model = SplitOutputs(model).eval()
    h, w = job["imgsz"]
    x = torch.zeros(int(job["batch"]), 3, h, w)

    import litert_torch

    edge = litert_torch.convert(model, (x,))
    out = Path(job["out"])
    precision = job["precision"]
    if precision == "fp32":
        edge.export(str(out))
        return
    float_path = out.with_name(out.stem + ".float.tflite")
    edge.export(str(float_path))
    from ai_edge_quantizer import quantizer

    if precision == "int8" and not job.get("recipe"):
        _check_head_named(str(float_path))
    qt = quantizer.Quantizer(str(float_path))
    qt.load_quantization_recipe(job.get("recipe") or (FP16_RECIPE if precision == "fp16" else INT8_RECIPE))
    calib = None
    if qt.need_calibration:
        from yolopt.data.calib import CalibrationSet

        cs = CalibrationSet([Path(p) for p in job["calib"]], (h, w), "export")
        name = _input_name(str(float_path))
        batches = cs.batches()
        while True:  # a chunk at a time: the quantizer lists its whole dataset, and a 640 px image is 4.9 MB
            chunk = [{name: x} for _, x in zip(range(CALIB_CHUNK), batches)]
            if not chunk:
                break
            calib = qt.calibrate({"serving_default": chunk}, previous_calibration_result=calib,
                                 num_threads=max(1, int(job.get("threads") or 1)))
    res = qt.quantize(calib)
    out.write_bytes(bytes(res.quantized_model))
    float_path.unlink(missing_ok=True)


def _check_head_named(tflite: str) -> None:
    """The int8 recipe keeps the head float by its tensor names: refuse a graph where none matches (a converter
    that names tensors differently would otherwise quantize the head, and lose every score)."""
    import re

    from ai_edge_litert.interpreter import Interpreter

    if not any(re.search(DETECT, t["name"]) for t in Interpreter(tflite).get_tensor_details()):
        raise RuntimeError(f"no tensor of the converted graph is named after the Detect head ({DETECT}): cannot keep "
                           "it float in INT8")


def _input_name(tflite: str) -> str:
    """The argument name of the default signature's one input (litert-torch calls it ``args_0``)."""
    from ai_edge_litert.interpreter import Interpreter

    sig = Interpreter(tflite).get_signature_list()["serving_default"]
    return sig["inputs"][0]


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    try:
        convert(job)
    except Exception as e:  # noqa: BLE001 - any converter failure becomes its first line for the parent
        Path(job["error"]).write_text(_first_line(e) + "\n", encoding="utf-8")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
