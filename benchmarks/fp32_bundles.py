"""The two FP32 references for an optimize run's bundle: the baseline artifact bundled at the runtime's defaults
and at the best FP32 pipeline setting the run measured.

    PYTHONPATH=src python benchmarks/fp32_bundles.py runs/optimize_coco [--out runs/optimize_coco]

Reads the run's ``results.json``; writes ``OUT/deploy_fp32_defaults`` (the ``fp32`` variant's artifact, one
pipeline, the runtime's own thread count and spin setting) and ``OUT/deploy_fp32_best`` (the same artifact with
the pipelines, threads and spin of the fastest of the run's FP32 pipeline variants: ``fp32``, ``fp32-2streams``,
``fp32-nospin``), each with ``report.fps`` = that variant's end-to-end images/s in the run (the median of the
confirmation rounds where the run timed it there, as the recommended bundle's). Then

    PYTHONPATH=src python benchmarks/bundle_e2e.py OUT/deploy_fp32_defaults OUT/deploy_fp32_best OUT/deploy \
        --images FOLDER --out benchmarks/results/NAME.json

times all three as their READMEs say, interleaved, in one run: the issue's "x FP32 at runtime defaults" and "x FP32
at its best pipeline setting" are ratios of those medians.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

FP32_PIPELINES = ("fp32", "fp32-2streams", "fp32-nospin")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a finished yolopt optimize run folder (its results.json)")
    ap.add_argument("--out", type=Path, help="where the two bundles go (default: the run folder)")
    args = ap.parse_args()

    from yolopt.pipeline.deploy import write_bundle

    res = json.loads((args.run / "results.json").read_text(encoding="utf-8"))
    rows = {v["name"]: v for v in res.get("variants") or [] if v.get("status") == "done" and v.get("fps")}
    if "fp32" not in rows:
        raise SystemExit(f"{args.run}/results.json: no finished fp32 variant")
    out = args.out or args.run
    base = rows["fp32"]
    best = max((rows[n] for n in FP32_PIPELINES if n in rows), key=lambda v: v["fps"])
    artifact = Path(base["artifact"])
    if not artifact.is_absolute() and not artifact.exists():
        artifact = args.run.parent.parent / artifact  # a path relative to where optimize ran
    confirmed = (res.get("confirm") or {}).get("median_fps") or {}  # the interleaved rounds' medians, when run
    for name, row, defaults in (("deploy_fp32_defaults", base, True), ("deploy_fp32_best", best, False)):
        fps = confirmed.get(row["name"], row["fps"])
        report = {"name": row["name"], "fps": fps, "fps_first_pass": row["fps"], "map50_95": row.get("map50_95"),
                  "map50": row.get("map50"), "fps_rounds": (res.get("confirm") or {}).get("rounds")
                  if row["name"] in confirmed else None}
        opts = dict(letterbox=base["letterbox"], report=report)
        if not defaults:
            opts.update(threads=row.get("threads_per_stream") or row.get("threads"),
                        spin=bool(row["variant"].get("spin", True)), workers=int(row.get("streams") or 1))
        else:
            opts.update(workers=1)
        write_bundle(artifact, out / name, **opts)
        print(f"{out / name}: {row['name']} ({row['description']}), report {fps:.1f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
