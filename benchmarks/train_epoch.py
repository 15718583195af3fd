"""Fine-tune yolov5n.pt on coco128 (upstream's classic check) and report time per epoch and mAP.

    PYTHONPATH=src python benchmarks/train_epoch.py [--epochs 3] [--imgsz 640] [--batch 16] [--json OUT]

Writes JSON with yolopt's seconds per epoch (training only, and including validation) next to
upstream train.py's figure on this machine kind, quoted (not re-run): ~57 s/epoch on CPU,
mAP50-95 0.362 -> 0.381 after 3 epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

UPSTREAM = {"seconds_per_epoch": 57.0, "map50_95_before": 0.362, "map50_95_after_3_epochs": 0.381,
            "source": "upstream YOLOv5 train.py, CPU, this machine kind (quoted from the issue, not re-run)"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.environ.get("YOLOPT_SHARED", str(ROOT.parent / "shared")))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_coco128"))
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "train_epoch.json"))
    args = ap.parse_args()

    import torch

    from yolopt.cli import setup_logging
    from yolopt.engine.trainer import train
    from yolopt.machine import machine_info

    setup_logging()
    shared = Path(args.shared)
    t0 = time.time()
    res = train(str(shared / "data/coco128/coco128.yaml"), weights=str(shared / "weights/yolov5n.pt"),
                epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, workers=args.workers, device="cpu",
                out=args.out, exist_ok=True, progress=False)
    wall = time.time() - t0
    hist = res.history
    out = {
        "benchmark": "fine-tune yolov5n.pt on coco128",
        "settings": {"epochs": args.epochs, "imgsz": args.imgsz, "batch": args.batch, "workers": args.workers,
                     "device": "cpu", "hyp": "hyp.scratch-low (yolopt default)"},
        "yolopt": {
            "seconds_per_epoch_train": [h["epoch_s"] for h in hist],
            "mean_seconds_per_epoch_train": sum(h["epoch_s"] for h in hist) / len(hist),
            "seconds_total_including_val": round(wall, 1),
            "map50_95_per_epoch": [h.get("metrics/mAP50-95") for h in hist],
            "map50_per_epoch": [h.get("metrics/mAP50") for h in hist],
            "final_map50_95": hist[-1].get("metrics/mAP50-95"),
        },
        "upstream": UPSTREAM,
        "machine": {**machine_info(), "threads": torch.get_num_threads(), "platform": platform.platform(),
                    "load_avg_at_end": os.getloadavg()},
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["yolopt"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
