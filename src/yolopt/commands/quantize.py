"""yolopt quantize: calibrated INT8 with precision-loss analysis and accuracy-controlled mixed precision."""

from __future__ import annotations

import json
import logging
import sys

from ._common import add_match_classes_arg
from ._options import check_output, fraction_arg, imgsz_arg, positive_int_arg

log = logging.getLogger("yolopt")


def register(sub) -> None:
    from ..quantize.calib import CALIB_IMAGES  # imported when the parser is built, not at module import

    p = sub.add_parser(
        "quantize",
        help="INT8 artifact (ONNX Runtime QDQ), calibrated, validated and timed against fp32 before it is written",
        description="Post-training INT8 quantization. The model is exported to fp32 ONNX, calibrated on images "
        "pre-processed exactly like inference, and written as a QDQ graph that takes uint8 pixels. The Detect "
        "decode stays float (quantizing it is how INT8 YOLOv5 models lose every detection), and a model that "
        "lost its detections is never written. With --data the fp32 and INT8 mAP on the val split and their "
        "latency (same run, interleaved) go in a report next to the artifact (.json, .md). --max-map-drop keeps "
        "the most sensitive layers float until the measured drop is within budget; --sensitivity adds the "
        "per-layer analysis (table + PNG).",
    )
    p.add_argument("model", help="an Ultralytics .pt or a yolopt .safetensors (pruned models too)")
    src = p.add_argument_group("calibration and validation")
    src.add_argument("--data", help="dataset yaml: calibrate on its train split, measure mAP on val")
    src.add_argument("--images", action="append", metavar="DIR",
                     help="calibrate on these images instead (folder, glob or .txt list; repeatable)")
    src.add_argument("--calib", type=positive_int_arg, default=CALIB_IMAGES,
                     help=f"calibration images (a fixed random subset when there are more; default {CALIB_IMAGES})")
    src.add_argument("--val-images", type=positive_int_arg, help="measure mAP on the first N val images (default all)")
    add_match_classes_arg(p)
    p.add_argument("--backend", choices=["onnxruntime", "openvino"], default="onnxruntime",
                   help="runtime the INT8 artifact is built for: onnxruntime (QDQ ONNX, default) or openvino (IR "
                        "quantized by nncf)")
    p.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax",
                   help="calibration: minmax (default; measured best on yolov5n, see docs/quantize.md), entropy, "
                        "percentile (99.999)")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor instead of per channel")
    p.add_argument("--raw-head", action="store_true",
                   help="end the INT8 graph at Detect's convs: boxes are decoded outside it, only for the cells "
                        "whose objectness passes the threshold (no dequantize + sigmoid over every cell)")
    p.add_argument("--full-range", action="store_true",
                   help="8-bit weights instead of 7-bit. Only for CPUs with VNNI (avx512_vnni / avx_vnni): without "
                        "it ONNX Runtime's u8 x s8 kernels overflow int16 and lose accuracy")
    p.add_argument("--max-map-drop", type=fraction_arg, metavar="D",
                   help="accuracy control: keep the most sensitive layers float until the mAP50-95 drop on the val "
                        "split is <= D (onnxruntime: yolopt's sensitivity ranking, bisected; openvino: "
                        "nncf.quantize_with_accuracy_control, scored by yolopt's mAP). Nothing is written when "
                        "the budget cannot be met")
    p.add_argument("--sensitivity", action="store_true",
                   help="per-layer analysis: SQNR of each layer alone in INT8, ranked (table + PNG in the report)")
    p.add_argument("--sensitivity-map-images", type=positive_int_arg, default=0, metavar="N",
                   help="with --sensitivity: also each layer's mAP delta on N val images (slow: one eval per layer)")
    p.add_argument("--no-speed-aware", action="store_true",
                   help="quantize every layer. By default, layers that ONNX Runtime runs no slower in float (both "
                        "models profiled per layer) stay float, if the whole model is measured faster that way")
    qat = p.add_argument_group("quantization-aware training (QAT)")
    qat.add_argument("--qat", type=positive_int_arg, default=0, metavar="EPOCHS",
                     help="fine-tune EPOCHS with fake quantization of exactly the INT8 graph written (weights per "
                          "channel, activations per tensor, decode float), the float model as distillation teacher, "
                          "on the --data train split; then calibrate and write as above. The report also gives PTQ "
                          "on the same graph (same speed) for comparison. Resumable: the run is kept in <out>_qat/")
    qat.add_argument("--qat-data", metavar="DATA",
                     help="fine-tune on this instead of --data's train split: a dataset yaml, or a folder of images "
                          "without labels (the float teacher labels them; keeps the --data val images unseen)")
    qat.add_argument("--qat-unlabeled", action="append", default=[], metavar="DIR",
                     help="extra unlabelled images for QAT (the float teacher supplies their targets; repeatable)")
    qat.add_argument("--qat-lr", type=float, default=1e-3,
                     help="QAT learning rate (constant after a short warm-up; default 1e-3, the setting measured "
                          "on hardhat in docs/quantize.md)")
    qat.add_argument("--qat-batch", type=positive_int_arg, default=16, help="QAT batch size (default 16)")
    p.add_argument("--imgsz", type=imgsz_arg, default=640, help="input size (default 640)")
    p.add_argument("--threads", type=positive_int_arg, help="threads for validation and latency (default: runtime's)")
    p.add_argument("--no-latency", action="store_true", help="skip the fp32 vs INT8 latency measurement")
    p.add_argument("--out", help="the INT8 .onnx (.xml for openvino; default runs/quantize/<name>_int8.onnx); "
                   "report next to it")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..quantize import QuantizeSpec, quantize
    from ..quantize.report import artifact_kind

    check_output(args.out, "--out")
    spec = QuantizeSpec(data=args.data, images=args.images, backend=args.backend, imgsz=args.imgsz,
                        calib=args.calib, method=args.method, per_channel=not args.per_tensor,
                        reduce_range=not args.full_range, raw_head=args.raw_head, max_map_drop=args.max_map_drop, val_images=args.val_images,
                        match_classes=args.match_classes,
                        sensitivity=args.sensitivity, speed_aware=not args.no_speed_aware, sensitivity_map_images=args.sensitivity_map_images,
                        latency=not args.no_latency, threads=args.threads, out=args.out, qat=args.qat,
                        qat_data=args.qat_data,
                        qat_unlabeled=args.qat_unlabeled, qat_lr=args.qat_lr, qat_batch=args.qat_batch,
                        progress=not args.no_progress and sys.stderr.isatty())
    res = quantize(args.model, spec)
    rep = res.report
    if args.json:
        print(json.dumps(rep.to_dict(), indent=1, default=str))
        return 0
    fp, q, t = rep.fp32, rep.int8, rep.timing
    print(f"INT8 {artifact_kind(args.backend)}: {res.path} ({rep.size_mb.int8:.2f} MB, fp32 {rep.size_mb.fp32:.2f} MB)")
    if fp and q:
        print(f"  mAP50-95 {fp.map50_95:.4f} -> {q.map50_95:.4f} (drop {rep.map50_95_drop:.4f}), "
              f"mAP50 {fp.map50:.4f} -> {q.map50:.4f} ({q.images} val images)")
    if rep.qat and rep.ptq:
        qa, pt = rep.qat, rep.ptq
        print(f"  QAT {qa.epochs} epoch(s) ({qa.seconds / 60:.1f} min): mAP50-95 {q.map50_95:.4f} vs PTQ "
              f"{pt.map50_95:.4f} on the same graph ({qa.map50_95_gain_over_ptq:+.4f}); mAP50 {q.map50:.4f} "
              f"vs {pt.map50:.4f}")
    if t:
        print(f"  latency p50 {t.latency['fp32']['p50_ms']:.2f} -> {t.latency['int8']['p50_ms']:.2f} ms "
              f"({t.latency_ratio:.3f}x fp32; {t.machine.get('cpu')}, VNNI {t.machine.get('vnni')})")
    if rep.layers:
        print(f"  layers kept float: {len(rep.float_layers)} of {rep.layers}")
    print(f"  report: {res.path.with_suffix('.md')} / .json")
    return 0
