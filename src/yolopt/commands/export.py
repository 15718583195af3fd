"""yolopt export: write a deployable artifact (ONNX, OpenVINO IR, TorchScript, TensorRT, NCNN, LiteRT) and verify it."""

from __future__ import annotations

import argparse
import logging

from ..choices import EXPORT_FORMATS, PRECISIONS
from ..errors import ExportError
from ..fileio import write_json
from ._options import check_output, fraction_arg, imgsz_arg, positive_int_arg

log = logging.getLogger("yolopt")


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help=f"export a model to {' / '.join(EXPORT_FORMATS)} (verified against PyTorch)",
        description="Fuse Conv+BN, export, and verify: the artifact and the PyTorch model run on the same inputs; "
        "the max |diff| and detection agreement are reported and the export fails (nothing written) when they are "
        "beyond tolerance. Class names, stride, imgsz, precision and the yolopt version are stored in the artifact.",
    )
    p.add_argument("weights", help="model weights: an Ultralytics YOLOv5 .pt or a yolopt .safetensors")
    p.add_argument("--format", required=True, help=", ".join(EXPORT_FORMATS))
    p.add_argument("--imgsz", type=imgsz_arg, nargs="+", default=[640], help="input size: one value or H W (default 640)")
    p.add_argument("--batch", type=positive_int_arg, default=1, help="batch size of the fixed input (default 1)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch and spatial size")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="fp32 (default) or fp16 (openvino / ncnn / litert: FP16 weights, runs on a CPU; onnx/torchscript/"
                   "tensorrt: needs CUDA); int8: litert only, calibrated on --data or --calib-images (other formats: "
                   "yolopt quantize). bf16 is not an export precision: the error says what to do instead")
    p.add_argument("--half", action="store_true", help=argparse.SUPPRESS)  # deprecated: --precision fp16
    p.add_argument("--device", help="device to trace/build on (default: cuda when the precision needs it, else cpu)")
    p.add_argument("--nms", action="store_true",
                   help="NMS inside the graph: outputs final detections (K,7) = [batch, x1, y1, x2, y2, conf, class]")
    p.add_argument("--raw-head", action="store_true",
                   help="ONNX only: end the graph at Detect's convs (one logit map per level); yolopt and the deploy "
                        "bundle decode boxes outside it, only for cells whose objectness passes the threshold")
    p.add_argument("--conf", type=fraction_arg, default=0.25, help="--nms confidence threshold (default 0.25)")
    p.add_argument("--iou", type=fraction_arg, default=0.45, help="--nms IoU threshold (default 0.45)")
    p.add_argument("--max-det", type=positive_int_arg, default=300, help="--nms maximum detections per image (default 300)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--no-simplify", action="store_true", help="skip the onnxslim clean-up")
    p.add_argument("--out", help="output file (or folder for openvino / ncnn); default next to the weights")
    p.add_argument("--verify-source", nargs="+", metavar="IMAGE",
                   help="images to verify on (default: the shared sample images, else a generated scene with objects)")
    p.add_argument("--atol", type=float, help="override the score tolerance of the verification")
    p.add_argument("--json", metavar="PATH", help="write the export report as JSON")
    cal = p.add_argument_group("int8 calibration (--format litert --precision int8)")
    cal.add_argument("--data", help="dataset yaml: calibrate on its train split")
    cal.add_argument("--calib-images", action="append", metavar="DIR",
                     help="calibrate on these images instead (folder, glob or .txt list; repeatable)")
    cal.add_argument("--calib", type=positive_int_arg, default=256,
                     help="calibration images (a fixed random subset when there are more; default 256)")
    # a bad option value is one line (not the usage block), exit status 2 as argparse's
    p.set_defaults(func=run)


def spec_from_args(args):
    from ..export import ExportSpec

    if len(args.imgsz) not in (1, 2):
        raise ExportError("--imgsz takes one value or two (H W)")
    precision = args.precision or "fp32"
    if args.half:
        if args.precision not in (None, "fp16"):
            raise ExportError(f"--half (deprecated, = --precision fp16) conflicts with --precision {args.precision}")
        log.warning("--half is deprecated; use --precision fp16")
        precision = "fp16"
    return ExportSpec(format=args.format, imgsz=(args.imgsz[0], args.imgsz[-1]), batch=args.batch,
                      dynamic=args.dynamic, precision=precision, nms=args.nms, raw_head=args.raw_head, conf=args.conf, iou=args.iou,
                      max_det=args.max_det, opset=args.opset, simplify=not args.no_simplify, out=args.out,
                      verify_images=args.verify_source, atol=args.atol, device=args.device, calib_data=args.data,
                      calib_images=args.calib_images, calib=args.calib)


def run(args) -> int:
    check_output(args.json, "--json")
    from ..export import export
    from ._common import console

    res = export(args.weights, spec_from_args(args))
    v = res.verify
    c = console(soft_wrap=True)
    c.print(f"[bold]{res.format}[/bold] {res.metadata['precision']} export: {', '.join(str(f) for f in res.files)} "
            f"({res.size_mb:.2f} MB, {res.seconds:.1f} s)")
    c.print(f"verified on input(s) {', '.join('x'.join(map(str, (s[0], 3, s[1], s[2]))) for s in v.shapes)}: "
            f"{v.summary()} -> [green]PASS[/green]")
    if args.json:
        write_json(args.json, res.to_dict())
    return 0
