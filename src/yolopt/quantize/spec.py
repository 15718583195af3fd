"""What one quantization run takes: :class:`QuantizeSpec`, its checks and the constants they use."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import YoloptError
from .calib import CALIB_IMAGES

BACKENDS = ("onnxruntime", "openvino")
COLLAPSE = 0.5  # an INT8 model keeping less than this fraction of the fp32 mAP50 has lost its detections


class QuantizeError(YoloptError):
    """A quantization that cannot be done, or whose result failed validation (nothing is written)."""


@dataclass
class QuantizeSpec:
    """Everything one ``yolopt quantize`` run needs."""

    data: str | None = None  # dataset yaml: calibration on its train split, validation on val
    images: list | None = None  # or calibration images (folders, globs, files); validation then needs data
    backend: str = "onnxruntime"
    imgsz: int = 640
    calib: int = CALIB_IMAGES  # calibration images (a fixed random subset when there are more)
    method: str = "minmax"  # minmax | entropy | percentile
    per_channel: bool = True
    reduce_range: bool = True  # 7-bit weights: no int16 overflow in the u8 x s8 kernels of CPUs without VNNI
    max_map_drop: float | None = None  # accuracy control: keep sensitive layers float until within budget
    val_images: int | None = None  # validate on the first N val images (None: all)
    match_classes: bool = False  # evaluate only the classes the model and the dataset share by name
    sensitivity: bool = False  # per-layer analysis (table + PNG) in the report
    sensitivity_images: int = 8
    sensitivity_map_images: int = 0  # also the mAP delta of each layer alone, on this many val images
    speed_aware: bool = True  # layers whose float kernels are no slower than INT8 (profiled) stay float
    raw_head: bool = False  # the graph ends at Detect's convs; boxes decoded outside, for candidates only (ORT)
    quantize_decode: bool = False  # ablation only: quantize the Detect decode too (loses every detection)
    qat: int = 0  # epochs of quantization-aware fine-tuning (0: post-training quantization only)
    qat_data: str | None = None  # QAT trains on this (yaml, or unlabelled images) instead of data's train split
    qat_unlabeled: list = field(default_factory=list)  # extra images for QAT (the float teacher labels them)
    qat_lr: float = 1e-3  # measured on hardhat (in-domain images): 2 epochs +0.75 pt mAP50-95 over PTQ
    qat_batch: int = 16
    qat_dir: str | Path | None = None  # the QAT training run (default: next to the artifact; resumable)
    latency: bool = True
    threads: int | None = None
    out: str | Path | None = None
    progress: bool = True
    seed: int = 0

    def to_dict(self) -> dict:
        """The fields as JSON values (paths as strings)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def check_spec(spec: QuantizeSpec) -> None:
    """Refuse a spec that cannot run, before any work."""
    if spec.backend not in BACKENDS:
        raise QuantizeError(f"backend {spec.backend!r}: INT8 is built for {', '.join(BACKENDS)} so far",
                            fields=("backend",))
    from .onnx_qdq import METHODS

    if spec.method not in METHODS:
        raise QuantizeError(f"calibration method {spec.method!r}: choose one of {', '.join(METHODS)}",
                            fields=("method",))
    if spec.max_map_drop is not None and not 0 <= spec.max_map_drop < 1:
        raise QuantizeError(f"mAP drop budget {spec.max_map_drop}: must be in [0, 1)", fields=("max_map_drop",))
    if not spec.data and not spec.images:
        raise QuantizeError("quantize needs calibration images: a dataset yaml or image folders",
                            fields=("data", "images"))
    if spec.backend == "openvino" and (spec.sensitivity or spec.quantize_decode):
        raise QuantizeError("the OpenVINO backend: the sensitivity analysis and the naive ablation are built for "
                            "onnxruntime so far; the OpenVINO path is nncf PTQ (with an mAP drop budget: nncf's "
                            "accuracy control), the decode float", fields=("backend", "sensitivity"))
    if spec.raw_head and (spec.backend != "onnxruntime" or spec.quantize_decode):
        raise QuantizeError("a raw head (boxes decoded outside the graph) is built for the onnxruntime backend, "
                            "without the decode ablation", fields=("raw_head", "backend"))
    if spec.max_map_drop is not None and not spec.data:
        raise QuantizeError("an mAP drop budget needs a labelled dataset (the drop is measured on its val split)",
                            fields=("max_map_drop", "data"))
    if spec.qat < 0:
        raise QuantizeError(f"the number of QAT epochs must be >= 0 (got {spec.qat})", fields=("qat",))
    if spec.qat and (not spec.data or spec.backend != "onnxruntime" or spec.quantize_decode):
        raise QuantizeError("quantization-aware training needs a labelled dataset (it fine-tunes on the train "
                            "split) and the onnxruntime backend", fields=("qat", "data", "backend"))
