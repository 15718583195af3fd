"""INT8 OpenVINO IR with ``nncf.quantize`` (OpenVINO's own INT8 kernels).

The fp32 ONNX is converted with ``openvino.convert_model``; nncf inserts FakeQuantize nodes from the
calibration images (same pre-processing as inference), with its fast bias correction. The Detect decode is
in nncf's ignored scope, so it stays float like in the ONNX Runtime path.

With a mAP budget, ``nncf.quantize_with_accuracy_control`` does the same and then puts back into float the
operations that cost the most (ranked by how much they change the outputs on the validation images), one
group at a time, until the measured mAP50-95 drop is within the budget. Its candidates are compiled by nncf
in f32 and scored by yolopt's own ``evaluate`` (:class:`CompiledIR`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..errors import YoloptError
from ..runtime.altstack import openvino_compiles_keep_sigaltstack
from ..runtime.backends import Backend

PRESETS = ("mixed", "performance")
# accuracy control: at most this many groups put back in float. nncf re-ranks every remaining group after a
# step that made the drop worse (as long as the first ranking); the cap keeps a hopeless budget from running
# for hours. A budget not met within it is reported, and nothing is written.
MAX_REVERTS = 25


def _nncf():
    try:
        import nncf
    except ImportError:
        raise YoloptError("INT8 for OpenVINO needs nncf (pip install 'yolopt[deploy]')", fields=("backend",)) from None
    import logging

    nncf.set_log_level(logging.WARNING)  # its per-op INFO lines drown the command's output
    return nncf


class CompiledIR(Backend):
    """A model nncf compiled (an accuracy-control candidate), as a yolopt backend for ``evaluate``.

    ``meta``: the fp32 ONNX's decoded yolopt metadata (names, stride, ...). Input: ``(B, 3, H, W)``
    float32 RGB in [0, 1], any size that is a multiple of the stride (the IR comes from a dynamic ONNX).
    """

    name = "openvino"

    def __init__(self, compiled, meta: dict, where: str = "nncf accuracy-control candidate"):
        self.path = Path(where)
        self._init_meta(meta)
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.dynamic = True

    def _run(self, x):
        return np.array(self.request.infer({0: x})[self.compiled.outputs[0]])


def _scope(nncf, model, decode_nodes: list[str]):
    names = {op.get_friendly_name() for op in model.get_ops()}
    ignored = sorted(n for n in decode_nodes if n in names)
    patterns = []
    if not ignored and decode_nodes:  # friendly names differ: ignore the Detect layer's non-conv ops by pattern
        layer = re.escape(decode_nodes[0].split("/")[1])  # "/model.24/Sigmoid" -> "model.24"
        patterns = [rf"^/{layer}/(?!m\.\d+/Conv).*"]
    return nncf.IgnoredScope(names=ignored, patterns=patterns, validate=False)


# ops that pass quantized values through unchanged (nncf puts the FakeQuantize before them)
_PASS_THROUGH = {"Concat", "MaxPool", "Interpolate", "Reshape", "Transpose", "Split", "VariadicSplit", "StridedSlice"}


def _quantized(node, seen: dict) -> bool:
    """Whether every activation path into ``node``'s output comes out of a FakeQuantize."""
    key = node.get_friendly_name()
    if key not in seen:
        t = node.get_type_name()
        if t == "FakeQuantize":
            seen[key] = True
        elif t in _PASS_THROUGH:
            srcs = [i.get_node() for i in node.input_values() if i.get_node().get_type_name() != "Constant"]
            seen[key] = bool(srcs) and all(_quantized(n, seen) for n in srcs)
        else:
            seen[key] = False
    return seen[key]


def float_convs(model) -> list[str]:
    """The convolutions of an IR that run in float: their input activation is not quantized (no FakeQuantize
    before it, looking through Concat / MaxPool and other ops that pass values unchanged)."""
    seen: dict = {}
    return sorted(op.get_friendly_name() for op in model.get_ops()
                  if op.get_type_name() == "Convolution" and not _quantized(op.input_value(0).get_node(), seen))


def quantize_ir(fp32_onnx: Path, arrays: list[np.ndarray], meta: dict, out_xml: Path, decode_nodes: list[str],
                preset: str = "mixed", control=None) -> Path:
    """Write the INT8 IR of ``fp32_onnx`` to ``out_xml`` (+ .bin); ``meta`` goes in its rt_info.

    ``control``: ``(val_arrays, metric, max_drop)`` for ``nncf.quantize_with_accuracy_control``:
    ``val_arrays`` are the first N val images, square-letterboxed ``(1, 3, h, w)`` float32, used to rank
    operations by how much quantizing them changes the outputs; ``metric(backend, n)`` is the mAP50-95 of a
    backend on the first ``n`` val images (higher is better); ``max_drop`` the absolute budget.
    """
    import openvino as ov

    nncf = _nncf()
    if preset not in PRESETS:
        raise YoloptError(f"OpenVINO preset {preset!r}: choose one of {', '.join(PRESETS)}")
    model = ov.convert_model(str(fp32_onnx))
    kw = dict(preset=nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
              ignored_scope=_scope(nncf, model, decode_nodes), fast_bias_correction=True)
    with openvino_compiles_keep_sigaltstack():  # nncf compiles models (on worker threads too)
        q = _run_nncf(nncf, model, arrays, meta, control, kw)
    for k, v in meta.items():
        q.set_rt_info(json.dumps(v), ["yolopt", k])
    ov.save_model(q, str(out_xml), compress_to_fp16=False)
    return out_xml


def _run_nncf(nncf, model, arrays, meta, control, kw):
    if control is None:
        return nncf.quantize(model, nncf.Dataset(arrays), subset_size=len(arrays), **kw)
    val_arrays, metric, max_drop = control

    def validate(compiled, items):
        # nncf passes the val items in order: all of them, or the first one when it probes what this
        # returns. The mAP is of the whole set; the raw outputs per item make nncf rank operations by
        # how much they change the outputs (a per-image mAP would be noise).
        items = list(items)
        req = compiled.create_infer_request()
        outs = []
        for x in items:
            r = req.infer({0: x})
            outs.append([np.array(r[o]) for o in compiled.outputs])
        return float(metric(CompiledIR(compiled, meta), max(1, len(items)))), outs

    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    return nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(arrays), nncf.Dataset(val_arrays), validate, max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE, subset_size=len(arrays),
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            ranking_subset_size=len(val_arrays), max_num_iterations=MAX_REVERTS), **kw)


def fp32_ir(fp32_onnx: Path, meta: dict, out_xml: Path) -> Path:
    """The fp32 IR of the same ONNX (the OpenVINO baseline the INT8 IR is timed against)."""
    import openvino as ov

    model = ov.convert_model(str(fp32_onnx))
    for k, v in meta.items():
        model.set_rt_info(json.dumps(v), ["yolopt", k])
    ov.save_model(model, str(out_xml), compress_to_fp16=False)
    return out_xml
