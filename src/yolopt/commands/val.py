"""yolopt val: COCO mAP of a model on a YOLO-format dataset."""

from __future__ import annotations

import logging

from rich.table import Table

from ..evaluate import evaluate
from ..fileio import write_json
from ._common import add_common_model_args
from ._common import console as make_console
from ._options import check_output, fraction_arg, positive_int_arg

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
    p.add_argument("--batch", type=positive_int_arg, default=32, help="batch size (default 32)")
    p.add_argument("--conf", type=fraction_arg, default=0.001, help="confidence threshold (default 0.001)")
    p.add_argument("--iou", type=fraction_arg, default=0.6, help="NMS IoU threshold (default 0.6)")
    p.add_argument("--max-det", type=positive_int_arg, default=300, help="maximum detections per image (default 300)")
    p.add_argument("--json", metavar="PATH", help="write the metrics as JSON")
    p.add_argument("--save-predictions", metavar="PATH", help="write predictions in COCO results format")
    p.add_argument("--verbose", action="store_true", help="per-class AP table")
    p.set_defaults(func=run)


def run(args) -> int:
    check_output(args.json, "--json")
    check_output(args.save_predictions, "--save-predictions")
    from ..runtime import open as open_backend
    from ..runtime import torch_threads

    model = open_backend(args.weights, device=args.device, threads=args.threads, workers=args.workers,
                         precision=args.precision)
    with torch_threads(args.threads):  # pre/post-processing runs in torch too
        res = evaluate(model, args.data, split=args.split, imgsz=args.imgsz, batch=args.batch, conf=args.conf,
                       iou=args.iou, max_det=args.max_det)
    if res.mode == "square":
        log.info("%s: fixed %dx%d input, evaluated with a square letterbox; a PyTorch or --dynamic model is evaluated "
                 "with rect batches (less padding), so its mAP differs slightly: compare like with like",
                 args.weights, res.imgsz, res.imgsz)
    console = make_console()
    t = Table(title=f"{args.weights} ({res.backend}, {res.inference_precision}) on {args.data} ({args.split}) at "
              f"{res.imgsz}, "
              f"{res.mode} letterbox")
    for col in ("class", "images", "instances", "P", "R", "mAP50", "mAP50-95"):
        t.add_column(col, justify="right")
    t.add_row("all", str(res.images), str(res.instances), f"{res.precision:.3f}",
              f"{res.recall:.3f}", f"{res.map50:.4f}", f"{res.map50_95:.4f}")
    if args.verbose:
        for pc in res.per_class:
            t.add_row(pc["name"], "", str(pc["instances"]), "", "", f"{pc['map50']:.4f}", f"{pc['map50_95']:.4f}")
    console.print(t)
    s = res.speed_ms
    console.print(f"speed per image: decode {s['decode']:.1f} ms, pre-process {s['preprocess']:.1f} ms, "
                  f"inference {s['inference']:.1f} ms, NMS {s['nms']:.1f} ms")
    if res.skipped:
        log.warning("%d unreadable image(s) skipped: %s", len(res.skipped), ", ".join(res.skipped[:5]))
    if args.json:
        d = res.to_dict()
        d.update(weights=args.weights, data=args.data, split=args.split, rect=res.mode == "rect")
        if not args.verbose:
            d.pop("per_class")
        write_json(args.json, d)
    if args.save_predictions:
        write_json(args.save_predictions, res.predictions)
    return 0
