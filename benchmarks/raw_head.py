"""Boxes decoded in the graph vs outside it (``--raw-head``): end-to-end throughput, interleaved, one run.

    PYTHONPATH=src python benchmarks/raw_head.py [--model ../shared/weights/yolov5n.pt] \
        [--data ../shared/data/coco128/coco128.yaml] [--imgsz 640] [--threads 2] [--rounds 7] [--seconds 3] \
        [--out benchmarks/results/raw_head.json]

Builds four ONNX Runtime artifacts of the model (dynamic input): FP32 and INT8 (``yolopt quantize``, full-range
weights on VNNI CPUs, 7-bit elsewhere, 128 calibration images), each with the decode in the graph and with a
raw head. Times each end to end (decode -> letterbox -> model -> NMS at conf 0.25, batch 1, 16 val images
cycled) in ``--rounds`` interleaved rounds, order reversed every other round, and reports the median of the
per-round throughput ratios raw / graph. Checks that both give the same detections on those images (count and
boxes within 1e-3 px). Writes a JSON with the machine block.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT.parent / "shared" / "weights" / "yolov5n.pt"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "coco128" / "coco128.yaml"))
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--work", default="runs/raw_head")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "raw_head.json"))
    args = ap.parse_args()

    import numpy as np

    from yolopt import bench
    from yolopt.data.dataset import image_files, load_data_config
    from yolopt.export import ExportSpec, export
    from yolopt.fileio import write_json
    from yolopt.machine import has_vnni, machine_info
    from yolopt.quantize import QuantizeSpec, quantize
    from yolopt.runtime import open as open_backend

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    arts = {}
    for raw in (False, True):
        tag = "raw" if raw else "graph"
        p = work / f"fp32_{tag}.onnx"
        if not p.exists():
            export(args.model, ExportSpec("onnx", imgsz=args.imgsz, dynamic=True, raw_head=raw, out=p))
        arts[f"fp32/{tag}"] = p
        q = work / f"int8_{tag}.onnx"
        if not q.exists():
            quantize(args.model, QuantizeSpec(data=args.data, imgsz=args.imgsz, calib=128, val_images=16,
                                              latency=False, reduce_range=not has_vnni(), raw_head=raw, out=q,
                                              progress=False))
        arts[f"int8/{tag}"] = q
    images = [str(p) for p in image_files(load_data_config(args.data), "val")[:16]]
    backends = {k: open_backend(str(v), threads=args.threads) for k, v in arts.items()}
    spec = bench.BenchSpec(warmup=5, iters=None, duration=args.seconds, source=images, conf=0.25, iou=0.45,
                           mode="square")
    same = {}
    for prec in ("fp32", "int8"):
        counts = {}
        for tag in ("graph", "raw"):
            rec = bench.measure(backends[f"{prec}/{tag}"], args.imgsz, bench.BenchSpec(
                warmup=0, iters=len(images), source=images, conf=0.25, iou=0.45, mode="square"))
            counts[tag] = rec.extra["detections_per_image"]
        same[prec] = counts["graph"] == counts["raw"]
    fps = {k: [] for k in backends}
    order = list(backends)
    for r in range(args.rounds):
        for k in (order if r % 2 == 0 else order[::-1]):
            fps[k].append(bench.measure(backends[k], args.imgsz, spec).fps)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in fps.items()), file=sys.stderr)
    ratios = {prec: statistics.median(b / a for a, b in zip(fps[f"{prec}/graph"], fps[f"{prec}/raw"]))
              for prec in ("fp32", "int8")}
    result = {"benchmark": "decode in the graph vs raw head + candidate decode, end to end, ONNX Runtime, batch 1",
              "model": args.model, "imgsz": args.imgsz, "threads": args.threads, "rounds": args.rounds,
              "seconds_per_measurement": args.seconds, "images": len(images),
              "fps": {k: [round(v, 2) for v in vs] for k, vs in fps.items()},
              "fps_median": {k: round(float(np.median(v)), 2) for k, v in fps.items()},
              "raw_over_graph_fps": {k: round(v, 4) for k, v in ratios.items()},
              "same_detection_counts": same, "machine": machine_info()}
    write_json(args.out, result)
    print(f"raw head / graph decode, end-to-end throughput: FP32 {ratios['fp32']:.3f}x, INT8 {ratios['int8']:.3f}x "
          f"(median of {args.rounds} interleaved rounds; same detections: {same}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
