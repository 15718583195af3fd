"""INT8 OpenVINO IR with ``nncf.quantize`` (OpenVINO's own INT8 kernels).

The fp32 ONNX is converted with ``openvino.convert_model``; nncf inserts FakeQuantize nodes from the
calibration images (same pre-processing as inference), with its fast bias correction. The Detect decode is
in nncf's ignored scope, so it stays float like in the ONNX Runtime path.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..errors import YoloptError

PRESETS = ("mixed", "performance")


def _nncf():
    try:
        import nncf
    except ImportError:
        raise YoloptError("--backend openvino needs nncf (pip install 'yolopt[deploy]')") from None
    import logging

    nncf.set_log_level(logging.WARNING)  # its per-op INFO lines drown the command's output
    return nncf


def quantize_ir(fp32_onnx: Path, arrays: list[np.ndarray], meta: dict, out_xml: Path, decode_nodes: list[str],
                preset: str = "mixed") -> Path:
    """Write the INT8 IR of ``fp32_onnx`` to ``out_xml`` (+ .bin); ``meta`` goes in its rt_info."""
    import openvino as ov

    nncf = _nncf()
    if preset not in PRESETS:
        raise YoloptError(f"OpenVINO preset {preset!r}: choose one of {', '.join(PRESETS)}")
    model = ov.convert_model(str(fp32_onnx))
    names = {op.get_friendly_name() for op in model.get_ops()}
    ignored = sorted(n for n in decode_nodes if n in names)
    patterns = []
    if not ignored and decode_nodes:  # friendly names differ: ignore the Detect layer's non-conv ops by pattern
        layer = re.escape(decode_nodes[0].split("/")[1])  # "/model.24/Sigmoid" -> "model.24"
        patterns = [rf"^/{layer}/(?!m\.\d+/Conv).*"]
    scope = nncf.IgnoredScope(names=ignored, patterns=patterns, validate=False)
    q = nncf.quantize(model, nncf.Dataset(arrays), subset_size=len(arrays),
                      preset=nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
                      ignored_scope=scope, fast_bias_correction=True)
    for k, v in meta.items():
        q.set_rt_info(json.dumps(v), ["yolopt", k])
    ov.save_model(q, str(out_xml), compress_to_fp16=False)
    return out_xml


def fp32_ir(fp32_onnx: Path, meta: dict, out_xml: Path) -> Path:
    """The fp32 IR of the same ONNX (the OpenVINO baseline the INT8 IR is timed against)."""
    import openvino as ov

    model = ov.convert_model(str(fp32_onnx))
    for k, v in meta.items():
        model.set_rt_info(json.dumps(v), ["yolopt", k])
    ov.save_model(model, str(out_xml), compress_to_fp16=False)
    return out_xml
