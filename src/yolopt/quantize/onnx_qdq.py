"""INT8 ONNX (QDQ) for ONNX Runtime, built on ``onnxruntime.quantization``.

The steps, each a small function:

1. :func:`calibrate` runs the fp32 ONNX over the calibration images once and keeps every tensor's range
   (MinMax, Entropy or Percentile: ``onnxruntime.quantization``'s calibrators).
2. :func:`layer_groups` splits the graph into *layers* (a conv with its SiLU, a residual add, a C3's
   concat...), named by their ONNX name prefix (``/model.2/cv1``), in graph order. The Detect decode
   (sigmoid, grid and anchor arithmetic on 25,200 x (5 + nc) values, pixels and scores on one scale)
   is never quantized: one INT8 scale for 0-640 px boxes and 0-1 scores is how quantized YOLOv5
   models end up with no detections at all.
3. :func:`build_qdq` writes the QDQ model for a given set of layers kept in float, reusing the ranges
   (no recalibration), so sensitivity analysis and mixed precision cost one graph rewrite each.
4. :func:`uint8_input`: the input's quantization is known (pixels / 255), so the graph takes the
   letterboxed uint8 pixels directly and the float input and its QuantizeLinear disappear.
"""

from __future__ import annotations

import copy
import logging
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import YoloptError

log = logging.getLogger("yolopt")

CHUNK = 4  # calibration images per collect_data call
METHODS = ("minmax", "entropy", "percentile")
# op types put in QDQ form; ONNX Runtime's CPU provider fuses each into an integer kernel
# (QLinearConv, QLinearSigmoid (a table), QLinearMul/Add/Concat, uint8 MaxPool and Resize)
OP_TYPES = ("Conv", "Sigmoid", "Mul", "Add", "Concat", "MaxPool", "Resize")
_HEAD_CONV = re.compile(r"^/model\.(\d+)/m\.\d+/Conv$")


@dataclass(frozen=True)
class QDQAblation:
    """Settings only the ablation rows of docs/quantize.md change: the op types put in QDQ form, and
    uint8 (asymmetric) instead of int8 (symmetric) weights."""

    op_types: Sequence[str] = OP_TYPES
    weight_uint8: bool = False


def _ort_quant():
    try:
        from onnxruntime import quantization as q
    except ImportError:
        raise YoloptError("INT8 for ONNX Runtime needs onnxruntime (pip install 'yolopt[deploy]')") from None
    return q


def detect_prefix(proto) -> str:
    """The ONNX name prefix of the Detect layer (``/model.24/``), from its output convs."""
    idx = {int(m.group(1)) for n in proto.graph.node if (m := _HEAD_CONV.match(n.name))}
    if len(idx) != 1:
        raise YoloptError("this ONNX graph does not look like a yolopt YOLOv5 export (no Detect convs "
                          "named /model.N/m.K/Conv); quantize the .pt / .safetensors model instead")
    return f"/model.{idx.pop()}/"


def decode_nodes(proto) -> list[str]:
    """The Detect decode: every node of the Detect layer except its output convs."""
    pre = detect_prefix(proto)
    return [n.name for n in proto.graph.node if n.name.startswith(pre) and not _HEAD_CONV.match(n.name)]


def _group_of(name: str) -> str:
    parts = name.split("/")[:-1]  # drop the op name
    while parts and parts[-1] in ("conv", "act", "bn"):
        parts.pop()
    return "/".join(parts) or name


def layer_groups(proto, op_types: Sequence[str] = OP_TYPES) -> dict[str, list[str]]:
    """``{layer: [node names]}`` of the quantizable nodes outside the decode, in graph order."""
    skip = set(decode_nodes(proto))
    groups: dict[str, list[str]] = {}
    for n in proto.graph.node:
        if n.op_type in op_types and n.name not in skip:
            groups.setdefault(_group_of(n.name), []).append(n.name)
    return groups





class _Reader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over float arrays."""

    def __init__(self, name: str, arrays: Iterable[np.ndarray]):
        self.name, self._it = name, iter(arrays)

    def get_next(self):
        x = next(self._it, None)
        return None if x is None else {self.name: x}


def calibrate(fp32: str | Path, arrays: Iterable[np.ndarray], method: str = "minmax",
              percentile: float = 99.999, op_types: Sequence[str] = OP_TYPES, moving_average: bool = False):
    """Every quantizable tensor's range over the calibration inputs (``TensorsData``).

    ``arrays``: ``(1, 3, H, W)`` float32 inputs. ``method``: minmax | entropy | percentile."""
    q = _ort_quant()
    if method not in METHODS:
        raise YoloptError(f"calibration method {method!r}: choose one of {', '.join(METHODS)}", fields=("method",))
    cm = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
          "percentile": q.CalibrationMethod.Percentile}[method]
    extra = {"percentile": percentile} if method == "percentile" else {}
    if method == "minmax" and moving_average:  # average of per-batch min / max instead of the extremes
        extra["moving_average"] = True
    import onnx

    name = onnx.load(str(fp32), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="yolopt.calib.") as tmp:
        cal = q.create_calibrator(Path(fp32), list(op_types), augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                  calibrate_method=cm, providers=["CPUExecutionProvider"], extra_options=extra)
        chunk: list[np.ndarray] = []
        for x in arrays:  # a few images at a time: the calibrators hold every activation of what they are fed
            chunk.append(x)
            if len(chunk) == CHUNK:
                cal.collect_data(_Reader(name, chunk))
                chunk = []
        if chunk:
            cal.collect_data(_Reader(name, chunk))
        ranges = cal.compute_data()
        del cal
    return ranges


def _set_input_range(ranges, name: str) -> None:
    """The input is pixels / 255: its range is exactly [0, 1] (scale 1/255, zero point 0 in uint8)."""
    from onnxruntime.quantization.calibrate import TensorData

    ranges.data[name] = TensorData(lowest=np.array(0.0, np.float32), highest=np.array(1.0, np.float32))


def build_qdq(proto, ranges, float_layers: Iterable[str] = (), *, only_layers: Iterable[str] | None = None,
              per_channel: bool = True, reduce_range: bool = False, input_uint8: bool = True,
              ablation: QDQAblation | None = None):
    """The QDQ ModelProto of the fp32 ``proto``: every layer of :func:`layer_groups` in INT8 except
    ``float_layers`` (or only ``only_layers``, for per-layer sensitivity); the decode stays float.

    Weights: signed INT8, per output channel (``per_channel``). Activations: uint8, asymmetric.
    ``input_uint8``: the graph takes uint8 pixels (see :func:`uint8_input`). ``ablation``: see
    :class:`QDQAblation`."""
    q = _ort_quant()
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    ablation = ablation or QDQAblation()
    op_types, weight_uint8 = ablation.op_types, ablation.weight_uint8

    groups = layer_groups(proto, op_types)
    unknown = [g for g in (*float_layers, *(only_layers or ())) if g not in groups]
    if unknown:
        raise YoloptError(f"unknown layer(s) {', '.join(unknown[:5])} (see the sensitivity table for names)")
    keep = set(float_layers)
    use = [g for g in groups if (only_layers is None or g in set(only_layers)) and g not in keep]
    nodes = [n for g in use for n in groups[g]]
    model = copy.deepcopy(proto)
    if not nodes:  # onnxruntime reads an empty node list as "every node"
        return uint8_input(model) if input_uint8 else model
    ranges = copy.deepcopy(ranges)
    in_name = model.graph.input[0].name
    if input_uint8:
        _set_input_range(ranges, in_name)
    wt = q.QuantType.QUInt8 if weight_uint8 else q.QuantType.QInt8
    quantizer = QDQQuantizer(model, per_channel, reduce_range, wt, q.QuantType.QUInt8, ranges,
                             nodes, decode_nodes(proto), list(op_types),
                             {"ActivationSymmetric": False, "WeightSymmetric": not weight_uint8})
    quantizer.quantize_model()
    quantizer.model.topological_sort()
    out = quantizer.model.model
    if input_uint8:
        out = uint8_input(out)
    return out


def uint8_input(proto):
    """Make the graph take uint8 pixels: drop the QuantizeLinear of the float input (scale 1/255, zero
    point 0, so it maps pixels / 255 back to the pixels) and feed its consumers the input itself. A graph
    whose first layer stayed float gets a Cast + scale instead, so the input is uint8 either way."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = proto.graph
    inp = g.input[0]
    name = inp.name
    inits = {t.name: t for t in g.initializer}
    qs = [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == name]
    users = [n for n in g.node if name in n.input and n not in qs]
    ok = False
    if len(qs) == 1 and not users:
        qn = qs[0]
        scale = float(numpy_helper.to_array(inits[qn.input[1]]))
        zp = numpy_helper.to_array(inits[qn.input[2]]) if len(qn.input) > 2 else np.zeros((), np.uint8)
        ok = zp.dtype == np.uint8 and int(zp) == 0 and abs(scale * 255.0 - 1.0) < 1e-6
    if ok:
        q_out = qn.output[0]
        g.node.remove(qn)
        for n in g.node:
            for i, v in enumerate(n.input):
                if v == q_out:
                    n.input[i] = name
    else:  # float first layer: uint8 -> float / 255 in the graph
        fname = name + "_float"
        for n in g.node:
            for i, v in enumerate(n.input):
                if v == name:
                    n.input[i] = fname
        g.initializer.append(numpy_helper.from_array(np.array(1.0 / 255.0, np.float32), name + "_inv255"))
        g.node.insert(0, helper.make_node("Cast", [name], [name + "_cast"], to=TensorProto.FLOAT, name="/input/Cast"))
        g.node.insert(1, helper.make_node("Mul", [name + "_cast", name + "_inv255"], [fname], name="/input/Scale"))
    inp.type.tensor_type.elem_type = TensorProto.UINT8
    onnx.checker.check_model(proto)
    return proto


def add_outputs(proto, names: Sequence[str]):
    """A copy of ``proto`` that also outputs the tensors ``names`` (float, shape left to inference)."""
    from onnx import TensorProto, helper

    m = copy.deepcopy(proto)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    return m




def session(proto, threads: int | None = None):
    """An ONNX Runtime CPU session of an in-memory model."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])




def sqnr_db(ref: Sequence[np.ndarray], out: Sequence[np.ndarray]) -> float:
    """Signal-to-quantization-noise ratio (dB) of ``out`` against ``ref``, over all tensors."""
    s = sum(float(np.square(r.astype(np.float64)).sum()) for r in ref)
    e = sum(float(np.square(r.astype(np.float64) - o).sum()) for r, o in zip(ref, out))
    return float("inf") if e == 0 else 10.0 * np.log10(max(s, 1e-30) / e)


def with_metadata(proto, meta: dict[str, str]):
    """``proto`` with its metadata_props replaced by ``meta`` (values already JSON-encoded)."""
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name = "yolopt"
    return proto


def read_metadata(proto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}



def layer_times(path: str | Path, groups: Sequence[str], imgsz: int, threads: int | None = None,
                repeats: int = 20) -> dict[str, float]:
    """Milliseconds per run that ONNX Runtime's profiler credits to each layer of ``groups`` (by name
    prefix: a layer's own kernels plus the Q/DQ of the tensors it produces)."""
    from ..profile.runtime_layers import profile_onnxruntime

    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    prof = profile_onnxruntime(Path(path), x, threads, repeats=repeats)
    keys = {g: g.strip("/").replace("/", ".") for g in groups}
    out = dict.fromkeys(groups, 0.0)
    for mod, ms in prof["modules_ms"].items():
        best = max((g for g, k in keys.items() if mod == k or mod.startswith(k + ".")), key=lambda g: len(keys[g]),
                   default=None)
        if best is not None:
            out[best] += ms
    return out
