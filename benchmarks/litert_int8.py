"""LiteRT INT8 ablation: which part of YOLOv5's graph must stay float (docs/edge.md, "INT8").

    PYTHONPATH=src python benchmarks/litert_int8.py yolov5n.pt --data coco128.yaml --imgsz 640 \
        --out benchmarks/results/litert_int8.json

Converts the model once per recipe through yolopt's LiteRT child process (``yolopt.export.litert_child``), calibrated
on the same images (the data's train split, at most 128), and evaluates each on the data's val split in the square
letterbox, against PyTorch in the same letterbox:

* ``one-output``: every op int8, one (B, N, 5 + nc) output (boxes and scores share one int8 scale);
* ``split``: every op int8, boxes and scores decoded apart into two outputs (``Detect.decode_split``);
* ``decode-float``: the box decode and the output float, Detect's 1x1 convs int8;
* ``head-float``: Detect (its convs and the decode) and the output float: yolopt's ``INT8_RECIPE``.

Then model-only latency of each against ONNX Runtime FP32, interleaved (``bench.interleaved``). Writes one JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--data", required=True)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from yolopt.bench import interleaved
    from yolopt.evaluate import EvalSpec, evaluate
    from yolopt.export import ExportSpec, export, export_metadata
    from yolopt.export.edge import embed_tflite_metadata
    from yolopt.export.litert_child import DETECT, FLOAT_OP, INT8_OP, INT8_RECIPE
    from yolopt.fileio import write_json
    from yolopt.models.checkpoint import load_model, save_model
    from yolopt.data.calib import CalibrationSet

    all_int8 = [{**INT8_OP, "regex": ".*"}]
    recipes = {
        "one-output": (all_int8, False),
        "split": (all_int8, True),
        "decode-float": (all_int8 + [{**FLOAT_OP, "regex": DETECT}, {**FLOAT_OP, "regex": "^serving_default_"},
                                     {**INT8_OP, "regex": DETECT + r"/torch\.nn\.modules\.conv\.Conv2d_\d+;\d*;$"}],
                         False),
        "head-float": (INT8_RECIPE, False),
    }
    model = load_model(args.model).fuse()
    size = (args.imgsz, args.imgsz)
    calib = [str(p) for p in CalibrationSet.from_data(args.data, size, args.calib).paths]
    meta = export_metadata(model, ExportSpec("litert", imgsz=size, precision="int8"))
    work = Path(tempfile.mkdtemp(prefix="litert_int8."))
    save_model(model, work / "model.safetensors")
    spec = EvalSpec(imgsz=args.imgsz, batch=1, mode="square", threads=args.threads, progress=False)
    ref = evaluate(args.model, args.data, spec)
    onnx = export(model, ExportSpec("onnx", imgsz=size, out=work / "fp32.onnx", verify=False)).path
    rows, arts = [], {"onnxruntime fp32": str(onnx)}
    for name, (recipe, split) in recipes.items():
        out = work / f"{name}.tflite"
        job = {"model": str(work / "model.safetensors"), "imgsz": list(size), "batch": 1, "precision": "int8",
               "split": split, "recipe": recipe, "calib": calib, "out": str(out), "error": str(work / "error.txt")}
        (work / "job.json").write_text(json.dumps(job))
        r = subprocess.run([sys.executable, "-m", "yolopt.export.litert_child", str(work / "job.json")],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        if r.returncode:
            print(f"{name}: conversion failed: {(work / 'error.txt').read_text().strip()}")
            continue
        embed_tflite_metadata(out, meta)
        res = evaluate(str(out), args.data, spec)
        rows.append({"recipe": name, "map50_95": res.map50_95, "map50": res.map50,
                     "drop_map50_95": ref.map50_95 - res.map50_95, "size_mb": out.stat().st_size / 1e6})
        arts[name] = str(out)
        print(f"{name}: mAP50-95 {res.map50_95:.4f} ({res.map50_95 - ref.map50_95:+.4f}), mAP50 {res.map50:.4f}")
    lat = interleaved(arts, args.imgsz, args.threads, args.rounds, 20)
    base = lat["onnxruntime fp32"]["p50_ms"]
    for row in rows:
        row["latency_vs_ort_fp32"] = lat[row["recipe"]]["p50_ms"] / base
        print(f"{row['recipe']}: {row['latency_vs_ort_fp32']:.3f}x ONNX Runtime FP32")
    write_json(args.out, {"model": args.model, "data": args.data, "imgsz": args.imgsz, "calib_images": len(calib),
                          "torch": {"map50_95": ref.map50_95, "map50": ref.map50}, "rows": rows,
                          "machine": lat["onnxruntime fp32"]["machine"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
