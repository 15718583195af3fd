"""The one timing path: latency / throughput of any :mod:`yolopt.runtime` backend.

    >>> from yolopt import bench, runtime
    >>> rec = bench.measure(runtime.open("yolov5n.onnx", threads=2), 640, iters=50)
    >>> rec.latency_ms["p50"], rec.fps, rec.machine["cpu"]

* model-only: a fixed random (B,3,H,W) input through ``backend(x)``.
* end-to-end (``source``): image file or video frame decode + letterbox + inference + NMS + box
  rescale, cycling over real images and video frames, with the median of each stage (``stages_ms``).
* streams: N independent sessions (``backend.clone()``) driven by N threads at once; the
  throughput is images / wall time over all of them.

Latencies are wall-clock per call (per batch), in milliseconds.
"""

from __future__ import annotations

import resource
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..data.letterbox import to_pixels
from ..data.preprocess import preprocess
from ..data.sources import FrameCycle
from ..errors import YoloptError
from ..machine import machine_info
from ..ops.postprocess import NMSOptions, select, to_original

STAGES = ("decode", "preprocess", "inference", "nms", "postprocess")


@dataclass
class BenchRecord:
    backend: str
    model: str
    imgsz: list
    batch: int
    threads: int | None
    streams: int
    latency_ms: dict
    fps: float
    throughput_fps: float
    peak_rss_mb: float
    size_mb: float
    end2end: bool = False
    iters: int = 0
    warmup: int = 0
    precision: str = "fp32"
    stages_ms: dict | None = None  # end-to-end only: median ms per call of each stage
    machine: dict = field(default_factory=machine_info)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["extra"]:
            d.pop("extra")
        if d["stages_ms"] is None:
            d.pop("stages_ms")
        return d


def percentiles(samples_ms) -> dict:
    """p50/p90/p99/mean (ms) of a list of latencies."""
    a = np.asarray(list(samples_ms), dtype=np.float64)
    if not a.size:
        raise YoloptError("no timing samples (iters/duration too small)")
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def artifact_size_mb(path) -> float:
    p = Path(path)
    if not p.exists():
        return 0.0
    files = [p, p.with_suffix(".bin")] if p.suffix == ".xml" else [p]
    return sum(f.stat().st_size for f in files if f.exists()) / 1e6


def time_calls(fn: Callable[[], object], warmup: int = 10, iters: int | None = 100,
               duration: float | None = None) -> list[float]:
    """Call ``fn`` ``warmup`` times, then ``iters`` times (or for ``duration`` seconds); ms per call."""
    for _ in range(max(0, warmup)):
        fn()
    out = []
    t_end = time.perf_counter() + duration if duration else None
    n = 0
    while True:
        if t_end is None and n >= (iters or 0):
            break
        if t_end is not None and time.perf_counter() >= t_end and n > 0:
            break
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
        n += 1
    return out


class EndToEnd:
    """One full frame -> detections step over a batch of real frames: decode, letterbox, model,
    NMS and rescale (the same :func:`preprocess` and :func:`~yolopt.ops.postprocess.postprocess` steps as
    ``yolopt predict``, timed one by one).

    ``images``: image files, folders, globs and video files (a video is decoded frame by frame, and
    decoding is part of the ``decode`` stage); they are cycled over, so any number of calls can be timed.
    Each call appends its per-stage times (ms) to ``stage_samples``.
    """

    def __init__(self, backend, images, imgsz, batch: int, conf: float = 0.25, iou: float = 0.45,
                 max_det: int = 300, mode: str = "square"):
        self.backend = backend
        self.mode = mode  # letterbox: square (fixed input) or rect (dynamic artifacts, minimal padding)
        self.frames = FrameCycle(images)
        self.imgsz = imgsz
        self.batch = batch
        self.conf, self.iou, self.max_det = conf, iou, max_det
        self.detections = 0
        self.last: list = []
        self.counts: list[int] = []  # detections per frame, in call order
        self.stage_samples: dict[str, list[float]] = {k: [] for k in STAGES}

    @property
    def cycle_frames(self) -> int | None:
        """Frames in one pass over the sources (None: a video whose length its container does not give)."""
        return self.frames.cycle_frames

    def __call__(self):
        t0 = time.perf_counter()
        ims = [self.frames() for _ in range(self.batch)]
        t1 = time.perf_counter()
        x, metas = preprocess(ims, self.imgsz if self.mode == "square" else max(self.imgsz), mode=self.mode,
                              pixels=self.backend.uint8_input)
        t2 = time.perf_counter()
        pred = self.backend(x)
        t3 = time.perf_counter()
        dets = select(pred, NMSOptions(self.conf, self.iou, self.max_det), end2end=self.backend.end2end, batch=len(ims))
        t4 = time.perf_counter()
        self.last = to_original(dets, metas)
        t5 = time.perf_counter()
        self.counts += [len(d) for d in self.last]
        self.detections += sum(len(d) for d in self.last)
        for k, (a, b) in zip(STAGES, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5))):
            self.stage_samples[k].append((b - a) * 1e3)


def _input(imgsz, batch: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random((batch, 3, *imgsz), dtype=np.float32)


def measure(backend, imgsz, batch: int = 1, warmup: int = 10, iters: int | None = 100,
            duration: float | None = None, streams: int = 1, source=None, model_name: str | None = None,
            conf: float = 0.25, iou: float = 0.45, mode: str = "square") -> BenchRecord:
    """Time ``backend`` (a :mod:`yolopt.runtime` Backend) at one batch size; the one timing path.

    ``imgsz``: int or (h, w). ``source``: images for the end-to-end pipeline (else model-only on
    a fixed random input). ``mode``: the end-to-end letterbox, ``square`` or ``rect`` (dynamic artifacts: each
    frame padded to its own minimal stride-multiple rectangle). ``streams > 1`` adds a throughput figure with that many sessions in threads.
    """
    if isinstance(imgsz, int):
        imgsz = (imgsz, imgsz)
    if batch < 1 or streams < 1:
        raise YoloptError(f"--batch and --streams must be >= 1 (got {batch}, {streams})")
    if iters is not None and iters < 1 and not duration:
        raise YoloptError(f"--iters must be >= 1 (got {iters})")

    def make_step(b):
        if source is not None:
            return EndToEnd(b, source, imgsz, batch, conf, iou, mode=mode)
        x = _input(imgsz, batch)
        if b.uint8_input:  # a quantized graph that takes pixels gets pixels
            x = to_pixels(x)
        return lambda: b(x)

    step = make_step(backend)
    lat = time_calls(step, warmup, iters, duration)
    extra: dict = {}
    stages = None
    if source is not None:  # the warm-up calls' stage times are dropped
        stages = {k: float(np.median(v[-len(lat):])) for k, v in step.stage_samples.items()}
        extra["detections_per_image"] = step.counts[-len(lat) * batch:][:step.cycle_frames]
        if step.frames.videos:
            extra["videos"] = step.frames.videos  # source fps, size and frame count of each video
    p = percentiles(lat)
    fps = batch * 1e3 / p["mean"]
    throughput = fps
    if streams > 1:
        replicas = [backend] + [backend.clone() for _ in range(streams - 1)]
        steps = [make_step(r) for r in replicas]
        n_calls = len(lat)
        for s in steps:  # warm every session
            for _ in range(max(1, min(warmup, 3))):
                s()
        barrier = threading.Barrier(streams)
        stream_lat: list[list[float]] = [[] for _ in range(streams)]

        def drive(k):
            barrier.wait()
            stream_lat[k] = time_calls(steps[k], 0, n_calls if not duration else None, duration)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(streams) as pool:
            list(pool.map(drive, range(streams)))
        wall = time.perf_counter() - t0
        total = sum(len(s) for s in stream_lat) * batch
        throughput = total / wall
        extra["stream_latency_ms"] = percentiles([v for s in stream_lat for v in s])
    return BenchRecord(
        backend=backend.name, model=str(model_name or backend.path), imgsz=list(imgsz), batch=batch,
        threads=backend.threads, streams=streams, latency_ms=p, fps=fps, throughput_fps=throughput,
        peak_rss_mb=peak_rss_mb(), size_mb=artifact_size_mb(backend.path), end2end=source is not None,
        iters=len(lat), warmup=warmup, precision=getattr(backend, "precision", "fp32"), stages_ms=stages, extra=extra)


def median(values) -> float:
    return float(statistics.median(values))


def interleaved(artifacts: dict, imgsz, threads: int | None = None, rounds: int = 5, iters: int = 20,
                warmup: int = 3) -> dict[str, dict]:
    """Model-only latency (batch 1) of several artifacts timed in interleaved rounds, the order reversed
    every other round, so a machine that slows down slows them all. ``artifacts``: ``{name: path or
    Backend}``. Per name: ``p50_ms`` (the median of its rounds' p50), ``rounds_p50_ms``, ``runtime``,
    ``precision``, ``threads``, ``size_mb`` and the ``machine`` block."""
    from ..runtime import Backend
    from ..runtime import open as open_backend

    backends = {k: a if isinstance(a, Backend) else open_backend(str(a), threads=threads) for k, a in artifacts.items()}
    p50: dict[str, list[float]] = {k: [] for k in backends}
    recs: dict[str, BenchRecord] = {}
    for r in range(rounds):
        for k in (list(backends) if r % 2 == 0 else list(backends)[::-1]):
            recs[k] = measure(backends[k], imgsz, warmup=warmup, iters=iters)
            p50[k].append(recs[k].latency_ms["p50"])
    return {k: {"p50_ms": median(v), "rounds_p50_ms": v, "runtime": backends[k].name,
                "precision": backends[k].precision, "threads": backends[k].threads, "size_mb": recs[k].size_mb,
                "machine": recs[k].machine} for k, v in p50.items()}

