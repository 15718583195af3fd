"""``optimize --target auto``: which installed CPU runtime runs this model fastest here.

Each candidate runtime gets the FP32 model at the baseline's size (verified exports, under
``OUT/artifacts/auto/``); all are timed model-only at the run's threads in interleaved rounds (the order reversed
every other round), and the run's variants are then built on the fastest. The choice is stored in
``OUT/auto.json`` so a continued run keeps it without timing again.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import YoloptError
from ..fileio import write_json

log = logging.getLogger("yolopt")

#: the runtimes auto compares (CPU ones: TensorRT is a GPU target, chosen by name only)
CANDIDATES = ("onnxruntime", "openvino", "ncnn", "litert")
_FORMAT = {"onnxruntime": ("onnx", "model.onnx"), "openvino": ("openvino", "ov/model.xml"),
           "ncnn": ("ncnn", "ncnn/model.param"), "litert": ("litert", "model.tflite")}


@dataclass
class RuntimeChoice:
    """The runtime auto picked, each candidate's FP32 p50 (ms, median of the rounds) and why any was left out."""

    chosen: str
    p50_ms: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)  # runtime -> why (not installed, export failed)
    imgsz: int = 0
    threads: int = 0
    rounds: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def installed(runtime: str) -> str | None:
    """None when ``runtime`` (and its converter) can be used here, else why not."""
    from .spec import OptimizeError, check_target_installed

    try:
        check_target_installed(runtime)
    except OptimizeError as e:
        return str(e)
    return None


def choose_runtime(model, imgsz: int, threads: int, folder: Path, rounds: int = 3, iters: int = 10
                   ) -> RuntimeChoice:
    """Export ``model`` (FP32, ``imgsz`` square) for each installed candidate into ``folder``, time them
    interleaved and return the fastest; reuses ``folder/auto.json`` when it holds a choice for the same size and
    threads."""
    from ..bench.measure import interleaved
    from ..export import ExportSpec, export

    record = folder / "auto.json"
    if record.is_file():
        try:
            d = json.loads(record.read_text())
            if d.get("imgsz") == imgsz and d.get("threads") == threads:
                return RuntimeChoice(**d)
        except (ValueError, TypeError):
            pass
    arts, skipped = {}, {}
    for rt in CANDIDATES:
        why = installed(rt)
        if why:
            skipped[rt] = why
            continue
        fmt, rel = _FORMAT[rt]
        out = folder / "artifacts" / "auto" / rt / rel
        try:
            arts[rt] = out if out.is_file() else export(model, ExportSpec(format=fmt, imgsz=imgsz, out=out)).path
        except YoloptError as e:
            skipped[rt] = str(e).splitlines()[0]
            log.warning("--target auto: %s left out: %s", rt, skipped[rt])
    if not arts:
        raise YoloptError("--target auto: no CPU runtime could run the model ("
                          + "; ".join(f"{k}: {v}" for k, v in skipped.items()) + ")")
    t = interleaved(arts, imgsz, threads=threads, rounds=rounds, iters=iters)
    p50 = {rt: round(statistics.median(v["rounds_p50_ms"]), 3) for rt, v in t.items()}
    choice = RuntimeChoice(chosen=min(p50, key=p50.get), p50_ms=p50, skipped=skipped, imgsz=imgsz, threads=threads,
                           rounds=rounds)
    write_json(record, choice.to_dict(), quiet=True)
    return choice
