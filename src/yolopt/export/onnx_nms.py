"""Append YOLOv5 post-processing (score = obj x class prob, best class, class-aware NMS) to an ONNX graph.

The raw output ``(B, N, 5+nc)`` becomes ``detections (K, 7)``: ``[batch_index, x1, y1, x2, y2,
conf, class]`` in input pixels, sorted by confidence. Each box keeps only its best class (like
``yolopt predict``); the ONNX ``NonMaxSuppression`` op works per class, which is class-aware NMS.
``max_det`` caps the boxes per class and per image, and the total at ``max_det x batch``
(exactly ``max_det`` for batch 1).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def append_nms(model: onnx.ModelProto, conf: float, iou: float, max_det: int, out_name: str = "detections") -> onnx.ModelProto:
    g = model.graph
    raw = g.output[0].name
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    nodes, inits = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(op, inputs, outputs, **attrs):
        nodes.append(helper.make_node(op, inputs, outputs, name=f"nms/{outputs[0]}", **attrs))
        return outputs[0]

    def sl(x, start, end, axis, name):
        return node("Slice", [x, const(f"nms_s_{name}", [start]), const(f"nms_e_{name}", [end]),
                              const(f"nms_a_{name}", [axis])], [f"nms_{name}"])

    if g.output[0].type.tensor_type.elem_type != TensorProto.FLOAT:  # fp16 graph: NMS runs in fp32
        raw = node("Cast", [raw], ["nms_raw_f32"], to=TensorProto.FLOAT)
    xy = sl(raw, 0, 2, 2, "xy")
    wh = sl(raw, 2, 4, 2, "wh")
    obj = sl(raw, 4, 5, 2, "obj")
    cls = sl(raw, 5, np.iinfo(np.int64).max, 2, "cls")
    half_wh = node("Mul", [wh, const("nms_half", np.array(0.5, np.float32))], ["nms_half_wh"])
    p1 = node("Sub", [xy, half_wh], ["nms_p1"])
    p2 = node("Add", [xy, half_wh], ["nms_p2"])
    boxes = node("Concat", [p1, p2], ["nms_boxes"], axis=2)  # (B,N,4) xyxy
    scores = node("Mul", [cls, obj], ["nms_scores"])  # (B,N,nc)
    if opset >= 18:
        best = node("ReduceMax", [scores, const("nms_axes", [2])], ["nms_best"], keepdims=1)
    else:
        best = node("ReduceMax", [scores], ["nms_best"], axes=[2], keepdims=1)
    is_best = node("Equal", [scores, best], ["nms_is_best"])
    mask = node("Cast", [is_best], ["nms_mask"], to=TensorProto.FLOAT)
    masked = node("Mul", [mask, best], ["nms_masked"])  # only the best class keeps its score
    scores_t = node("Transpose", [masked], ["nms_scores_t"], perm=[0, 2, 1])  # (B,nc,N)
    sel = node("NonMaxSuppression",
               [boxes, scores_t, const("nms_max", np.array([max_det], np.int64)),
                const("nms_iou", np.array([iou], np.float32)), const("nms_conf", np.array([conf], np.float32))],
               ["nms_selected"], center_point_box=0)  # (M,3) [batch, class, box]
    bi = sl(sel, 0, 1, 1, "bi")
    ci = sl(sel, 1, 2, 1, "ci")
    ii = sl(sel, 2, 3, 1, "ii")
    bidx = node("Concat", [bi, ii], ["nms_bidx"], axis=1)
    sel_boxes = node("GatherND", [boxes, bidx], ["nms_sel_boxes"])  # (M,4)
    sel_scores = node("GatherND", [scores_t, sel], ["nms_sel_scores"])  # (M,)
    # top-k by confidence, k = min(M, max_det * B)
    m = node("Shape", [sel_scores], ["nms_m"])
    bsz = node("Shape", [raw], ["nms_raw_shape"])
    b = sl(bsz, 0, 1, 0, "b")
    cap = node("Mul", [b, const("nms_maxdet", np.array([max_det], np.int64))], ["nms_cap"])
    k = node("Min", [m, cap], ["nms_k"])
    top_s = node("TopK", [sel_scores, k], ["nms_top_scores", "nms_top_idx"], axis=0, largest=1, sorted=1)
    top_i = "nms_top_idx"
    g_boxes = node("Gather", [sel_boxes, top_i], ["nms_g_boxes"], axis=0)
    g_b = node("Gather", [bi, top_i], ["nms_g_b"], axis=0)
    g_c = node("Gather", [ci, top_i], ["nms_g_c"], axis=0)
    g_bf = node("Cast", [g_b], ["nms_g_bf"], to=TensorProto.FLOAT)
    g_cf = node("Cast", [g_c], ["nms_g_cf"], to=TensorProto.FLOAT)
    g_s = node("Unsqueeze", [top_s, const("nms_unsq", [1])], ["nms_g_s"])
    out_dtype = TensorProto.FLOAT
    node("Concat", [g_bf, g_boxes, g_s, g_cf], [out_name], axis=1)

    g.node.extend(nodes)
    g.initializer.extend(inits)
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(out_name, out_dtype, ["num_detections", 7]))
    return model
