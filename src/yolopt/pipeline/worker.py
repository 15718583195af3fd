"""One end-to-end measurement in its own process: ``python -m yolopt.pipeline.worker REQUEST.json OUT.json``.

A process of its own gives each variant its own peak-memory figure (the runtime's working memory, not
what earlier variants left behind) and keeps a crashing runtime from taking the optimize run with it.
REQUEST: ``{"artifact", "imgsz", "letterbox", "threads", "streams", "images", "conf", "iou", "seconds", "spin"}``
(``spin: false``: ONNX Runtime's idle threads sleep instead of spin-waiting, and torch's NMS runs on one thread).
OUT: the :class:`~yolopt.bench.BenchRecord` as a dict plus ``model_mem_mb`` (peak RSS while the
artifact was opened and run, minus the RSS before).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _rss_mb() -> float:
    """Resident memory of this process now (MB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def measure_request(req: dict) -> dict:
    from .. import bench
    from ..runtime import open as open_backend

    before = _rss_mb()
    streams = int(req.get("streams", 1))
    kwargs = {}
    if not req.get("spin", True):
        import torch

        torch.set_num_threads(1)
        kwargs["spin"] = False
    backend = open_backend(req["artifact"], threads=int(req["threads"]), **kwargs)
    rec = bench.measure(backend, req["imgsz"], bench.BenchSpec(
        warmup=max(3, len(req["images"]) // 2), iters=None, duration=float(req["seconds"]), streams=streams,
        source=req["images"], conf=req["conf"], iou=req["iou"], mode=req["letterbox"]))
    out = rec.to_dict()
    out["model_mem_mb"] = max(0.0, rec.peak_rss_mb - before)  # the record's peak: this process's own (VmHWM)
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    req = json.loads(Path(argv[0]).read_text())
    from ..fileio import write_json

    write_json(argv[1], measure_request(req), quiet=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
