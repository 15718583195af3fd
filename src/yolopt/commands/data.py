"""yolopt data: dataset utilities (`yolopt data synth`)."""

from __future__ import annotations

import logging

from ._options import check_output, imgsz_arg, one_line_errors, positive_int_arg

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
    s.add_argument("--force", action="store_true",
                   help="write into a non-empty --out folder, replacing a previous synthetic set there "
                   "(its images/, labels/ and data.yaml)")
    s.set_defaults(func=run_synth)
    one_line_errors(s)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_synth(args) -> int:
    import shutil

    from ..data.synth import generate
    from ..errors import YoloptError

    out = check_output(args.out, "--out", folder=True)
    if out.is_dir() and any(out.iterdir()):
        if not args.force:
            n = sum(1 for _ in out.rglob("*") if _.is_file())
            raise YoloptError(f"{out}: folder is not empty ({n} files); choose another --out, or --force to replace "
                              "a previous synthetic set there")
        for name in ("images", "labels"):
            shutil.rmtree(out / name, ignore_errors=True)
        (out / "data.yaml").unlink(missing_ok=True)

    y = generate(args.out, images=args.images, classes=args.classes, imgsz=args.imgsz, seed=args.seed, progress=True)
    log.info("wrote %d images to %s (data yaml: %s)", args.images, args.out, y)
    return 0
