"""OpenVINO FP32 vs bf16 on this CPU: the silent-bf16 speed trap, measured.

    PYTHONPATH=src python benchmarks/precision.py [--imgsz 640] [--threads 2] [--rounds 5] [--iters 20] [--map 32]

Exports yolov5n to an FP32 IR, then times it compiled at f32 (yolopt's default on every CPU) and,
where the CPU has AVX-512 BF16 / AMX, at bf16, interleaved over rounds (median of round p50s), with
mAP on the first ``--map`` coco128 images for each. On a CPU without native bf16 it records that bf16
cannot be requested and times f32 only. Writes ``benchmarks/results/precision.json`` with the machine block.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.environ.get("YOLOPT_SHARED", str(ROOT.parent / "shared")))
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--map", type=int, default=32, help="coco128 images for the mAP of each precision (0: skip)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "precision.json"))
    args = ap.parse_args()

    from yolopt import bench, runtime
    from yolopt.errors import YoloptError
    from yolopt.evaluate import evaluate
    from yolopt.export import ExportSpec, export
    from yolopt.fileio import write_json
    from yolopt.machine import machine_info

    shared = Path(args.shared)
    work = Path(tempfile.mkdtemp(prefix="yolopt-precision-"))
    xml = export(shared / "weights" / "yolov5n.pt",
                 ExportSpec("openvino", imgsz=args.imgsz, out=work / "m.xml")).path
    backends, refused = {}, {}
    for p in ("fp32", "bf16"):
        try:
            backends[p] = runtime.open(xml, threads=args.threads, precision=p)
        except YoloptError as e:
            refused[p] = str(e)
    round_p50 = {p: [] for p in backends}
    for r in range(args.rounds):
        for p in (list(backends) if r % 2 == 0 else list(reversed(backends))):
            rec = bench.measure(backends[p], args.imgsz, bench.BenchSpec(warmup=3, iters=args.iters))
            round_p50[p].append(rec.latency_ms["p50"])
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
    results = {}
    for p, b in backends.items():
        res = {"compiled_precision": b.compiled_precision, "latency_ms_p50": statistics.median(round_p50[p]),
               "round_p50_ms": round_p50[p]}
        if args.map:
            v = evaluate(b, shared / "data" / "coco128" / "coco128.yaml", imgsz=args.imgsz, batch=1,
                         max_images=args.map, progress=False)
            res.update(map50_95=v.map50_95, map50=v.map50, map_images=v.images, letterbox=v.mode)
        results[p] = res
    payload = {"benchmark": "openvino_precision", "model": "yolov5n.pt", "imgsz": args.imgsz, "batch": 1,
               "threads": args.threads, "rounds": args.rounds, "iters_per_round": args.iters,
               "statistic": "median over rounds of each round's p50 (rounds interleaved, order alternating)",
               "results": results, "refused": refused, "machine": machine_info(), "loadavg_end": os.getloadavg()}
    if "bf16" in results:
        payload["bf16_over_fp32_latency"] = results["bf16"]["latency_ms_p50"] / results["fp32"]["latency_ms_p50"]
    write_json(args.out, payload)
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "round_p50_ms"} for k, v in results.items()},
                     indent=1))
    for p, why in refused.items():
        print(f"{p}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
