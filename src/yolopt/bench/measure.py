"""The one timing path: :func:`measure` (one backend, one batch size) and :func:`interleaved` (several
artifacts, alternating rounds)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from ..data.letterbox import to_pixels
from ..errors import YoloptError
from ..machine import machine_info
from ..runtime.backends import predict_above, torch_threads
from .end2end import EndToEnd
from .timing import artifact_size_mb, median, peak_rss_mb, percentiles, rss_mb, time_calls

TORCH_COMPUTE = ("torch", "torch-unfused", "torchscript")  # backends whose model runs on torch's own threads


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


def _input(imgsz, batch: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random((batch, 3, *imgsz), dtype=np.float32)


@dataclass
class BenchSpec:
    """How :func:`measure` times a backend.

    ``iters`` timed calls after ``warmup`` (or as many as fit in ``duration`` seconds), at ``batch``;
    ``streams > 1`` adds a throughput figure with that many pipelines run at once: end to end (``source``
    given), each in a process of its own, as a deploy bundle's ``infer.py --workers N`` runs them (``processes``
    False, or a model that runs on torch: sessions in threads of this process). ``source``: images / videos
    for the end-to-end pipeline (else model-only on a fixed random input), with its ``conf`` / ``iou`` NMS
    thresholds and letterbox ``mode``: ``square`` or ``rect`` (dynamic artifacts: each frame padded to its own
    minimal stride-multiple rectangle).
    """

    batch: int = 1
    warmup: int = 10
    iters: int | None = 100
    duration: float | None = None
    streams: int = 1
    source: list | None = None
    conf: float = 0.25
    iou: float = 0.45
    mode: str = "square"
    processes: bool = True


def measure(backend, imgsz, spec: BenchSpec | None = None, model_name: str | None = None) -> BenchRecord:
    """Time ``backend`` (a :mod:`yolopt.runtime` Backend) as ``spec`` says (default :class:`BenchSpec`);
    the one timing path. ``imgsz``: int or (h, w). ``model_name``: the record's model (default the backend's path).
    """
    spec = spec or BenchSpec()
    batch, warmup, iters, duration, streams, source = (spec.batch, spec.warmup, spec.iters, spec.duration,
                                                       spec.streams, spec.source)
    if isinstance(imgsz, int):
        imgsz = (imgsz, imgsz)
    if batch < 1 or streams < 1:
        raise YoloptError(f"batch size and streams must be >= 1 (got {batch}, {streams})", fields=("batch", "streams"))
    if iters is not None and iters < 1 and not duration:
        raise YoloptError(f"timed calls must be >= 1 (got {iters})", fields=("iters",))

    def make_step(b):
        if source is not None:
            return EndToEnd(b, source, imgsz, batch, spec.conf, spec.iou, mode=spec.mode)
        x = _input(imgsz, batch)
        if b.uint8_input:  # a quantized graph that takes pixels gets pixels
            x = to_pixels(x)
        # a raw-head artifact decodes the cells that pass the deployment threshold, as it does when deployed
        return lambda: predict_above(b, x, spec.conf)

    # The glue around a runtime (letterbox, decode, NMS in torch) runs on one torch thread: with torch's default
    # (the cores) its OpenMP threads fight the runtime's spin-waiting threads on a 2-core CPU. Measured, yolov5n 640
    # FP32 ONNX Runtime end to end on an Intel Xeon: 15.5-17.5 images/s with 2 torch threads, 21.0-26.4 with 1, where
    # the bundle's infer.py (numpy glue) runs at 21.5-22.8. A PyTorch backend keeps the process's setting.
    glue = None if backend.name in TORCH_COMPUTE else 1
    with torch_threads(glue):
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
        if streams > 1 and source is not None and spec.processes and _reopenable(backend):
            throughput, extra["stream_latency_ms"], extra["stream_model_mem_mb"] = _stream_processes(
                backend, imgsz, spec, len(lat))
            extra["stream_mode"] = "processes"
        elif streams > 1:
            throughput, extra["stream_latency_ms"] = _streams(backend, make_step, spec, len(lat))
            extra["stream_mode"] = "threads"
    return BenchRecord(
        backend=backend.name, model=str(model_name or backend.path), imgsz=list(imgsz), batch=batch,
        threads=backend.threads, streams=streams, latency_ms=p, fps=fps, throughput_fps=throughput,
        peak_rss_mb=peak_rss_mb(), size_mb=artifact_size_mb(backend.path), end2end=source is not None,
        iters=len(lat), warmup=warmup, precision=getattr(backend, "precision", "fp32"), stages_ms=stages, extra=extra)


def _streams(backend, make_step, spec: BenchSpec, n_calls: int) -> tuple[float, dict]:
    """Throughput (images / s) of ``spec.streams`` sessions driven by as many threads at once, and the
    percentiles of all their calls."""
    streams = spec.streams
    replicas = [backend] + [backend.clone() for _ in range(streams - 1)]
    steps = [make_step(r) for r in replicas]
    for s in steps:  # warm every session
        for _ in range(max(1, min(spec.warmup, 3))):
            s()
    barrier = threading.Barrier(streams)
    stream_lat: list[list[float]] = [[] for _ in range(streams)]

    def drive(k):
        barrier.wait()
        stream_lat[k] = time_calls(steps[k], 0, n_calls if not spec.duration else None, spec.duration)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(drive, range(streams)))
    wall = time.perf_counter() - t0
    total = sum(len(s) for s in stream_lat) * spec.batch
    return total / wall, percentiles([v for s in stream_lat for v in s])


def _reopenable(backend) -> bool:
    """Whether another process can open ``backend`` again from its path and options (a model that runs on
    torch, or a wrapper of sessions, cannot: its streams run in threads)."""
    from ..runtime import Backend

    return backend.name not in TORCH_COMPUTE and type(backend).clone is Backend.clone


def _stream_child(cls, path, kwargs, imgsz, spec, n_calls, offset, go, results) -> None:
    """One pipeline of :func:`_stream_processes`, in a process of its own: open, warm up, say ``ready``, wait for
    ``go``, time the calls, report ``(ms per call, peak RSS MB above the RSS before the artifact was opened)``;
    or report the error's first line."""
    try:
        import torch

        torch.set_num_threads(1)  # the glue around a runtime, as in measure()
        before = rss_mb()
        b = cls(path, **kwargs)
        step = EndToEnd(b, spec.source, imgsz, spec.batch, spec.conf, spec.iou, mode=spec.mode)
        for _ in range(offset):  # start each pipeline on other frames, as infer.py's workers take turns
            step.frames()
        for _ in range(max(1, min(spec.warmup, 3))):
            step()
    except Exception as e:  # noqa: BLE001 - reported to the parent in one line
        msg = str(e).strip().splitlines()
        results.put((offset, "error", f"{type(e).__name__}: {msg[0] if msg else ''}"))
        return
    results.put((offset, "ready", None))
    if not go.wait(timeout=600):
        return
    lat = time_calls(step, 0, n_calls if not spec.duration else None, spec.duration)
    results.put((offset, "ok", (lat, max(0.0, peak_rss_mb() - before))))


def _collect(results, procs, want: str, where) -> dict:
    """One ``want`` message from every pipeline process (``{index: payload}``); the first error, or a process
    that ended without its message, raises one line."""
    import queue

    got: dict = {}
    while len(got) < len(procs):
        try:
            k, kind, payload = results.get(timeout=2)
        except queue.Empty:
            dead = [i for i, p in enumerate(procs) if not p.is_alive() and i not in got]
            if dead and results.empty():
                raise YoloptError(f"{where}: pipeline process {dead[0] + 1} of {len(procs)} ended without a result "
                                  f"(exit code {procs[dead[0]].exitcode})") from None
            continue
        if kind == "error":
            raise YoloptError(f"{where}: a pipeline process failed: {payload}")
        if kind == want:
            got[k] = payload
    return got


def _stream_processes(backend, imgsz, spec: BenchSpec, n_calls: int) -> tuple[float, dict, float]:
    """Throughput (images / s) of ``spec.streams`` end-to-end pipelines, each in a process of its own with its
    own session (``backend``'s artifact and options), started together; the percentiles of all their calls
    and the memory the pipelines need (MB: the sum of each process's peak RSS above its RSS before it opened the
    artifact). The processes are spawned and warmed up before the clock starts."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    kwargs = dict(getattr(backend, "_open_kwargs", {}))
    procs = [ctx.Process(target=_stream_child, daemon=True,
                         args=(type(backend), str(backend.path), kwargs, imgsz, spec, n_calls, k, go, results))
             for k in range(spec.streams)]
    for p in procs:
        p.start()
    try:
        _collect(results, procs, "ready", backend.path)
        t0 = time.perf_counter()
        go.set()
        got = _collect(results, procs, "ok", backend.path)
        wall = time.perf_counter() - t0
    finally:
        for p in procs:
            p.join(timeout=5 if go.is_set() else 0.1)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    lats = [g[0] for g in got.values()]
    total = sum(len(s) for s in lats) * spec.batch
    return total / wall, percentiles([v for s in lats for v in s]), float(sum(g[1] for g in got.values()))


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
            recs[k] = measure(backends[k], imgsz, BenchSpec(warmup=warmup, iters=iters))
            p50[k].append(recs[k].latency_ms["p50"])
    return {k: {"p50_ms": median(v), "rounds_p50_ms": v, "runtime": backends[k].name,
                "precision": backends[k].precision, "threads": backends[k].threads, "size_mb": recs[k].size_mb,
                "machine": recs[k].machine} for k, v in p50.items()}

