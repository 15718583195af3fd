"""Baseline backend benchmark: yolov5n at 640, batch 1, on this machine's CPU.

In one process, interleaved round by round (so drifting load hits every backend alike):

* PyTorch eager (unfused BatchNorm), PyTorch fused,
* ONNX Runtime FP32 on yolopt's ONNX (fused + onnxslim), and on a "plain" ONNX
  (``torch.onnx.export`` of the unfused model, no simplification) for the 1.05x acceptance check,
* OpenVINO FP32 IR,

each model-only (fixed random input) and end-to-end (JPEG decode + letterbox + inference + NMS +
rescale, cycling over real images). Latencies are pooled over the rounds; the reported figure is
the median (p50). The ORT yolopt/plain ratio is also given as the median of per-round ratios.

    PYTHONPATH=src python benchmarks/backends.py [--rounds 5 --iters 20 --threads N]

Writes ``benchmarks/results/backends.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = Path(os.environ.get("YOLOPT_SHARED", ROOT.parent / "shared")).resolve()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(SHARED / "weights" / "yolov5n.pt"))
    ap.add_argument("--images", default=str(SHARED / "data" / "coco128" / "images" / "train2017"))
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20, help="timed calls per backend per round and mode")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1,
                    help="threads per backend (default 1: on a shared CPU more threads thrash)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "backends.json"))
    args = ap.parse_args(argv)

    import numpy as np
    import onnxruntime
    import openvino
    import torch

    from yolopt import __version__, load
    from yolopt.bench import EndToEnd, artifact_size_mb, peak_rss_mb, percentiles, time_calls
    from yolopt.export import ExportSpec, export
    from yolopt.fileio import atomic_write
    from yolopt.machine import machine_info
    from yolopt.runtime import OnnxBackend, OpenVINOBackend, TorchBackend

    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    imgs = sorted(Path(args.images).glob("*.jpg"))[:32]
    work = Path(tempfile.mkdtemp(prefix="yolopt-bench-"))
    sz = args.imgsz

    # artifacts
    onnx_y = export(args.weights, ExportSpec("onnx", imgsz=sz, out=work / "yolopt.onnx")).path
    ov_xml = export(args.weights, ExportSpec("openvino", imgsz=sz, out=work / "ov" / "yolopt.xml")).path
    plain = work / "plain.onnx"
    raw_model = load(args.weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(raw_model, torch.zeros(1, 3, sz, sz), str(plain), dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["output0"])

    backends = {}
    for key, make in [
        ("pytorch_eager", lambda: TorchBackend(args.weights, threads=args.threads, fuse=False)),
        ("pytorch_fused", lambda: TorchBackend(args.weights, threads=args.threads, fuse=True)),
        ("onnxruntime_fp32", lambda: OnnxBackend(onnx_y, threads=args.threads, providers=["CPUExecutionProvider"])),
        ("onnxruntime_fp32_plain_export",
         lambda: OnnxBackend(plain, threads=args.threads, providers=["CPUExecutionProvider"])),
        ("openvino_fp32", lambda: OpenVINOBackend(ov_xml, threads=args.threads)),
    ]:
        before = rss_mb()
        b = make()
        backends[key] = (b, rss_mb() - before)
    x = np.random.default_rng(0).random((1, 3, sz, sz), dtype=np.float32)
    steps = {k: {"model": (lambda b=b: b(x)), "end2end": EndToEnd(b, imgs, sz, 1)} for k, (b, _) in backends.items()}

    samples = {k: {"model": [], "end2end": []} for k in backends}
    round_p50 = {k: {"model": [], "end2end": []} for k in backends}
    t0 = time.time()
    for r in range(args.rounds):
        order = list(backends) if r % 2 == 0 else list(reversed(backends))  # alternate the order
        for mode in ("model", "end2end"):
            for k in order:
                lat = time_calls(steps[k][mode], args.warmup, args.iters)
                samples[k][mode] += lat
                round_p50[k][mode].append(statistics.median(lat))
        print(f"round {r + 1}/{args.rounds} done ({time.time() - t0:.0f} s)", file=sys.stderr)

    results = {}
    for k, (b, rss_load) in backends.items():
        rec = {"backend": b.name, "model": str(b.path if k.startswith(("onnx", "openvino")) else args.weights),
               "imgsz": [sz, sz], "batch": 1, "threads": args.threads, "streams": 1,
               "size_mb": artifact_size_mb(b.path) if k.startswith(("onnx", "openvino")) else
               artifact_size_mb(args.weights), "rss_increase_on_load_mb": rss_load}
        for mode in ("model", "end2end"):
            p = percentiles(samples[k][mode])
            rec[mode] = {"latency_ms": p, "fps": 1e3 / p["p50"], "median_of_round_p50_ms":
                         statistics.median(round_p50[k][mode]), "samples": len(samples[k][mode])}
        results[k] = rec
    base = results["pytorch_eager"]
    for k, rec in results.items():
        rec["speedup_vs_pytorch_eager"] = {
            mode: base[mode]["latency_ms"]["p50"] / rec[mode]["latency_ms"]["p50"] for mode in ("model", "end2end")}
    ry = round_p50["onnxruntime_fp32"]["model"]
    rp = round_p50["onnxruntime_fp32_plain_export"]["model"]
    ratio_pooled = results["onnxruntime_fp32"]["model"]["latency_ms"]["p50"] / \
        results["onnxruntime_fp32_plain_export"]["model"]["latency_ms"]["p50"]
    ratio_rounds = statistics.median(a / b for a, b in zip(ry, rp))
    payload = {
        "benchmark": "backends", "yolopt_version": __version__, "imgsz": sz, "batch": 1, "threads": args.threads,
        "rounds": args.rounds, "iters_per_round": args.iters, "warmup": args.warmup,
        "end2end_images": len(imgs),
        "statistic": "p50 of latencies pooled over rounds (median); speedups = eager p50 / backend p50",
        "machine": {**machine_info(), "threads": args.threads, "loadavg_start": load0, "loadavg_end": os.getloadavg()},
        "environment": {
            "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "openvino": openvino.__version__, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "loadavg_start": load0, "loadavg_end": os.getloadavg(),
            "note": "shared 2-core CPU (other jobs were running): absolute numbers are noisy, ratios measured "
                    "in the same interleaved run are the meaningful figures",
        },
        "peak_rss_mb_process": peak_rss_mb(),
        "results": results,
        "acceptance": {
            "ort_yolopt_vs_plain_latency_ratio": ratio_pooled,
            "ort_yolopt_vs_plain_latency_ratio_median_of_rounds": ratio_rounds,
            "limit": 1.05,
            "passed": bool(ratio_pooled <= 1.05 and ratio_rounds <= 1.05),
        },
    }
    text = json.dumps(payload, indent=1)
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(text + "\n"))
    print(f"{'backend':32s} {'model p50 ms':>13s} {'e2e p50 ms':>11s} {'x eager (model)':>16s} {'x eager (e2e)':>14s}")
    for k, rec in results.items():
        print(f"{k:32s} {rec['model']['latency_ms']['p50']:13.1f} {rec['end2end']['latency_ms']['p50']:11.1f} "
              f"{rec['speedup_vs_pytorch_eager']['model']:16.2f} {rec['speedup_vs_pytorch_eager']['end2end']:14.2f}")
    print(f"ORT yolopt/plain latency ratio: {ratio_pooled:.3f} (median of rounds {ratio_rounds:.3f}; limit 1.05)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
