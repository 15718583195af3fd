"""yolopt demo: the main job on the bundled defaults (`make demo`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..detect import predict, write_outputs
from ..evaluate import evaluate
from ..models.checkpoint import load_model
from ._common import console as make_console

log = logging.getLogger("yolopt")


def find_shared() -> Path | None:
    """The shared assets folder: $YOLOPT_SHARED, else ../shared next to the project or cwd."""
    env = os.environ.get("YOLOPT_SHARED")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [Path.cwd() / ".." / "shared", here.parents[3] / ".." / "shared"]
    for c in candidates:
        if (c / "weights" / "yolov5n.pt").is_file():
            return c.resolve()
    return None


def register(sub) -> None:
    p = sub.add_parser("demo", help="run predict + val on the shared sample assets",
                       description="Predict on the sample images and validate on coco128 using the official "
                       "yolov5n.pt from ../shared (or $YOLOPT_SHARED), then print a summary.")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.set_defaults(func=run)


def run(args) -> int:
    shared = find_shared()
    console = make_console()
    if shared is None:
        console.print("[yellow]yolopt demo: no shared assets found[/] (looked for ../shared/weights/yolov5n.pt; "
                      "set YOLOPT_SHARED=/path/to/shared). Nothing to run.")
        return 0
    out = Path(args.out)
    weights = shared / "weights" / "yolov5n.pt"
    model = load_model(weights).fuse()
    console.rule(f"predict with {weights.name}")
    results = predict(model, shared / "data" / "images")
    write_outputs(results, out / "predict", out / "predict.json")
    for r in results:
        console.print(f"{Path(r.image).name}: {len(r)} detections "
                      f"({', '.join(sorted({r.names[k] for k in r.cls}))})")
    console.rule("val on coco128")
    res = evaluate(model, shared / "data" / "coco128" / "coco128.yaml")
    from ..fileio import write_json

    write_json(out / "val.json", res.to_dict())
    console.print(f"coco128: mAP50-95 {res.map50_95:.4f}  mAP50 {res.map50:.4f}  "
                  f"(upstream YOLOv5 reference 0.3622 / 0.5632)")
    s = res.speed_ms
    console.print(f"per image: pre-process {s['preprocess']:.1f} ms, inference {s['inference']:.1f} ms, "
                  f"NMS {s['nms']:.1f} ms")
    console.print(f"outputs in {out}/")
    return 0
