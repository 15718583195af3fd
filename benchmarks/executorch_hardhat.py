"""ExecuTorch FP32 and INT8 of the hardhat base (nc=1, 416 px) on hardhat val: the mAP50 drop of INT8 (issue 36).

    PYTHONPATH=src python benchmarks/executorch_hardhat.py

Exports ``benchmarks/models/hardhat_base.safetensors`` to ExecuTorch at 416 px, FP32 and INT8 (PT2E, XNNPACK
quantizer, Detect float, calibrated on 64 images of hardhat's train split), evaluates both and the PyTorch model on
hardhat val (300 images, square letterbox, batch 1) and writes ``benchmarks/results/executorch_hardhat.json``.
Accuracy only: run it beside other work if need be.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = Path(os.environ.get("YOLOPT_SHARED", ROOT.parent / "shared")).resolve()


def main() -> int:
    from yolopt.evaluate import EvalSpec, evaluate
    from yolopt.export import ExportSpec, export
    from yolopt.fileio import write_json
    from yolopt.machine import machine_info

    base = str(ROOT / "benchmarks" / "models" / "hardhat_base.safetensors")
    data = str(SHARED / "data" / "hardhat" / "hardhat.yaml")
    res = {"command": "PYTHONPATH=src python benchmarks/executorch_hardhat.py", "machine": machine_info()}
    spec = EvalSpec(imgsz=416, batch=1, mode="square", progress=False)
    r = evaluate(base, data, spec)
    rows = {"pytorch": (r.map50_95, r.map50)}
    for prec in ("fp32", "int8"):
        extra = {"calib_data": data, "calib": 64} if prec == "int8" else {}
        e = export(base, ExportSpec("executorch", precision=prec, imgsz=416, out=f"runs/et_hardhat/hardhat_{prec}.pte",
                                    **extra))
        r = evaluate(str(e.path), data, spec)
        rows[f"executorch-{prec}"] = (r.map50_95, r.map50)
        print(prec, r.map50_95, r.map50, flush=True)
    ref = rows["pytorch"]
    res["rows"] = {k: {"map50_95": round(a, 5), "map50": round(b, 5), "diff_map50_95": round(a - ref[0], 5),
                       "diff_map50": round(b - ref[1], 5)} for k, (a, b) in rows.items()}
    write_json(ROOT / "benchmarks" / "results" / "executorch_hardhat.json", res)
    print(json.dumps(res["rows"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
