"""End-to-end images/s of deploy bundles, each run by its own infer.py the way its README says.

    PYTHONPATH=src python benchmarks/bundle_e2e.py OUT/deploy [OTHER/deploy ...] --images FOLDER \
        [--rounds 3] [--python PY] [--harness [--harness-seconds 8]] [--out benchmarks/results/NAME.json]

Each bundle runs as a subprocess with the command its README gives (``python infer.py IMAGES --workers N
--quiet``; the workers are separate processes, as a user runs them), rounds interleaved (order reversed every
other round). Per run: start-up (launch to the first image's line) is reported on its own; images/s is
the images after the first over the time after the first line (use a few hundred images: with N workers
the others' first images are part-done at that line). The median over the rounds is compared with
the report's end-to-end number stored in the bundle (deploy.json ``report.fps``, else the optimize run's
results.json next to it); a difference above 10% is printed loudly and the exit status is 1. Writes one
JSON with the machine block.

``--harness``: in the same rounds, also measure each bundle's artifact the way ``yolopt optimize`` does (its
benchmark worker, ``yolopt.pipeline.variants.bench_variant``: the same images, letterbox, threads, pipelines and
spin setting as deploy.json), so report-harness and bundle are compared on the same machine at the same time,
without the minutes between an optimize run and this one; that difference is checked against 10% too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

TOLERANCE = 0.10
PLACEHOLDER = "path/to/images/"


def readme_command(bundle: Path) -> list[str]:
    """The README's ``python infer.py ... --workers N`` line, as argv with the image folder still a placeholder."""
    text = (bundle / "README.md").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.startswith("python infer.py") and re.search(r"--workers \d+", line):
            return shlex.split(line)
    raise SystemExit(f"{bundle}/README.md: no `python infer.py ... --workers N` command (a bundle from before "
                     "--workers? rebuild it)")


def report_fps(bundle: Path) -> tuple[float | None, str]:
    """The report's end-to-end images/s and where it came from."""
    cfg = json.loads((bundle / "deploy.json").read_text(encoding="utf-8"))
    rep = cfg.get("report") if isinstance(cfg.get("report"), dict) else {}
    if isinstance(rep.get("fps"), (int, float)):
        return float(rep["fps"]), "deploy.json report.fps"
    res = bundle.parent / "results.json"
    if res.is_file():
        d = json.loads(res.read_text(encoding="utf-8"))
        name = rep.get("name") or (d.get("recommendation") or {}).get("variant")
        for v in d.get("variants") or []:
            if v.get("name") == name and isinstance(v.get("fps"), (int, float)):
                return float(v["fps"]), f"{res} variant {name}"
    return None, "none"


def run_once(argv: list[str], cwd: Path, timeout: float) -> dict:
    """One run: start-up seconds, images, wall seconds, images/s after the first image."""
    with tempfile.TemporaryFile("w+") as errf:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=errf, text=True)
        first, n = None, 0
        for line in p.stdout:
            if line.startswith(" "):
                continue  # a box line (not with --quiet)
            n += 1
            if first is None:
                first = time.perf_counter()
        rc = p.wait(timeout=timeout)
        end = time.perf_counter()
        errf.seek(0)
        err = errf.read()
    if rc != 0 or first is None:
        raise SystemExit(f"{' '.join(argv)}: exit {rc}: {err.strip().splitlines()[-1:] or 'no output'}")
    steady = (n - 1) / (end - first) if n > 1 and end > first else None
    return {"startup_s": first - t0, "images": n, "wall_s": end - t0, "fps": steady, "wall_fps": n / (end - t0)}


def harness_once(bundle: Path, images: list[str], seconds: float) -> dict:
    """The bundle's artifact measured by optimize's own benchmark worker, as deploy.json deploys it."""
    from types import SimpleNamespace

    from yolopt.pipeline.variants import Variant, bench_variant

    cfg = json.loads((bundle / "deploy.json").read_text(encoding="utf-8"))
    ro = cfg.get("runtime_options") or {}
    from yolopt.machine import usable_cpus

    # no threads in deploy.json: the runtime's default, one per core (ONNX Runtime's, for the FP32-defaults bundle)
    workers, threads = int(ro.get("workers") or 1), int(ro.get("threads") or usable_cpus())
    v = Variant("bundle", "bundle", "", "", int(max(cfg["imgsz"])), cfg.get("letterbox", "square"),
                streams=workers, spin=ro.get("allow_spinning", True))
    spec = SimpleNamespace(threads=threads * workers, conf=cfg.get("conf", 0.25), iou=cfg.get("iou", 0.45),
                           bench_seconds=seconds)  # the OptimizeSpec fields bench_variant reads
    r = bench_variant(str(bundle / cfg["artifact"]), v, spec, images, seconds)
    return {"fps": r.fps, "peak_mem_mb": r.peak_mem_mb, "threads_per_stream": r.threads_per_stream}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--images", required=True, type=Path, help="a folder of images (held out from calibration)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--python", default=sys.executable, help="the interpreter that runs infer.py (a venv with the "
                    "bundle's requirements.txt; default: this one)")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--harness", action="store_true", help="also measure each bundle's artifact with optimize's own "
                    "benchmark worker, in the same rounds")
    ap.add_argument("--harness-seconds", type=float, default=8.0, help="timed seconds per harness measurement")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()

    from yolopt.fileio import write_json
    from yolopt.machine import machine_info

    if not args.images.is_dir():
        raise SystemExit(f"{args.images}: not a folder")
    images = str(args.images.resolve()) + os.sep
    cmds = {}
    for b in args.bundles:
        argv = readme_command(b)
        argv = [args.python if a == "python" else str(b.resolve() / a) if a == "infer.py" else
                images if a == PLACEHOLDER else a for a in argv]
        cmds[b] = argv
    runs: dict[Path, list[dict]] = {b: [] for b in args.bundles}
    harness: dict[Path, list[dict]] = {b: [] for b in args.bundles}
    from yolopt.data.images import list_images

    image_list = [str(p) for p in list_images(args.images)]
    for r in range(args.rounds):
        for b in (args.bundles if r % 2 == 0 else args.bundles[::-1]):
            one = run_once(cmds[b], b, args.timeout)
            runs[b].append(one)
            print(f"round {r + 1}: {b}: {one['images']} images, {one['fps'] or 0:.1f} images/s after start-up "
                  f"({one['startup_s']:.2f} s), {one['wall_fps']:.1f} images/s wall")
            if args.harness:
                h = harness_once(b, image_list, args.harness_seconds)
                harness[b].append(h)
                print(f"round {r + 1}: {b}: optimize's harness {h['fps']:.1f} images/s, "
                      f"{h['peak_mem_mb']:.0f} MB")
    rows, bad = [], 0
    for b in args.bundles:
        fps = statistics.median([x["fps"] for x in runs[b] if x["fps"]] or [0.0])
        ref, src = report_fps(b)
        ratio = fps / ref if ref else None
        mismatch = ratio is not None and abs(ratio - 1) > TOLERANCE
        bad += mismatch
        row = {}
        if args.harness:
            hf = statistics.median(x["fps"] for x in harness[b])
            hr = fps / hf if hf else None
            row = {"harness_fps_median": hf, "ratio_to_harness": hr, "harness_runs": harness[b],
                   "harness_mismatch": hr is not None and abs(hr - 1) > TOLERANCE}
            bad += row["harness_mismatch"]
        rows.append({"bundle": str(b), "command": " ".join(cmds[b]), "fps_median": fps, "report_fps": ref,
                     "report_from": src, "ratio_to_report": ratio, "mismatch": mismatch, **row,
                     "startup_s_median": statistics.median(x["startup_s"] for x in runs[b]),
                     "wall_fps_median": statistics.median(x["wall_fps"] for x in runs[b]), "runs": runs[b]})
        line = f"{b}: {fps:.1f} images/s (median of {args.rounds})"
        if ref:
            line += f"; the report says {ref:.1f} ({ratio:.2f}x)"
        if row:
            line += (f"; optimize's harness, same rounds: {row['harness_fps_median']:.1f} "
                     f"({row['ratio_to_harness']:.2f}x)" + (" MISMATCH" if row["harness_mismatch"] else ""))
        print(line)
        if mismatch:
            msg = (f"!!! MISMATCH: {b}: infer.py as the README says runs at {fps:.1f} images/s, the report says "
                   f"{ref:.1f} ({(ratio - 1) * 100:+.0f}%, more than {TOLERANCE:.0%}) !!!")
            print(msg)
            print(msg, file=sys.stderr)
    if args.out:
        write_json(args.out, {"images": images, "rounds": args.rounds, "python": args.python,
                              "tolerance": TOLERANCE, "rows": rows, "machine": machine_info()})
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
