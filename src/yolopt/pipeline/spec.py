"""What one ``yolopt optimize`` run is asked to do: :class:`OptimizeSpec`, checked in one place."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import YoloptError

SCENARIOS = ("realtime", "accuracy", "edge")
TARGETS = ("onnxruntime", "openvino", "tensorrt", "ncnn", "litert")
AUTO = "auto"  # --target auto: the installed CPU runtime whose FP32 model measures fastest here (pipeline.auto)
TARGET_CHOICES = (*TARGETS, AUTO)
METRICS = ("map50_95", "map50")
# the accuracy budget of each scenario when --max-map-drop is not given (mAP points as fractions)
DEFAULT_DROP = {"realtime": 0.01, "accuracy": 0.002, "edge": 0.01}
_RUNTIME_MODULE = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt", "ncnn": "ncnn",
                   "litert": "ai_edge_litert"}


class OptimizeError(YoloptError):
    """An optimize run that cannot start (bad spec, missing runtime, budget too small)."""


def parse_duration(text: str | float | int) -> float:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"1h30m"`` or plain seconds -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", s)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([hms])", "", s).strip():
        raise OptimizeError(f"time budget {text!r}: give a duration like 90s, 15m, 1h or 1h30m",
                            fields=("time_budget_s", "time_budget"))
    return sum(float(v) * {"h": 3600, "m": 60, "s": 1}[u] for v, u in parts)


@dataclass
class OptimizeSpec:
    """Everything one optimize run needs. ``None`` fields take the scenario's defaults in :meth:`check`."""

    model: str
    data: str
    scenario: str = "realtime"  # realtime: max FPS within the mAP budget; accuracy: smallest drop with a
    #                             speed-up; edge: 1 thread, smallest artifact meeting the latency budget
    target: str = "onnxruntime"
    pin_target: bool = False  # True: every variant runs on ``target`` (else INT8 is also tried on OpenVINO)
    max_latency_ms: float | None = None  # end-to-end p50 per image
    max_map_drop: float | None = None  # mAP budget (fraction, 0.01 = 1 point); default per scenario
    max_size_mb: float | None = None
    max_memory_mb: float | None = None  # peak resident memory of the deployed pipeline (the benchmark worker's)
    metric: str = "map50_95"  # the mAP the drop is measured on (map50 for single-class custom domains)
    threads: int | None = None  # total CPU threads of the pipeline (default: all cores; edge: 1)
    imgsz: list[int] = field(default_factory=list)  # input sizes to try; the first is the baseline's
    time_budget_s: float = 3600.0
    out: str = "runs/optimize"
    resume: bool = False
    conf: float = 0.25  # the deployment threshold the end-to-end pipeline runs at
    iou: float = 0.45
    val_images: int | None = None  # evaluate on the first N val images (None: all)
    bench_images: int = 16  # val images cycled through by the end-to-end benchmark
    bench_seconds: float = 4.0  # timed seconds per end-to-end measurement
    finetune_epochs: int | None = None  # pruning candidates' distilled fine-tune (None: from the budget)
    unlabeled: list = field(default_factory=list)  # extra images without labels for the distilled fine-tune
    raw_head: bool = True  # ONNX Runtime INT8 builds end at Detect's convs; boxes decoded outside, candidates only
    prune: bool = True  # try pruning (needs training time)
    quantize: bool = True  # try INT8
    qat_epochs: int = 2  # QAT candidates' distilled epochs, where PTQ INT8 misses the budget (0: no QAT)
    progress: bool = True
    map_noise: float = 1.0  # a variant meets the mAP budget when drop + map_noise x its standard error does
    #                         (paired bootstrap over the val images); 0: the measured drop alone
    bootstrap: int = 200  # resamples of that bootstrap

    def check(self, model_imgsz: int | None = None) -> "OptimizeSpec":
        """Validate, fill the scenario defaults; raises :class:`OptimizeError` with one line."""
        if self.scenario not in SCENARIOS:
            raise OptimizeError(f"scenario {self.scenario!r}: choose one of {', '.join(SCENARIOS)}",
                                fields=("scenario",))
        if self.target not in TARGET_CHOICES:
            raise OptimizeError(f"target {self.target!r}: choose one of {', '.join(TARGET_CHOICES)}",
                                fields=("target",))
        if self.metric not in METRICS:
            raise OptimizeError(f"metric {self.metric!r}: choose one of {', '.join(METRICS)}", fields=("metric",))
        check_target_installed("onnxruntime" if self.target == AUTO else self.target)
        if self.max_map_drop is None:
            self.max_map_drop = DEFAULT_DROP[self.scenario]
        if not 0 <= self.max_map_drop < 1:
            raise OptimizeError(f"max_map_drop {self.max_map_drop}: give a fraction in [0, 1) (0.01 = 1 mAP point)",
                                fields=("max_map_drop",))
        for name in ("max_latency_ms", "max_size_mb", "max_memory_mb"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise OptimizeError(f"{name} {v}: must be > 0", fields=(name,))
        if self.time_budget_s <= 0:
            raise OptimizeError(f"time budget {self.time_budget_s:g}s: must be > 0",
                                fields=("time_budget_s", "time_budget"))
        from ..machine import usable_cpus

        if self.threads is None:
            self.threads = 1 if self.scenario == "edge" else usable_cpus()
        if self.threads < 1:
            raise OptimizeError(f"threads {self.threads}: must be >= 1", fields=("threads",))
        if self.threads > usable_cpus():
            import logging

            logging.getLogger("yolopt").warning(
                "threads %d: more than the %d core(s) this process may use; every variant, the baseline included, "
                "runs oversubscribed and its timings stall", self.threads, usable_cpus())
        sizes = [int(s) for s in self.imgsz] or default_sizes(model_imgsz or 640)
        bad = [s for s in sizes if s < 32 or s % 32]
        if bad:
            raise OptimizeError(f"imgsz {','.join(map(str, bad))}: sizes must be multiples of 32 (>= 32)",
                                fields=("imgsz",))
        self.imgsz = list(dict.fromkeys(sizes))
        if self.val_images is not None and self.val_images < 1:
            raise OptimizeError(f"val_images {self.val_images}: must be >= 1", fields=("val_images",))
        if self.qat_epochs < 0:
            raise OptimizeError(f"qat_epochs {self.qat_epochs}: must be >= 0", fields=("qat_epochs",))
        if not 0 <= self.map_noise <= 5:
            raise OptimizeError(f"map_noise {self.map_noise}: give a number of standard errors in [0, 5]",
                                fields=("map_noise",))
        if self.bootstrap < 20:
            raise OptimizeError(f"bootstrap {self.bootstrap}: use at least 20 resamples", fields=("bootstrap",))
        if not 0 < self.conf < 1:
            raise OptimizeError(f"conf {self.conf}: must be in (0, 1)", fields=("conf",))
        return self

    def key(self) -> dict:
        """The settings a cached result depends on (a rerun with other values starts fresh variants)."""
        d = asdict(self)
        # what the candidates are (sizes, scenario, budgets) may change between runs: each variant's cache
        # entry records its own size and letterbox, and a changed one is measured again
        for k in ("resume", "progress", "out", "time_budget_s", "scenario", "max_latency_ms", "max_size_mb",
                  "max_memory_mb", "pin_target", "raw_head", "max_map_drop", "prune", "quantize", "finetune_epochs", "imgsz", "metric", "unlabeled",
                  "qat_epochs", "map_noise", "bootstrap"):
            d.pop(k)
        d["model"] = str(Path(self.model).resolve())
        d["data"] = str(Path(self.data).resolve())
        return d


def default_sizes(base: int) -> list[int]:
    """The base size and three smaller ones, multiples of 32: 640 -> 640, 576, 512, 416; 416 -> 416, 384, 320, 256."""
    out = [base]
    for f in (0.9, 0.8, 0.65):
        s = max(32, int(base * f / 32 + 0.5) * 32)
        if s not in out:
            out.append(s)
    return out


def runtime_installed(runtime: str) -> bool:
    """Whether ``runtime``'s Python package can be imported here (without importing it)."""
    return importlib.util.find_spec(_RUNTIME_MODULE[runtime]) is not None


def check_target_installed(target: str) -> None:
    mod = _RUNTIME_MODULE[target]
    if importlib.util.find_spec(mod) is None:
        extra = {"tensorrt": "install TensorRT (needs a CUDA GPU)", "ncnn": "pip install 'yolopt[edge]'",
                 "litert": "pip install 'yolopt[edge]'"}.get(
            target, "pip install 'yolopt[deploy]'")
        raise OptimizeError(f"target {target}: the {mod} runtime is not installed ({extra})", fields=("target",))
    if target == "ncnn" and importlib.util.find_spec("pnnx") is None:
        raise OptimizeError("target ncnn: the pnnx converter is not installed (pip install 'yolopt[edge]')",
                            fields=("target",))
    if target == "litert" and importlib.util.find_spec("litert_torch") is None:
        from ..export.edge import LITERT_CONVERTER_INSTALL

        raise OptimizeError(f"target litert: the litert-torch converter is not installed (pip install 'yolopt[edge]', "
                            f"then {LITERT_CONVERTER_INSTALL})", fields=("target",))
    if target == "tensorrt":
        import torch

        if not torch.cuda.is_available():
            raise OptimizeError("target tensorrt: TensorRT engines need a CUDA GPU and none is available here",
                                fields=("target",))
