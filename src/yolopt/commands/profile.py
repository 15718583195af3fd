"""yolopt profile: where the time goes (per layer, per runtime, per pipeline stage) and why."""

from __future__ import annotations

import logging

from ..errors import YoloptError
from ._options import check_output, imgsz_arg, nonneg_int_arg, positive_int_arg

log = logging.getLogger("yolopt")


def register(sub) -> None:
    p = sub.add_parser(
        "profile",
        help="find the bottlenecks: per-layer latency/FLOPs, runtimes, pipeline stages, roofline",
        description="Profile a model: a per-layer table in PyTorch (params, FLOPs, activation bytes, latency, "
        "roofline class), the same per-layer latency in ONNX Runtime and OpenVINO, the end-to-end pipeline "
        "stages on real images (decode, letterbox, inference, NMS, box scaling), an optional scaling sweep, "
        "and plain-words findings. MODEL may be a .pt/.safetensors (full profile) or a .onnx/.xml file "
        "(runtime view only).",
    )
    p.add_argument("model", help="model: .pt / .safetensors (full profile), or .onnx / .xml (runtime view only)")
    p.add_argument("--imgsz", type=imgsz_arg, default=640, help="input size in pixels (default 640)")
    p.add_argument("--batch", type=positive_int_arg, default=1, help="batch size for the per-layer profile (default 1)")
    p.add_argument("--backend", choices=["torch", "onnxruntime", "openvino"], default="torch",
                   help="runtime for the whole-model latency, pipeline and sweep (default torch)")
    p.add_argument("--threads", type=positive_int_arg, help="intra-op threads for every runtime (default: the runtime's own)")
    p.add_argument("--source", nargs="+", metavar="IMAGES",
                   help="images for the pipeline stages (default: the bundled sample images)")
    p.add_argument("--sweep", action="store_true", help="also sweep image sizes 320-640 x batches 1-16")
    p.add_argument("--json", metavar="PATH", help="write every number as JSON to PATH")
    p.add_argument("--plot", metavar="DIR", help="write PNG charts into DIR")
    p.add_argument("--top", type=positive_int_arg, default=10, help="how many bottleneck layers to report (default 10)")
    p.add_argument("--repeats", type=positive_int_arg, default=30, help="timed repeats per measurement (default 30)")
    p.add_argument("--warmup", type=nonneg_int_arg, default=5, help="untimed warm-up runs (default 5)")
    p.add_argument("--runtimes", nargs="*", choices=["onnxruntime", "openvino"],
                   help="runtimes for the deployment view (default: those installed; give none to skip)")
    p.add_argument("--no-pipeline", action="store_true", help="skip the pipeline stages on images")
    p.set_defaults(func=run)


def run(args) -> int:
    check_output(args.json, "--json")
    check_output(args.plot, "--plot", folder=True)
    from ..fileio import write_json
    from ..profile import ProfileSpec, profile_model
    from ..profile.report import print_report, write_plots
    from ._common import console

    if args.imgsz < 32:
        raise YoloptError(f"--imgsz {args.imgsz}: must be at least 32")
    if args.top < 1:
        raise YoloptError(f"--top {args.top}: must be at least 1")
    if args.warmup < 0:
        raise YoloptError(f"--warmup {args.warmup}: must be 0 or more")
    rep = profile_model(args.model, ProfileSpec(
        imgsz=args.imgsz, batch=args.batch, backend=args.backend, threads=args.threads,
        source=args.source, sweep=args.sweep, top=args.top, repeats=args.repeats, warmup=args.warmup,
        deploy=None if args.runtimes is None else tuple(args.runtimes), pipeline=not args.no_pipeline,
    ), progress=lambda m: log.info("... %s", m))
    print_report(rep, top=args.top, console=console())
    if args.json:
        write_json(args.json, rep)
    if args.plot:
        for path in write_plots(rep, args.plot):
            log.info("wrote %s", path)
    return 0
