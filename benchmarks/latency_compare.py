"""Model-only latency of several artifacts, interleaved in one run, as ratios to the first.

    PYTHONPATH=src python benchmarks/latency_compare.py BASE.onnx OTHER.onnx OTHER.xml ... --imgsz 416 \
        [--threads 2] [--rounds 7] [--iters 30] --out benchmarks/results/NAME.json

Every artifact opens through ``yolopt.runtime.open`` (its own precision: an INT8 artifact runs as INT8)
and is timed by ``bench.interleaved``: ``bench.measure`` (batch 1) once per round, the order reversed
every other round, the median of the per-round p50s. Ratios are to the first artifact. Writes one JSON
with the machine block.
"""

from __future__ import annotations

import argparse
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

    from yolopt.bench import interleaved
    from yolopt.fileio import write_json

    lat = interleaved({a: a for a in args.artifacts}, args.imgsz, args.threads, args.rounds, args.iters)
    base = lat[args.artifacts[0]]["p50_ms"]
    rows = []
    for a, r in lat.items():
        rows.append({"artifact": a, "runtime": r["runtime"], "precision": r["precision"], "p50_ms": r["p50_ms"],
                     "ratio": r["p50_ms"] / base, "rounds_p50_ms": r["rounds_p50_ms"]})
        print(f"{a}: {r['p50_ms']:.2f} ms  {r['p50_ms'] / base:.3f}x  ({r['runtime']}, {r['precision']})")
    write_json(args.out, {"imgsz": args.imgsz, "threads": args.threads, "rounds": args.rounds, "iters": args.iters,
                          "rows": rows, "machine": lat[args.artifacts[0]]["machine"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
