"""The LiteRT conversion, run in a child process by :func:`yolopt.export.edge.write_litert`.

``python -m yolopt.export.litert_child JOB.json`` converts the yolopt model named in the job with ``litert-torch``
(``torch.export`` -> StableHLO -> the LiteRT converter) and, for fp16 / int8, quantizes the float ``.tflite`` with
``ai-edge-quantizer``. A child process because the converter prints its progress and C++ logs on the process's
own stdout / stderr, imports jax and torchao (which register things with torch), and can abort the process on a
graph it cannot lower: the parent reads one error line instead.

The job (JSON): ``model`` (a yolopt ``.safetensors``), ``imgsz`` [h, w], ``batch``, ``precision``
(fp32 | fp16 | int8), ``split`` (two outputs: boxes (B, N, 4) and scores (B, N, 1 + nc), instead of one
(B, N, 5 + nc)), ``calib`` (int8: a ``.npy`` of (K, 3, h, w) float32 calibration inputs), ``out`` (the
``.tflite`` to write) and ``error`` (where the first line of a failure goes). Exit status 0 on success, 2 on a
conversion error (its line in ``error``).
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
# int8: static, int8 weights (per channel) and int8 activations, calibrated min / max
INT8_RECIPE = [{"regex": ".*", "operation": "*", "algorithm_key": "min_max_uniform_quantize",
                "op_config": {"activation_tensor_config": {"num_bits": 8, "symmetric": False,
                                                           "granularity": "TENSORWISE", "dtype": "INT"},
                              "weight_tensor_config": {"num_bits": 8, "symmetric": True,
                                                       "granularity": "CHANNELWISE", "dtype": "INT"},
                              "compute_precision": "INTEGER", "explicit_dequantize": False}}]


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


class SplitOutputs(torch.nn.Module):
    """``model``'s (B, N, 5 + nc) output as two: boxes (B, N, 4) xywh pixels and scores (B, N, 1 + nc). An int8
    graph gives each output its own scale: boxes span 0-640 px, scores 0-1, and one shared int8 scale rounds
    every score to 0 (issue 36: zero detections)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.m = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.m(x)
        return y[..., :4], y[..., 4:]


def convert(job: dict) -> None:
    import numpy as np

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

    qt = quantizer.Quantizer(str(float_path))
    qt.load_quantization_recipe(FP16_RECIPE if precision == "fp16" else INT8_RECIPE)
    calib = None
    if qt.need_calibration:
        data = np.load(job["calib"])
        name = _input_name(str(float_path))
        calib = qt.calibrate({"serving_default": [{name: data[i:i + 1]} for i in range(len(data))]},
                             num_threads=max(1, int(job.get("threads") or 1)))
    res = qt.quantize(calib)
    out.write_bytes(bytes(res.quantized_model))
    float_path.unlink(missing_ok=True)


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
