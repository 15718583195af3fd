"""The quantization report, typed: :class:`QuantizeReport` and its parts.

``QuantizeReport.to_dict()`` is the JSON written next to the artifact (``schema_version`` 1); a part
that a run did not produce (no QAT, no latency, ...) is left out of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .spec import QuantizeSpec

if TYPE_CHECKING:
    from .sensitivity import Sensitivity

SCHEMA_VERSION = 1


def _without_none(d: dict, keys: tuple[str, ...]) -> dict:
    return {k: v for k, v in d.items() if not (k in keys and v is None)}


@dataclass
class Score:
    """mAP of one model on the val split; ``detections``: its detections at conf 0.25 (the deployment point)."""

    map50_95: float
    map50: float
    images: int
    mode: str
    detections: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Calibration:
    images: int
    source: str
    method: str
    preprocess: str = "square letterbox, as inference"
    seconds: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Trial:
    """One INT8 model tried: ``float_layers`` layers kept float, and its score (None without labels)."""

    float_layers: int
    score: Score | None = None

    def to_dict(self) -> dict:
        return {"float_layers": self.float_layers, **(self.score.to_dict() if self.score else {})}


@dataclass
class QATInfo:
    """The quantization-aware fine-tuning run, and what it gained over PTQ of the same graph."""

    epochs: int
    run: str
    lr0: float
    batch: int
    data: str
    unlabeled: list[str]
    teacher: str
    fp32_tuned: Score  # the tuned float weights, in fp32
    seconds: float
    warning: str | None = None
    map50_95_gain_over_ptq: float | None = None
    map50_gain_over_ptq: float | None = None

    def to_dict(self) -> dict:
        return _without_none(asdict(self), ("warning", "map50_95_gain_over_ptq", "map50_gain_over_ptq"))


@dataclass
class SpeedAware:
    """Per-layer profile of the fp32 and INT8 models, the layers no slower in float, and whether keeping
    them float was adopted (the whole model measured faster)."""

    layer_ms: dict[str, dict[str, float]]  # layer -> {"fp32": ms, "int8": ms}
    float_no_slower: list[str]
    adopted: bool = False
    all_int8_ms: float | None = None
    with_float_ms: float | None = None
    seconds: float | None = None

    def to_dict(self) -> dict:
        return _without_none(asdict(self), ("all_int8_ms", "with_float_ms", "seconds"))


@dataclass
class Timing:
    """Model-only latency of the models compared, timed in interleaved rounds (:func:`yolopt.bench.interleaved`)."""

    latency: dict[str, dict]  # model name (fp32, int8, ptq, fp32_openvino) -> p50_ms, rounds, runtime...
    machine: dict
    latency_ratio: float  # int8 / fp32 (ONNX Runtime)
    speedup: float
    latency_ratio_qat_vs_ptq: float | None = None
    latency_ratio_vs_fp32_openvino: float | None = None

    def to_dict(self) -> dict:
        return _without_none(asdict(self), ("latency_ratio_qat_vs_ptq", "latency_ratio_vs_fp32_openvino"))


@dataclass
class Sizes:
    """Artifact sizes in MB."""

    fp32: float
    int8: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class QuantizeReport:
    """Everything one quantization measured; see the module doc for the JSON form."""

    model: str
    backend: str
    imgsz: int
    spec: QuantizeSpec
    calibration: Calibration
    layers: int | None = None  # quantizable layers (OpenVINO: convolutions, with accuracy control)
    fp32: Score | None = None
    qat: QATInfo | None = None
    sensitivity_seconds: float | None = None
    sensitivity: Sensitivity | None = None  # the per-layer analysis, when asked for
    speed_aware: SpeedAware | None = None
    trials: list[Trial] = field(default_factory=list)
    float_layers: list[str] = field(default_factory=list)
    int8: Score | None = None
    map50_95_drop: float | None = None
    map50_drop: float | None = None
    ptq: Score | None = None  # with QAT: PTQ of the same graph
    timing: Timing | None = None
    size_mb: Sizes | None = None
    seconds: float | None = None
    path: str | None = None
    sensitivity_png: str | None = None

    def to_dict(self) -> dict:
        def part(v):
            return v.to_dict() if v is not None else None

        d = {"schema_version": SCHEMA_VERSION, "model": self.model, "backend": self.backend, "imgsz": self.imgsz,
             "spec": self.spec.to_dict(), "calibration": self.calibration.to_dict(), "layers": self.layers,
             "fp32": part(self.fp32), "qat": part(self.qat), "sensitivity_seconds": self.sensitivity_seconds,
             "sensitivity": part(self.sensitivity), "speed_aware": part(self.speed_aware),
             "trials": [t.to_dict() for t in self.trials], "float_layers": list(self.float_layers),
             "int8": part(self.int8), "map50_95_drop": self.map50_95_drop, "map50_drop": self.map50_drop,
             "ptq": part(self.ptq), **(self.timing.to_dict() if self.timing else {}),
             "size_mb": part(self.size_mb), "seconds": self.seconds, "path": self.path,
             "sensitivity_png": self.sensitivity_png}
        return _without_none(d, ("qat", "sensitivity_seconds", "sensitivity", "speed_aware", "map50_95_drop",
                                 "map50_drop", "ptq", "seconds", "sensitivity_png"))


@dataclass
class QuantizeResult:
    path: Path | None
    report: QuantizeReport | None = None
