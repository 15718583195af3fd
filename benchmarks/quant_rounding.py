"""Does better weight rounding make yolov5n's INT8 ONNX more accurate? GPTQ on the QDQ graph's conv weights.

    PYTHONPATH=src python benchmarks/quant_rounding.py [--model ../shared/weights/yolov5n.pt] \
        [--data ../shared/data/coco128/coco128.yaml] [--calib 128] [--seq-images 32] [--cache runs/quant_rounding] \
        [--out benchmarks/results/quant_rounding_<cpu>.json]

Variants, all on the same graph as ``yolopt quantize``'s all-INT8 model (7-bit per-channel weights, uint8
activations, decode float, uint8 input), so all run at the same speed; only the int8 weight values differ:

* ``rtn``: round to nearest (what ``onnxruntime.quantization`` writes);
* ``gptq``: GPTQ (column-wise rounding with error feedback through the inverse Hessian ``X^T X``, columns in
  decreasing ``diag(H)`` order, damping 1% of the mean diagonal), with ``X`` the conv inputs *of the INT8
  graph itself* at 1024 sampled positions per image and conv, ``--calib`` calibration images;
* ``seq``: sequential and input-aware: conv by conv in graph order, the target weights are the ridge
  least-squares fit ``W' = W (C + l I)(H + l I)^-1`` that maps the INT8 graph's current inputs to the fp32
  graph's outputs (``C = X_fp32^T X_int8``), then GPTQ-rounded; each conv sees the already-corrected ones
  before it (``--seq-images`` images). A conv keeps its RTN weights when the fit does not lower its output error.

The scales are ONNX Runtime's (read from the graph), so only the int8 initializers are rewritten. mAP is
``yolopt val``'s on the data's val split. Writes one JSON with the machine block.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

DAMP = 0.01
POSITIONS = 1024


def _convs(qp, fp):
    """The INT8 convs of the QDQ graph: names of their input (both graphs), weights, scale, geometry."""
    import onnx

    prod = {o: n for n in qp.graph.node for o in n.output}
    fnodes = {n.name: n for n in fp.graph.node}
    out = []
    for n in qp.graph.node:
        dq = prod.get(n.input[1]) if n.op_type == "Conv" else None
        if dq is None or dq.op_type != "DequantizeLinear" or not dq.input[0].endswith("_quantized"):
            continue
        at = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        pads = tuple(at.get("pads", (0, 0, 0, 0)))
        if at.get("group", 1) != 1 or pads[:2] != pads[2:]:
            raise SystemExit(f"{n.name}: grouped or asymmetric-padding conv, not handled")
        out.append({"name": n.name, "qin": n.input[0], "fin": fnodes[n.name].input[0], "wq": dq.input[0],
                    "ws": dq.input[1], "w": dq.input[0][: -len("_quantized")], "k": tuple(at["kernel_shape"]),
                    "s": tuple(at.get("strides", (1, 1))), "p": pads[:2]})
    return out


def _cols(a, c):
    """(d, L) patches of a conv input, in the weight's (C_in, kh, kw) order."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return F.unfold(t, c["k"], padding=c["p"], stride=c["s"])[0]


def gptq(w, h, s, qmin: int = -64, qmax: int = 64, block: int = 128):
    """Integer weights (C_out, d) for float ``w`` on the per-row grid ``s``, minimising ``||(w - q s) X||``
    with ``h = X^T X`` (GPTQ, act-order)."""
    import torch

    w, h = w.clone(), h.clone()
    d = w.shape[1]
    dead = h.diagonal() == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    perm = torch.argsort(h.diagonal(), descending=True)
    w, h = w[:, perm], h[perm][:, perm]
    h.diagonal().add_(DAMP * h.diagonal().mean())
    hi = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    for i1 in range(0, d, block):
        i2 = min(i1 + block, d)
        w1, e1, hi1 = w[:, i1:i2].clone(), torch.zeros(w.shape[0], i2 - i1, dtype=w.dtype), hi[i1:i2, i1:i2]
        for j in range(i2 - i1):
            qj = torch.clamp(torch.round(w1[:, j] / s), qmin, qmax)
            q[:, i1 + j] = qj
            e = (w1[:, j] - qj * s) / hi1[j, j]
            w1[:, j:] -= e[:, None] * hi1[j, j:][None, :]
            e1[:, j] = e
        w[:, i2:] -= e1 @ hi[i1:i2, i2:]
    return q[:, torch.argsort(perm)]


def _arrays(w, c, init):
    import numpy as np
    import torch
    from onnx import numpy_helper

    wf = torch.from_numpy(numpy_helper.to_array(w[c["w"]]).astype(np.float64))
    s = torch.from_numpy(numpy_helper.to_array(init[c["ws"]]).astype(np.float64))
    return wf.reshape(wf.shape[0], -1), wf.shape, s


def _set(init, c, q, shape):
    import numpy as np
    from onnx import numpy_helper

    init[c["wq"]].CopyFrom(numpy_helper.from_array(q.reshape(shape).numpy().astype(np.int8), c["wq"]))


def _setup(qp, fp, graph, key: str):
    """(convs, INT8 initializers, fp32 initializers, a session of ``graph`` returning every conv's ``key``
    input, its output names, a seeded generator)."""
    import torch

    from yolopt.quantize import onnx_qdq as Q

    convs = _convs(qp, fp)
    qinit, finit = {t.name: t for t in qp.graph.initializer}, {t.name: t for t in fp.graph.initializer}
    sess = Q.session(Q.add_outputs(graph, list(dict.fromkeys(c[key] for c in convs))), 2)
    return convs, qinit, finit, sess, [o.name for o in sess.get_outputs()], torch.Generator().manual_seed(0)


def plain_gptq(qp, fp, images):
    import numpy as np
    import torch

    convs, qinit, finit, sess, names, gen = _setup(qp, fp, qp, "qin")
    hs: dict = {}
    for xu in images:
        outs = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: xu})))
        for c in convs:
            x = _cols(outs[c["qin"]], c) if c["qin"] in outs else _cols(xu.astype(np.float32) / 255.0, c)
            a = x[:, torch.randperm(x.shape[1], generator=gen)[:POSITIONS]].double()
            hs[c["name"]] = hs.get(c["name"], 0) + a @ a.T
    for c in convs:
        wf, shape, s = _arrays(finit, c, qinit)
        _set(qinit, c, gptq(wf, hs[c["name"]], s), shape)
    return qp


def sequential(qp, fp, images):
    import numpy as np
    import torch

    from yolopt.quantize import onnx_qdq as Q

    convs, qinit, finit, fs, fnames, gen = _setup(qp, fp, fp, "fin")
    idx = {c["name"]: [] for c in convs}
    fsamp = {c["name"]: [] for c in convs}
    for xu in images:
        outs = dict(zip(fnames, fs.run(None, {fs.get_inputs()[0].name: xu.astype(np.float32) / 255.0})))
        for c in convs:
            x = _cols(outs[c["fin"]], c)
            i = torch.randperm(x.shape[1], generator=gen)[:POSITIONS]
            idx[c["name"]].append(i)
            fsamp[c["name"]].append(x[:, i].half())
    rows = []
    for k, c in enumerate(convs):
        if k == 0:
            xq = [_cols(xu.astype(np.float32) / 255.0, c)[:, i] for xu, i in zip(images, idx[c["name"]])]
        else:
            qs = Q.session(Q.add_outputs(qp, [c["qin"]]), 2)
            on = [o.name for o in qs.get_outputs()].index(c["qin"])
            xq = [_cols(qs.run(None, {qs.get_inputs()[0].name: xu})[on], c)[:, i]
                  for xu, i in zip(images, idx[c["name"]])]
        xq = torch.cat(xq, 1).double()
        xf = torch.cat(fsamp.pop(c["name"]), 1).double()
        h, cm = xq @ xq.T, xf @ xq.T
        wf, shape, s = _arrays(finit, c, qinit)
        lam = DAMP * h.diagonal().mean()
        hd, cd = h.clone(), cm.clone()
        hd.diagonal().add_(lam)
        cd.diagonal().add_(lam)
        q = gptq(torch.linalg.solve(hd, (wf @ cd).T).T, h, s)
        from onnx import numpy_helper

        q_old = torch.from_numpy(numpy_helper.to_array(qinit[c["wq"]]).astype(np.float64)).reshape(shape[0], -1)
        zf = wf @ xf
        e_old = float(((q_old * s[:, None]) @ xq - zf).norm() / zf.norm())
        e_new = float(((q * s[:, None]) @ xq - zf).norm() / zf.norm())
        if e_new < e_old:
            _set(qinit, c, q, shape)
        rows.append({"conv": c["name"], "err_rtn": round(e_old, 5), "err_fit": round(e_new, 5)})
    return qp, rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT.parent / "shared/weights/yolov5n.pt"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/coco128/coco128.yaml"))
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--seq-images", type=int, default=32)
    ap.add_argument("--cache", default=str(ROOT / "runs/quant_rounding"))
    ap.add_argument("--out")
    args = ap.parse_args()

    import copy

    import numpy as np
    import onnx
    import torch

    import yolopt
    from yolopt.evaluate import evaluate
    from yolopt.export import ExportSpec, export
    from yolopt.fileio import write_json
    from yolopt.machine import machine_info
    from yolopt.quantize import _write_model
    from yolopt.quantize import onnx_qdq as Q
    from yolopt.quantize.calib import CalibrationSet

    torch.set_num_threads(2)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fp32 = cache / "fp32.onnx"
    if not fp32.is_file():
        export(yolopt.load(args.model), ExportSpec(format="onnx", imgsz=args.imgsz, dynamic=True, verify=False, out=fp32))
    fp = onnx.load(str(fp32))
    calib = CalibrationSet.from_data(args.data, args.imgsz, args.calib, seed=0)
    calib.check()
    meta = {**{k: json.loads(v) for k, v in Q.read_metadata(fp).items()}, "precision": "int8"}
    pixels = [np.clip(np.round(x * 255), 0, 255).astype(np.uint8) for x in calib.batches()]
    timings = {}
    rtn = cache / "rtn.onnx"
    if not rtn.is_file():
        ranges = Q.calibrate(fp32, calib.batches(), "minmax")
        _write_model(Q.build_qdq(fp, ranges, per_channel=True, reduce_range=True), rtn, meta)
    seq_rows = []
    for name in ("gptq", "seq"):
        path = cache / f"{name}.onnx"
        if path.is_file():
            continue
        t = time.perf_counter()
        qp = onnx.load(str(rtn))
        if name == "gptq":
            qp = plain_gptq(qp, fp, pixels)
        else:
            qp, seq_rows = sequential(qp, fp, pixels[: args.seq_images])
        _write_model(qp, path, meta)
        timings[name] = round(time.perf_counter() - t, 1)
    res = {}
    for name in ("fp32", "rtn", "gptq", "seq"):
        r = evaluate(str(cache / f"{name}.onnx"), args.data, imgsz=args.imgsz, progress=False)
        res[name] = {"map50_95": round(r.map50_95, 4), "map50": round(r.map50, 4)}
        print(f"{name:5s} mAP50-95 {r.map50_95:.4f}  mAP50 {r.map50:.4f}", flush=True)
    mi = machine_info()
    out = Path(args.out) if args.out else ROOT / "benchmarks/results" / (
        "quant_rounding_" + ("vnni" if mi.get("vnni") else "novnni") + ".json")
    write_json(out, {"variants": res, "seconds": timings, "seq_layers": copy.deepcopy(seq_rows),
                     "calib_images": args.calib, "seq_images": args.seq_images,
                     "total_seconds": round(time.perf_counter() - t0, 1), "machine": mi})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
