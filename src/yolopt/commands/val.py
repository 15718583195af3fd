"""yolopt val: COCO mAP of a model on a YOLO-format dataset."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.table import Table

from ..evaluate.validate import validate
from ._common import add_common_model_args, load_for_inference, pick_device, write_json

log = logging.getLogger("yolopt")


def register(sub) -> None:
    p = sub.add_parser(
        "val",
        help="measure mAP50-95 / mAP50 on a dataset",
        description="Evaluate a model on a YOLO-format dataset like upstream val.py (rectangular batches, "
        "multi-label NMS) and compute COCO mAP with pycocotools.",
    )
    p.add_argument("weights", help="model: Ultralytics .pt, yolopt .safetensors, or an exported .onnx / .xml / "
                   ".torchscript / .engine")
    p.add_argument("--data", required=True, help="dataset yaml (path / train / val / names)")
    p.add_argument("--split", default="val", choices=["val", "train", "test"], help="dataset split (default val)")
    add_common_model_args(p)
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--conf", type=float, default=0.001, help="confidence threshold (default 0.001)")
    p.add_argument("--iou", type=float, default=0.6, help="NMS IoU threshold (default 0.6)")
    p.add_argument("--max-det", type=int, default=300, help="maximum detections per image (default 300)")
    p.add_argument("--json", metavar="PATH", help="write the metrics as JSON")
    p.add_argument("--save-predictions", metavar="PATH", help="write predictions in COCO results format")
    p.add_argument("--verbose", action="store_true", help="per-class AP table")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import YoloptError

    device = pick_device(args.device)
    model, imgsz = load_for_inference(args.weights, args.imgsz, device, threads=args.threads, workers=args.workers)
    if getattr(model, "end2end", False):
        raise YoloptError(f"{args.weights}: exported with --nms (final detections at fixed thresholds); "
                          "mAP needs the raw outputs, so export it without --nms")
    # fixed-shape artifacts cannot take rectangular batches: square letterbox at their size
    rect = bool(getattr(model, "dynamic", True))
    if isinstance(imgsz, tuple):
        raise YoloptError(f"{args.weights}: fixed non-square input {imgsz[0]}x{imgsz[1]} is not supported by val")
    if not rect:
        log.info("%s: fixed %dx%d input, validating with square letterbox (rect=False)", args.weights, imgsz, imgsz)
    res = validate(model, args.data, split=args.split, imgsz=imgsz, batch=args.batch, conf=args.conf, iou=args.iou,
                   max_det=args.max_det, rect=rect, device=device if model.name in ("torch", "torchscript") else "cpu")
    console = Console(stderr=False)
    t = Table(title=f"{args.weights} on {args.data} [{args.split}] at {imgsz}")
    for col in ("images", "instances", "P", "R", "mAP50", "mAP50-95"):
        t.add_column(col, justify="right")
    t.add_row(str(res.images), str(res.instances), f"{res.precision:.3f}", f"{res.recall:.3f}",
              f"{res.map50:.4f}", f"{res.map50_95:.4f}")
    if args.verbose:
        for pc in res.per_class:
            t.add_row(f"  {pc['name']}", str(pc["instances"]), "", "", f"{pc['map50']:.4f}", f"{pc['map50_95']:.4f}")
    console.print(t)
    s = res.speed_ms
    console.print(f"speed per image: decode {s['decode']:.1f} ms, pre-process {s['preprocess']:.1f} ms, "
                  f"inference {s['inference']:.1f} ms, NMS {s['nms']:.1f} ms")
    if res.skipped:
        log.warning("%d unreadable image(s) skipped: %s", len(res.skipped), ", ".join(res.skipped[:5]))
    if args.json:
        d = res.to_dict()
        d.update(weights=args.weights, data=args.data, split=args.split, imgsz=imgsz, backend=model.name, rect=rect)
        if not args.verbose:
            d.pop("per_class")
        write_json(args.json, d)
    if args.save_predictions:
        write_json(args.save_predictions, res.predictions)
    return 0
