"""INT8 variants of one model in one run: mAP, model-only and end-to-end latency, size.

    PYTHONPATH=src python benchmarks/quantize.py [--model ../shared/weights/yolov5n.pt] \
        [--data ../shared/data/coco128/coco128.yaml] [--imgsz 640] [--calib 128] [--threads 2] [--rounds 5] \
        [--cache runs/quantize_bench] [--out benchmarks/results/quantize_<cpu>.json]

Variants (each artifact is built once and cached under --cache, so a killed run resumes):
fp32 ONNX; naive INT8 (the decode quantized too); INT8 with the decode float (7-bit weights, the
default, and 8-bit weights, right for VNNI CPUs); mixed precision at budgets 0.005 and 0.01
(``yolopt quantize --max-map-drop``); QAT (``--qat``: the float model as teacher, on the train split or
``--qat-data``, plus ``--qat-unlabeled`` images); OpenVINO fp32 IR, INT8 IR (nncf) and bf16 (when the CPU has it).
Latency: model-only (batch 1) and end-to-end (decode -> detections at conf 0.25 on the val images),
in interleaved rounds, median of the rounds' p50. Writes one JSON with the machine block, and a PNG of
mAP50-95 against the latency ratio.
"""

from __future__ import annotations

import argparse
import json
import pickle
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
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--qat", type=int, default=2, help="QAT epochs (0: leave QAT out)")
    ap.add_argument("--qat-data", help="QAT training data instead of --data's train split (a yaml, or a folder of "
                    "images used without labels): keeps the val images unseen when train == val (coco128)")
    ap.add_argument("--qat-unlabeled", action="append", default=[], help="extra unlabelled images for QAT")
    ap.add_argument("--qat-lr", type=float, default=1e-3)
    ap.add_argument("--cache", default=str(ROOT / "runs" / "quantize_bench"))
    ap.add_argument("--out")
    args = ap.parse_args()

    import onnx

    from yolopt.bench import measure
    from yolopt.data.dataset import image_files, load_data_config
    from yolopt.evaluate import evaluate
    from yolopt.export import ExportSpec, export
    from yolopt.fileio import write_json
    from yolopt.machine import has_native_bf16, machine_info
    from yolopt.quantize import QuantizeSpec, _naive, quantize
    from yolopt.quantize import onnx_qdq as Q
    from yolopt.quantize.calib import CalibrationSet
    from yolopt.quantize.openvino_int8 import fp32_ir
    from yolopt.runtime import open as open_backend

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    stem = Path(args.model).stem
    fp32 = cache / f"{stem}_fp32.onnx"
    if not fp32.exists():
        export(args.model, ExportSpec(imgsz=args.imgsz, dynamic=True, out=fp32))
    proto = onnx.load(str(fp32))
    meta = {k: json.loads(v) for k, v in Q.read_metadata(proto).items()}
    ranges_file = cache / "ranges_minmax.pkl"
    if ranges_file.exists():
        ranges = pickle.loads(ranges_file.read_bytes())
    else:
        calib = CalibrationSet.from_data(args.data, args.imgsz, args.calib)
        ranges = Q.calibrate(fp32, calib.batches())
        ranges_file.write_bytes(pickle.dumps(ranges))

    def qdq(name, build):
        p = cache / f"{stem}_{name}.onnx"
        if not p.exists():
            m = build()
            Q.with_metadata(m, {k: json.dumps(v) for k, v in {**meta, "precision": "int8"}.items()})
            onnx.save(m, str(p))
        return p

    def via_quantize(name, **kw):
        suffix = ".xml" if kw.get("backend") == "openvino" else ".onnx"
        p = cache / name / f"{stem}_{name}{suffix}"
        if not p.exists():
            quantize(args.model, QuantizeSpec(data=args.data, imgsz=args.imgsz, calib=args.calib, latency=False,
                                              out=p, progress=False, **kw))
        return p

    variants = {
        "fp32 ONNX": (fp32, None),
        "naive INT8 (decode quantized)": (qdq("naive", lambda: _naive(proto, ranges, {"per_channel": True,
                                                                                      "reduce_range": True})), None),
        "INT8, decode float, 7-bit weights": (qdq("int8_rr", lambda: Q.build_qdq(proto, ranges, reduce_range=True)),
                                              None),
        "INT8, decode float, 8-bit weights": (qdq("int8_8bit", lambda: Q.build_qdq(proto, ranges)), None),
        "INT8 mixed, budget 0.005": (via_quantize("mixed_0.005", max_map_drop=0.005), None),
        "INT8 mixed, budget 0.01": (via_quantize("mixed_0.01", max_map_drop=0.01), None),
        "OpenVINO fp32 IR": (None, None),
        "OpenVINO INT8 (nncf)": (via_quantize("openvino", backend="openvino"), None),
    }
    ov_fp32 = cache / "ov_fp32" / f"{stem}.xml"
    if not ov_fp32.exists():
        fp32_ir(fp32, {**meta, "precision": "fp32"}, ov_fp32)
    variants["OpenVINO fp32 IR"] = (ov_fp32, None)
    notes = {}
    if args.qat:
        qat_name = f"qat{args.qat}" + (f"_{Path(args.qat_data).stem}" if args.qat_data else "")  # cache key
        variants[f"INT8 QAT, {args.qat} epochs"] = (via_quantize(qat_name, qat=args.qat, qat_lr=args.qat_lr,
                                                                 qat_data=args.qat_data,
                                                                 qat_unlabeled=args.qat_unlabeled), None)
    else:
        notes["QAT"] = "left out (--qat 0)"
    if has_native_bf16():
        variants["OpenVINO bf16"] = (ov_fp32, "bf16")
    else:
        notes["OpenVINO bf16"] = "skipped: this CPU has no AVX-512 BF16 / AMX-BF16"

    rows = {}
    backends = {n: open_backend(str(p), threads=args.threads, precision=prec) for n, (p, prec) in variants.items()}
    for name, (path, prec) in variants.items():
        r = evaluate(str(path), args.data, imgsz=args.imgsz, progress=False, threads=args.threads, precision=prec)
        # the artifact's own precision (int8 QDQ / IR), or the compute precision asked of the runtime
        rows[name] = {"path": str(path), "precision": prec or backends[name].artifact_precision, "map50_95": r.map50_95,
                      "map50": r.map50, "mode": r.mode, "size_mb": sum(f.stat().st_size for f in
                                                                     [path, path.with_suffix(".bin")] if f.exists()) / 1e6}
        print(f"{name}: mAP50-95 {r.map50_95:.4f} mAP50 {r.map50:.4f}", flush=True)
    images = [str(p) for p in image_files(load_data_config(args.data), "val")[:16]]
    model_only = {n: [] for n in variants}
    e2e = {n: [] for n in variants}
    for i in range(args.rounds):
        order = list(variants) if i % 2 == 0 else list(variants)[::-1]
        for n in order:
            model_only[n].append(measure(backends[n], args.imgsz, warmup=3, iters=args.iters).latency_ms["p50"])
            e2e[n].append(measure(backends[n], args.imgsz, warmup=3, iters=args.iters, source=images,
                                  conf=0.25).latency_ms["p50"])
    base_m, base_e = statistics.median(model_only["fp32 ONNX"]), statistics.median(e2e["fp32 ONNX"])
    for n in variants:
        m, e = statistics.median(model_only[n]), statistics.median(e2e[n])
        rows[n].update({"model_only_ms": m, "model_only_ratio": m / base_m, "end_to_end_ms": e,
                        "end_to_end_ratio": e / base_e, "model_only_rounds": model_only[n], "end_to_end_rounds": e2e[n]})
        print(f"{n}: model {m:.2f} ms ({m / base_m:.3f}x), end-to-end {e:.2f} ms ({e / base_e:.3f}x)")
    cpu = machine_info()
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / \
        f"quantize_{stem}_{'vnni' if cpu.get('vnni') else 'novnni'}.json"
    write_json(out, {"model": args.model, "data": args.data, "imgsz": args.imgsz, "calib": args.calib,
                     "threads": args.threads, "rounds": args.rounds, "iters": args.iters, "variants": rows,
                     "notes": notes, "machine": cpu})
    _plot(rows, out.with_suffix(".png"), cpu)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def _plot(rows: dict, path: Path, cpu: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for n, r in rows.items():
        ax.scatter(r["model_only_ratio"], r["map50_95"], s=30 + 8 * r["size_mb"])
        ax.annotate(n, (r["model_only_ratio"], r["map50_95"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("model-only latency / fp32 ONNX Runtime (lower is faster)")
    ax.set_ylabel("mAP50-95")
    ax.set_title(f"INT8 variants on {cpu.get('cpu', '?')} (VNNI {cpu.get('vnni')})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
