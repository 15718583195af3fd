"""yolopt predict: detect objects in images, videos, streams and cameras."""

from __future__ import annotations

import logging

from ..errors import YoloptError
from ._common import add_common_model_args
from ._options import check_output, fraction_arg, positive_int_arg
from ._rundir import add_run_dir_args, new_run_dir, remove_if_empty

log = logging.getLogger("yolopt")

PROJECT = "runs/predict"


def register(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="detect objects in images, videos, streams and cameras",
        description="Detect objects in image files, folders or glob patterns, video files (.mp4 .avi .mov .mkv ...), "
        "rtsp:// / http(s):// streams and camera indices (0, 1 ...). Each image or frame is letterboxed to an imgsz "
        "square (pad 114), run through the model, filtered by class-aware NMS, and the boxes are mapped back to the "
        "original pixels. A video gives an annotated video (same fps and size), per-frame detections and timing in "
        "the JSON, and an end-to-end frames-per-second line. Outputs go to --out DIR, or to a new run folder "
        f"{PROJECT}/exp, exp2, ... (--project/--name), which is used whenever a video or --save-txt asks for files.",
    )
    p.add_argument("weights", help="model: Ultralytics .pt, yolopt .safetensors, or an exported .onnx / .xml / "
                   ".torchscript / .engine")
    p.add_argument("source", nargs="+", help="image or video files, folders, glob patterns, rtsp:// / http(s):// "
                   "stream URLs, or camera indices (0)")
    add_common_model_args(p)
    p.add_argument("--letterbox", choices=["square", "rect"],
                   help="square pads every image to imgsz x imgsz; rect pads only to the stride (dynamic models). "
                   "Default: the model's own (a deploy bundle's dynamic artifact: rect; fixed-shape and PyTorch: square)")
    p.add_argument("--conf", type=fraction_arg, default=0.25, help="confidence threshold (default 0.25)")
    p.add_argument("--iou", type=fraction_arg, default=0.45, help="NMS IoU threshold (default 0.45)")
    p.add_argument("--max-det", type=positive_int_arg, default=300, help="maximum detections per image (default 300)")
    p.add_argument("--agnostic", action="store_true", help="class-agnostic NMS")
    p.add_argument("--classes", nargs="+", metavar="CLASS", help="keep only these classes (ids or names)")
    p.add_argument("--max-frames", type=positive_int_arg, metavar="N",
                   help="videos, streams and cameras: stop after N frames each (default: the whole video; a stream "
                   "or camera runs until Ctrl-C)")
    p.add_argument("--out", metavar="DIR", help="folder for the annotated images / videos and labels (reused as is; "
                   "instead of --project/--name)")
    add_run_dir_args(p, PROJECT)
    p.add_argument("--save-txt", action="store_true",
                   help="write YOLO-format labels (class cx cy w h, normalised) to labels/<stem>.txt in the output "
                   "folder, one file per image (<stem>_<frame>.txt per video frame) with detections")
    p.add_argument("--save-conf", action="store_true", help="add the confidence to each --save-txt line (implies it)")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH",
                   help="write detections as JSON to PATH (or to stdout when given without PATH); videos have "
                   "per-frame detections and timing")
    p.set_defaults(func=run)


def _output_folder(args, needs_files: bool):
    """(folder, created): --out as given, else a new run folder when files are asked for, else None."""
    if args.out and (args.project or args.name):
        raise YoloptError(f"--out {args.out}: give either --out DIR or --project/--name, not both")
    if args.out:
        check_output(args.out, "--out", folder=True)
        return args.out, None
    if args.project or args.name or needs_files:
        d = new_run_dir(args.project or PROJECT, args.name or "exp", args.exist_ok)
        return d, d
    return None, None


def run(args) -> int:
    check_output(None if args.json == "-" else args.json, "--json")
    check_output(args.out, "--out", folder=True)
    import json
    import sys
    from pathlib import Path

    from ..data.sources import VideoInput, check_sources, expand_sources
    from ..detect import Detections, PredictOutputs, class_ids, input_of, predict_images, predict_video, write_outputs
    from ..ops.nms import NMSOptions
    from ..runtime import default_threads, torch_threads
    from ..runtime import open as open_backend

    json_path = None if args.json in (None, "-") else args.json
    items = expand_sources(args.source)
    check_sources([it for it in items if not (isinstance(it, VideoInput) and it.kind == "stream")])
    save_txt = args.save_txt or args.save_conf
    folder, created = _output_folder(args, save_txt or any(isinstance(it, VideoInput) for it in items))
    labels = Path(folder) / "labels" if folder and save_txt else None
    try:
        workers = max(1, args.workers)
        threads = args.threads or (default_threads(workers) if workers > 1 else None)
        model = open_backend(args.weights, device=args.device, threads=threads, precision=args.precision)
        imgsz, mode = input_of(model, args.imgsz, args.letterbox)
        nms = NMSOptions(args.conf, args.iou, args.max_det, class_ids(args.classes, list(model.names)), args.agnostic)
        results: list = []
        with torch_threads(threads):
            k = 0
            while k < len(items):
                if isinstance(items[k], VideoInput):
                    v = predict_video(model, items[k], imgsz, nms, PredictOutputs(folder, labels, args.save_conf),
                                      args.max_frames, letterbox=mode)
                    results.append(v)
                    log.info("%s", v.summary() + (f" -> {v.video}" if v.video else ""))
                    if v.interrupted:
                        log.info("stopped with Ctrl-C after %d frames", len(v.frames))
                        break
                    k += 1
                    continue
                j = k
                while j < len(items) and not isinstance(items[j], VideoInput):
                    j += 1
                results += predict_images(model, items[k:j], imgsz, nms, workers, mode)
                k = j
        images = [it for it in items if not isinstance(it, VideoInput)]
        if images and not any(isinstance(r, Detections) for r in results) and len(images) == len(items):
            raise YoloptError(f"{images[0] if len(images) == 1 else args.source[0]}: none of the {len(images)} "
                              "input(s) could be read as an image (corrupt, truncated or not an image); nothing was "
                              "written")
        write_outputs(results, folder, json_path, labels, args.save_conf)
    except BaseException:
        remove_if_empty(created)
        raise
    if args.json == "-":
        from ..detect import json_records

        json.dump(json_records(results), sys.stdout, indent=1)
        print()
    else:
        for r in results:
            if isinstance(r, Detections):
                summary = ", ".join(f"{v} {k}" for k, v in r.counts().items()) or "no detections"
                log.info("%s (%dx%d): %s", r.image, r.width, r.height, summary)
    if folder:
        log.info("results in %s%s", folder, " (labels in labels/)" if labels else "")
    return 0

