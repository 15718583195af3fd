"""yolopt data: dataset utilities (`yolopt data synth`)."""

from __future__ import annotations

import logging

from ._options import imgsz_arg, positive_int_arg

log = logging.getLogger("yolopt")


def register(sub) -> None:
    p = sub.add_parser("data", help="dataset utilities (synthetic dataset generator)",
                       description="Dataset utilities.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    s = dsub.add_parser(
        "synth",
        help="generate a deterministic synthetic detection dataset",
        description="Write a synthetic YOLO-format detection set: shape and glyph classes with varied colour, "
        "scale, rotation and occlusion on textured clutter backgrounds; 80/20 train/val split and data.yaml.",
    )
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--images", type=positive_int_arg, default=1000, help="number of images (default 1000)")
    s.add_argument("--classes", type=int, default=4, help="number of classes, 1-10 (default 4)")
    s.add_argument("--imgsz", type=imgsz_arg, default=320, help="image size in pixels (default 320)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.set_defaults(func=run_synth)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_synth(args) -> int:
    from ..data.synth import generate

    y = generate(args.out, images=args.images, classes=args.classes, imgsz=args.imgsz, seed=args.seed, progress=True)
    log.info("wrote %d images to %s (data yaml: %s)", args.images, args.out, y)
    return 0
