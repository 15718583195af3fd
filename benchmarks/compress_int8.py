"""Pruning and INT8 compound: the compressed model quantized with OpenVINO (nncf) against the base in FP32.

    PYTHONPATH=src python benchmarks/compress_int8.py BASE COMPRESSED --data DATA.yaml [--imgsz 416] \
        [--threads 2] [--rounds 7] [--out benchmarks/results/compress_int8_hardhat.json]

Builds (once; cached under ``--work``) the fused FP32 ONNX and OpenVINO IR of both models and the OpenVINO INT8
IR of the compressed one (``yolopt quantize --backend openvino``, 300 calibration images of the train split),
scores each artifact on the val split (rect letterbox where the artifact is dynamic, as ``yolopt val`` does),
and times all five model-only (batch 1, ``--threads``) in ``--rounds`` interleaved rounds, order reversed every
other round. Reports each latency as a ratio to the base's FP32 on ONNX Runtime and on OpenVINO (medians of
the per-round ratios). Writes a JSON with the machine block.
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
    ap.add_argument("base")
    ap.add_argument("compressed")
    ap.add_argument("--data", required=True)
    ap.add_argument("--imgsz", type=int, default=416)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--work", default="runs/compress_int8")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compress_int8_hardhat.json"))
    args = ap.parse_args()

    from yolopt.bench.measure import interleaved
    from yolopt.compress import model_flops
    from yolopt.evaluate import EvalSpec, evaluate
    from yolopt.export import ExportSpec, export
    from yolopt.fileio import write_json
    from yolopt.machine import machine_info
    from yolopt.models.checkpoint import load_model
    from yolopt.quantize import QuantizeSpec, quantize

    work = Path(args.work)
    arts = {}
    for name, path in (("base", args.base), ("compressed", args.compressed)):
        onnx_path, xml = work / f"{name}.onnx", work / f"{name}_ov" / f"{name}.xml"
        if not onnx_path.exists():
            export(path, ExportSpec("onnx", imgsz=args.imgsz, out=onnx_path))
        if not xml.exists():
            export(path, ExportSpec("openvino", imgsz=args.imgsz, out=xml))
        arts[f"{name}/fp32/onnxruntime"], arts[f"{name}/fp32/openvino"] = onnx_path, xml
    q = work / "compressed_int8_ov" / "compressed_int8.xml"
    if not q.exists():
        quantize(args.compressed, QuantizeSpec(data=args.data, backend="openvino", imgsz=args.imgsz, calib=300,
                                               latency=False, out=q, progress=False))
    arts["compressed/int8/openvino"] = q
    rows = {}
    for k, p in arts.items():
        r = evaluate(str(p), args.data, EvalSpec(imgsz=args.imgsz, progress=False))
        rows[k] = {"artifact": str(p), "map50_95": round(r.map50_95, 4), "map50": round(r.map50, 4),
                   "mode": r.mode, "images": r.images}
        print(f"{k}: mAP50-95 {r.map50_95:.4f} mAP50 {r.map50:.4f} ({r.mode}, {r.images} images)", file=sys.stderr)
    t = interleaved(arts, args.imgsz, threads=args.threads, rounds=args.rounds, iters=args.iters)
    for ref in ("base/fp32/onnxruntime", "base/fp32/openvino"):
        for k in arts:
            ratios = [a / b for a, b in zip(t[k]["rounds_p50_ms"], t[ref]["rounds_p50_ms"])]
            rows[k][f"latency_vs_{ref.replace('/', '_')}"] = round(statistics.median(ratios), 4)
    for k in arts:
        rows[k].update({"p50_ms": round(t[k]["p50_ms"], 3), "rounds_p50_ms": [round(v, 3) for v in t[k]["rounds_p50_ms"]],
                        "precision": t[k]["precision"], "size_mb": round(t[k]["size_mb"], 3)})
    gf = {n: model_flops(load_model(p), args.imgsz) for n, p in (("base", args.base), ("compressed", args.compressed))}
    result = {"benchmark": "compressed + OpenVINO INT8 vs base FP32, model-only latency, batch 1, interleaved",
              "base": args.base, "compressed": args.compressed, "data": args.data, "imgsz": args.imgsz,
              "threads": args.threads, "rounds": args.rounds, "iters": args.iters,
              "gflops": {k: round(v, 4) for k, v in gf.items()}, "artifacts": rows, "machine": machine_info()}
    write_json(args.out, result)
    for k, r in rows.items():
        print(f"{k:28s} mAP50 {r['map50']:.4f} mAP50-95 {r['map50_95']:.4f}  p50 {r['p50_ms']:.2f} ms  "
              f"x{r['latency_vs_base_fp32_onnxruntime']:.3f} of base ORT FP32, "
              f"x{r['latency_vs_base_fp32_openvino']:.3f} of base OpenVINO FP32")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
