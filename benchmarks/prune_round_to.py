"""Which --round-to is fastest for a pruned yolov5n on ONNX Runtime? Measured, interleaved.

    PYTHONPATH=src python benchmarks/prune_round_to.py [--ratio 0.3] [--imgsz 640] [--threads 2] [--rounds 5] [--iters 20]

Prunes yolov5n (group importance, ratio ``--ratio``) with round-to 1, 8 and 16, exports each (and the
unpruned model) to a fused FP32 ONNX at ``--imgsz``, then times every model with ``bench.measure``
(batch 1, ``--threads``) in interleaved rounds (order alternated) and reports the median of the
round p50s, params and GFLOPs. Writes ``benchmarks/results/prune_round_to.json`` with the machine block.
"""

from __future__ import annotations

import argparse
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
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prune_round_to.json"))
    args = ap.parse_args()

    import yolopt
    from yolopt import bench, runtime
    from yolopt.compress import PruneSpec, model_flops, prune
    from yolopt.export import ExportSpec, export
    from yolopt.fileio import write_json
    from yolopt.machine import machine_info

    base = yolopt.load(Path(args.shared) / "weights" / "yolov5n.pt")
    work = Path(tempfile.mkdtemp(prefix="yolopt-roundto-"))
    models = {"unpruned": base}
    for r in (1, 8, 16):
        models[f"round_to={r}"] = prune(base, PruneSpec(ratio=args.ratio, round_to=r, imgsz=args.imgsz)).model
    info, backends = {}, {}
    for name, m in models.items():
        path = export(m, ExportSpec("onnx", imgsz=args.imgsz, out=work / f"{name.replace('=', '')}.onnx")).path
        backends[name] = runtime.open(path, threads=args.threads)
        info[name] = {"params": m.num_params(), "gflops": round(model_flops(m, args.imgsz), 3),
                      "channels": sum(c.out_channels for c in m.modules() if isinstance(c, __import__("torch").nn.Conv2d))}
    names = list(backends)
    p50 = {n: [] for n in names}
    for k in range(args.rounds):
        for n in (names if k % 2 == 0 else list(reversed(names))):
            p50[n].append(bench.measure(backends[n], args.imgsz, bench.BenchSpec(warmup=3, iters=args.iters)).latency_ms["p50"])
        print(f"round {k + 1}/{args.rounds}: " + ", ".join(f"{n} {p50[n][-1]:.2f}" for n in names), file=sys.stderr)
    base = p50["unpruned"]  # the load of a shared machine shifts between rounds: compare within a round
    results = {n: {**info[n], "p50_ms_median": round(statistics.median(p50[n]), 3), "round_p50_ms": p50[n],
                   "rel_to_unpruned_median": round(statistics.median(a / b for a, b in zip(p50[n], base)), 3)}
               for n in names}
    write_json(args.out, {"ratio": args.ratio, "imgsz": args.imgsz, "threads": args.threads, "rounds": args.rounds,
                          "iters": args.iters, "backend": "onnxruntime", "results": results, "machine": machine_info()})
    for n in names:
        r = results[n]
        print(f"{n:12s} params {r['params']:>9,d}  GFLOPs {r['gflops']:.3f}  p50 {r['p50_ms_median']:.2f} ms  "
              f"x{r['rel_to_unpruned_median']:.3f} of unpruned (median of per-round ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
