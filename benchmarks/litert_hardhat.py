"""hardhat_base INT8 on LiteRT (416) and ppe_yolov5n FP32 on LiteRT (640, --match-classes), val on hardhat val (300),
PyTorch in the same square letterbox (docs/edge.md). Paths as on the project's machines; writes OUT/results.json.

    PYTHONPATH=src YOLOPT_SHARED=../shared python benchmarks/litert_hardhat.py OUT
"""
import json
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
from yolopt.export import ExportSpec, export
from yolopt.evaluate import EvalSpec, evaluate
import os

SHARED = Path(os.environ.get("YOLOPT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
HH = str(SHARED / "data" / "hardhat" / "hardhat.yaml")
BASE = str(Path(__file__).resolve().parent / "models" / "hardhat_base.safetensors")
PPE = str(SHARED / "weights" / "ppe_yolov5n.pt")
val = sorted((SHARED / "data" / "hardhat" / "images" / "val").glob("*.jpg"))
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
res = {}
def ev(m, imgsz, match=False):
    t = time.time()
    r = evaluate(str(m), HH, EvalSpec(imgsz=imgsz, batch=8, mode="square", threads=1, progress=False, match_classes=match))
    print(Path(str(m)).name, imgsz, r.mode, round(r.map50_95, 4), round(r.map50, 4), f"{time.time()-t:.0f}s", flush=True)
    return {"map50_95": r.map50_95, "map50": r.map50, "mode": r.mode}
fp32 = export(BASE, ExportSpec("litert", imgsz=416, out=out / "hh_fp32.tflite", verify_images=val[:4]))
print("hh fp32", fp32.verify.summary(), flush=True)
int8 = export(BASE, ExportSpec("litert", imgsz=416, precision="int8", out=out / "hh_int8.tflite", calib_data=HH, calib=128,
                               verify_images=val[:4]))
print("hh int8", int8.verify.summary(), f"{int8.seconds:.0f}s", flush=True)
res["hardhat_base"] = {k: ev(m, 416) for k, m in (("torch", BASE), ("litert_fp32", fp32.path), ("litert_int8", int8.path))}
ppe = export(PPE, ExportSpec("litert", imgsz=640, out=out / "ppe_fp32.tflite", verify_images=val[:4]))
print("ppe fp32", ppe.verify.summary(), flush=True)
res["ppe_yolov5n"] = {k: ev(m, 640, True) for k, m in (("torch", PPE), ("litert_fp32", ppe.path))}
(out / "results.json").write_text(json.dumps(res, indent=1))
