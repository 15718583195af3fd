"""End to end as deployed: a variant timed by its own deploy bundle's ``infer.py`` pipeline.

optimize writes each variant's bundle (:func:`~yolopt.pipeline.deploy.write_bundle`, the settings the variant
deploys with) and its benchmark worker runs that bundle's ``infer.py`` code: the same image reading,
letterbox, runtime session, decode and NMS (numpy / OpenCV), in worker processes with infer.py's default
``--workers`` and ``--threads`` on this machine, fed the way ``infer.py DIR`` feeds them. So the report's
images/s is the bundle's, measured the way a user runs it (``benchmarks/bundle_e2e.py`` checks it).

Nothing here imports torch: the worker processes are forked from the caller, and a process holding torch would
lend them its memory figures.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import YoloptError


@dataclass
class DeployedRun:
    """What one bundle measured: ``fps`` images/s over ``seconds`` (``images`` processed after a warm-up),
    with ``workers`` processes of ``threads`` runtime threads each; ``latency_ms``: percentiles of each image's
    letterbox + model + decode + NMS time inside its worker (reading excluded, as infer.py prints it);
    ``peak_mem_mb``: the workers' peak resident memory, summed (the deployed pipeline's memory)."""

    fps: float
    images: int
    seconds: float
    workers: int
    threads: int | None
    latency_ms: dict
    peak_mem_mb: float

    def to_dict(self) -> dict:
        return asdict(self)


def _load_infer(bundle: Path):
    """The bundle's own infer.py as a module (not run)."""
    path = bundle / "infer.py"
    spec = importlib.util.spec_from_file_location(f"yolopt_bundle_infer_{abs(hash(str(path.resolve())))}", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise YoloptError(f"{bundle}: no infer.py (not a deploy bundle)")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory (MB, Linux ``VmHWM``; 0 where /proc is missing)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _percentiles(ms: list[float]) -> dict:
    import numpy as np

    a = np.asarray(ms, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}


def _in_process(mod, bundle: Path, cfg: dict, settings: dict, images: list[str], seconds: float,
                warmup: int) -> DeployedRun:
    """One pipeline, in this process, as ``infer.py`` runs ``--workers 1``."""
    try:
        det = mod.Detector(cfg, settings)
    except Exception as e:  # noqa: BLE001 - the runtime refusing the model: one line, as infer.py's workers say it
        msg = str(e).strip().splitlines()
        raise YoloptError(f"{bundle}: {type(e).__name__}: {msg[0] if msg else ''}") from None

    def one(k: int) -> float:
        rec, warning, m = det(images[k % len(images)], None, None)
        if warning:
            raise YoloptError(f"{bundle}: {warning}")
        return m

    for k in range(max(1, warmup)):
        one(k)
    ms: list[float] = []
    t0 = time.perf_counter()
    k = max(1, warmup)
    while not ms or time.perf_counter() - t0 < seconds:
        ms.append(one(k))
        k += 1
    wall = time.perf_counter() - t0
    return DeployedRun(fps=len(ms) / wall, images=len(ms), seconds=wall, workers=1, threads=settings["threads"],
                       latency_ms=_percentiles(ms), peak_mem_mb=_peak_rss_mb(os.getpid()))


def measure_bundle(bundle: str | Path, images: list[str], seconds: float, warmup: int = 2,
                   workers: int | None = None) -> DeployedRun:
    """Time ``bundle`` (a deploy bundle folder) on ``images`` (image files, cycled over) for about ``seconds``,
    after ``warmup`` images per worker, with infer.py's own defaults for ``--workers`` / ``--threads`` here: one
    pipeline in this process, more in infer.py's worker processes (``WorkerPool``), as infer.py runs them.
    ``peak_mem_mb``: one pipeline, this process's peak (call it from a process that holds no torch); more, the
    workers' peaks summed. ``workers``: as infer.py's ``--workers`` (default: its own default).
    Any failure of the bundle (a worker that dies, an image it cannot read) is one :class:`YoloptError` line."""
    bundle = Path(bundle)
    if not images:
        raise YoloptError("no images to time the bundle on")
    mod = _load_infer(bundle)
    try:
        cfg = mod.load_config(str(bundle / "deploy.json"))
        argv = [str(images[0]), "--quiet"] + ([] if workers is None else ["--workers", str(workers)])
        settings = mod.settings_of(mod.parse_args(argv), cfg)
        if settings["workers"] == 1:  # infer.py runs one pipeline in its own process: so here
            return _in_process(mod, bundle, cfg, settings, images, seconds, warmup)
        pool = mod.WorkerPool(settings["workers"], cfg, settings)
    except mod.BundleError as e:
        raise YoloptError(f"{bundle}: {str(e).splitlines()[0]}") from None
    workers = settings["workers"]
    n_warm = max(1, warmup) * workers
    ms: list[float] = []
    clock = {"t0": None, "deadline": None, "last": None, "seen": 0}

    def emit(path, frame, result):  # in input order, as infer.py prints
        rec, warning, m = result
        if warning:
            raise YoloptError(f"{bundle}: {warning}")
        clock["seen"] += 1
        now = time.perf_counter()
        if clock["seen"] == n_warm:  # the warm-up's last image out: the clock starts
            clock["t0"], clock["deadline"] = now, now + seconds
        elif clock["seen"] > n_warm:
            ms.append(m)
            clock["last"] = now

    def items():  # one run (a WorkerPool runs once): the warm-up images, then until the deadline
        k = 0
        while k < n_warm + workers or clock["deadline"] is None or time.perf_counter() < clock["deadline"]:
            yield images[k % len(images)], None, None
            k += 1

    try:
        pool.run(items(), emit)
        mem = sum(_peak_rss_mb(p.pid) for p in pool.procs)
    except mod.BundleError as e:
        raise YoloptError(f"{bundle}: {str(e).splitlines()[0]}") from None
    finally:
        pool.close()
    if not ms:
        raise YoloptError(f"{bundle}: no image was timed (give more seconds)")
    wall = clock["last"] - clock["t0"]
    return DeployedRun(fps=len(ms) / wall if wall > 0 else 0.0, images=len(ms), seconds=wall, workers=workers,
                       threads=settings["threads"], latency_ms=_percentiles(ms), peak_mem_mb=mem)
