"""yolopt predict: detect objects in images."""

from __future__ import annotations

import logging

from ..detect import predict, write_outputs
from ._common import add_common_model_args
from ._options import check_output, fraction_arg, positive_int_arg

log = logging.getLogger("yolopt")


def register(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="detect objects in images",
        description="Detect objects in image files, folders or glob patterns. Each image is letterboxed "
        "to an imgsz square (pad 114), run through the model, filtered by class-aware NMS, and the boxes are "
        "mapped back to the original pixels.",
    )
    p.add_argument("weights", help="model: Ultralytics .pt, yolopt .safetensors, or an exported .onnx / .xml / "
                   ".torchscript / .engine")
    p.add_argument("source", nargs="+", help="image files, folders or glob patterns")
    add_common_model_args(p)
    p.add_argument("--conf", type=fraction_arg, default=0.25, help="confidence threshold (default 0.25)")
    p.add_argument("--iou", type=fraction_arg, default=0.45, help="NMS IoU threshold (default 0.45)")
    p.add_argument("--max-det", type=positive_int_arg, default=300, help="maximum detections per image (default 300)")
    p.add_argument("--agnostic", action="store_true", help="class-agnostic NMS")
    p.add_argument("--classes", type=int, nargs="+", help="keep only these class ids")
    p.add_argument("--out", help="folder for annotated images")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH",
                   help="write detections as JSON to PATH (or to stdout when given without PATH)")
    p.set_defaults(func=run)


def run(args) -> int:
    check_output(None if args.json == "-" else args.json, "--json")
    check_output(args.out, "--out", folder=True)
    import json
    import sys

    from ..data.images import list_images
    from ..runtime import default_threads, torch_threads
    from ..runtime import open as open_backend

    workers = max(1, args.workers)
    threads = args.threads or (default_threads(workers) if workers > 1 else None)
    model = open_backend(args.weights, device=args.device, threads=threads, precision=args.precision)
    imgsz = model.resolve_imgsz(args.imgsz)
    kw = dict(imgsz=imgsz, conf=args.conf, iou=args.iou, max_det=args.max_det, agnostic=args.agnostic,
              classes=args.classes)
    files = list_images(args.source)
    with torch_threads(threads):
        if workers > 1 and len(files) > 1:
            # contiguous chunks of images, one session per worker thread (order is kept)
            from concurrent.futures import ThreadPoolExecutor

            n = min(workers, len(files))
            step = -(-len(files) // n)
            chunks = [files[i:i + step] for i in range(0, len(files), step)]
            replicas = [model] + [model.clone() for _ in range(len(chunks) - 1)]
            with ThreadPoolExecutor(len(chunks)) as pool:
                parts = list(pool.map(lambda a: predict(a[0], a[1], **kw), zip(replicas, chunks)))
            results = [r for part in parts for r in part]
        else:
            results = predict(model, files, **kw)
    if files and not results:
        from ..errors import YoloptError

        raise YoloptError(f"{files[0] if len(files) == 1 else args.source[0]}: none of the {len(files)} input(s) could "
                          "be read as an image (corrupt, truncated or not an image); nothing was written")
    json_path = None if args.json in (None, "-") else args.json
    write_outputs(results, args.out, json_path)
    if args.json == "-":
        json.dump([r.to_dict() for r in results], sys.stdout, indent=1)
        print()
    else:
        for r in results:
            counts = {}
            for k in r.cls:
                n = r.names[int(k)] if int(k) < len(r.names) else str(int(k))
                counts[n] = counts.get(n, 0) + 1
            summary = ", ".join(f"{v} {k}" for k, v in counts.items()) or "no detections"
            log.info("%s (%dx%d): %s", r.image, r.width, r.height, summary)
        if args.out:
            log.info("annotated images in %s", args.out)
    return 0
