"""One end-to-end measurement in its own process: ``python -m yolopt.pipeline.worker REQUEST.json OUT.json``.

A process of its own gives each variant its own peak-memory figure (the runtime's working memory, not
what earlier variants left behind) and keeps a crashing runtime from taking the optimize run with it.
REQUEST: ``{"artifact", "imgsz", "letterbox", "threads", "streams", "images", "conf", "iou", "seconds", "spin"}``
(``spin: false``: ONNX Runtime's idle threads sleep instead of spin-waiting, and torch's NMS runs on one thread),
and ``"bundle"``: the variant's deploy bundle folder, when it has one.
OUT: the :class:`~yolopt.bench.BenchRecord` as a dict plus ``model_mem_mb`` (peak RSS while the
artifact was opened and run, minus the RSS before). With a bundle, also ``deployed``: the bundle's own infer.py
pipeline timed for ``seconds`` (:func:`~yolopt.pipeline.harness.measure_bundle`: images/s, latency, the workers'
peak memory), measured first, before torch is imported here; the BenchRecord then comes from a shorter run of
one pipeline and gives the per-stage times.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def measure_request(req: dict) -> dict:
    deployed = None
    if req.get("bundle"):
        from .harness import measure_bundle

        deployed = measure_bundle(req["bundle"], req["images"], float(req["seconds"]))
    from .. import bench
    from ..bench.timing import rss_mb
    from ..runtime import open as open_backend

    before = rss_mb()
    streams = 1 if deployed else int(req.get("streams", 1))
    kwargs = {}
    if not req.get("spin", True):
        import torch

        torch.set_num_threads(1)
        kwargs["spin"] = False
    backend = open_backend(req["artifact"], threads=int(req["threads"]), **kwargs)
    rec = bench.measure(backend, req["imgsz"], bench.BenchSpec(
        warmup=3 if deployed else max(3, len(req["images"]) // 2), iters=None, streams=streams,
        duration=float(req["seconds"]) / (4 if deployed else 1),
        source=req["images"], conf=req["conf"], iou=req["iou"], mode=req["letterbox"]))
    out = rec.to_dict()
    out["model_mem_mb"] = max(0.0, rec.peak_rss_mb - before)  # the record's peak: this process's own (VmHWM)
    if "stream_model_mem_mb" in rec.extra:  # N pipelines in N processes, as deployed: what they need together
        out["model_mem_mb"] = max(out["model_mem_mb"], rec.extra["stream_model_mem_mb"])
    if deployed is not None:
        out["deployed"] = deployed.to_dict()
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    req = json.loads(Path(argv[0]).read_text())
    out = measure_request(req)
    from ..fileio import write_json

    write_json(argv[1], out, quiet=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
