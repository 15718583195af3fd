"""yolopt val: COCO mAP of a model on a YOLO-format dataset."""

from __future__ import annotations

import logging

from rich.table import Table

from ..fileio import write_json
from ._common import add_common_model_args, add_match_classes_arg
from ._common import console as make_console
from ._options import check_output, fraction_arg, positive_int_arg
from ._rundir import add_run_dir_args, new_run_dir, remove_if_empty

log = logging.getLogger("yolopt")

PROJECT = "runs/val"


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
    add_match_classes_arg(p)
    p.add_argument("--strict", action="store_true",
                   help="refuse a split with images that have no label file, or label files without an image "
                   "(default: one warning line; such images count as background)")
    p.add_argument("--json", metavar="PATH", help="write the metrics as JSON")
    p.add_argument("--save-predictions", metavar="PATH", help="write predictions in COCO results format")
    p.add_argument("--verbose", action="store_true", help="per-class table: images, instances, P, R, mAP50, mAP50-95")
    p.add_argument("--plots", nargs="?", const=True, metavar="DIR",
                   help="write confusion_matrix.png and confusion_matrix.json (detections at conf 0.25, IoU 0.45, as "
                   f"upstream) to DIR, or without DIR to a new run folder ({PROJECT}/exp, exp2, ...)")
    add_run_dir_args(p, PROJECT)
    p.set_defaults(func=run)


def _plots_folder(args):
    """(folder, created) for --plots: DIR as given, else a new run folder (also when --project/--name is given)."""
    if isinstance(args.plots, str):
        check_output(args.plots, "--plots", folder=True)
        return args.plots, None
    if args.plots or args.project or args.name:
        d = new_run_dir(args.project or PROJECT, args.name or "exp", args.exist_ok)
        return d, d
    return None, None


def run(args) -> int:
    from pathlib import Path

    from ..evaluate import EvalSpec, evaluate
    from ..evaluate.confusion import plot_confusion
    from ..ops.nms import NMSOptions
    from ..runtime import open as open_backend
    from ..runtime import torch_threads

    for path, option in ((args.json, "--json"), (args.save_predictions, "--save-predictions")):
        check_output(path, option)
    model = open_backend(args.weights, device=args.device, threads=args.threads, workers=args.workers,
                         precision=args.precision)
    plots, created = _plots_folder(args)
    try:
        with torch_threads(args.threads):  # pre/post-processing runs in torch too
            res = evaluate(model, args.data, EvalSpec(args.split, args.imgsz, args.batch, NMSOptions.val(
                conf=args.conf, iou=args.iou, max_det=args.max_det), match_classes=args.match_classes,
                strict=args.strict))
    except BaseException:
        remove_if_empty(created)
        raise
    if res.mode == "square":
        log.info("%s: fixed %dx%d input, evaluated with a square letterbox; a PyTorch or --dynamic model is evaluated "
                 "with rect batches (less padding), so its mAP differs slightly: compare like with like",
                 args.weights, res.imgsz, res.imgsz)
    if args.match_classes:
        shared = {m["name"] for m in res.class_map}
        left = [n for n in model.names if n not in shared]
        log.info("--match-classes: evaluated %d shared class(es) (%s)%s", len(shared), ", ".join(sorted(shared)),
                 f"; model classes not in the dataset, ignored: {', '.join(left)}" if left else "")
    console = make_console()
    t = Table(title=f"{args.weights} ({res.backend}, {res.inference_precision}) on {args.data} ({args.split}) at "
              f"{res.imgsz}, "
              f"{res.mode} letterbox")
    for col in ("class", "images", "instances", "P", "R", "mAP50", "mAP50-95"):
        t.add_column(col, justify="left" if col == "class" else "right")
    t.add_row("all", str(res.images), str(res.instances), f"{res.precision:.3f}",
              f"{res.recall:.3f}", f"{res.map50:.4f}", f"{res.map50_95:.4f}")
    if args.verbose:
        for pc in res.per_class:
            t.add_row(pc["name"], str(pc["images"]), str(pc["instances"]), f"{pc['precision']:.3f}",
                      f"{pc['recall']:.3f}", f"{pc['map50']:.4f}", f"{pc['map50_95']:.4f}")
    console.print(t)
    s = res.speed_ms
    console.print(f"speed per image: decode {s['decode']:.1f} ms, pre-process {s['preprocess']:.1f} ms, "
                  f"inference {s['inference']:.1f} ms, NMS {s['nms']:.1f} ms")
    if res.skipped:
        log.warning("%d unreadable image(s) skipped: %s", len(res.skipped), ", ".join(res.skipped[:5]))
    if plots:
        png = plot_confusion(res.confusion, Path(plots) / "confusion_matrix.png",
                             title=f"{Path(args.weights).name} on {Path(args.data).name} [{args.split}]")
        write_json(Path(plots) / "confusion_matrix.json", res.confusion, quiet=True)
        log.info("confusion matrix: %s (+ confusion_matrix.json)", png)
    if args.json:
        d = res.to_dict()
        d.pop("confusion")
        d.update(weights=args.weights, data=args.data, split=args.split, rect=res.mode == "rect")
        if not args.verbose:
            d.pop("per_class")
        write_json(args.json, d)
    if args.save_predictions:
        write_json(args.save_predictions, res.predictions)
    return 0
