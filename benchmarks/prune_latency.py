"""Base vs pruned: ONNX Runtime FP32 latency (interleaved, one run) and mAP, for the compress acceptance.

    PYTHONPATH=src python benchmarks/prune_latency.py BASE PRUNED --imgsz 416 --data DATA.yaml \
        [--threads 2] [--rounds 7] [--iters 30] [--no-verify] [--out benchmarks/results/prune_latency_<name>.json]

Exports both models to fused FP32 ONNX at ``--imgsz`` (verified against PyTorch), then times them
with ``bench.measure`` (batch 1) in ``--rounds`` interleaved rounds (order alternated), and reports
the median of the per-round p50 ratios pruned / base. With ``--data``, mAP50-95 / mAP50 of both
PyTorch models and of both ONNX files on the val split at ``--imgsz``. Writes a JSON with the
machine block.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base")
    ap.add_argument("pruned")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--data")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--no-verify", action="store_true",
                    help="skip the export check (a pruned model before fine-tuning detects nothing to compare)")
    ap.add_argument("--out")
    args = ap.parse_args()

    import yolopt
    from yolopt import bench, runtime
    from yolopt.compress import model_flops
    from yolopt.evaluate import evaluate
    from yolopt.export import ExportSpec, export
    from yolopt.fileio import write_json
    from yolopt.machine import machine_info

    work = Path(tempfile.mkdtemp(prefix="yolopt-prunelat-"))
    models = {"base": yolopt.load(args.base), "pruned": yolopt.load(args.pruned)}
    info, backends = {}, {}
    for name, m in models.items():
        res = export(m, ExportSpec("onnx", imgsz=args.imgsz, out=work / f"{name}.onnx",
                                         verify=not args.no_verify))
        info[name] = {"path": args.base if name == "base" else args.pruned, "params": m.num_params(),
                      "gflops": round(model_flops(m, args.imgsz), 4), "onnx_verify": res.verify.to_dict() if res.verify else None}
        backends[name] = runtime.open(res.path, threads=args.threads)
        if args.data:
            for key, target in (("map_torch", m), ("map_onnx", res.path)):
                r = evaluate(target, args.data, imgsz=args.imgsz, progress=False)
                info[name][key] = {"map50_95": round(r.map50_95, 4), "map50": round(r.map50, 4), "mode": r.mode}
                print(f"{name} {key}: mAP50-95 {r.map50_95:.4f} mAP50 {r.map50:.4f} ({r.mode})", file=sys.stderr)
    p50 = {n: [] for n in backends}
    for k in range(args.rounds):
        for n in (["base", "pruned"] if k % 2 == 0 else ["pruned", "base"]):
            p50[n].append(bench.measure(backends[n], args.imgsz, bench.BenchSpec(warmup=5, iters=args.iters)).latency_ms["p50"])
        print(f"round {k + 1}/{args.rounds}: base {p50['base'][-1]:.2f} ms, pruned {p50['pruned'][-1]:.2f} ms",
              file=sys.stderr)
    ratio = statistics.median(b / a for a, b in zip(p50["base"], p50["pruned"]))
    result = {"benchmark": "base vs pruned, ONNX Runtime FP32, batch 1, interleaved", "imgsz": args.imgsz,
              "threads": args.threads, "rounds": args.rounds, "iters": args.iters, "data": args.data,
              "models": info, "p50_ms": {n: [round(v, 3) for v in p50[n]] for n in p50},
              "p50_ms_median": {n: round(statistics.median(p50[n]), 3) for n in p50},
              "latency_ratio_median": round(ratio, 4),
              "flops_ratio": round(info["pruned"]["gflops"] / info["base"]["gflops"], 4),
              "machine": machine_info()}
    out = args.out or str(ROOT / "benchmarks" / "results" / f"prune_latency_{Path(args.pruned).stem}.json")
    write_json(out, result)
    print(f"FLOPs x{result['flops_ratio']:.3f}, latency x{ratio:.3f} (median of {args.rounds} interleaved rounds; "
          f"base {result['p50_ms_median']['base']:.2f} ms, pruned {result['p50_ms_median']['pruned']:.2f} ms) "
          f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
