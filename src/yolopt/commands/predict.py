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


def resolve_classes(values: list[str] | None, names: list[str]) -> list[int] | None:
    """``--classes`` ids or names -> ids of the model's classes (one-line error for an unknown one)."""
    if not values:
        return None
    out = []
    for v in values:
        if v.lstrip("-").isdigit():
            k = int(v)
            if not 0 <= k < len(names):
                raise YoloptError(f"--classes {v}: the model has class ids 0-{len(names) - 1}")
        elif v in names:
            k = names.index(v)
        else:
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise YoloptError(f"--classes {v}: no class of that name in the model ({shown})")
        out.append(k)
    return sorted(set(out))


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
    from ..detect import Detections, predict, predict_video, write_outputs
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
        imgsz = model.resolve_imgsz(args.imgsz)
        kw = dict(imgsz=imgsz, conf=args.conf, iou=args.iou, max_det=args.max_det, agnostic=args.agnostic,
                  classes=resolve_classes(args.classes, list(model.names)))
        results: list = []
        with torch_threads(threads):
            k = 0
            while k < len(items):
                if isinstance(items[k], VideoInput):
                    v = predict_video(model, items[k], **kw, out_dir=folder, labels_dir=labels,
                                      save_conf=args.save_conf, max_frames=args.max_frames)
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
                results += _predict_images(model, items[k:j], kw, workers, predict)
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


def _predict_images(model, files, kw, workers, predict):
    if workers > 1 and len(files) > 1:
        # contiguous chunks of images, one session per worker thread (order is kept)
        from concurrent.futures import ThreadPoolExecutor

        n = min(workers, len(files))
        step = -(-len(files) // n)
        chunks = [files[i:i + step] for i in range(0, len(files), step)]
        replicas = [model] + [model.clone() for _ in range(len(chunks) - 1)]
        with ThreadPoolExecutor(len(chunks)) as pool:
            parts = list(pool.map(lambda a: predict(a[0], a[1], **kw), zip(replicas, chunks)))
        return [r for part in parts for r in part]
    return predict(model, files, **kw)
