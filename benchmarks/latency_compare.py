"""Model-only latency of several artifacts, interleaved in one run, as ratios to the first.

    PYTHONPATH=src python benchmarks/latency_compare.py BASE.onnx OTHER.onnx OTHER.xml ... --imgsz 416 \
        [--threads 2] [--rounds 7] [--iters 30] --out benchmarks/results/NAME.json

Every artifact opens through ``yolopt.runtime.open`` (its own precision: an INT8 artifact runs as INT8)
and is timed with ``bench.measure`` (batch 1) once per round, the order reversed every other round.
The figure per artifact is the median of its per-round p50s; ratios are to the first artifact. Writes
one JSON with the machine block.
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
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from yolopt.bench import measure
    from yolopt.fileio import write_json
    from yolopt.machine import machine_info
    from yolopt.runtime import open as open_backend

    backends = [open_backend(a, threads=args.threads) for a in args.artifacts]
    p50 = [[] for _ in backends]
    for r in range(args.rounds):
        order = list(range(len(backends)))
        if r % 2:
            order.reverse()
        for i in order:
            p50[i].append(measure(backends[i], args.imgsz, warmup=3, iters=args.iters).latency_ms["p50"])
    base = statistics.median(p50[0])
    rows = []
    for a, b, v in zip(args.artifacts, backends, p50):
        m = statistics.median(v)
        rows.append({"artifact": a, "runtime": b.name, "precision": b.precision, "p50_ms": m, "ratio": m / base,
                     "rounds_p50_ms": v})
        print(f"{a}: {m:.2f} ms  {m / base:.3f}x  ({b.name}, {b.precision})")
    write_json(args.out, {"imgsz": args.imgsz, "threads": args.threads, "rounds": args.rounds, "iters": args.iters,
                          "rows": rows, "machine": machine_info()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
