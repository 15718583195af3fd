"""The edge runtimes beside ONNX Runtime and OpenVINO: FP32 accuracy and model-only latency (docs/edge.md, "The table,
re-measured").

    PYTHONPATH=src python benchmarks/edge_table.py ../shared/weights/yolov5n.pt \
        --data ../shared/data/coco128/coco128.yaml --imgsz 640 --threads 1 2 \
        --out benchmarks/results/edge_table_yolov5n.json

Exports the model once per format into ``--work`` (verified exports, kept between runs): ONNX (the reference),
OpenVINO IR, NCNN, NCNN with fp16 weights, LiteRT, LiteRT with fp16 weights, ExecuTorch (XNNPACK), and the INT8
builds of LiteRT (full integer, head float) and ExecuTorch (PT2E, head float), calibrated on ``--calib`` images of
the data's train split. Then:

* **accuracy**: ``yolopt val`` of each artifact on the data's val split at ``--imgsz``, square letterbox, batch 1,
  and of the PyTorch model in the same letterbox; each row gives its difference to PyTorch;
* **latency**: model-only p50 at batch 1, all artifacts timed in interleaved rounds (``bench.interleaved``: the order
  reversed every other round), once per ``--threads`` value, each in a process of its own (ExecuTorch sizes XNNPACK's
  process-wide thread pool once). Ratios to ONNX Runtime FP32 are the median of the per-round ratios.

* **detections** (``--images``): conf-0.25 detections of each artifact on those images against PyTorch's in the
  same letterbox: matched (same class, IoU >= 0.5) / PyTorch's count and the largest box-corner difference in px.

A third-party model whose classes differ from the data's: ``--match-classes`` (as ``yolopt val``); ``--threads 0``
leaves latency out. For ppe_yolov5n on hardhat (FP32 on every runtime):

    PYTHONPATH=src python benchmarks/edge_table.py ../shared/weights/ppe_yolov5n.pt \
        --data ../shared/data/hardhat/hardhat.yaml --match-classes --imgsz 640 --threads 0 \
        --only openvino ncnn litert executorch \
        --images ../shared/data/images/bus.jpg $(ls ../shared/data/hardhat/images/val/*.jpg | head -8) \
        --work runs/edge_table_ppe --out benchmarks/results/edge_table_ppe.json

Writes one JSON with the machine block (CPU, ISA flags, versions). Run it with the cores otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# name -> (format, precision, file under the work folder)
ARTIFACTS = {
    "onnxruntime": ("onnx", "fp32", "model.onnx"),
    "openvino": ("openvino", "fp32", "ov/model.xml"),
    "ncnn": ("ncnn", "fp32", "ncnn/model.param"),
    "ncnn-fp16": ("ncnn", "fp16", "ncnn16/model.param"),
    "litert": ("litert", "fp32", "model.tflite"),
    "litert-fp16": ("litert", "fp16", "model16.tflite"),
    "executorch": ("executorch", "fp32", "model.pte"),
    "litert-int8": ("litert", "int8", "model8.tflite"),  # calibrated on --data's train split (--calib images)
    "executorch-int8": ("executorch", "int8", "model8.pte"),
}


def build(model: str, imgsz: int, work: Path, only: list[str] | None, data: str, calib: int) -> tuple[dict, dict]:
    """``({name: artifact path}, {name: why it is missing})``, exporting what ``work`` does not hold yet."""
    from yolopt.errors import YoloptError
    from yolopt.export import ExportSpec, export

    arts, missing = {}, {}
    for name, (fmt, precision, rel) in ARTIFACTS.items():
        if only and name not in only:
            continue
        out = work / rel
        if not out.is_file():
            t0 = time.perf_counter()
            try:
                extra = {"calib_data": data, "calib": calib} if precision == "int8" else {}
                export(model, ExportSpec(format=fmt, precision=precision, imgsz=imgsz, out=out, **extra))
            except YoloptError as e:
                missing[name] = str(e).splitlines()[0]
                print(f"{name}: left out: {missing[name]}", file=sys.stderr)
                continue
            print(f"{name}: exported in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        arts[name] = out
    return arts, missing


def accuracy(model: str, arts: dict, data: str, imgsz: int, max_images: int | None, match: bool = False) -> dict:
    from yolopt.evaluate import EvalSpec, evaluate

    spec = EvalSpec(imgsz=imgsz, batch=1, mode="square", max_images=max_images, progress=False, match_classes=match)
    rows = {}
    for name, path in {"pytorch": model, **{k: str(v) for k, v in arts.items()}}.items():
        t0 = time.perf_counter()
        r = evaluate(path, data, spec)
        rows[name] = {"map50_95": round(r.map50_95, 5), "map50": round(r.map50, 5), "images": r.images,
                      "seconds": round(time.perf_counter() - t0, 1)}
        print(f"val {name}: {r.map50_95:.4f} / {r.map50:.4f} ({rows[name]['seconds']} s)", file=sys.stderr)
    ref = rows["pytorch"]
    for row in rows.values():
        row["diff_map50_95"] = round(row["map50_95"] - ref["map50_95"], 5)
        row["diff_map50"] = round(row["map50"] - ref["map50"], 5)
    return rows


def detections(model: str, arts: dict, images: list[str], imgsz: int) -> dict:
    """Each artifact's conf-0.25 detections against PyTorch's on ``images`` (square letterbox): matched (same
    class, IoU >= 0.5) of PyTorch's, extra ones, and the largest box-corner difference (px) of the matched."""
    import numpy as np
    import torch

    from yolopt.detect import predict
    from yolopt.ops.boxes import box_iou
    from yolopt.runtime import open as open_backend

    def run(m):
        return [(np.asarray(d.xyxy, dtype=np.float64).reshape(-1, 4), np.asarray(d.cls).reshape(-1))
                for d in predict(open_backend(m, threads=1), images, imgsz=imgsz, letterbox="square")]

    ref = run(model)
    rows = {}
    for name, path in arts.items():
        matched, total, extra, worst = 0, 0, 0, 0.0
        for (rb, rc), (b, c) in zip(ref, run(str(path))):
            total += len(rb)
            used: set[int] = set()
            iou = box_iou(torch.from_numpy(rb), torch.from_numpy(b)).numpy() if len(rb) and len(b) else None
            for i in range(len(rb)):
                cand = [k for k in range(len(b)) if k not in used and c[k] == rc[i]] if iou is not None else []
                j = max(cand, key=lambda k: iou[i, k], default=None)
                if j is not None and iou[i, j] >= 0.5:
                    used.add(j)
                    matched += 1
                    worst = max(worst, float(np.abs(rb[i] - b[j]).max()))
            extra += len(b) - len(used)
        rows[name] = {"matched": matched, "pytorch": total, "extra": extra, "max_box_diff_px": round(worst, 4)}
        print(f"detections {name}: {matched}/{total} matched, {extra} extra, max box diff {worst:.4f} px",
              file=sys.stderr)
    return rows


def latency_child(arts: dict, imgsz: int, threads: int, rounds: int, iters: int) -> dict:
    """Run in its own process: every artifact at ``threads``, interleaved."""
    from yolopt.bench import interleaved

    t = interleaved({k: str(v) for k, v in arts.items()}, imgsz, threads=threads, rounds=rounds, iters=iters)
    ref = t["onnxruntime"]["rounds_p50_ms"]
    out = {}
    for name, r in t.items():
        ratios = [a / b for a, b in zip(r["rounds_p50_ms"], ref)]
        out[name] = {"p50_ms": round(r["p50_ms"], 3), "rounds_p50_ms": [round(x, 3) for x in r["rounds_p50_ms"]],
                     "vs_onnxruntime": round(statistics.median(ratios), 3), "threads": r["threads"],
                     "precision": r["precision"], "size_mb": round(r["size_mb"], 2)}
    return {"threads": threads, "rounds": rounds, "iters": iters, "runtimes": out, "machine": t["onnxruntime"]["machine"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--data", required=True)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--calib", type=int, default=64, help="int8 calibration images (the data's train split)")
    ap.add_argument("--val-images", type=int, default=None, help="only the first N val images (default: all)")
    ap.add_argument("--only", nargs="+", choices=sorted(ARTIFACTS), help="these runtimes only (onnxruntime always)")
    ap.add_argument("--no-val", action="store_true", help="latency only")
    ap.add_argument("--match-classes", action="store_true", help="val: match the model's class names to the data's")
    ap.add_argument("--images", nargs="+", help="compare conf-0.25 detections with PyTorch's on these images")
    ap.add_argument("--work", default="runs/edge_table")
    ap.add_argument("--out", required=True)
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: one latency run, JSON request
    args = ap.parse_args()

    from yolopt.fileio import write_json

    if args.child:
        req = json.loads(Path(args.child).read_text())
        res = latency_child({k: Path(v) for k, v in req["arts"].items()}, req["imgsz"], req["threads"], req["rounds"],
                            req["iters"])
        Path(req["out"]).write_text(json.dumps(res))
        return 0

    from yolopt.machine import machine_info

    only = sorted(set(args.only) | {"onnxruntime"}) if args.only else None
    work = Path(args.work)
    arts, missing = build(args.model, args.imgsz, work, only, args.data, args.calib)
    if "onnxruntime" not in arts:
        print("the ONNX export failed: nothing to compare with", file=sys.stderr)
        return 1
    result = {"model": args.model, "data": args.data, "imgsz": args.imgsz, "missing": missing,
              "command": " ".join(sys.argv), "machine": machine_info(), "latency": [], "accuracy": None}
    for t in [t for t in args.threads if t > 0]:
        with tempfile.TemporaryDirectory() as tmp:
            req, out = Path(tmp) / "req.json", Path(tmp) / "out.json"
            req.write_text(json.dumps({"arts": {k: str(v) for k, v in arts.items()}, "imgsz": args.imgsz,
                                       "threads": t, "rounds": args.rounds, "iters": args.iters, "out": str(out)}))
            subprocess.run([sys.executable, __file__, args.model, "--data", args.data, "--out", args.out,
                            "--child", str(req)], check=True)
            lat = json.loads(out.read_text())
        result["latency"].append(lat)
        for name, r in lat["runtimes"].items():
            print(f"{t} thread(s) {name}: p50 {r['p50_ms']:.2f} ms, {r['vs_onnxruntime']:.3f}x ONNX Runtime",
                  file=sys.stderr)
        write_json(args.out, result, quiet=True)  # partial results survive an interrupted run
    if args.images:
        result["detections"] = detections(args.model, arts, args.images, args.imgsz)
        write_json(args.out, result, quiet=True)
    if not args.no_val:
        result["accuracy"] = accuracy(args.model, arts, args.data, args.imgsz, args.val_images, args.match_classes)
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
