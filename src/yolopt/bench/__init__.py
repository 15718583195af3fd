"""The one timing path: latency / throughput of any :mod:`yolopt.runtime` backend.

    >>> from yolopt import bench, runtime
    >>> rec = bench.measure(runtime.open("yolov5n.onnx", threads=2), 640, bench.BenchSpec(iters=50))
    >>> rec.latency_ms["p50"], rec.fps, rec.machine["cpu"]

* model-only: a fixed random (B,3,H,W) input through ``backend(x)``.
* end-to-end (``source``): image file or video frame decode + letterbox + inference + NMS + box
  rescale, cycling over real images and video frames, with the median of each stage (``stages_ms``).
* streams: N independent sessions (``backend.clone()``) driven by N threads at once; the
  throughput is images / wall time over all of them.

Latencies are wall-clock per call (per batch), in milliseconds. Modules: :mod:`.measure` (BenchSpec,
BenchRecord, measure, interleaved), :mod:`.end2end` (EndToEnd), :mod:`.timing` (time_calls, percentiles).
"""

from __future__ import annotations

from .end2end import STAGES, EndToEnd
from .measure import BenchRecord, BenchSpec, interleaved, measure
from .timing import artifact_size_mb, median, peak_rss_mb, percentiles, time_calls

__all__ = ["STAGES", "BenchRecord", "BenchSpec", "EndToEnd", "artifact_size_mb", "interleaved", "measure", "median",
           "peak_rss_mb", "percentiles", "time_calls"]
